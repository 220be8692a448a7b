"""ollama:// and oci:// references, resolved against real registries (Debian's
docker-registry: one behind a token service whose blob answers redirect to a CDN
host, one behind HTTP Basic; see tests/support/registry.py), each blob then fetched
with the authorizer's headers and checked against its digest."""

from __future__ import annotations

import hashlib
import json
import platform
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
    ("oci://reg.example:1/m", "reg.example:1", "m", "latest", None, "oci"),  # the least port
    ("oci://reg.example:65535/m", "reg.example:65535", "m", "latest", None, "oci"),  # the most
])
def test_parse(url: str, host: str, repository: str, tag: str | None, digest: str | None, provider: str) -> None:
    ref = oci.parse(url)
    assert (ref.host, ref.repository, ref.tag, ref.digest, ref.provider) == (host, repository, tag, digest, provider)
    assert ref.reference == (digest or tag)
    assert oci.names_registry(url) and oci.parse(str(ref)) == ref
    assert hash(oci.parse(str(ref))) == hash(ref)  # a value: the same reference is the same key


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
    ("oci://host:65536/a", "not a registry host"),
    ("oci://host:0/a", "not a registry host"),
    ("oci://ho_st/a", "not a registry host"),
    ("oci://ghcr.io/a?x=1", "no query"),
    ("oci://ghcr.io/a b", "no query"),
    ("oci://ghcr.io/a\x1fb", "no query"),  # a control character
    ("oci://ghcr.io/a\tb", "no query"),
    ("https://ghcr.io/a", "not an ollama:// or oci://"),
    ("oci://ghcr.io/" + "a/" * 127 + "bc", "longer than 255"),
])
def test_parse_refuses(url: str, says: str) -> None:
    with pytest.raises(InvalidReference, match=says):
        oci.parse(url)
    assert not oci.names_registry("hf://a/b/c") and not oci.names_registry("https://x/y")
    assert not oci.names_registry(None)  # type: ignore[arg-type]


def test_a_refused_reference_is_shown_how_its_scheme_is_written() -> None:
    """The message of a refused reference shows the form references of its own
    scheme take: ollama:// and oci:// are written differently."""
    with pytest.raises(InvalidReference, match=r"\(ollama://\[HOST/\]\[NAMESPACE/\]NAME\[:TAG\]\)"):
        oci.parse("ollama://Llama3")
    with pytest.raises(InvalidReference, match=r"\(oci://HOST\[:PORT\]/REPOSITORY\[:TAG\|@sha256:DIGEST\]\)"):
        oci.parse("oci://ghcr.io/Llama3")


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
    before = len(regs.token_server.requests())
    fs = oci.resolve(oci.parse(f"oci://{regs.token.host}/team/indexed:one"), session, insecure(regs))
    assert len(regs.token_server.requests()) == before + 1  # one token for the index and its manifest
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
    assert "answered 404 (not found): no such repository or tag on that registry" in caught.value.message


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
    ({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST}, "the manifest lists no layers"),
    (_manifest("model.gguf"), "layer 1 is not a descriptor"),
    (b"[2]", "not a schema 2 document"),
    ({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []}, "the index lists no manifest"),
])
def test_refused_manifests(origin: Origin, session: requests.Session, document: Any, says: str) -> None:
    ref = _serve(origin, document)
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, _host(origin))
    assert caught.value.code == "invalid-manifest" and says in caught.value.message
    assert "team/model:v1" in caught.value.message


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_manifest_of_four_mib_is_read_and_one_byte_more_is_refused(origin: Origin, session: requests.Session,
                                                                     chunked: bool) -> None:
    """The cap on a manifest is 4 MiB, the least the OCI distribution spec has a registry
    accept: a manifest of exactly that size resolves, a byte more is refused, whether
    its length is announced or it comes in chunks."""
    limit = 4 * 1024 * 1024
    short = json.dumps(_manifest(_layer(b"a", annotations={"pad": ""}))).encode()
    exact = json.dumps(_manifest(_layer(b"a", annotations={"pad": "x" * (limit - len(short))}))).encode()
    assert len(exact) == limit
    ref = _serve(origin, exact, chunked=chunked)
    assert len(oci.resolve(ref, session, _host(origin)).files) == 1
    ref = _serve(origin, short + b" " * (limit + 1 - len(short)), chunked=chunked)  # still JSON, a byte too long
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, _host(origin))
    assert caught.value.code == "invalid-manifest" and "larger than" in caught.value.message


