"""What is tried again and what is not: a dropped connection mended by a Range
request, drops with progress that never run out of retries, failures without
progress that end the job and keep the ``.part``, busy answers with a capped
Retry-After, final statuses, a redirect loop, and the backoff's growth and cap.

Every test runs against the threaded origin of :mod:`tests.support.origin` and
waits on events, never on sleeps or polling."""

from __future__ import annotations

import os
import time

import pytest

from arw_models.engine import backoff_delay

from .support.app import Service, post_download, retrying
from .support.helpers import (
    listing,
    models_dir,
    part,
    read,
    sidecar,
    write_partial,
)
from .support.origin import Origin, payload
from .support.servers import closed_port

MiB = 1024 * 1024
KiB = 1024


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_dropped_connection_is_mended_by_a_range_retry(service: Service, origin: Origin, reset: bool) -> None:
    app, client, watch = service()
    cut = 300_001  # not a multiple of any read size
    res = origin.add("/drop.gguf", payload(MiB + 123), drop_after=cut, drop_reset=reset)
    post_download(client, "drop", origin.url("/drop.gguf"), sha256=res.sha256)
    done = watch.terminal("drop")
    assert done["status"] == "complete" and done["sha256"] == res.sha256 and done["bytes"] == len(res.data)
    assert read(os.path.join(models_dir(app), "drop.gguf")) == res.data
    assert listing(app) == ["drop.gguf"]

    retries = retrying(watch, "drop")
    assert len(retries) == 1 and retries[0]["code"] in ("network", "size-mismatch")
    had = retries[0]["downloaded"]  # exactly what the client had written when the link broke
    if reset:
        # An RST discards what still sat unread in the socket buffer: the client asks
        # for the bytes it has on disk, not for the bytes the origin sent.
        assert 0 <= had <= cut
    else:
        assert had == cut
    seen = origin.requests_for("/drop.gguf")
    assert len(seen) == 2
    assert seen[0].range is None and "if-range" not in seen[0].headers and seen[0].status == 200
    if had:
        assert seen[1].range == f"bytes={had}-" and seen[1].status == 206
        assert seen[1].headers["if-range"] == res.etag
        resumed = next(p for p in watch.payloads("drop") if p["status"] == "resumed")
        assert resumed["offset"] == had
    else:  # (only when the RST came before the client read a single body byte)
        assert seen[1].range is None and seen[1].status == 200


def test_repeated_drops_with_progress_never_run_out_of_retries(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_RETRIES=1)
    step, drops = 100_000, 6
    res = origin.add("/flaky.gguf", payload(MiB, seed=3), drop_after=step, drops=drops)
    post_download(client, "flaky", origin.url("/flaky.gguf"), sha256=res.sha256)
    assert watch.terminal("flaky")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "flaky.gguf")) == res.data
    seen = origin.requests_for("/flaky.gguf")
    assert [s.range for s in seen] == [None] + [f"bytes={k * step}-" for k in range(1, drops + 1)]
    # Every failure came after fresh bytes, so each retry is "the first in a row".
    assert [p["attempt"] for p in retrying(watch, "flaky")] == [1] * drops


def test_failures_without_progress_end_the_job_and_keep_the_part(service: Service, origin: Origin) -> None:
    retries = 2
    app, client, watch = service(ARW_DL_RETRIES=retries, ARW_DL_IDLE_TIMEOUT_SECS=0.3)
    cut = 200_000
    res = origin.add("/busy.gguf", payload(MiB, seed=4), stall_after=cut)
    url = origin.url("/busy.gguf")
    post_download(client, "busy", url, sha256=res.sha256)
    assert res.stalled.wait(5)
    with origin.lock:  # from now on the origin is down: every retry gets a 503
        res.statuses.extend([(503, {"Retry-After": "0"})] * retries)
    err = watch.terminal("busy")
    res.release.set()
    assert err["status"] == "error" and err["code"] == "http-status" and err["http_status"] == 503
    seen = origin.requests_for("/busy.gguf")
    assert [s.status for s in seen] == [200] + [503] * retries
    assert all(s.range == f"bytes={cut}-" for s in seen[1:])
    # The bytes that did arrive are kept for a later resume.
    assert read(part(app, "busy")) == res.data[:cut]
    assert os.path.exists(sidecar(app, "busy"))
    assert not os.path.exists(os.path.join(models_dir(app), "busy.gguf"))
    listed = client.get("/models/downloads").json["items"]
    assert [(i["id"], i["downloaded"], i.get("resumable")) for i in listed] == [("busy", cut, True)]

    again = post_download(client, "busy", url, sha256=res.sha256)
    assert again.status_code == 202 and again.json["status"] == "resumed"
    done = watch.terminal("busy")
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    last = origin.requests_for("/busy.gguf")[-1]
    assert last.range == f"bytes={cut}-" and last.headers["if-range"] == res.etag and last.status == 206
    assert read(os.path.join(models_dir(app), "busy.gguf")) == res.data
    assert listing(app) == ["busy.gguf"]


