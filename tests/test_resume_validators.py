"""A resume never glues two versions of a file, even behind an origin that ignores
``If-Range``: the validators of every answer that continues a ``.part`` are compared
with those recorded for its bytes.

Against the threaded origin of :mod:`tests.support.origin` (which can ignore ``If-Range``,
leave validators off its ranges and change the file at the moment it drops a
connection), and against a real nginx where one is installed. No request carries a
``sha256`` unless a test says so: only the validators stand between the two versions.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from arw_models import ArwModels
from arw_models.engine.headers import same_version

from .support import debian
from .support.app import Service, Watch, post_download
from .support.helpers import (
    listing,
    models_dir,
    part,
    read,
    sidecar,
    write_partial,
)
from .support.nginx import Nginx
from .support.origin import Origin, Resource, payload

MiB = 1024 * 1024
KiB = 1024
OLD_LM = "Wed, 25 Nov 2026 10:00:00 GMT"
NEW_LM = "Thu, 26 Nov 2026 10:00:00 GMT"


def installed(app: Any, name: str) -> bytes:
    return read(os.path.join(models_dir(app), name))


def retry_codes(watch: Watch, model_id: str) -> list[str]:
    return [p["code"] for p in watch.payloads(model_id) if p["status"] == "retrying"]


def interrupted(make_app: Callable[..., Any], origin: Origin, path: str, res: Resource, cut: int) -> None:
    """A first service that fetched ``cut`` bytes of ``path`` and then stopped, as a
    ``kill -9`` would leave it: the ``.part`` and its sidecar with the old validators."""
    app = make_app(ARW_DL_PROGRESS_INTERVAL_MS=0, ARW_DL_IDLE_TIMEOUT_SECS=30)
    watch = Watch(app)
    try:
        post_download(app.test_client(), "m", origin.url(path))
        assert res.stalled.wait(5)
        watch.until(lambda e: e.payload.get("id") == "m" and e.payload.get("downloaded") == cut)
    finally:
        watch.close()
        app.extensions["arw_models"].shutdown()  # releases the state directory
        res.release.set()
    assert read(part(app, "m")) == res.data[:cut]


# -- the validators of one answer -----------------------------------------------------


@pytest.mark.parametrize(
    ("etag", "modified", "headers", "expected"),
    [
        ('"v1"', OLD_LM, {"ETag": '"v1"', "Last-Modified": OLD_LM}, True),
        ('"v1"', OLD_LM, {"ETag": '"v2"', "Last-Modified": OLD_LM}, False),  # the ETag decides
        ('"v1"', None, {"ETag": 'W/"v1"'}, False),  # a weak ETag is not the strong one
        ('"v1"', OLD_LM, {"Last-Modified": OLD_LM}, True),  # no ETag on the range: Last-Modified decides
        ('"v1"', OLD_LM, {"Last-Modified": NEW_LM}, False),
        ('"v1"', None, {"Last-Modified": OLD_LM}, None),  # nothing recorded to compare it with
        ('"v1"', OLD_LM, {}, None),
        (None, OLD_LM, {"ETag": '"v2"', "Last-Modified": OLD_LM}, True),  # Last-Modified was the validator
        (None, OLD_LM, {"ETag": '"v2"', "Last-Modified": NEW_LM}, False),
        ('W/"v1"', OLD_LM, {"ETag": 'W/"v2"', "Last-Modified": OLD_LM}, True),  # a weak one was never recorded
        (None, None, {"ETag": '"v1"', "Last-Modified": OLD_LM}, None),
    ],
)
def test_same_version_compares_the_validator_of_the_bytes_on_disk(
    etag: str | None, modified: str | None, headers: dict[str, str], expected: bool | None
) -> None:
    assert same_version(etag, modified, requests.structures.CaseInsensitiveDict(headers)) is expected


# -- a new version between an interruption and the resume ------------------------------


@pytest.mark.parametrize(
    ("validator", "new_size"),
    [("etag", MiB), ("etag", MiB + 100 * KiB), ("etag", 700 * KiB), ("last_modified", MiB)],
    ids=["same-size", "longer", "shorter", "last-modified-only"],
)
def test_a_new_version_behind_an_origin_that_ignores_if_range_is_never_glued(
    make_app: Callable[..., Any], origin: Origin, validator: str, new_size: int
) -> None:
    old, new = payload(MiB, seed=61), payload(new_size, seed=62)
    cut = 192 * KiB + 3
    etag = None if validator == "etag" else ""  # "": the origin sends no ETag at all
    res = origin.add("/v.gguf", old, etag=etag, stall_after=cut, ignore_if_range=True)
    old_validator = res.etag if validator == "etag" else res.last_modified
    interrupted(make_app, origin, "/v.gguf", res, cut)
    with origin.lock:
        res.replace(new)  # a new upload under the same key
        if validator == "last_modified":
            res.etag = ""
    app = make_app()
    with open(sidecar(app, "m")) as fh:
        assert json.load(fh)[validator] == old_validator
    watch = Watch(app)
    try:
        client = app.test_client()
        assert post_download(client, "m", origin.url("/v.gguf")).status_code == 202
        done = watch.terminal("m")
    finally:
        watch.close()
    assert done["status"] == "complete" and done["sha256"] == hashlib.sha256(new).hexdigest()
    assert installed(app, "v.gguf") == new
    seen = origin.requests_for("/v.gguf")[1:]  # after the interrupted first request
    # The origin answered the range of the new version (If-Range ignored); the service
    # dropped its bytes and fetched the new version from byte 0.
    assert [(s.range, s.headers.get("if-range"), s.status) for s in seen] == [
        (f"bytes={cut}-", old_validator, 206),
        (None, None, 200),
    ]
    assert retry_codes(watch, "m") == ["resume-invalid"]
    assert client.get("/models").json["items"][0]["bytes"] == len(new)


def test_a_file_that_changes_between_two_attempts_of_one_job_is_fetched_again_from_zero(
    service: Service, origin: Origin
) -> None:
    app, client, watch = service()
    old, new = payload(MiB, seed=63), payload(MiB, seed=64)
    new_etag = '"' + hashlib.sha256(new).hexdigest()[:16] + '"'
    cut = 300_001
    # Every response is cut at `cut` bytes, three times: the first (old version), the
    # refused range, and the first of the new version; the new version's file changes at the first cut.
    res = origin.add("/j.gguf", old, drop_after=cut, drops=3, ignore_if_range=True,
                     on_drop=lambda r: r.replace(new))
    old_etag = res.etag
    post_download(client, "j", origin.url("/j.gguf"))
    done = watch.terminal("j")
    assert done["status"] == "complete" and installed(app, "j.gguf") == new
    seen = origin.requests_for("/j.gguf")
    assert [(s.range, s.headers.get("if-range"), s.status) for s in seen] == [
        (None, None, 200),  # the old version, cut; then the file changes
        (f"bytes={cut}-", old_etag, 206),  # a range of the new version: refused
        (None, None, 200),  # the new version from byte 0, cut again
        (f"bytes={cut}-", new_etag, 206),  # resumed: the validator is now the new version's
    ]
    assert retry_codes(watch, "j")[1] == "resume-invalid"


def test_an_origin_whose_file_changes_at_every_drop_ends_in_resume_invalid(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_RETRIES=1)
    versions = iter(payload(MiB, seed=65 + n) for n in range(100))
    origin.add("/c.gguf", next(versions), drop_after=200_000, drops=100, ignore_if_range=True,
                     on_drop=lambda r: r.replace(next(versions)))
    post_download(client, "c", origin.url("/c.gguf"))
    err = watch.terminal("c")
    assert err["status"] == "error" and err["code"] == "resume-invalid"
    assert [s.status for s in origin.requests_for("/c.gguf")] == [200, 206]
    assert client.get("/models").json["items"] == [] and "c.gguf" not in listing(app)
    assert read(part(app, "c")) == b""  # the bytes of the old version are gone, none glued


# -- ranges without validators, and a 416 of another version ---------------------------


@pytest.mark.parametrize("with_sha", [True, False], ids=["sha256", "no-sha256"])
def test_a_range_without_validators_is_trusted_only_when_a_sha256_will_check_it(
    service: Service, origin: Origin, with_sha: bool
) -> None:
    """An origin that leaves ETag and Last-Modified off its 206 answers (as some do)
    gives no proof that a range is of the version on disk."""
    app, client, watch = service()
    res = origin.add("/n.gguf", payload(MiB, seed=70), range_validators=False)
    have = 400_000
    write_partial(app, "n", res.data[:have], {"url": origin.url("/n.gguf"), "etag": res.etag,
                                              "last_modified": res.last_modified, "total": len(res.data)})
    post_download(client, "n", origin.url("/n.gguf"), **({"sha256": res.sha256} if with_sha else {}))
    assert watch.terminal("n")["status"] == "complete"
    assert installed(app, "n.gguf") == res.data
    seen = [(s.range, s.status) for s in origin.requests_for("/n.gguf")]
    if with_sha:
        assert seen == [(f"bytes={have}-", 206)]
        assert retry_codes(watch, "n") == []
    else:
        assert seen == [(f"bytes={have}-", 206), (None, 200)]
        assert retry_codes(watch, "n") == ["resume-invalid"]


def test_a_416_of_another_version_is_not_taken_for_a_whole_part(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    old, new = payload(MiB, seed=71), payload(MiB, seed=72)
    res = origin.add("/w.gguf", new)
    old_etag = '"' + hashlib.sha256(old).hexdigest()[:16] + '"'
    res.statuses.append((416, {"Content-Range": f"bytes */{len(new)}", "ETag": res.etag}))
    write_partial(app, "w", old, {"url": origin.url("/w.gguf"), "etag": old_etag, "total": len(old)})
    post_download(client, "w", origin.url("/w.gguf"))
    assert watch.terminal("w")["status"] == "complete"
    assert installed(app, "w.gguf") == new
    assert [(s.range, s.status) for s in origin.requests_for("/w.gguf")] == [(f"bytes={len(old)}-", 416),
                                                                            (None, 200)]
    # Refused on its own validator: the check after the last byte is only of the new file's.
    assert [s.headers.get("if-match") for s in origin.rechecks("/w.gguf")] == [res.etag]


# -- a real server: nginx ---------------------------------------------------------------


@pytest.fixture
def nginx(tmp_path: Any) -> Iterator[Nginx]:
    server = Nginx(debian.binary("nginx-light", "nginx", "/usr/sbin/nginx"), str(tmp_path / "nginx"))
    yield server
    server.close()


def test_nginx_resumes_the_same_file_and_sends_a_new_one_whole(service: Service, nginx: Nginx) -> None:
    app, client, watch = service()
    path = os.path.join(nginx.root, "n.bin")
    old, new = payload(MiB, seed=73), payload(MiB, seed=74)
    with open(path, "wb") as fh:
        fh.write(old)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    head = requests.head(nginx.url("n.bin"), timeout=5)
    etag, modified = head.headers["ETag"], head.headers["Last-Modified"]
    have = 300_000

    # The same file: nginx honours If-Range with the recorded ETag, and the rest is appended.
    write_partial(app, "same", old[:have], {"url": nginx.url("n.bin"), "etag": etag, "last_modified": modified,
                                            "total": len(old)})
    post_download(client, "same", nginx.url("n.bin"))
    assert watch.terminal("same")["status"] == "complete"
    assert installed(app, "n.bin") == old

    # A new version of the same size (nginx's ETag is mtime and size): If-Range no
    # longer matches, nginx sends the whole new file, and nothing old is kept.
    with open(path, "wb") as fh:
        fh.write(new)
    os.utime(path, (1_700_000_100, 1_700_000_100))
    write_partial(app, "changed", old[:have], {"url": nginx.url("n.bin"), "etag": etag, "last_modified": modified,
                                               "total": len(old)})
    post_download(client, "changed", nginx.url("n.bin"))
    assert watch.terminal("changed")["status"] == "complete"
    models = {m["id"]: m for m in client.get("/models").json["items"]}
    assert read(models["changed"]["path"]) == new
    # After each download, one byte with If-Match: is the file still that version?
    assert nginx.log()[1:] == [f'206 "bytes={have}-" "{etag}"', '206 "bytes=0-0" ""',
                               f'200 "bytes={have}-" "{etag}"', '206 "bytes=0-0" ""']


def test_nginx_416_with_a_body_for_a_whole_part_adds_nothing_to_it(service: Service, nginx: Nginx) -> None:
    """nginx (as Apache) sends an HTML page with its 416: for a ``.part`` that is
    already whole, that body is no part of the file."""
    app, client, watch = service()
    path = os.path.join(nginx.root, "w.bin")
    data = payload(300_000, seed=75)
    with open(path, "wb") as fh:
        fh.write(data)
    head = requests.head(nginx.url("w.bin"), timeout=5)
    etag, modified = head.headers["ETag"], head.headers["Last-Modified"]
    answer = requests.get(nginx.url("w.bin"), headers={"Range": f"bytes={len(data)}-"}, timeout=5)
    assert answer.status_code == 416 and answer.content  # what makes this case: a body
    write_partial(app, "w", data, {"url": nginx.url("w.bin"), "etag": etag, "last_modified": modified,
                                   "total": len(data)})
    post_download(client, "w", nginx.url("w.bin"))
    done = watch.terminal("w")
    assert done["status"] == "complete" and done["bytes"] == len(data)
    assert installed(app, "w.bin") == data
    assert nginx.log()[-2:] == [f'416 "bytes={len(data)}-" "{etag}"', '206 "bytes=0-0" ""']


@pytest.mark.parametrize("new_size", [MiB, 700 * KiB], ids=["same-size", "shorter"])
def test_file_replaced_between_attempts_gives_the_new_file(service: Service, origin: Origin, new_size: int) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=0.3)
    old, new = payload(MiB, seed=21), payload(new_size, seed=22)
    cut = 300_000
    res = origin.add("/v.gguf", old, stall_after=cut)
    old_etag = res.etag
    post_download(client, "v", origin.url("/v.gguf"))  # no sha256: only If-Range protects
    assert res.stalled.wait(5)
    with origin.lock:
        res.replace(new)
    done = watch.terminal("v")
    res.release.set()
    assert done["status"] == "complete" and done["bytes"] == len(new)
    assert done["sha256"] == hashlib.sha256(new).hexdigest()
    assert read(os.path.join(models_dir(app), "v.gguf")) == new
    seen = origin.requests_for("/v.gguf")
    assert len(seen) == 2
    assert seen[1].range == f"bytes={cut}-" and seen[1].headers["if-range"] == old_etag
    assert seen[1].status == 200  # the validator no longer matched: the whole new file


@pytest.mark.parametrize("validator", ["etag", "last_modified"])
def test_leftover_part_of_an_old_version_is_not_glued(service: Service, origin: Origin, validator: str) -> None:
    app, client, watch = service()
    old, new = payload(MiB, seed=23), payload(MiB, seed=24)
    res = origin.add("/w.gguf", old)
    old_validators = {"etag": res.etag, "last_modified": res.last_modified}
    res.replace(new)
    have = 400_000
    write_partial(app, "w", old[:have], {"url": origin.url("/w.gguf"), validator: old_validators[validator],
                                         "total": len(old)})
    post_download(client, "w", origin.url("/w.gguf"))
    assert watch.terminal("w")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "w.gguf")) == new
    seen = origin.requests_for("/w.gguf")
    assert len(seen) == 1
    assert seen[0].range == f"bytes={have}-" and seen[0].headers["if-range"] == old_validators[validator]
    assert seen[0].status == 200


def test_another_url_for_the_same_id_starts_afresh(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    old = origin.add("/old/m.gguf", payload(MiB, seed=37))
    new = origin.add("/new/m.gguf", payload(MiB, seed=38), etag=old.etag)  # even the same validator
    write_partial(app, "m", old.data[:500_000], {"url": origin.url("/old/m.gguf"), "etag": old.etag,
                                                 "total": len(old.data)})
    r = post_download(client, "m", origin.url("/new/m.gguf"))
    assert r.status_code == 202 and r.json["status"] == "started"
    assert watch.terminal("m")["status"] == "complete"
    seen = origin.requests_for("/new/m.gguf")
    assert [(s.range, s.headers.get("if-range"), s.status) for s in seen] == [(None, None, 200)]
    assert origin.requests_for("/old/m.gguf") == []
    assert read(os.path.join(models_dir(app), "m.gguf")) == new.data


def test_part_without_validator_or_sha256_is_not_resumed(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    res = origin.add("/nv.gguf", payload(MiB, seed=39), etag='W/"weak"', last_modified=None)
    write_partial(app, "nv", b"\0" * 1000, {"url": origin.url("/nv.gguf"), "etag": 'W/"weak"'})
    assert post_download(client, "nv", origin.url("/nv.gguf")).json["status"] == "started"  # not "resumed"
    assert watch.terminal("nv")["status"] == "complete"
    assert [s.range for s in origin.requests_for("/nv.gguf")] == [None]
    assert read(os.path.join(models_dir(app), "nv.gguf")) == res.data


def test_a_200_that_fails_before_its_first_byte_leaves_no_old_bytes_under_the_new_validator(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a 200 (a new version) has been accepted, the sidecar
    names the new ETag; the old version's bytes must be gone by then, or a later resume
    glues them to the new file."""
    app, client, watch = service()
    old, new = payload(MiB, seed=45), payload(MiB, seed=46)
    res = origin.add("/v.gguf", old)
    old_etag = res.etag
    res.replace(new)
    have = 200_000
    url = origin.url("/v.gguf")
    write_partial(app, "v", old[:have], {"url": url, "etag": old_etag, "total": len(old)})

    def refuse(path: str, append: bool) -> Any:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(ArwModels.state(app).manager, "open_part", refuse)
    post_download(client, "v", url)
    assert watch.terminal("v")["code"] == "disk-error"
    monkeypatch.undo()
    post_download(client, "v", url)  # no sha256: only the validator protects
    assert watch.terminal("v")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "v.gguf")) == new
