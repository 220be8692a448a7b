"""A 206 or a 416 that does not fit the ``.part`` it would continue: a range at the
wrong offset or of another total, one that does not continue the part, a 416 for a
whole part or from an origin whose file shrank. Nothing is glued; what can be mended is."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import responses

from .support.app import Service, Watch, post_download, retrying
from .support.helpers import (
    listing,
    models_dir,
    part,
    read,
    write_partial,
)
from .support.origin import Origin, payload

MiB = 1024 * 1024
KiB = 1024


@pytest.mark.parametrize("shift", [-7, 7])
def test_range_answered_at_the_wrong_offset_is_refused(service: Service, origin: Origin, shift: int) -> None:
    app, client, watch = service()
    res = origin.add("/shift.gguf", payload(MiB, seed=25), range_shift=shift)
    have = 333_333
    write_partial(app, "shift", res.data[:have], {"url": origin.url("/shift.gguf"), "etag": res.etag,
                                                  "total": len(res.data)})
    post_download(client, "shift", origin.url("/shift.gguf"))  # no sha256: a glued file would install
    done = watch.terminal("shift")
    if done["status"] == "complete":
        assert read(os.path.join(models_dir(app), "shift.gguf")) == res.data
        seen = origin.requests_for("/shift.gguf")
        assert [(s.range, s.status) for s in seen] == [(f"bytes={have}-", 206), (None, 200)]
        assert [r["code"] for r in retrying(watch, "shift")] == ["resume-invalid"]
    else:
        assert done["code"] == "resume-invalid"
        assert "shift.gguf" not in listing(app)


def test_wrong_ranges_and_drops_every_time_end_instead_of_looping(service: Service, origin: Origin) -> None:
    retries = 3
    app, client, watch = service(ARW_DL_RETRIES=retries)
    res = origin.add("/bad.gguf", payload(MiB, seed=25), range_shift=-7, drop_after=100_000, drops=1000)
    post_download(client, "bad", origin.url("/bad.gguf"))
    err = watch.terminal("bad", timeout=5)
    assert err["status"] == "error" and err["code"] in ("resume-invalid", "network", "size-mismatch")
    seen = origin.requests_for("/bad.gguf")
    # Each cycle refetches bytes it had already had: no new progress, a bounded number of tries.
    assert len(seen) == retries + 1
    assert all(s.range in (None, "bytes=100000-") for s in seen)
    assert "bad.gguf" not in listing(app) and client.get("/models").json["items"] == []
    if os.path.exists(part(app, "bad")):
        assert res.data.startswith(read(part(app, "bad")))  # never glued


def test_416_for_a_whole_part_goes_straight_to_verification(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    res = origin.add("/whole.gguf", payload(500_000, seed=27))
    write_partial(app, "whole", res.data, {"url": origin.url("/whole.gguf"), "etag": res.etag,
                                          "total": len(res.data)})
    post_download(client, "whole", origin.url("/whole.gguf"), sha256=res.sha256)
    done = watch.terminal("whole")
    assert done["status"] == "complete" and done["sha256"] == res.sha256 and done["bytes"] == len(res.data)
    seen = origin.requests_for("/whole.gguf")
    assert [(s.range, s.status) for s in seen] == [(f"bytes={len(res.data)}-", 416)]
    assert read(os.path.join(models_dir(app), "whole.gguf")) == res.data
    assert listing(app) == ["whole.gguf"]


def test_a_206_whose_total_differs_from_the_sidecar_is_not_glued(service: Service, origin: Origin) -> None:
    """An origin that changed its file but kept the ETag
    answers the Range with a different total; the old bytes must not be glued on."""
    app, client, watch = service()
    old, new = payload(MiB, seed=41), payload(MiB + 4096, seed=42)
    origin.add("/t.gguf", new, etag='"kept"')
    have = 300_000
    write_partial(app, "t", old[:have], {"url": origin.url("/t.gguf"), "etag": '"kept"', "total": len(old)})
    post_download(client, "t", origin.url("/t.gguf"))  # no sha256: only the total check protects
    done = watch.terminal("t")
    assert done["status"] == "complete" and done["bytes"] == len(new)
    assert read(os.path.join(models_dir(app), "t.gguf")) == new
    seen = origin.requests_for("/t.gguf")
    assert [(s.range, s.status) for s in seen] == [(f"bytes={have}-", 206), (None, 200)]
    assert [p["code"] for p in watch.payloads("t") if p["status"] == "retrying"] == ["resume-invalid"]


GOOD_URL = "https://example.invalid/m.gguf"


DATA = bytes(range(250)) * 4  # 1000 bytes, of which a .part holds the first 400


@pytest.mark.parametrize(
    ("answers", "retries", "ranges"),
    [
        # bytes 400-499/1000 does not continue the .part to the end: it is dropped, and
        # the download starts again from 0.
        ([(206, DATA[400:500], "bytes 400-499/1000"), (200, DATA, None)],
         [("resume-invalid", 0)], ["bytes=400-", None, "bytes=0-0"]),
        # A 206 without Content-Range cannot be checked: start again, do not crash.
        ([(206, DATA[400:], None), (200, DATA, None)], [("resume-invalid", 0)], ["bytes=400-", None, "bytes=0-0"]),
        # A body shorter than its Content-Range: keep what came, ask for the rest.
        ([(206, DATA[400:500], "bytes 400-999/1000"), (206, DATA[500:], "bytes 500-999/1000")],
         [("size-mismatch", 500)], ["bytes=400-", "bytes=500-", "bytes=0-0"]),
    ],
    ids=["stops-short", "no-content-range", "short-body"],  # the last request: is the file still that version?
)
@responses.activate
def test_a_206_that_does_not_continue_the_part_is_mended(
    make_app: Callable[..., Any], answers: list[tuple[int, bytes, str | None]],
    retries: list[tuple[str, int]], ranges: list[str | None],
) -> None:
    app = make_app()
    write_partial(app, "m", DATA[:400], {"url": GOOD_URL, "etag": '"v1"', "total": len(DATA)})
    for status, body, content_range in answers:
        headers = {"ETag": '"v1"'} | ({"Content-Range": content_range} if content_range else {})
        responses.get(GOOD_URL, status=status, body=body, headers=headers)
    watch = Watch(app)
    try:
        post_download(app.test_client(), "m", GOOD_URL)
        assert watch.terminal("m")["status"] == "complete"
        seen = [(p["code"], p["downloaded"]) for p in watch.payloads("m") if p["status"] == "retrying"]
        assert seen == retries
        assert [c.request.headers.get("Range") for c in responses.calls] == ranges
        assert read(os.path.join(models_dir(app), "m.gguf")) == DATA
    finally:
        watch.close()


def test_416_without_a_content_range_for_a_whole_part_goes_straight_to_verification(
        service: Service, origin: Origin) -> None:
    """Many origins answer a range past the end with a bare 416: it says nothing of
    the file's size, so the sidecar's total decides, and a .part that long is
    verified and installed without fetching it again."""
    app, client, watch = service()
    res = origin.add("/bare.gguf", payload(300_000, seed=45), range_status=416)
    write_partial(app, "bare", res.data, {"url": origin.url("/bare.gguf"), "etag": res.etag,
                                         "total": len(res.data)})
    post_download(client, "bare", origin.url("/bare.gguf"), sha256=res.sha256)
    done = watch.terminal("bare")
    assert done["status"] == "complete" and done["bytes"] == len(res.data), done
    assert [(s.range, s.status) for s in origin.requests_for("/bare.gguf")] == [(f"bytes={len(res.data)}-", 416)]
    assert read(os.path.join(models_dir(app), "bare.gguf")) == res.data


def test_416_from_an_origin_whose_file_shrank_is_not_taken_as_whole(service: Service, origin: Origin) -> None:
    """The .part is as long as the sidecar's total, but the
    origin's 416 says its file is shorter now; that is not a finished download."""
    app, client, watch = service()
    old, new = payload(500_000, seed=43), payload(300_000, seed=44)
    origin.add("/s.gguf", new, etag='"kept"')
    write_partial(app, "s", old, {"url": origin.url("/s.gguf"), "etag": '"kept"', "total": len(old)})
    post_download(client, "s", origin.url("/s.gguf"))
    done = watch.terminal("s")
    assert done["status"] == "complete" and done["bytes"] == len(new)
    assert read(os.path.join(models_dir(app), "s.gguf")) == new
    assert [(s.range, s.status) for s in origin.requests_for("/s.gguf")] == [(f"bytes={len(old)}-", 416),
                                                                             (None, 200)]
