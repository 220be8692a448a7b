"""An origin that stalls or never answers: a stall past the idle timeout is retried,
and a cancel is prompt whatever the transfer waits on (a stalled body, a hanging
connect, a TLS handshake, a proxy, the response headers, a long Retry-After, or a
socket that keeps delivering)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import arw_models.engine.http
from arw_models import ArwModels
from arw_models.service.jobs import DownloadJob

from .support.app import Service, Watch, post_download, retrying
from .support.helpers import (
    cancel,
    listing,
    models_dir,
    read,
)
from .support.mute import mute_origin
from .support.origin import Origin, payload

MiB = 1024 * 1024
KiB = 1024


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


def test_a_cancel_just_before_the_connect_opens_no_connection(service: Service, mute_server: socket.socket) -> None:
    """A cancel that lands after the worker last looked at the stop but before it
    connects: the connect is not made, so the origin never sees a connection from a
    job that has already ended."""
    app, client, watch = service()
    manager = ArwModels.state(app).manager
    new_session = manager.session
    asking, asked = threading.Event(), threading.Event()

    def session() -> Any:
        s = new_session()
        get = s.get

        def get_once_canceled(*args: Any, **kwargs: Any) -> Any:
            asking.set()
            job = manager.find("late")
            assert job is not None and job.stop_event.wait(5)  # the cancel has landed
            try:
                return get(*args, **kwargs)
            finally:
                asked.set()

        s.get = get_once_canceled
        return s

    manager.session = session
    address = mute_server.getsockname()
    post_download(client, "late", f"http://127.0.0.1:{address[1]}/late.gguf")
    assert asking.wait(5)
    r = cancel(client, "late")  # it waits for the worker to end
    assert r.json == {"id": "late", "status": "canceled"}
    assert watch.terminal("late")["status"] == "canceled"
    assert asked.wait(5)
    # The listener hands out its connections in the order they were made: the first
    # it accepts now is this probe's, made after the worker's request had ended.
    with socket.create_connection(address, timeout=5) as probe:
        conn, peer = mute_server.accept()
        conn.close()
        assert peer == probe.getsockname()
    assert listing(app) == []


def test_cancel_during_a_long_retry_after_is_prompt(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_RETRY_BACKOFF_MAX_MS=30_000)
    origin.add("/wait.gguf", payload(1000, seed=51), statuses=[(503, {"Retry-After": "30"})])
    post_download(client, "wait", origin.url("/wait.gguf"))
    assert watch.status("wait", "retrying")["delay_ms"] == 30_000
    t0 = time.monotonic()
    r = cancel(client, "wait")
    event = watch.status("wait", "canceled", "error", "complete", timeout=5)
    assert r.json == {"id": "wait", "status": "canceled"} and event["status"] == "canceled"
    assert time.monotonic() - t0 < 2
    assert len(origin.requests_for("/wait.gguf")) == 1
    assert os.listdir(models_dir(app)) == []


def test_cancel_while_waiting_for_response_headers_is_prompt(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The origin accepted the request
    and never answers; only shutting the socket down ends the wait before the 30 s idle
    timeout."""
    _, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    handed = threading.Event()
    real_attach = DownloadJob.attach_socket

    def attach_socket(self: Any, sock: socket.socket) -> Any:
        result = real_attach(self, sock)
        handed.set()
        return result

    monkeypatch.setattr(DownloadJob, "attach_socket", attach_socket)
    with mute_origin() as mute:
        post_download(client, "mute", mute.url)
        with mute.asked():  # the request is sent, and never answered
            # The job holds the socket it waits on (with hand_over_noop this times out:
            # then nothing could wake the worker either).
            assert handed.wait(2)
            t0 = time.monotonic()
            r = cancel(client, "mute")
            event = watch.status("mute", "canceled", "error", "complete", timeout=5)
            elapsed = time.monotonic() - t0
            assert r.json == {"id": "mute", "status": "canceled"} and event["status"] == "canceled"
            assert elapsed < 2, elapsed
            assert "retrying" not in watch.statuses("mute")


def test_cancel_is_seen_between_chunks_even_if_the_socket_keeps_delivering(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the socket shutdown disabled, only the stop
    event checked between chunks keeps the worker from reading the rest of the body."""
    app, client, watch = service(ARW_DL_PROGRESS_INTERVAL_MS=0)
    monkeypatch.setattr(DownloadJob, "wake", staticmethod(lambda sock: None))
    monkeypatch.setattr(DownloadJob, "attach_response", lambda self, response: None)
    origin.add("/t.gguf", payload(4 * MiB, seed=52), throttle=4 * MiB)
    post_download(client, "t", origin.url("/t.gguf"))
    watch.status("t", "downloading")
    mark = watch.hub.last_id
    r = cancel(client, "t")
    assert r.json == {"id": "t", "status": "canceled"}
    assert watch.terminal("t")["status"] == "canceled"
    after = [e.payload for e in watch.events
             if e.id is not None and e.id > mark and e.payload.get("status") == "downloading"]
    # At most the chunk in flight when the cancel came; never the rest of the file.
    assert len(after) <= 1, [p["downloaded"] for p in after]
    assert os.listdir(models_dir(app)) == []
