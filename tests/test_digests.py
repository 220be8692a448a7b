"""Digests the origin publishes: each header form read right, refused when it
does not cover the whole file, and used to verify a download that names none;
a sha256 that differs in its last digit is refused."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from arw_models import ArwModels
from arw_models.engine import digests
from arw_models.errors import JobStopped

from .support.app import Service, post_download
from .support.helpers import (
    listing,
    models_dir,
)
from .support.hub import git_blob_id
from .support.origin import Origin, payload

MiB = 1024 * 1024
DATA = b"the bytes of a model" * 1000
HEX = hashlib.sha256(DATA).hexdigest()
B64 = base64.b64encode(hashlib.sha256(DATA).digest()).decode()
OTHER = hashlib.sha256(b"other bytes").hexdigest()
OTHER_B64 = base64.b64encode(bytes.fromhex(OTHER)).decode()


# -- a small file's git blob id ---------------------------------------------------------------


def test_git_blob_id_is_what_git_says(tmp_path: Path) -> None:
    """A hub lists a small (not LFS) file by its git blob id: the id computed of the
    file on disk must be git's own, for an empty file and one of several reads alike."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    samples = {"empty": b"", "text": b"hello\n", "binary": payload(9 * MiB + 7, seed=5)}
    for name, data in samples.items():
        path = tmp_path / name
        path.write_bytes(data)
        said = subprocess.run([git, "hash-object", str(path)], capture_output=True, text=True, check=True).stdout
        assert digests.git_blob_id(str(path), len(data)) == said.strip() == git_blob_id(data), name


def test_a_stopped_job_ends_the_git_blob_id_read(tmp_path: Path) -> None:
    """A pause or cancel must not wait for a big file to be read to its end: a set
    stop event ends the read with JobStopped; a clear one reads it all."""
    path = tmp_path / "m.bin"
    data = payload(MiB, seed=6)
    path.write_bytes(data)
    stop = threading.Event()
    assert digests.git_blob_id(str(path), len(data), stop) == git_blob_id(data)
    stop.set()
    with pytest.raises(JobStopped):
        digests.git_blob_id(str(path), len(data), stop)


# -- reading one answer's headers ----------------------------------------------------------


@pytest.mark.parametrize("headers, header", [
    ({"X-Linked-Etag": f'"{HEX}"'}, "X-Linked-Etag"),
    ({"X-Linked-Etag": HEX.upper()}, "X-Linked-Etag"),
    ({"Repr-Digest": f"sha-256=:{B64}:"}, "Repr-Digest"),
    ({"Repr-Digest": f"sha-512=:{base64.b64encode(bytes(64)).decode()}:, sha-256=:{B64}:"}, "Repr-Digest"),
    ({"Repr-Digest": f"sha-256=:{B64}:;since=1;by=cdn"}, "Repr-Digest"),  # a member's parameters
    ({"Repr-Digest": f"sha-256=::, sha-256=:{B64}:"}, "Repr-Digest"),  # an empty member, then the real one
    ({"Digest": f"SHA-256={B64}"}, "Digest"),
    ({"Digest": f"md5=AAAAAAAAAAAAAAAAAAAAAA==, sha-256={B64.rstrip('=')}"}, "Digest"),
    ({"x-amz-checksum-sha256": B64}, "x-amz-checksum-sha256"),
    ({"x-amz-checksum-sha256": B64, "x-amz-checksum-type": "FULL_OBJECT"}, "x-amz-checksum-sha256"),
])
def test_each_form_is_read(headers: dict[str, str], header: str) -> None:
    assert digests.published(headers) == (HEX, header)


