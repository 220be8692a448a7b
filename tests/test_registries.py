"""ollama:// and oci:// references, resolved against real registries (Debian's
docker-registry: one behind a token service whose blob answers redirect to a CDN
host, one behind HTTP Basic; see tests/support/registry.py), each blob then fetched
with the authorizer's headers and checked against its digest."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import requests

from arw_models.config import Settings, from_env, parse_insecure
from arw_models.engine import oci, registry_auth
from arw_models.engine.fileset import FileSet, RemoteFile
from arw_models.engine.http import new_session
from arw_models.engine.sources import InvalidReference
from arw_models.errors import TransferError

from .support.origin import Origin
from .support.registry import Registries
from .support.servers import closed_port
from .support.tokens import USERS, basic

READER = basic("reader", USERS["reader"])


@pytest.fixture
def session() -> Iterator[requests.Session]:
    s = new_session("arw-models-test")
    yield s
    s.close()


def insecure(regs: Registries) -> tuple[str, ...]:
    return (regs.token.host, regs.basic.host, regs.token_server.host)


def fetch_all(fs: FileSet, authorize: Any, session: requests.Session) -> dict[str, requests.Response]:
    """Each file of ``fs`` as the download would fetch it: the authorizer's headers,
    private to the file url's host; its bytes checked against the listed digest."""
    got = {}
    for f in fs.files:
        headers = dict(authorize(f, False))
        session.private_headers = frozenset(headers)  # type: ignore[attr-defined]
        response = session.get(f.url, headers=headers, timeout=10)
        assert response.status_code == 200, (f.path, response.status_code)
        assert hashlib.sha256(response.content).hexdigest() == f.sha256, f.path
        assert len(response.content) == f.size
        got[f.path] = response
    return got


# -- references ------------------------------------------------------------------

@pytest.mark.parametrize(("url", "host", "repository", "tag", "digest", "provider"), [
    ("ollama://qwen2.5:0.5b", "registry.ollama.ai", "library/qwen2.5", "0.5b", None, "ollama"),
    ("ollama://llama3", "registry.ollama.ai", "library/llama3", "latest", None, "ollama"),
    ("ollama://someone/model:q4_K_M", "registry.ollama.ai", "someone/model", "q4_K_M", None, "ollama"),
    ("ollama://localhost:5000/team/model:v1", "localhost:5000", "team/model", "v1", None, "ollama"),
    ("ollama://localhost/model", "localhost", "library/model", "latest", None, "ollama"),  # a host: no dot or port
    ("ollama://hf.co/bartowski/some-model-gguf:q4", "hf.co", "bartowski/some-model-gguf", "q4", None, "ollama"),
    ("oci://ghcr.io/org/models/tiny", "ghcr.io", "org/models/tiny", "latest", None, "oci"),
    ("oci://127.0.0.1:5000/a__b/c-d.e:V1.0_x", "127.0.0.1:5000", "a__b/c-d.e", "V1.0_x", None, "oci"),
    ("oci://reg.example:443/m@sha256:" + "ab" * 32, "reg.example:443", "m", None, "sha256:" + "ab" * 32, "oci"),
    ("oci://reg.example/m:t@sha256:" + "0" * 64, "reg.example", "m", "t", "sha256:" + "0" * 64, "oci"),
    ("oci://ghcr.io/" + "a/" * 127 + "b", "ghcr.io", "a/" * 127 + "b", "latest", None, "oci"),  # 255: the most
])
def test_parse(url: str, host: str, repository: str, tag: str | None, digest: str | None, provider: str) -> None:
    ref = oci.parse(url)
    assert (ref.host, ref.repository, ref.tag, ref.digest, ref.provider) == (host, repository, tag, digest, provider)
    assert ref.reference == (digest or tag)
    assert oci.names_registry(url) and oci.parse(str(ref)) == ref


@pytest.mark.parametrize(("url", "says"), [
    ("ollama://Llama3", "not a repository name"),
    ("ollama://a//b", "not a repository name"),
    ("oci://ghcr.io", "not a repository name"),
    ("oci://ghcr.io/", "not a repository name"),
    ("oci://ghcr.io/a-/b", "not a repository name"),
    ("oci://ghcr.io/a/b:-x", "not a tag"),
    ("oci://ghcr.io/a/b:" + "t" * 129, "not a tag"),
    ("oci://ghcr.io/a/b@sha512:" + "a" * 128, "only sha256 digests"),
    ("oci://ghcr.io/a/b@sha256:" + "A" * 64, "not a sha256 digest"),
    ("oci://ghcr.io/a/b@sha256:abc", "not a sha256 digest"),
    ("oci://ghcr.io/a/b@latest", "not a digest"),
    ("oci://host:99999/a", "not a registry host"),
    ("oci://ho_st/a", "not a registry host"),
    ("oci://ghcr.io/a?x=1", "no query"),
    ("oci://ghcr.io/a b", "no query"),
    ("https://ghcr.io/a", "not an ollama:// or oci://"),
    ("oci://ghcr.io/" + "a/" * 127 + "bc", "longer than 255"),
])
def test_parse_refuses(url: str, says: str) -> None:
    with pytest.raises(InvalidReference, match=says):
        oci.parse(url)
    assert not oci.names_registry("hf://a/b/c") and not oci.names_registry("https://x/y")


