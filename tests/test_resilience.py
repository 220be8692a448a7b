"""Robustness against a real, misbehaving origin: drops, stalls, busy answers, files
that change or lie, full disks, queues, cancels and restarts.

Every test runs against the threaded origin of :mod:`tests.origin` and waits on
events (hub events, the origin's ``stalled`` event), never on sleeps or polling.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Self

import pytest

import arw_models.engine.http
from arw_models import ArwModels

from .support.app import Service, Watch, post_download
from .support.helpers import (
    cancel,
    listing,
    models_dir,
    part,
    read,
    sidecar,
    write_partial,
)
from .support.origin import Origin, Resource, payload

MiB = 1024 * 1024
KiB = 1024


# -- helpers -------------------------------------------------------------------------


def retrying(watch: Watch, model_id: str) -> list[dict[str, Any]]:
    return [p for p in watch.payloads(model_id) if p["status"] == "retrying"]


class StartWatch(Watch):
    """A :class:`Watch` that also sees what the service published while it started
    (a resume on start may run before anyone could subscribe)."""

    def __init__(self, app: Any) -> None:
        self.hub = ArwModels.state(app).hub
        # The backlog and the live subscription are taken under one lock: no gap.
        self.sub, backlog = self.hub.subscribe((), replay=1_000_000, queue_size=1_000_000)
        self.events = list(backlog)
        self._read = 0


# -- 1. drops mended by Range --------------------------------------------------------


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


# -- 2. the retry budget -----------------------------------------------------------------


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


# -- 3 and 4. stalls -------------------------------------------------------------------


def test_stall_past_the_idle_timeout_is_retried(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=0.3)
    cut = 256 * KiB + 5
    res = origin.add("/stall.gguf", payload(MiB, seed=5), stall_after=cut, stalls=1)
    post_download(client, "stall", origin.url("/stall.gguf"), sha256=res.sha256)
    assert res.stalled.wait(5)
    done = watch.terminal("stall")
    res.release.set()
    assert done["status"] == "complete"
    assert read(os.path.join(models_dir(app), "stall.gguf")) == res.data
    retries = retrying(watch, "stall")
    assert len(retries) == 1 and retries[0]["code"] == "network" and retries[0]["downloaded"] == cut
    seen = origin.requests_for("/stall.gguf")
    assert [(s.range, s.status) for s in seen] == [(None, 200), (f"bytes={cut}-", 206)]


def test_cancel_of_a_stalled_transfer_is_prompt(service: Service, origin: Origin) -> None:
    # A 30 s idle timeout: only the shutdown of the socket can explain a fast cancel.
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/hang.gguf", payload(MiB, seed=6), stall_after=128 * KiB)
    post_download(client, "hang", origin.url("/hang.gguf"))
    assert res.stalled.wait(5)
    t0 = time.monotonic()
    r = cancel(client, "hang")
    answered = time.monotonic() - t0
    event = watch.status("hang", "canceled", "error", "complete", timeout=5)
    elapsed = time.monotonic() - t0
    res.release.set()
    assert r.status_code == 200 and r.json == {"id": "hang", "status": "canceled"}
    assert event["status"] == "canceled"
    assert answered < 2 and elapsed < 2, (answered, elapsed)
    assert listing(app) == []  # .part and sidecar are gone
    assert watch.statuses("hang").count("canceled") == 1
    assert "retrying" not in watch.statuses("hang")
    assert len(origin.requests_for("/hang.gguf")) == 1


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port whose connects hang: its listener never accepts and its backlog is full,
    so the kernel drops further SYNs and the client keeps retrying."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


def test_cancel_during_a_hanging_connect_is_prompt(
    service: Service, black_hole: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A 30 s connect timeout: only the shutdown of the connecting socket explains a fast cancel.
    app, client, watch = service(ARW_DL_CONNECT_TIMEOUT_SECS=30)
    connecting = threading.Event()
    # connect() comes once the socket is the job's.
    monkeypatch.setattr(arw_models.engine.http, "on_hand_over", lambda sock: connecting.set())
    post_download(client, "void", f"http://127.0.0.1:{black_hole}/void.gguf")
    assert connecting.wait(5)
    t0 = time.monotonic()
    r = cancel(client, "void")
    answered = time.monotonic() - t0
    assert r.status_code == 200 and r.json == {"id": "void", "status": "canceled"}
    assert watch.terminal("void")["status"] == "canceled"
    assert answered < 2, answered
    assert watch.statuses("void") == ["canceled"]  # "started" comes with the response headers
    assert listing(app) == []


@pytest.fixture
def mute_server() -> Iterator[socket.socket]:
    """A listener whose connections are accepted by the test and never answered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(5)
    try:
        yield listener
    finally:
        listener.close()