def test_busy_answers_are_retried_honouring_a_capped_retry_after(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    # 408 and 429 of the 4xx, and every 5xx from 500 to 599, are worth another try.
    early = [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"}), (503, {"Retry-After": "3600"}), (500, {}),
             (408, {}), (599, {})]
    res = origin.add("/busy.gguf", payload(200 * KiB, seed=14), statuses=list(early))
    t0 = time.monotonic()
    post_download(client, "busy", origin.url("/busy.gguf"), sha256=res.sha256)
    assert watch.terminal("busy")["status"] == "complete"
    assert time.monotonic() - t0 < 3  # an hour's Retry-After is capped by ARW_DL_RETRY_BACKOFF_MAX_MS (20 ms)
    assert [s.status for s in origin.requests_for("/busy.gguf")] == [503, 429, 503, 500, 408, 599, 200]
    retries = retrying(watch, "busy")
    assert [r["code"] for r in retries] == ["http-status"] * 6
    assert [r["delay_ms"] for r in retries][:3] == [0, 0, 20]
    assert read(os.path.join(models_dir(app), "busy.gguf")) == res.data


@pytest.mark.parametrize("status", [404, 403, 410, 499, 600])
def test_a_final_http_status_is_not_retried(service: Service, origin: Origin, status: int) -> None:
    app, client, watch = service()
    # The origin would serve the file on a second request: there must be none.
    origin.add("/gone.gguf", payload(1000), statuses=[(status, {})])
    post_download(client, "gone", origin.url("/gone.gguf"))
    err = watch.terminal("gone")
    assert err["status"] == "error" and err["code"] == "http-status" and err["http_status"] == status
    assert len(origin.requests_for("/gone.gguf")) == 1
    assert "retrying" not in watch.statuses("gone")
    assert listing(app) == [] and client.get("/models").json["items"] == []


def test_unknown_path_is_one_request_and_http_status(service: Service, origin: Origin) -> None:
    _, client, watch = service()
    post_download(client, "nope", origin.url("/nope.gguf"))
    err = watch.terminal("nope")
    assert err["code"] == "http-status" and err["http_status"] == 404
    assert [s.status for s in origin.requests_for("/nope.gguf")] == [404]


def test_a_redirect_loop_ends_in_too_many_redirects(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    origin.add("/loop.gguf", payload(10), statuses=[(302, {"Location": "/loop.gguf"})] * 40)
    post_download(client, "loop", origin.url("/loop.gguf"))
    err = watch.terminal("loop")
    assert err["status"] == "error" and err["code"] == "too-many-redirects"
    assert len(origin.requests_for("/loop.gguf")) == 31  # the first and 30 redirects; never retried
    assert listing(app) == []


def test_a_short_body_whose_resumes_bring_nothing_ends_the_job_and_keeps_the_part(
        service: Service, origin: Origin) -> None:
    """Every resume is a 206 without a Content-Length whose body ends, cleanly,
    before its first byte: the retries run out without progress, and the bytes on
    disk stay for a later resume."""
    app, client, watch = service(ARW_DL_RETRIES=2)
    cut = 300_000
    res = origin.add("/short.gguf", payload(MiB, seed=11), send_length=False, range_drop_after=0, range_drops=10)
    url = origin.url("/short.gguf")
    write_partial(app, "short", res.data[:cut], {"url": url, "etag": res.etag, "total": MiB})
    post_download(client, "short", url, sha256=res.sha256)
    err = watch.terminal("short")
    assert err["status"] == "error" and err["code"] == "size-mismatch", err
    assert read(part(app, "short")) == res.data[:cut]
    assert [s.range for s in origin.requests_for("/short.gguf")] == [f"bytes={cut}-"] * 3


def test_a_network_failure_that_ends_the_job_keeps_the_part(service: Service) -> None:
    app, client, watch = service(ARW_DL_RETRIES=1)
    url = f"http://127.0.0.1:{closed_port()}/m.gguf"
    write_partial(app, "m", b"p" * 1000, {"url": url, "etag": '"v1"', "total": 5000})
    post_download(client, "m", url)
    err = watch.terminal("m")
    assert err["status"] == "error" and err["code"] == "connection-refused"
    assert read(part(app, "m")) == b"p" * 1000
    assert os.path.exists(sidecar(app, "m"))
    listed = client.get("/models/downloads").json["items"]
    assert [(i["id"], i["downloaded"], i.get("resumable")) for i in listed] == [("m", 1000, True)]


def test_backoff_grows_and_is_capped() -> None:
    for failures, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (10, 5.0)):
        for _ in range(50):
            delay = backoff_delay(failures, 0.5, 5.0)
            assert ceiling / 2 <= delay <= ceiling