def test_a_manifest_announced_larger_than_four_mib_is_refused_unread(origin: Origin,
                                                                    session: requests.Session) -> None:
    """A Content-Length past the cap is refused at once, before any of the body is
    read (here the length lies: the body is a small manifest, cut short)."""
    ref = _serve(origin, _manifest(_layer(b"a")), announce_length=oci.MAX_MANIFEST_BYTES + 1)
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


@pytest.mark.parametrize("declared", [None, ""])
def test_a_manifest_without_a_media_type_of_its_own_is_typed_by_its_content_type(
        origin: Origin, session: requests.Session, declared: str | None) -> None:
    """A manifest is asked for with the four types this client reads (``Accept``).
    The OCI spec lets one leave out its ``mediaType`` (or older tools left it
    empty): then the Content-Type it is served with, its parameters aside, says
    what it is; a generic one is refused, named."""
    document: dict[str, Any] = {"schemaVersion": 2, "layers": [_layer(b"a", annotations={oci.TITLE: "a.bin"})]}
    if declared is not None:
        document["mediaType"] = declared
    ref = _serve(origin, document, headers={"Content-Type": f"{oci.OCI_MANIFEST}; charset=utf-8"})
    assert [f.path for f in oci.resolve(ref, session, _host(origin)).files] == ["a.bin"]
    asked = origin.requests_for("/v2/team/model/manifests/v1")[0].headers["accept"]
    assert set(asked.split(", ")) == {oci.OCI_MANIFEST, oci.OCI_INDEX, oci.DOCKER_MANIFEST, oci.DOCKER_LIST}
    ref = _serve(origin, document, headers={"Content-Type": "application/json"})
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, _host(origin))
    assert caught.value.code == "invalid-manifest" and "answered a application/json document" in caught.value.message


def test_layers_without_a_usable_title_are_named_by_kind_and_empty_ones_are_files(
        origin: Origin, session: requests.Session) -> None:
    """An empty or non-text title is no title: the layer is named by its kind and
    digest. A layer of no bytes is a file like any other."""
    untitled, odd = _layer(b"u", annotations={oci.TITLE: ""}), _layer(b"o", annotations={oci.TITLE: 7})
    ref = _serve(origin, _manifest(untitled, odd, _layer(b"", annotations={oci.TITLE: "empty.txt"})))
    fs = oci.resolve(ref, session, _host(origin))
    hu, ho = hashlib.sha256(b"u").hexdigest(), hashlib.sha256(b"o").hexdigest()
    assert [(f.path, f.size) for f in fs.files] == [(f"layer-{hu[:12]}", 1), (f"layer-{ho[:12]}", 1), ("empty.txt", 0)]


@pytest.mark.parametrize(("media_type", "data", "kept"), [
    (oci.EMPTY_CONFIG, b"{ }", False),  # typed empty: left out whatever its bytes
    ("application/vnd.docker.container.image.v1+json", b"{}", False),  # two bytes: "{}" whatever its type
    ("application/vnd.example.config+json", b"[1]", True),  # three bytes: kept
])
def test_the_config_goes_with_the_model_unless_it_is_empty(origin: Origin, session: requests.Session,
                                                            media_type: str, data: bytes, kept: bool) -> None:
    """The config blob is the model's ``config.json`` unless it says nothing: typed
    as the OCI empty descriptor, or of two bytes (``{}``) at most."""
    document = {**_manifest(_layer(b"a", annotations={oci.TITLE: "a.bin"})), "config": {**_layer(data),
                                                                                       "mediaType": media_type}}
    fs = oci.resolve(_serve(origin, document), session, _host(origin))
    assert [f.path for f in fs.files] == ["a.bin", *(["config.json"] if kept else [])]


# -- indexes (a local stand-in) ------------------------------------------------------

ATTESTATION = {"annotations": {"vnd.docker.reference.type": "attestation-manifest"}}
UNKNOWN = {"platform": {"os": "unknown", "architecture": "unknown"}}


def _platform(os: str, arch: str) -> dict[str, Any]:
    return {"platform": {"os": os, "architecture": arch}}


def _model(name: str) -> bytes:
    return json.dumps(_manifest(_layer(name.encode(), annotations={oci.TITLE: name}))).encode()


def _entry(origin: Origin, body: bytes, **more: Any) -> dict[str, Any]:
    """An index entry for ``body``, which the stand-in serves under its digest."""
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    origin.add(f"/v2/team/model/manifests/{digest}", body)
    return {"mediaType": json.loads(body)["mediaType"], "digest": digest, "size": len(body), **more}


