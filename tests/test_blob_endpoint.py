"""``GET /blobs/sha256/<digest>``: a store blob, read-only, with the conditional and
ranged answers peers rely on; nothing else of the state directory (no ``.part``, no
link, no name made up by a client), no gated download's bytes unless the operator
allows it, the admin token when one is set, and nothing at all with
``ARW_SERVE_BLOBS=0``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import warnings
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from arw_models.service import install
from arw_models.store.storage import StateDir

from .support.app import Service
from .support.origin import Origin, payload
from .test_openapi import Contract

KiB = 1024
DATA = payload(300 * KiB + 7, seed=811)
DIGEST = hashlib.sha256(DATA).hexdigest()


def installed(service: Service, origin: Origin, headers: dict[str, str] | None = None, **config: Any,
              ) -> tuple[Any, Any]:
    """A service that has installed DATA (downloaded with ``headers``, if any)."""
    origin.add("/m/blob.gguf", DATA)
    app, client, watch = service(**config)
    extra = {"headers": headers} if headers else {}
    auth = {"Authorization": f"Bearer {config['ARW_ADMIN_TOKEN']}"} if "ARW_ADMIN_TOKEN" in config else {}
    assert client.post("/models/download", json={"id": "b", "url": origin.url("/m/blob.gguf"), **extra},
                       headers=auth).status_code == 202
    assert watch.terminal("b")["status"] == "complete"
    return app, client


def blob_path(app: Any, digest: str = DIGEST) -> str:
    return os.path.join(StateDir(app.config["ARW_STATE_DIR"]).blobs_dir, digest)


def manifest_of(app: Any) -> dict[str, Any]:
    with open(os.path.join(StateDir(app.config["ARW_STATE_DIR"]).manifests_dir, "b.json")) as fh:
        return dict(json.load(fh))


def problem_code(response: Any) -> str:
    assert response.mimetype == "application/problem+json", response.data[:200]
    return str(json.loads(response.data)["code"])


def test_a_blob_is_served_whole_with_its_digest_as_etag(service: Service, origin: Origin) -> None:
    _app, client = installed(service, origin)
    got = client.get(f"/blobs/sha256/{DIGEST}")
    assert got.status_code == 200
    assert got.data == DATA
    assert got.headers["ETag"] == f'"{DIGEST}"'
    assert got.headers["Content-Length"] == str(len(DATA))
    assert got.headers["Accept-Ranges"] == "bytes"
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert got.headers["Repr-Digest"] == f"sha-256=:{base64.b64encode(bytes.fromhex(DIGEST)).decode()}:"
    # Not for a shared cache (the token may guard it), and no proxy may change the bytes the digest names.
    assert got.headers["Cache-Control"] == "private, no-transform"
    Contract(client.get("/openapi.json").json).check("/blobs/sha256/{digest}", "get", got)


def test_head_gives_the_size_and_no_body(service: Service, origin: Origin) -> None:
    _app, client = installed(service, origin)
    head = client.head(f"/blobs/sha256/{DIGEST}")
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Length"] == str(len(DATA))
    assert head.headers["ETag"] == f'"{DIGEST}"'


def test_a_range_and_if_range(service: Service, origin: Origin) -> None:
    _app, client = installed(service, origin)
    url = f"/blobs/sha256/{DIGEST}"
    part = client.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.data == DATA[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(DATA)}"
    tail = client.get(url, headers={"Range": "bytes=300000-"})
    assert tail.status_code == 206 and tail.data == DATA[300000:]
    # If-Range with this blob's validator: the range; with another one: the whole file.
    same = client.get(url, headers={"Range": "bytes=10-19", "If-Range": f'"{DIGEST}"'})
    assert same.status_code == 206 and same.data == DATA[10:20]
    other = client.get(url, headers={"Range": "bytes=10-19", "If-Range": '"someone-elses"'})
    assert other.status_code == 200 and other.data == DATA
    beyond = client.get(url, headers={"Range": f"bytes={len(DATA)}-"})
    assert beyond.status_code == 416 and problem_code(beyond) == "range-not-satisfiable"
    assert beyond.headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_if_none_match_gives_304(service: Service, origin: Origin) -> None:
    _app, client = installed(service, origin)
    url = f"/blobs/sha256/{DIGEST}"
    unchanged = client.get(url, headers={"If-None-Match": f'"{DIGEST}"'})
    assert unchanged.status_code == 304 and unchanged.data == b""
    assert unchanged.headers["ETag"] == f'"{DIGEST}"'
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_the_blobs_time_answers_if_modified_since_and_if_range(service: Service, origin: Origin) -> None:
    """The answer carries the blob's time as ``Last-Modified``: a client that kept
    the bytes revalidates by date (304), and a range asked ``If-Range`` that date
    is served as a range."""
    app, client = installed(service, origin)
    url = f"/blobs/sha256/{DIGEST}"
    when = client.get(url).headers["Last-Modified"]
    assert parsedate_to_datetime(when).timestamp() == int(os.stat(blob_path(app)).st_mtime)
    assert client.get(url, headers={"If-Modified-Since": when}).status_code == 304
    part = client.get(url, headers={"Range": "bytes=10-19", "If-Range": when})
    assert part.status_code == 206 and part.data == DATA[10:20]


@pytest.mark.parametrize("ask", ["gated", "beyond the end"])
def test_a_blob_refused_leaves_no_descriptor_open(service: Service, origin: Origin, ask: str) -> None:
    """The blob is opened before a gated one is withheld or a range found beyond its
    end: a peer asking again and again must not leave the service a descriptor more
    each time, nor one left for the garbage collector to close (which Python warns of)."""
    gated = ask == "gated"
    _app, client = installed(service, origin, **({"headers": {"Authorization": "Bearer gated-origin"}}
                                                   if gated else {}))
    headers = {} if gated else {"Range": f"bytes={len(DATA)}-"}
    client.get(f"/blobs/sha256/{DIGEST}", headers=headers)  # anything opened once and kept is open now
    before = len(os.listdir("/proc/self/fd"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(5):
            assert client.get(f"/blobs/sha256/{DIGEST}", headers=headers).status_code == (404 if gated else 416)
    assert len(os.listdir("/proc/self/fd")) == before
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("digest", [
    "0" * 64,  # well formed, not held
    DIGEST.upper(),  # a digest is lower-case hex
    DIGEST[:63],
    DIGEST + "0",
    "..",
    "%2e%2e",
    "..%2f..%2fregistry.json",
    f"{DIGEST}.part",
    "not-a-digest",
])
def test_unknown_or_malformed_is_a_404_problem(service: Service, origin: Origin, digest: str) -> None:
    _app, client = installed(service, origin)
    got = client.get(f"/blobs/sha256/{digest}")
    assert got.status_code == 404
    assert got.mimetype == "application/problem+json"
    assert DATA[:64] not in got.data


def test_no_path_leaves_the_blobs(service: Service, origin: Origin) -> None:
    app, client = installed(service, origin)
    state = StateDir(app.config["ARW_STATE_DIR"])
    # A .part named like a digest, and a link named like one to a file outside the store.
    part_digest = hashlib.sha256(b"partial").hexdigest()
    with open(state.part_path("x"), "wb") as fh:
        fh.write(b"partial")
    secret = os.path.join(app.config["ARW_STATE_DIR"], "secret")
    with open(secret, "wb") as fh:
        fh.write(b"secret bytes")
    linked = hashlib.sha256(b"secret bytes").hexdigest()
    os.symlink(secret, blob_path(app, linked))
    for digest in (part_digest, linked):
        got = client.get(f"/blobs/sha256/{digest}")
        assert got.status_code == 404 and problem_code(got) == "unknown-blob"
    for path in ("/blobs/sha256/../registry.json", "/blobs/sha256/%2e%2e/registry.json",
                 "/blobs/sha256/..%2f..%2fsecret", "/blobs/../secret"):
        got = client.get(path)
        assert got.status_code == 404 and b"secret bytes" not in got.data, path


def test_the_admin_token_is_needed_when_set(service: Service, origin: Origin) -> None:
    _app, client = installed(service, origin, ARW_ADMIN_TOKEN="s3cret")
    url = f"/blobs/sha256/{DIGEST}"
    missing = client.get(url)
    assert missing.status_code == 401 and problem_code(missing) == "missing-token"
    assert client.head(url).status_code == 401
    wrong = client.get(url, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and problem_code(wrong) == "invalid-token"
    # An unknown digest asks for the token first: what the store holds is not told without it.
    assert client.get("/blobs/sha256/" + "0" * 64).status_code == 401
    got = client.get(url, headers={"Authorization": "Bearer s3cret"})
    assert got.status_code == 200 and got.data == DATA
    assert client.get(url, headers={"X-ARW-Admin": "s3cret"}).status_code == 200


def test_serving_can_be_turned_off(service: Service, origin: Origin) -> None:
    _app, client = installed(service, origin, ARW_SERVE_BLOBS="0")
    got = client.get(f"/blobs/sha256/{DIGEST}")
    assert got.status_code == 404 and problem_code(got) == "blobs-not-served"
    assert client.head(f"/blobs/sha256/{DIGEST}").status_code == 404


def test_a_gated_download_is_not_served_unless_allowed(service: Service, origin: Origin) -> None:
    app, client = installed(service, origin, headers={"Authorization": "Bearer gated-origin"})
    manifest = manifest_of(app)
    assert manifest["gated"] is True
    got = client.get(f"/blobs/sha256/{DIGEST}")
    # Like a blob it does not hold: a peer does not learn that it is here.
    assert got.status_code == 404 and problem_code(got) == "unknown-blob"
    assert os.path.exists(blob_path(app))


def test_a_gated_download_is_served_when_the_operator_allows(service: Service, origin: Origin) -> None:
    _app, client = installed(service, origin, headers={"Authorization": "Bearer gated-origin"},
                             ARW_SERVE_GATED_BLOBS="1")
    got = client.get(f"/blobs/sha256/{DIGEST}")
    assert got.status_code == 200 and got.data == DATA


def test_a_download_without_credentials_is_recorded_as_not_gated(service: Service, origin: Origin) -> None:
    app, _client = installed(service, origin)
    manifest = manifest_of(app)
    assert manifest["gated"] is False


def test_a_manifest_that_does_not_say_counts_as_gated(service: Service, origin: Origin) -> None:
    app, client = installed(service, origin)
    path = os.path.join(StateDir(app.config["ARW_STATE_DIR"]).manifests_dir, "b.json")
    manifest = manifest_of(app)
    del manifest["gated"]  # as written before the key was recorded
    with open(path, "w") as fh:
        json.dump(manifest, fh)
    assert client.get(f"/blobs/sha256/{DIGEST}").status_code == 404


@pytest.mark.parametrize(("url", "headers", "hf_token", "expected"), [
    ("https://o.example/m.gguf", {}, None, False),
    ("https://o.example/m.gguf?download=true", {}, "hf_x", False),  # a hub token goes to hf:// alone
    ("https://o.example/m.gguf", {"Cookie": "c"}, None, True),
    ("https://u:pw@o.example/m.gguf", {}, None, True),
    ("https://o.example/m.gguf?X-Amz-Credential=a&X-Amz-Signature=b", {}, None, True),
    ("https://o.example/m.gguf?se=2026&sig=abc", {}, None, True),
    ("https://o.example/m.gguf?access_token=t", {}, None, True),
    ("https://o.example/m.gguf?token=", {}, None, True),  # a credential's name, even with no value
    ("hf://org/repo/m.gguf", {}, None, False),
    ("hf://org/repo/m.gguf", {}, "hf_x", True),
    ("oci://registry.example/org/model:tag", {"Authorization": "Basic dTpw"}, None, True),
])
def test_what_counts_as_gated(url: str, headers: dict[str, str], hf_token: str | None, expected: bool) -> None:
    assert install.gated(url, headers, hf_token) is expected


def test_a_download_from_a_signed_url_is_gated(service: Service, origin: Origin) -> None:
    origin.add("/m/blob.gguf", DATA)
    app, client, watch = service()
    assert client.post("/models/download", json={
        "id": "b", "url": origin.url("/m/blob.gguf") + "?X-Amz-Signature=abc"}).status_code == 202
    assert watch.terminal("b")["status"] == "complete"
    assert manifest_of(app)["gated"] is True
    assert client.get(f"/blobs/sha256/{DIGEST}").status_code == 404


def test_a_blob_no_manifest_names_is_withheld(service: Service, origin: Origin) -> None:
    """As between an install's blob and its manifest: whether it was gated is not known yet."""
    app, client = installed(service, origin)
    stray = payload(1000, seed=812)
    digest = hashlib.sha256(stray).hexdigest()
    with open(blob_path(app, digest), "wb") as fh:
        fh.write(stray)
    assert client.get(f"/blobs/sha256/{digest}").status_code == 404
    assert client.get(f"/blobs/sha256/{DIGEST}").status_code == 200