def test_insecure_setting() -> None:
    assert parse_insecure(" 127.0.0.1:5000, Registry.LAN:8080 ,,[::1]:5000") == (
        "127.0.0.1:5000", "registry.lan:8080", "[::1]:5000")
    for bad in ("http://127.0.0.1:5000", "host:5000/path", "host:0", "host:70000", "a b"):
        with pytest.raises(ValueError, match="not a registry HOST:PORT"):
            parse_insecure(bad)
    assert from_env({"ARW_REGISTRY_INSECURE": "reg:5000"})["ARW_REGISTRY_INSECURE"] == ("reg:5000",)
    with pytest.raises(ValueError, match="ARW_REGISTRY_INSECURE"):
        from_env({"ARW_REGISTRY_INSECURE": "https://reg"})
    settings = Settings.from_config({"ARW_REGISTRY_INSECURE": "reg:5000", "ARW_STATE_DIR": "/tmp/x"})
    assert settings.registry_insecure == ("reg:5000",) and settings.public()["registry_insecure"] == ["reg:5000"]
    assert Settings.from_config({"ARW_STATE_DIR": "/tmp/x"}).registry_insecure == ()


def test_http_only_for_listed_hosts(regs: Registries, session: requests.Session) -> None:
    ref = oci.parse(f"oci://{regs.token.host}/library/tiny")
    assert oci.blob_url(ref, (), "sha256:" + "0" * 64).startswith(f"https://{regs.token.host}/v2/library/tiny/")
    assert oci.blob_url(ref, ("other:5000",), "sha256:" + "0" * 64).startswith("https://")
    assert oci.blob_url(ref, (regs.token.host,), "sha256:" + "0" * 64).startswith(f"http://{regs.token.host}/")
    # Not listed: TLS is spoken to it, and the plain-http registry cannot answer.
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, (), connect_timeout=5, read_timeout=5)
    assert caught.value.code == "tls" and regs.token.host in caught.value.message
    # The token service on plain http is asked only when it is listed too.
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, (regs.token.host,), connect_timeout=5, read_timeout=5)
    assert caught.value.code == "registry-auth" and "ARW_REGISTRY_INSECURE" in caught.value.message
    assert oci.resolve(ref, session, insecure(regs)).revision == regs.pushed["tiny"].digest


# -- pulls from the real registries ---------------------------------------------

def test_anonymous_pull_of_an_ollama_model(regs: Registries, session: requests.Session) -> None:
    pushed = regs.pushed["tiny"]
    ref = oci.parse(f"ollama://{regs.token.host}/library/tiny")
    before = len(regs.token_server.requests())
    fs = oci.resolve(ref, session, insecure(regs))
    assert fs.provider == "ollama" and fs.revision == pushed.digest
    assert fs.reference == f"ollama://{regs.token.host}/library/tiny:latest"
    assert fs.inline == {"manifest.json": pushed.manifest}
    assert [(f.path, f.role) for f in fs.files] == [
        ("model.gguf", "model"), ("projector.gguf", "projector"), ("template.txt", "template"),
        ("system.txt", "system"), ("params.json", "params"), ("license.txt", "license"),
        ("license-2.txt", "license"), ("config.json", "config")]
    assert {f"sha256:{f.sha256}" for f in fs.files} == set(pushed.blobs)
    assert fs.total == sum(len(b) for b in pushed.blobs.values())
    assert FileSet.from_json(json.loads(json.dumps(fs.to_json()))) == fs
    got = fetch_all(fs, oci.authorizer(ref, session, insecure(regs)), session)
    assert got["template.txt"].content == b"{{ .System }}\n{{ .Prompt }}"
    # Anonymous all along: one token for the manifest, one for the authorizer's blobs.
    asked = regs.token_server.requests()[before:]
    assert len(asked) == 2 and not any(a["credentials"] for a in asked)
    assert all(a["query"]["scope"] == ["repository:library/tiny:pull"] for a in asked)