def _index(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": list(entries)}


@pytest.mark.parametrize(("machine", "marks", "chosen"), [
    ("x86_64", [{}, ATTESTATION, UNKNOWN], 0),  # attestations aside, told by either mark
    ("x86_64", [_platform("linux", "amd64"), {"artifactType": "application/vnd.example.model"},
                _platform("linux", "arm64")], 1),  # the one artifact among images
    ("x86_64", [_platform("linux", "arm64"), _platform("linux", "amd64"), _platform("windows", "amd64")], 1),
    ("aarch64", [_platform("linux", "arm64"), _platform("linux", "amd64"), _platform("windows", "amd64")], 0),
], ids=["attestations", "artifact", "amd64", "arm64"])
def test_an_index_resolves_to_its_one_model(origin: Origin, session: requests.Session,
                                            monkeypatch: pytest.MonkeyPatch, machine: str,
                                            marks: list[dict[str, Any]], chosen: int) -> None:
    """An index resolves to the one entry that is the model: the only one once
    attestations are set aside, else the only artifact, else the only image for
    this machine's platform."""
    monkeypatch.setattr(platform, "machine", lambda: machine)
    entries = [_entry(origin, _model(f"m{i}.bin"), **mark) for i, mark in enumerate(marks)]
    fs = oci.resolve(_serve(origin, _index(*entries)), session, _host(origin))
    assert [f.path for f in fs.files] == [f"m{chosen}.bin"]
    assert fs.revision == entries[chosen]["digest"]


def test_an_index_of_several_models_lists_each_by_what_it_is(origin: Origin, session: requests.Session,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """When no entry is the one model, the message lists each one by its artifact
    type, its platform, or its media type, for the user to pin one by digest."""
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    marks = [{"artifactType": "application/vnd.example.one"}, {"artifactType": "application/vnd.example.two"},
             _platform("linux", "s390x"), {}]
    entries = [_entry(origin, _model(f"m{i}.bin"), **mark) for i, mark in enumerate(marks)]
    with pytest.raises(TransferError) as caught:
        oci.resolve(_serve(origin, _index(*entries)), session, _host(origin))
    message = caught.value.message
    assert caught.value.code == "invalid-manifest" and "the index lists 4 manifests" in message
    kinds = ["application/vnd.example.one", "application/vnd.example.two", "linux/s390x", oci.OCI_MANIFEST]
    for entry, kind in zip(entries, kinds, strict=True):
        assert f"{entry['digest'][:19]}… ({kind})" in message


def test_an_index_entry_is_pinned_by_its_digest_and_names_no_index(origin: Origin, session: requests.Session) -> None:
    """The manifest an index names must have the digest it is named by, and be a
    manifest: an index naming an index is not a model."""
    body = _model("a.bin")
    lie = "sha256:" + hashlib.sha256(body + b" ").hexdigest()
    origin.add(f"/v2/team/model/manifests/{lie}", body)
    ref = _serve(origin, _index({"mediaType": oci.OCI_MANIFEST, "digest": lie, "size": len(body)}))
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, _host(origin))
    assert caught.value.code == "checksum-mismatch" and lie in caught.value.message
    inner = _entry(origin, json.dumps(_index(_entry(origin, body))).encode())
    with pytest.raises(TransferError) as caught:
        oci.resolve(_serve(origin, _index(inner)), session, _host(origin))
    assert caught.value.code == "invalid-manifest" and "the index names another index" in caught.value.message


@pytest.mark.parametrize(("status", "words"), [
    (400, ""), (401, " (unauthorized)"), (403, " (forbidden)"), (404, " (not found)"), (499, ""), (600, "")])
def test_refusals_are_final_and_named_in_words(origin: Origin, session: requests.Session, status: int,
                                               words: str) -> None:
    """A client error is the registry's last word: not tried again, even with a
    Retry-After, and the message gives the status in words where it has some."""
    ref = _serve(origin, _manifest(), statuses=[(status, {"Retry-After": "2"})])
    with pytest.raises(TransferError) as caught:
        oci.resolve(ref, session, _host(origin))
    error = caught.value
    assert error.code == "http-status" and error.context["http_status"] == status
    assert not error.retryable and error.retry_after is None
    assert f"team/model:v1: the manifest: the registry answered {status}{words}" in error.message
    assert ("no such repository or tag" in error.message) == (status == 404)


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