def cancel_while_the_origin_is_mute(client: Any, watch: Watch, listener: socket.socket, model_id: str,
                                    url: str) -> bytes:
    """Starts a download, takes its connection, cancels once its first bytes have
    arrived (the worker now waits for an answer); returns those bytes."""
    post_download(client, model_id, url)
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(5)
        first = conn.recv(4096)
        t0 = time.monotonic()
        r = cancel(client, model_id)
        answered = time.monotonic() - t0
        assert r.status_code == 200 and watch.terminal(model_id)["status"] == "canceled"
        assert answered < 2, answered
    return first


def test_cancel_during_a_tls_handshake_is_prompt(service: Service, mute_server: socket.socket) -> None:
    # The handshake waits under the connect timeout: 30 s, unless the cancel wakes it.
    app, client, watch = service(ARW_DL_CONNECT_TIMEOUT_SECS=30, ARW_DL_IDLE_TIMEOUT_SECS=30)
    port = mute_server.getsockname()[1]
    hello = cancel_while_the_origin_is_mute(client, watch, mute_server, "tls", f"https://127.0.0.1:{port}/t.gguf")
    assert hello[:1] == b"\x16"  # a TLS handshake record: the ClientHello
    assert listing(app) == []


def test_cancel_through_a_proxy_that_never_answers_is_prompt(
    service: Service, mute_server: socket.socket, monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{mute_server.getsockname()[1]}")
    request = cancel_while_the_origin_is_mute(client, watch, mute_server, "px", "http://models.example/p.gguf")
    assert request.startswith(b"GET http://models.example/p.gguf HTTP/1.1")
    assert listing(app) == []


# -- 5 and 6. the queue ---------------------------------------------------------------


def test_cancel_of_a_queued_job_never_reaches_the_origin(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_MODELS_MAX_CONC=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    first = origin.add("/first.gguf", payload(MiB, seed=7), stall_after=64 * KiB)
    origin.add("/second.gguf", payload(1000, seed=8))
    post_download(client, "first", origin.url("/first.gguf"), sha256=first.sha256)
    assert first.stalled.wait(5)
    r = post_download(client, "second", origin.url("/second.gguf"))
    assert r.status_code == 202 and r.json["status"] == "queued"
    watch.status("second", "queued")
    c = cancel(client, "second")
    assert c.status_code == 200 and c.json == {"id": "second", "status": "canceled"}
    watch.status("second", "canceled")
    assert client.get("/models/downloads/second").json["status"] == "canceled"
    assert [i["id"] for i in client.get("/models/downloads").json["items"]] == ["first"]

    first.release.set()  # the origin ends that response early; the worker resumes it
    assert watch.terminal("first")["status"] == "complete"
    assert origin.requests_for("/second.gguf") == []
    assert watch.statuses("second") == ["queued", "canceled"]
    assert listing(app) == ["first.gguf"]


def test_a_queue_of_three_runs_one_at_a_time_in_order(service: Service, origin: Origin) -> None:
    # A retry waits (0.5-1 s) long enough for both small queued jobs to run meanwhile.
    app, client, watch = service(ARW_MODELS_MAX_CONC=1, ARW_DL_RETRY_BACKOFF_MS=1000,
                                 ARW_DL_RETRY_BACKOFF_MAX_MS=1000)
    a = origin.add("/q/a.gguf", payload(512 * KiB, seed=11), stall_after=64 * KiB)
    b = origin.add("/q/b.gguf", payload(300 * KiB, seed=12))
    c = origin.add("/q/c.gguf", payload(200 * KiB, seed=13))
    assert post_download(client, "a", origin.url("/q/a.gguf"), sha256=a.sha256).json["status"] == "started"
    assert a.stalled.wait(5)
    assert post_download(client, "b", origin.url("/q/b.gguf"), sha256=b.sha256).json["status"] == "queued"
    assert post_download(client, "c", origin.url("/q/c.gguf"), sha256=c.sha256).json["status"] == "queued"
    listed = client.get("/models/downloads").json["items"]
    assert [(i["id"], i["status"]) for i in listed][1:] == [("b", "queued"), ("c", "queued")]
    a.release.set()  # a's connection ends short: it waits to retry, and gives its slot away
    watch.until(lambda e: len({p["id"] for p in watch.payloads() if p["status"] == "complete"}) == 3)

    # The origin saw one transfer at a time: a, then b and c in their order while a
    # waited to retry (its slot given away), then a again.
    paths = [s.path for s in origin.seen]
    order = [p for i, p in enumerate(paths) if i == 0 or paths[i - 1] != p]
    assert order == ["/q/a.gguf", "/q/b.gguf", "/q/c.gguf", "/q/a.gguf"]
    assert origin.requests_for("/q/a.gguf")[1].range == f"bytes={64 * KiB}-"
    # And the events never show two transfers at once.
    running: set[str] = set()
    for p in watch.payloads():
        if p["status"] in ("complete", "error", "canceled", "retrying"):
            running.discard(p["id"])
        elif p["status"] != "queued":
            running.add(p["id"])
            assert len(running) <= 1, (p, running)
    assert watch.statuses("b")[0] == "queued" and watch.statuses("c")[0] == "queued"
    for model_id, res in (("a", a), ("b", b), ("c", c)):
        assert read(os.path.join(models_dir(app), f"{model_id}.gguf")) == res.data
    assert sorted(m["id"] for m in client.get("/models").json["items"]) == ["a", "b", "c"]


def test_busy_answers_are_retried_honouring_a_capped_retry_after(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    early = [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"}), (503, {"Retry-After": "3600"}), (500, {})]
    res = origin.add("/busy.gguf", payload(200 * KiB, seed=14), statuses=list(early))
    t0 = time.monotonic()
    post_download(client, "busy", origin.url("/busy.gguf"), sha256=res.sha256)
    assert watch.terminal("busy")["status"] == "complete"
    assert time.monotonic() - t0 < 3  # an hour's Retry-After is capped by ARW_DL_RETRY_BACKOFF_MAX_MS (20 ms)
    assert [s.status for s in origin.requests_for("/busy.gguf")] == [503, 429, 503, 500, 200]
    retries = retrying(watch, "busy")
    assert [r["code"] for r in retries] == ["http-status"] * 4
    assert [r["delay_ms"] for r in retries][:3] == [0, 0, 20]
    assert read(os.path.join(models_dir(app), "busy.gguf")) == res.data


@pytest.mark.parametrize("status", [404, 403, 410])
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


# -- 8. the file changes under the same url --------------------------------------------


def test_a_redirect_loop_ends_in_too_many_redirects(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    origin.add("/loop.gguf", payload(10), statuses=[(302, {"Location": "/loop.gguf"})] * 40)
    post_download(client, "loop", origin.url("/loop.gguf"))
    err = watch.terminal("loop")
    assert err["status"] == "error" and err["code"] == "too-many-redirects"
    assert len(origin.requests_for("/loop.gguf")) == 31  # the first and 30 redirects; never retried
    assert listing(app) == []


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


# -- 9. a 206 for the wrong range ----------------------------------------------------


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


# -- 10. a body shorter than announced --------------------------------------------------


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


# -- 11. 416 for a whole .part ---------------------------------------------------------


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


# -- 12 and 13. the disk ------------------------------------------------------------


class FillingDisk:
    """Wraps a ``.part`` file; writes fail with ENOSPC once ``room`` bytes are used."""

    def __init__(self, fh: Any, budget: list[int]) -> None:
        self.fh, self.budget = fh, budget

    def write(self, buf: Any) -> int:
        if self.budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n: int = self.fh.write(memoryview(buf)[: self.budget[0]])  # a short write first
        self.budget[0] -= n
        return n

    def fileno(self) -> int:
        return int(self.fh.fileno())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def test_disk_full_keeps_the_part_and_a_later_post_resumes(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client, watch = service()
    res = origin.add("/full.gguf", payload(MiB, seed=28))
    room = 200_000
    budget = [room]
    manager = ArwModels.state(app).manager
    real_open = manager.open_part
    monkeypatch.setattr(manager, "open_part", lambda path, append: FillingDisk(real_open(path, append), budget))
    url = origin.url("/full.gguf")
    post_download(client, "full", url, sha256=res.sha256)
    err = watch.terminal("full")
    assert err["status"] == "error" and err["code"] == "disk-full"
    assert "retrying" not in watch.statuses("full")  # a full disk is not retried
    assert read(part(app, "full")) == res.data[:room]
    assert os.path.exists(sidecar(app, "full"))
    assert client.get("/healthz").status_code == 200
    assert client.get("/models/downloads/full").json["code"] == "disk-full"

    monkeypatch.undo()  # space was freed
    again = post_download(client, "full", url, sha256=res.sha256)
    assert again.status_code == 202 and again.json["status"] == "resumed"
    done = watch.terminal("full")
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    seen = origin.requests_for("/full.gguf")
    assert len(seen) == 2 and seen[1].range == f"bytes={room}-" and seen[1].status == 206
    assert read(os.path.join(models_dir(app), "full.gguf")) == res.data
    assert listing(app) == ["full.gguf"]


class LosingDisk(FillingDisk):
    """A ``.part`` file on a disk that loses writes silently once ``room`` bytes are
    used: each write says it wrote everything (a failing network file system)."""

    def write(self, buf: Any) -> int:
        kept = max(0, min(len(buf), self.budget[0]))
        if kept:
            self.fh.write(memoryview(buf)[:kept])
            self.budget[0] -= kept
        return len(buf)


def test_a_part_shorter_than_what_was_written_is_not_installed(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No sha256 to catch it: only the size of the ``.part`` against the file's
    tells that bytes were lost; its bytes are of no use for a resume either."""
    app, client, watch = service()
    origin.add("/lost.gguf", payload(MiB, seed=30))
    manager = ArwModels.state(app).manager
    real_open = manager.open_part
    monkeypatch.setattr(manager, "open_part", lambda path, append: LosingDisk(real_open(path, append), [300_000]))
    post_download(client, "lost", origin.url("/lost.gguf"))
    err = watch.terminal("lost")
    assert err["status"] == "error" and err["code"] == "size-mismatch"
    assert client.get("/models").json["items"] == [] and listing(app) == []


def test_disk_insufficient_before_a_fresh_transfer_leaves_nothing(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client, watch = service()
    res = origin.add("/big.gguf", payload(MiB, seed=29))
    monkeypatch.setattr(ArwModels.state(app).manager, "disk_free", lambda path: 1000)
    post_download(client, "big", origin.url("/big.gguf"))
    err = watch.terminal("big")
    assert err["status"] == "error" and err["code"] == "disk-insufficient"
    assert err["free"] == 1000 and err["needed"] == len(res.data)
    assert "started" not in watch.statuses("big")
    assert listing(app) == []  # neither a .part nor a stray sidecar
    assert client.get("/models/downloads").json["items"] == []


def test_disk_insufficient_keeps_a_resumable_part(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client, watch = service()
    res = origin.add("/r.gguf", payload(MiB, seed=30))
    have = 100_000
    side = {"url": origin.url("/r.gguf"), "etag": res.etag, "total": len(res.data)}
    write_partial(app, "r", res.data[:have], side)
    monkeypatch.setattr(ArwModels.state(app).manager, "disk_free", lambda path: 1000)
    post_download(client, "r", origin.url("/r.gguf"), sha256=res.sha256)
    err = watch.terminal("r")
    # What the .part holds (its blocks, a little more than its bytes) is not asked for again.
    held = os.stat(part(app, "r")).st_blocks * 512
    assert err["code"] == "disk-insufficient" and err["needed"] == len(res.data) - max(have, held)
    assert read(part(app, "r")) == res.data[:have]
    assert os.path.exists(sidecar(app, "r"))

    monkeypatch.undo()
    post_download(client, "r", origin.url("/r.gguf"), sha256=res.sha256)
    assert watch.terminal("r")["status"] == "complete"
    assert origin.requests_for("/r.gguf")[-1].range == f"bytes={have}-"
    assert read(os.path.join(models_dir(app), "r.gguf")) == res.data


def test_disk_check_counts_what_running_downloads_still_need(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    one = origin.add("/one.gguf", payload(MiB, seed=31), stall_after=64 * KiB)
    two = origin.add("/two.gguf", payload(MiB, seed=32))
    # Room for either file alone, not for both.
    monkeypatch.setattr(ArwModels.state(app).manager, "disk_free", lambda path: len(one.data) + len(two.data) // 2)
    post_download(client, "one", origin.url("/one.gguf"))
    watch.status("one", "started")  # its size is known from here on
    assert one.stalled.wait(5)
    post_download(client, "two", origin.url("/two.gguf"))
    assert watch.terminal("two")["code"] == "disk-insufficient"
    assert cancel(client, "one").status_code == 200
    one.release.set()
    assert watch.terminal("one")["status"] == "canceled"
    assert listing(app) == []


# -- 14. ARW_MODELS_MAX_MB ---------------------------------------------------------------


def test_announced_size_over_the_cap_is_refused_before_the_transfer(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_MODELS_MAX_MB=1)
    origin.add("/huge.gguf", payload(MiB + 1, seed=33))
    post_download(client, "huge", origin.url("/huge.gguf"))
    err = watch.terminal("huge")
    assert err["status"] == "error" and err["code"] == "size-limit"
    assert err["limit"] == MiB and err["expected_bytes"] == MiB + 1
    assert "started" not in watch.statuses("huge") and "downloading" not in watch.statuses("huge")
    assert listing(app) == []


def test_a_file_at_the_cap_is_accepted(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_MODELS_MAX_MB=1)
    res = origin.add("/edge.gguf", payload(MiB, seed=34))
    post_download(client, "edge", origin.url("/edge.gguf"))
    assert watch.terminal("edge")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "edge.gguf")) == res.data


@pytest.mark.parametrize("framing", ["chunked", "close-delimited"])
def test_unannounced_size_over_the_cap_is_stopped_during_the_transfer(
    service: Service, origin: Origin, framing: str
) -> None:
    app, client, watch = service(ARW_MODELS_MAX_MB=0.5)
    options = {"chunked": True} if framing == "chunked" else {"send_length": False}
    origin.add("/stream.gguf", payload(2 * MiB, seed=35), **options)
    post_download(client, "stream", origin.url("/stream.gguf"))
    err = watch.terminal("stream")
    assert err["status"] == "error" and err["code"] == "size-limit" and err["limit"] == MiB // 2
    assert "started" in watch.statuses("stream")
    assert "retrying" not in watch.statuses("stream")
    assert listing(app) == []
    assert client.get("/models").json["items"] == []


# -- 15. restarts -----------------------------------------------------------------------


def interrupted_download(make_app: Callable[..., Any], origin: Origin) -> tuple[Resource, int]:
    """A first service that downloads part of a file and is then shut down."""
    app = make_app(ARW_DL_PROGRESS_INTERVAL_MS=0, ARW_DL_IDLE_TIMEOUT_SECS=30)
    watch = Watch(app)
    cut = 192 * KiB + 3
    res = origin.add("/restart.gguf", payload(MiB, seed=36), stall_after=cut)
    post_download(app.test_client(), "rs", origin.url("/restart.gguf"), sha256=res.sha256)
    assert res.stalled.wait(5)
    watch.until(lambda e: e.payload.get("id") == "rs" and e.payload.get("downloaded") == cut)
    watch.close()
    app.extensions["arw_models"].shutdown()  # releases the state directory
    res.release.set()
    assert read(part(app, "rs")) == res.data[:cut]
    with open(sidecar(app, "rs")) as fh:
        side = json.load(fh)
    assert side["url"] == origin.url("/restart.gguf") and side["total"] == len(res.data)
    assert side["etag"] == res.etag and side["sha256"] == res.sha256
    return res, cut


def test_restart_resumes_by_itself(make_app: Callable[..., Any], origin: Origin) -> None:
    res, cut = interrupted_download(make_app, origin)
    app = make_app(ARW_DL_RESUME_ON_START=True)
    watch = StartWatch(app)  # starting the service resumes the download
    done = watch.terminal("rs")
    watch.close()
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    seen = origin.requests_for("/restart.gguf")
    assert len(seen) == 2
    assert seen[1].range == f"bytes={cut}-" and seen[1].headers["if-range"] == res.etag and seen[1].status == 206
    resumed = next(p for p in watch.payloads("rs") if p["status"] == "resumed")
    assert resumed["offset"] == cut
    assert read(os.path.join(models_dir(app), "restart.gguf")) == res.data
    assert listing(app) == ["restart.gguf"]


def test_restart_without_resume_on_start_lists_and_waits_for_the_post(
    make_app: Callable[..., Any], origin: Origin
) -> None:
    res, cut = interrupted_download(make_app, origin)
    app = make_app(ARW_DL_RESUME_ON_START=False)
    client = app.test_client()
    watch = StartWatch(app)
    listed = client.get("/models/downloads").json["items"]
    assert len(listed) == 1
    item = listed[0]
    assert (item["id"], item["status"], item["resumable"], item["downloaded"], item["total"]) == (
        "rs", "resumable", True, cut, len(res.data))
    assert item["progress"] == cut * 100 // len(res.data)
    assert client.get("/models/downloads/rs").json["status"] == "resumable"
    assert len(origin.requests_for("/restart.gguf")) == 1  # nothing was fetched by itself
    assert watch.payloads("rs") == []

    r = post_download(client, "rs", origin.url("/restart.gguf"), sha256=res.sha256)
    assert r.status_code == 202 and r.json["status"] == "resumed"
    assert watch.terminal("rs")["status"] == "complete"
    watch.close()
    assert origin.requests_for("/restart.gguf")[-1].range == f"bytes={cut}-"
    assert read(os.path.join(models_dir(app), "restart.gguf")) == res.data


# -- 16. stale partial files ---------------------------------------------------------


def test_stale_partials_are_swept_at_start_and_fresh_ones_listed(make_app: Callable[..., Any]) -> None:
    app = make_app(ARW_DL_STALE_PART_HOURS=1)
    # Files left by an earlier run, before this service starts.
    write_partial(app, "old", b"o" * 100, {"url": "http://127.0.0.1:9/old.gguf", "total": 1000})
    write_partial(app, "fresh", b"f" * 200, {"url": "http://127.0.0.1:9/fresh.gguf", "total": 1000})
    write_partial(app, "orphan", b"x" * 10, None)  # a .part whose sidecar was lost
    two_hours_ago = time.time() - 2 * 3600
    for path in (part(app, "old"), sidecar(app, "old"), part(app, "orphan")):
        os.utime(path, (two_hours_ago, two_hours_ago))
    client = app.test_client()
    listed = client.get("/models/downloads").json["items"]  # the first request starts the service
    assert [(i["id"], i["status"], i["downloaded"]) for i in listed] == [("fresh", "resumable", 200)]
    assert listing(app) == ["fresh.part", "fresh.part.json"]
    assert client.get("/models/downloads/old").status_code == 404


# -- 17. a changed url ------------------------------------------------------------------


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