def test_token_protected_repository(regs: Registries, session: requests.Session) -> None:
    ref = oci.parse(f"oci://{regs.token.host}/private/secret:v1")
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, insecure(regs))
    refused = caught.value
    assert refused.code == "http-status" and refused.context["http_status"] == 401 and not refused.retryable
    assert "private/secret:v1" in refused.message and "needs credentials" in refused.message
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, insecure(regs), credentials=basic("reader", "wrong"))
    assert caught.value.context["http_status"] == 401 and "credentials were refused" in caught.value.message
    assert "wrong" not in caught.value.message
    fs = oci.resolve(ref, session, insecure(regs), credentials=READER)
    assert fs.revision == regs.pushed["secret"].digest and fs.provider == "oci"
    # The blobs too need the token given for the credentials; anonymous ones are refused.
    anonymous = oci.authorizer(ref, session, insecure(regs))
    assert session.get(fs.files[0].url, headers=dict(anonymous(fs.files[0], False)), timeout=10).status_code == 401
    fetch_all(fs, oci.authorizer(ref, session, insecure(regs), credentials=READER), session)


def test_basic_auth_registry(regs: Registries, session: requests.Session) -> None:
    ref = oci.parse(f"ollama://{regs.basic.host}/library/tiny")
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, insecure(regs))
    assert caught.value.context["http_status"] == 401 and "needs credentials" in caught.value.message
    fs = oci.resolve(ref, session, insecure(regs), credentials=READER)
    assert fs.revision == regs.pushed["basic"].digest
    authorize = oci.authorizer(ref, session, insecure(regs), credentials=READER)
    assert authorize(fs.files[0], False) == {"Authorization": READER}
    got = fetch_all(fs, authorize, session)
    assert all(not r.history for r in got.values())  # served by the registry itself


def test_token_is_not_sent_to_the_redirect_host(regs: Registries, session: requests.Session) -> None:
    ref = oci.parse(f"oci://{regs.token.host}/library/tiny")
    fs = oci.resolve(ref, session, insecure(regs))
    authorize = oci.authorizer(ref, session, insecure(regs))
    headers = authorize(fs.files[0], False)
    assert headers["Authorization"].startswith("Bearer ")
    token = headers["Authorization"].removeprefix("Bearer ")
    elsewhere = RemoteFile("x", f"{regs.cdn.base}/x", 1, sha256="0" * 64)
    assert authorize(elsewhere, False) == {}
    seen_before = len(regs.cdn.all_seen())
    got = fetch_all(fs, authorize, session)
    for f in fs.files:
        response = got[f.path]
        assert [h.status_code for h in response.history] == [307]
        assert response.url.startswith(regs.cdn.base + "/docker/registry/v2/blobs/sha256/")
    seen = regs.cdn.all_seen()[seen_before:]
    assert len(seen) == len(fs.files)
    assert not any("authorization" in s.headers for s in seen) and not regs.cdn.saw(token)