@pytest.mark.parametrize("headers", [
    {},
    {"X-Linked-Etag": '"' + "a" * 40 + '"'},  # a git blob id, not the file's SHA-256
    {"X-Linked-Etag": f'W/"{HEX}"'},  # weak: names no bytes
    {"X-Linked-Etag": HEX + "0"},
    {"Repr-Digest": f"sha-256={B64}"},  # a byte sequence is written between colons
    {"Repr-Digest": f"sha-512=:{B64}:"},
    {"Repr-Digest": "sha-256=:bm90IGEgZGlnZXN0:"},  # 12 bytes
    {"Digest": f"MD5={B64}"},
    {"Digest": "SHA-256=!!!not base64!!!"},
    {"x-amz-checksum-sha256": f"{B64}-3"},  # a checksum of the parts' checksums
    {"x-amz-checksum-sha256": B64, "x-amz-checksum-type": "COMPOSITE"},
    {"Content-Digest": f"sha-256=:{B64}:"},  # the message's, not the file's: a 206 carries a range's
    # Under a content coding the representation is the coded bytes, not the file.
    {"Repr-Digest": f"sha-256=:{B64}:", "Content-Encoding": "gzip"},
    {"Digest": f"SHA-256={B64}", "Content-Encoding": "br"},
    {"X-Linked-Etag": f'"{HEX}"', "Content-Encoding": "gzip"},
])
def test_what_does_not_state_the_files_digest_is_ignored(headers: dict[str, str]) -> None:
    assert digests.published(headers) is None


class _Answer:
    def __init__(self, headers: dict[str, str], history: list[Any] | None = None) -> None:
        self.headers, self.history = headers, history or []


def test_the_redirect_chain_is_read_and_the_final_answer_comes_first() -> None:
    hub = _Answer({"X-Linked-Etag": f'"{HEX}"', "X-Linked-Size": "20000", "Location": "https://cdn/x"})
    cdn = _Answer({"ETag": '"abc"'}, [hub])
    assert digests.along_chain(cdn) == (HEX, "X-Linked-Etag")
    assert digests.linked_size(cdn) == 20000
    assert digests.along_chain(_Answer({"Digest": f"SHA-256={OTHER_B64}"}, [hub])) == (OTHER, "Digest")
    # A redirect's other digest headers describe the redirect, not the file.
    assert digests.along_chain(_Answer({}, [_Answer({"Repr-Digest": f"sha-256=:{B64}:"})])) is None
    # A coded final answer is not the file the hub's digest describes.
    assert digests.along_chain(_Answer({"Content-Encoding": "gzip"}, [hub])) is None


# -- downloads verified by them ---------------------------------------------------------------


