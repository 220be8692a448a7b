"""Never a file shorter than the origin says it is.

A body that carries no length of its own (ended by closing the connection, or
chunked) looks complete when it is cut. The size the origin states elsewhere holds
it to account: ``X-Linked-Size`` in the answer, or, asked after the last byte, the
size a fresh answer gives (see :mod:`arw_models.engine.recheck`).
"""

from __future__ import annotations

import os

import pytest

from .support.app import Service, post_download
from .support.helpers import (
    listing,
    models_dir,
    read,
)
from .support.origin import Origin, Resource, payload

MiB = 1024 * 1024


def test_a_body_cut_where_it_has_no_length_is_not_installed(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    # No Content-Length: the body ends where the connection closes, the first time halfway.
    res = origin.add("/c.gguf", payload(MiB, seed=95), send_length=False, drop_after=MiB // 2)
    post_download(client, "c", origin.url("/c.gguf"))
    done = watch.terminal("c")
    assert done["status"] == "complete" and done["bytes"] == MiB
    assert read(os.path.join(models_dir(app), "c.gguf")) == res.data
    assert "resume-invalid" in [p["code"] for p in watch.payloads("c") if p["status"] == "retrying"]
    assert [s.status for s in origin.rechecks("/c.gguf")] == [206, 206]  # the short file, then the whole


def test_a_cut_body_is_held_to_the_size_the_origin_states(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    # No validator either (nothing to ask about afterwards), but X-Linked-Size.
    res = origin.add("/l.gguf", payload(MiB, seed=96), send_length=False, drop_after=MiB // 2, etag="",
                     last_modified=None, headers={"X-Linked-Size": str(MiB)})
    post_download(client, "l", origin.url("/l.gguf"))
    done = watch.terminal("l")
    assert done["status"] == "complete" and done["bytes"] == MiB
    assert read(os.path.join(models_dir(app), "l.gguf")) == res.data
    assert "size-mismatch" in [p["code"] for p in watch.payloads("l") if p["status"] == "retrying"]


def test_a_file_shorter_than_its_origin_announced_is_never_installed(service: Service, origin: Origin) -> None:
    """A server that caches a file's metadata (lighttpd's stat cache does, for a
    second) can serve a file being rewritten (``cp`` over it: truncated, then
    written) cut short, under the validators of the whole one, and say the same when
    asked afterwards. The size this job was told before holds it to account."""
    app, client, watch = service(ARW_DL_RETRIES=2, ARW_DL_RETRY_BACKOFF_MS=10, ARW_DL_RETRY_BACKOFF_MAX_MS=50)
    whole = payload(MiB, seed=97)

    def half_written(res: Resource) -> None:
        res.data = whole[: MiB // 4]  # same ETag and Last-Modified: metadata as it was

    res = origin.add("/h.gguf", whole, drop_after=300_000, on_drop=half_written)
    post_download(client, "h", origin.url("/h.gguf"))
    done = watch.terminal("h")
    assert done["status"] == "error" and done["code"] == "resume-invalid", done
    assert f"it has {MiB // 4} bytes now, after {MiB} bytes were announced" in done["error"], done
    assert client.get("/models").json["items"] == []
    assert res.data == whole[: MiB // 4]
    # The bytes it has are of no version: none is kept for a resume to build on.
    assert os.path.getsize(os.path.join(models_dir(app), "h.part")) == 0


def test_a_file_without_validators_that_comes_back_shorter_is_never_installed(
        service: Service, origin: Origin) -> None:
    """With no validator at all, every answer may be the same version: the size the
    first one announced still holds the later ones to account, and a file that comes
    back shorter (being rewritten) is not installed as if it were whole."""
    _app, client, watch = service(ARW_DL_RETRIES=2, ARW_DL_RETRY_BACKOFF_MS=10, ARW_DL_RETRY_BACKOFF_MAX_MS=50)
    whole = payload(MiB, seed=99)

    def half_written(res: Resource) -> None:
        res.data = whole[: MiB // 4]

    origin.add("/n.gguf", whole, drop_after=300_000, on_drop=half_written, etag="", last_modified=None)
    post_download(client, "n", origin.url("/n.gguf"))
    done = watch.terminal("n")
    assert done["status"] == "error" and done["code"] == "resume-invalid", done
    assert f"it has {MiB // 4} bytes now, after {MiB} bytes were announced" in done["error"], done
    assert client.get("/models").json["items"] == []


def test_a_file_emptied_under_a_new_version_is_never_installed(service: Service, origin: Origin) -> None:
    """The file is emptied between two attempts (a truncation, which gives it new
    validators): an empty file is no version of one this job was told has bytes,
    whatever its validators say, so nothing is installed and the error says why."""
    _app, client, watch = service(ARW_DL_RETRIES=2, ARW_DL_RETRY_BACKOFF_MS=10, ARW_DL_RETRY_BACKOFF_MAX_MS=50)

    def emptied(res: Resource) -> None:
        res.data, res.etag = b"", '"emptied"'

    origin.add("/e.gguf", payload(MiB, seed=98), drop_after=300_000, on_drop=emptied)
    post_download(client, "e", origin.url("/e.gguf"))
    done = watch.terminal("e")
    assert done["status"] == "error" and done["code"] == "resume-invalid", done
    assert f"it is empty now, after {MiB} bytes were announced" in done["error"], done
    assert client.get("/models").json["items"] == []


def test_a_check_refused_keeps_the_bytes_for_a_freshly_signed_url(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    # The whole file comes in one answer; the check after it (a range) is refused,
    # as a signed url that expired during a long download would be.
    res = origin.add("/s.gguf", payload(MiB, seed=97), range_status=403)
    post_download(client, "s", origin.url("/s.gguf?sig=1"))
    done = watch.terminal("s")
    assert done["status"] == "error" and done["code"] == "http-status" and done["http_status"] == 403
    assert client.get("/models").json["items"] == []
    res.range_status = None
    post_download(client, "s", origin.url("/s.gguf?sig=2"))
    assert watch.terminal("s")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "s.gguf")) == res.data
    assert origin.bytes_sent("/s.gguf") == MiB  # not one byte fetched twice


@pytest.mark.parametrize("with_sha", [False, True])
def test_lying_content_length_ends_in_size_mismatch(service: Service, origin: Origin, with_sha: bool) -> None:
    app, client, watch = service()
    data = payload(300_000, seed=26)
    res = origin.add("/liar.gguf", data, announce_length=2 * len(data))
    extra = {"sha256": res.sha256} if with_sha else {}
    post_download(client, "liar", origin.url("/liar.gguf"), **extra)
    err = watch.terminal("liar", timeout=5)
    assert err["status"] == "error" and err["code"] == "size-mismatch", err
    assert err["expected_bytes"] == 2 * len(data) and err["received"] == len(data)
    # The short body is retried once; the origin's 416 then says that was all it has.
    seen = origin.requests_for("/liar.gguf")
    assert [(s.range, s.status) for s in seen] == [(None, 200), (f"bytes={len(data)}-", 416)]
    assert client.get("/models").json["items"] == []
    assert listing(app) == []  # no final file, and no .part of a file that cannot be had


def test_lying_content_length_without_ranges_runs_out_of_retries(service: Service, origin: Origin) -> None:
    retries = 3
    app, client, watch = service(ARW_DL_RETRIES=retries)
    data = payload(300_000, seed=26)
    origin.add("/liar.gguf", data, announce_length=2 * len(data), ignore_range=True)
    post_download(client, "liar", origin.url("/liar.gguf"))
    err = watch.terminal("liar", timeout=5)
    assert err["status"] == "error" and err["code"] == "size-mismatch", err
    # The same bytes again are no progress: the retry budget is spent, not renewed.
    assert len(origin.requests_for("/liar.gguf")) == retries + 1
    assert client.get("/models").json["items"] == []
    assert "liar.gguf" not in listing(app)


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_empty_file_is_installed(service: Service, origin: Origin, framing: str) -> None:
    """A file of no bytes, from an origin with validators and no digest: nothing of
    it can be of two versions, and the check after the last byte (a range of it) is
    not asked for; the empty model is installed."""
    app, client, watch = service()
    chunked = framing == "chunked"
    origin.add("/z.gguf", b"", chunked=chunked, send_length=not chunked)
    post_download(client, "z", origin.url("/z.gguf"))
    done = watch.terminal("z")
    assert done["status"] == "complete" and done["bytes"] == 0, done
    assert read(os.path.join(models_dir(app), "z.gguf")) == b""
    assert origin.rechecks("/z.gguf") == []