def test_authorizer_keeps_its_token_until_asked_or_expired(regs: Registries, session: requests.Session,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ref = oci.parse(f"oci://{regs.token.host}/library/tiny")
    fs = oci.resolve(ref, session, insecure(regs))
    authorize = oci.authorizer(ref, session, insecure(regs))
    before = len(regs.token_server.requests())
    first = authorize(fs.files[0], False)
    assert all(authorize(f, False) == first for f in fs.files)
    assert len(regs.token_server.requests()) == before + 1
    again = authorize(fs.files[0], True)  # after a 401: a new token
    assert again != first and len(regs.token_server.requests()) == before + 2
    later = registry_auth.clock() + regs.token_server.expires_in
    monkeypatch.setattr(registry_auth, "clock", lambda: later)
    assert authorize(fs.files[0], False) != again and len(regs.token_server.requests()) == before + 3


def test_authorizer_shared_by_threads_asks_once(regs: Registries, session: requests.Session) -> None:
    """The files of a model are fetched by several threads: the first one's check of
    the registry and its token serve them all."""
    ref = oci.parse(f"oci://{regs.token.host}/library/tiny")
    fs = oci.resolve(ref, session, insecure(regs))
    authorize = oci.authorizer(ref, session, insecure(regs))
    before = len(regs.token_server.requests())
    start = threading.Barrier(4)
    got: list[Mapping[str, str]] = []

    def run(f: RemoteFile) -> None:
        start.wait(5)
        got.append(authorize(f, False))

    threads = [threading.Thread(target=run, args=(f,)) for f in fs.files[:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(got) == 4 and len({g["Authorization"] for g in got}) == 1
    assert len(regs.token_server.requests()) == before + 1


def test_index_selection(regs: Registries, session: requests.Session) -> None:
    one = regs.pushed["index-one"]
    fs = oci.resolve(oci.parse(f"oci://{regs.token.host}/team/indexed:one"), session, insecure(regs))
    model = regs.pushed["index-one-model"]
    assert fs.revision == model.digest  # the model's manifest, not the attestation's nor the index's
    assert fs.inline == {"index.json": one.manifest, "manifest.json": model.manifest}
    assert [f.path for f in fs.files] == ["a.bin"]
    with pytest.raises(TransferError) as caught:
        oci.resolve(oci.parse(f"oci://{regs.token.host}/team/indexed:two"), session, insecure(regs))
    assert caught.value.code == "invalid-manifest" and "2 manifests" in caught.value.message
    index = json.loads(regs.pushed["index-two"].manifest)
    assert all(e["digest"][:19] in caught.value.message for e in index["manifests"])
    # Named by its digest, either one is had.
    chosen = index["manifests"][1]["digest"]
    pinned = oci.resolve(oci.parse(f"oci://{regs.token.host}/team/indexed@{chosen}"), session, insecure(regs))
    assert pinned.revision == chosen and [f.path for f in pinned.files] == ["b.bin"]


def test_digest_pin(regs: Registries, session: requests.Session) -> None:
    pushed = regs.pushed["oras"]
    ref = oci.parse(f"oci://{regs.token.host}/team/artifact@{pushed.digest}")
    fs = oci.resolve(ref, session, insecure(regs))
    assert fs.revision == pushed.digest and fs.inline["manifest.json"] == pushed.manifest
    missing = "sha256:" + hashlib.sha256(b"no such manifest").hexdigest()
    with pytest.raises(TransferError) as caught:
        oci.resolve(oci.parse(f"oci://{regs.token.host}/team/artifact@{missing}"), session, insecure(regs))
    assert caught.value.context["http_status"] == 404 and missing in caught.value.message


def test_generic_artifact_layer_names(regs: Registries, session: requests.Session) -> None:
    pushed = regs.pushed["oras"]
    ref = oci.parse(f"oci://{regs.token.host}/team/artifact:v1")
    fs = oci.resolve(ref, session, insecure(regs))
    unknown = hashlib.sha256(b"who knows").hexdigest()
    assert [(f.path, f.role) for f in fs.files] == [
        ("model.safetensors", "layer"), ("tokenizer.json", "layer"), ("nested/readme.md", "layer"),
        (f"layer-{unknown[:12]}", "layer")]  # the empty config is left out
    got = fetch_all(fs, oci.authorizer(ref, session, insecure(regs)), session)
    assert got["nested/readme.md"].content == pushed.blobs["sha256:" + hashlib.sha256(b"# test\n").hexdigest()]


# -- manifests a registry should not serve (a local stand-in) -------------------

def _layer(data: bytes, **more: Any) -> dict[str, Any]:
    return {"mediaType": "application/octet-stream", "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            "size": len(data), **more}


def _serve(origin: Origin, document: dict[str, Any] | bytes, reference: str = "v1", **options: Any) -> oci.OciRef:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    origin.add(f"/v2/team/model/manifests/{reference}", body, **options)
    return oci.parse(f"oci://{origin.base.removeprefix('http://')}/team/model:v1")


def _host(origin: Origin) -> tuple[str, ...]:
    return (origin.base.removeprefix("http://"),)


def _manifest(*layers: dict[str, Any]) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": _layer(b"{}"), "layers": list(layers)}


@pytest.mark.parametrize(("document", "says"), [
    (_manifest(_layer(b"a", annotations={oci.TITLE: "../escape"})), "not a safe file path"),
    (_manifest(_layer(b"a", annotations={oci.TITLE: "x"}), _layer(b"b", annotations={oci.TITLE: "x"})),
     "two files of the manifest are named 'x'"),
    (_manifest(_layer(b"a", annotations={oci.TITLE: "manifest.json"})), "named 'manifest.json'"),
    (_manifest({"mediaType": "x", "digest": "sha512:" + "a" * 128, "size": 1}), "only sha256"),
    (_manifest({"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": -1}), "no valid size"),
    ({"schemaVersion": 1, "name": "x"}, "not a schema 2 document"),
    (b"\x00not json", "not JSON"),
    ({"schemaVersion": 2, "mediaType": "application/vnd.example+json"}, "not an OCI or Docker v2 manifest"),
    (json.dumps(_manifest()).encode() + b" " * oci.MAX_MANIFEST_BYTES, "larger than"),
])
def test_refused_manifests(origin: Origin, session: requests.Session, document: Any, says: str) -> None:
    ref = _serve(origin, document)
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, _host(origin))
    assert caught.value.code == "invalid-manifest" and says in caught.value.message
    assert "team/model:v1" in caught.value.message


def test_a_manifest_of_four_mib_is_read_and_one_byte_more_is_refused(origin: Origin,
                                                                     session: requests.Session) -> None:
    """The cap on a manifest is 4 MiB, the least the OCI distribution spec has a registry
    accept: a manifest of exactly that size resolves, a byte more is refused unread."""
    body = json.dumps(_manifest(_layer(b"a"))).encode()
    limit = 4 * 1024 * 1024
    ref = _serve(origin, body + b" " * (limit - len(body)))
    assert len(oci.resolve(ref, session, _host(origin)).files) == 1
    ref = _serve(origin, body + b" " * (limit + 1 - len(body)))
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, _host(origin))
    assert caught.value.code == "invalid-manifest" and "larger than" in caught.value.message


def test_manifest_bytes_must_match_the_pinned_digest(origin: Origin, session: requests.Session) -> None:
    body = json.dumps(_manifest(_layer(b"a"))).encode()
    wrong = "sha256:" + hashlib.sha256(body + b" ").hexdigest()
    origin.add(f"/v2/team/model/manifests/{wrong}", body)
    ref = oci.parse(f"oci://{_host(origin)[0]}/team/model@{wrong}")
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, _host(origin))
    assert caught.value.code == "checksum-mismatch" and wrong in caught.value.message
    # A tag's answer is checked against the digest the registry says it has.
    _serve(origin, body, headers={"Docker-Content-Digest": wrong})
    with pytest.raises(TransferError) as caught:
        oci.resolve(oci.parse(f"oci://{_host(origin)[0]}/team/model:v1"), session, _host(origin))
    assert caught.value.code == "checksum-mismatch"


def test_unknown_media_types_are_fetched_by_digest(origin: Origin, session: requests.Session) -> None:
    ollama_kind = {**_layer(b"n"), "mediaType": "application/vnd.ollama.image.newthing"}
    ref = _serve(origin, _manifest(_layer(b"x"), ollama_kind))
    fs = oci.resolve(ref, session, _host(origin))
    hx, hn = hashlib.sha256(b"x").hexdigest(), hashlib.sha256(b"n").hexdigest()
    assert [(f.path, f.role) for f in fs.files] == [(f"layer-{hx[:12]}", "layer"), (f"newthing-{hn[:12]}", "newthing")]
    assert fs.files[0].url == f"http://{_host(origin)[0]}/v2/team/model/blobs/sha256:{hx}"


@pytest.mark.parametrize("status", [408, 429, 500, 503, 599])
def test_server_errors_are_retryable(origin: Origin, session: requests.Session, status: int) -> None:
    """A timeout, a rate limit or a server error is the registry's passing trouble:
    the resolve is tried again (after its Retry-After) rather than failed for good."""
    ref = _serve(origin, _manifest(), statuses=[(status, {"Retry-After": "2"})])
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, _host(origin))
    assert caught.value.code == "http-status" and caught.value.retryable and caught.value.retry_after == 2
    assert caught.value.context["http_status"] == status
    assert oci.resolve(ref, session, _host(origin)).provider == "oci"  # the next answer is the manifest


def test_a_stalled_or_absent_registry_is_a_network_failure(origin: Origin, session: requests.Session) -> None:
    ref = _serve(origin, _manifest(), stall_after=0)  # the headers, then nothing
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, _host(origin), connect_timeout=2, read_timeout=0.3)
    assert caught.value.code == "network" and caught.value.retryable and "team/model:v1" in caught.value.message
    gone = oci.parse(f"oci://127.0.0.1:{closed_port()}/team/model:v1")
    with pytest.raises(TransferError) as caught:
        oci.resolve(gone, session, (gone.host,), connect_timeout=2)
    assert caught.value.code == "connection-refused" and caught.value.retryable


def test_a_bearer_challenge_without_a_realm(origin: Origin, session: requests.Session) -> None:
    ref = _serve(origin, _manifest(), statuses=[(401, {"WWW-Authenticate": 'Bearer service="x"'})])
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, _host(origin))
    assert caught.value.code == "registry-auth" and "no realm" in caught.value.message


def test_challenges_are_read() -> None:
    assert registry_auth.parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull"') == (
        "bearer", {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a/b:pull"})
    assert registry_auth.parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})
    assert registry_auth.parse_challenge("Negotiate abc") is None