FORMS = {
    "X-Linked-Etag": lambda hexdigest: {"X-Linked-Etag": f'"{hexdigest}"'},
    "Repr-Digest": lambda hexdigest: {"Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(hexdigest)).decode()}:"},
    "Digest": lambda hexdigest: {"Digest": f"SHA-256={base64.b64encode(bytes.fromhex(hexdigest)).decode()}"},
    "x-amz-checksum-sha256": lambda hexdigest: {
        "x-amz-checksum-sha256": base64.b64encode(bytes.fromhex(hexdigest)).decode()},
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_published_digest_verifies_the_download(form: str, client: Any, app: Any, origin: Any,
                                                  watch: Any) -> None:
    data = payload(MiB + 3)
    res = origin.add("/m.gguf", data)
    res.headers = FORMS[form](res.sha256)
    assert post_download(client, "m", origin.url("/m.gguf")).status_code == 202
    done = watch.terminal("m")
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert done["sha256_source"] == "origin"
    [model] = client.get("/models").json["items"]
    assert model["sha256_source"] == "origin"


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_wrong_published_digest_fails_and_installs_nothing(form: str, client: Any, app: Any, origin: Any,
                                                            watch: Any) -> None:
    res = origin.add("/m.gguf", payload(MiB + 3))
    res.headers = FORMS[form](OTHER)
    post_download(client, "m", origin.url("/m.gguf"))
    done = watch.terminal("m")
    assert done["status"] == "error" and done["code"] == "checksum-mismatch"
    assert (done["expected"], done["actual"]) == (OTHER, res.sha256)
    assert done["sha256_source"] == "origin"
    assert client.get("/models").json["items"] == []
    assert listing(app) == []  # no .part, no sidecar, no file


def test_a_request_sha256_that_disagrees_with_the_origins_fails_before_the_body(
        client: Any, app: Any, origin: Any, watch: Any) -> None:
    res = origin.add("/m.gguf", payload(8 * MiB))
    res.headers = FORMS["Repr-Digest"](res.sha256)
    manager = ArwModels.state(app).manager
    opened: list[str] = []
    real_open = manager.open_part
    manager.open_part = lambda path, append: opened.append(path) or real_open(path, append)
    post_download(client, "m", origin.url("/m.gguf"), sha256=OTHER)
    done = watch.terminal("m")
    assert done["status"] == "error" and done["code"] == "checksum-mismatch"
    # Both values are shown: what the request expects and what the origin states.
    assert (done["expected"], done["actual"]) == (OTHER, res.sha256)
    assert opened == []  # the body was never read into a .part
    assert listing(app) == []


def test_without_a_digest_the_source_is_computed(client: Any, app: Any, origin: Any, watch: Any) -> None:
    res = origin.add("/m.gguf", payload(MiB))
    post_download(client, "m", origin.url("/m.gguf"))
    done = watch.terminal("m")
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert done["sha256_source"] == "computed"


def test_a_resume_whose_origin_now_publishes_another_digest_starts_over(
        client: Any, app: Any, origin: Any, watch: Any) -> None:
    """Same ETag, same size, other bytes (an origin that reuses its validators): the
    digest it publishes is what tells the versions apart."""
    old, new = payload(2 * MiB, seed=1), payload(2 * MiB, seed=2)
    res = origin.add("/m.gguf", old, drop_after=MiB, ignore_if_range=True)
    res.headers = FORMS["X-Linked-Etag"](res.sha256)
    etag = res.etag

    def change(resource: Any) -> None:
        resource.replace(new, etag=etag)
        resource.last_modified = None
        resource.headers = FORMS["X-Linked-Etag"](hashlib.sha256(new).hexdigest())

    res.on_drop = change
    post_download(client, "m", origin.url("/m.gguf"))
    done = watch.terminal("m")
    assert done["status"] == "complete" and done["sha256"] == hashlib.sha256(new).hexdigest()
    with open(os.path.join(models_dir(app), "m.gguf"), "rb") as fh:
        assert fh.read() == new
    retried = [p for p in watch.payloads("m") if p["status"] == "retrying"]
    # Why it starts over, said as it happens, with nothing kept: not found later by a
    # .part that came up short.
    [invalid] = [p for p in retried if p["code"] == "resume-invalid"]
    assert "publishes another sha256" in invalid["error"] and invalid["downloaded"] == 0


def test_a_digest_published_before_a_drop_does_not_bind_a_retry_that_keeps_no_bytes(
        client: Any, app: Any, origin: Any, watch: Any) -> None:
    """The digest of an answer whose body never came vouches for no bytes: a retry
    from byte 0 of a file that has changed since (and publishes none now) is held to
    what it serves, not to the old digest."""
    old, new = payload(64 * 1024, seed=8), payload(64 * 1024, seed=9)
    res = origin.add("/m.gguf", old, drop_after=0)
    res.headers = FORMS["X-Linked-Etag"](res.sha256)

    def change(resource: Any) -> None:
        resource.replace(new)
        resource.headers = {}

    res.on_drop = change
    post_download(client, "m", origin.url("/m.gguf"))
    done = watch.terminal("m")
    assert done["status"] == "complete", done
    assert done["sha256"] == hashlib.sha256(new).hexdigest() and done["sha256_source"] == "computed"
    with open(os.path.join(models_dir(app), "m.gguf"), "rb") as fh:
        assert fh.read() == new


def test_a_published_digest_of_an_installed_model_links_it_instead_of_reading_the_body(
        client: Any, app: Any, origin: Any, watch: Any) -> None:
    data = payload(4 * MiB, seed=3)
    first = origin.add("/a/first.gguf", data)
    post_download(client, "first", origin.url("/a/first.gguf"))
    assert watch.terminal("first")["status"] == "complete"
    again = origin.add("/b/second.gguf", data, content_disposition='attachment; filename="named.gguf"')
    again.headers = FORMS["X-Linked-Etag"](first.sha256)
    manager = ArwModels.state(app).manager
    opened: list[str] = []
    real_open = manager.open_part
    manager.open_part = lambda path, append: opened.append(path) or real_open(path, append)
    post_download(client, "second", origin.url("/b/second.gguf"))
    done = watch.terminal("second")
    assert done["status"] == "complete" and done["deduplicated"] is True
    assert done["sha256"] == first.sha256 and done["sha256_source"] == "origin"
    assert done["file"] == "named.gguf"  # the name the answer gave, as for a file it sends
    assert opened == []  # the answer's body was never read
    a, b = (os.stat(os.path.join(models_dir(app), name)) for name in ("first.gguf", "named.gguf"))
    assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)
    assert listing(app) == ["first.gguf", "named.gguf"]


def test_a_mirror_whose_published_digest_disagrees_with_the_request_is_skipped(
        service: Any, origin: Any) -> None:
    from .support.origin import Origin

    data = payload(MiB, seed=5)
    res = origin.add("/m.gguf", data)
    mirror = Origin()
    try:
        relayed = mirror.add("/m.gguf", data)
        relayed.headers = FORMS["Digest"](OTHER)
        app, client, watch = service(ARW_DL_MIRRORS=mirror.base + "{path}")
        opened: list[str] = []
        manager = ArwModels.state(app).manager
        real_open = manager.open_part
        manager.open_part = lambda path, append: opened.append(path) or real_open(path, append)
        post_download(client, "m", origin.url("/m.gguf"), sha256=res.sha256)
        done = watch.terminal("m")
    finally:
        mirror.close()
    assert done["status"] == "complete" and done["sha256_source"] == "request"
    [skipped, served] = done["sources"]
    assert skipped["source"] == mirror.base and skipped["bytes"] == 0 and "skipped" in skipped
    assert served == {"source": "origin", "bytes": len(data)}
    assert len(opened) == 1  # the mirror's body was never written


def test_the_origins_own_published_digest_that_disagrees_fails_even_with_mirrors(
        service: Any, origin: Any) -> None:
    """Mirrors are skipped for what they publish; the origin is the last word."""
    from .support.origin import Origin

    res = origin.add("/m.gguf", payload(MiB, seed=6))
    res.headers = FORMS["Repr-Digest"](OTHER)
    mirror = Origin()  # has no such file: 404, skipped
    try:
        app, client, watch = service(ARW_DL_MIRRORS=mirror.base + "{path}")
        post_download(client, "m", origin.url("/m.gguf"), sha256=res.sha256)
        done = watch.terminal("m")
    finally:
        mirror.close()
    assert done["status"] == "error" and done["code"] == "checksum-mismatch"
    assert (done["expected"], done["actual"]) == (res.sha256, OTHER)
    job = client.get("/models/downloads/m").json
    assert [s["source"] for s in job["sources"]] == [mirror.base, "origin"]
    assert done["sources"] == job["sources"]  # the error event says who served what, too
    assert listing(app) == []


def test_a_size_the_hub_states_that_the_answer_does_not_serve_fails_before_the_body(
        client: Any, app: Any, origin: Any, watch: Any) -> None:
    res = origin.add("/m.gguf", payload(MiB, seed=7))
    res.headers = {**FORMS["X-Linked-Etag"](res.sha256), "X-Linked-Size": str(MiB + 1)}
    post_download(client, "m", origin.url("/m.gguf"))
    done = watch.terminal("m")
    assert done["status"] == "error" and done["code"] == "size-mismatch"
    assert done["expected_bytes"] == MiB + 1
    assert done["received"] == 0  # before the body: none of its bytes was taken
    assert listing(app) == []


def test_a_checksum_that_differs_only_in_its_last_digit_is_refused(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    res = origin.add("/near.gguf", payload(1000, seed=40))
    near = res.sha256[:-1] + ("0" if res.sha256[-1] != "0" else "1")
    post_download(client, "near", origin.url("/near.gguf"), sha256=near)
    err = watch.terminal("near")
    assert err["status"] == "error" and err["code"] == "checksum-mismatch"
    assert err["expected"] == near and err["actual"] == res.sha256
    assert os.listdir(models_dir(app)) == []
