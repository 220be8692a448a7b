"""Event streams and slow clients cannot starve the request threads: the cap on
streams, the end of a stream whose client left, the time limit on request bodies;
many short streams leave no subscriber behind.

The first part runs in-process (units on real sockets, werkzeug's server); the
last test runs the service under gunicorn as ``gunicorn -c
python:arw_models.gunicorn_conf`` does, and measures it from the outside.
"""

from __future__ import annotations

import io
import json
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from arw_models import ArwModels
from arw_models.config import DEFAULTS, Settings, events_stream_cap, from_env
from arw_models.server.guards import BodyTimeout, StreamSlots, client_gone, read_body
from arw_models.server.stream import stream_response
from arw_models.service.events import KEEPALIVE, EventHub

from .support.app import LiveServer
from .support.servers import CONF, Gunicorn
from .support.sse import SSEClient

CANCEL = "/models/download/cancel"


# -- settings -------------------------------------------------------------------------


def test_the_default_stream_cap_leaves_a_reserve_of_threads() -> None:
    assert [events_stream_cap(n) for n in (1, 4, 5, 8, 16, 32, 100)] == [1, 1, 1, 4, 12, 24, 75]
    assert events_stream_cap(None) == 8  # a server whose thread count is unknown
    assert Settings.from_config(dict(DEFAULTS, ARW_THREADS=32)).max_streams == 24
    assert Settings.from_config(dict(DEFAULTS, ARW_THREADS=32, ARW_EVENTS_MAX_STREAMS=3)).max_streams == 3
    assert from_env({"ARW_EVENTS_MAX_STREAMS": "", "ARW_THREADS": "16", "ARW_BODY_TIMEOUT_SECS": "2.5"}) == {
        "ARW_EVENTS_MAX_STREAMS": None, "ARW_THREADS": 16, "ARW_BODY_TIMEOUT_SECS": 2.5}
    for bad in ({"ARW_EVENTS_MAX_STREAMS": 0}, {"ARW_THREADS": 0}, {"ARW_BODY_TIMEOUT_SECS": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Settings.from_config(dict(DEFAULTS, **bad))


# -- counting streams -----------------------------------------------------------------


def test_stream_slots_admit_up_to_the_limit_and_a_release_counts_once() -> None:
    slots = StreamSlots(2)
    first, second = slots.acquire(), slots.acquire()
    assert first is not None and second is not None
    assert slots.acquire() is None and slots.in_use == 2
    first()
    first()  # the close hook and an error path may both release: one slot comes back
    assert slots.in_use == 1
    third = slots.acquire()
    assert third is not None and slots.acquire() is None
    second()
    third()
    assert slots.in_use == 0


def test_a_stream_the_server_never_started_gives_its_slot_back(make_app: Callable[..., Any]) -> None:
    client = make_app(ARW_EVENTS_MAX_STREAMS=1).test_client()
    opened = client.get("/events")  # the body is never iterated
    assert opened.status_code == 200
    refused = client.get("/events")
    assert refused.status_code == 503 and refused.json["code"] == "too-many-streams"
    assert client.get("/probe").json["streams"] == 1
    opened.close()
    assert client.get("/probe").json["streams"] == 0
    again = client.get("/events")
    assert again.status_code == 200
    again.close()


# -- a client that left ---------------------------------------------------------------


@pytest.fixture
def tcp_pair() -> Iterator[Callable[[], tuple[socket.socket, socket.socket]]]:
    opened: list[socket.socket] = []

    def pair() -> tuple[socket.socket, socket.socket]:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname(), timeout=5)
            server, _ = listener.accept()
        opened.extend((client, server))
        return server, client

    yield pair
    for s in opened:
        s.close()


def test_client_gone_tells_a_closed_or_reset_peer_from_a_quiet_or_pipelining_one(
    tcp_pair: Callable[[], tuple[socket.socket, socket.socket]],
) -> None:
    server, client = tcp_pair()
    assert not client_gone(server)  # connected and quiet
    client.sendall(b"GET /next HTTP/1.1\r\n")
    assert _readable(server)
    assert not client_gone(server)  # a pipelined request: still there...
    assert server.recv(100) == b"GET /next HTTP/1.1\r\n"  # ...and none of its bytes consumed
    client.close()
    assert _readable(server)
    assert client_gone(server)

    server, client = tcp_pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # with linger 0: an RST, not a FIN
    assert _readable(server)
    assert client_gone(server)

    server, client = tcp_pair()
    server.close()
    assert client_gone(server)  # a socket already closed here is gone too


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 5)[0])


def test_a_stream_asks_between_waits_yet_keeps_its_keepalive_pace_and_ends_once_gone() -> None:
    hub = EventHub()
    gone = threading.Event()
    closed: list[str] = []
    response = stream_response(hub, keepalive=0.4, client_gone=gone.is_set, check_interval=0.05,
                               on_close=lambda: closed.append("closed"))
    frames = iter(response.response)
    assert b"service.connected" in next(frames)
    started = time.monotonic()
    assert next(frames) == KEEPALIVE  # not one per check: one per keep-alive interval
    assert 0.35 <= time.monotonic() - started < 1.5
    hub.publish("Test.Ping", {})
    assert b"Test.Ping" in next(frames)
    gone.set()
    left = time.monotonic()
    with pytest.raises(StopIteration):
        next(frames)
    assert time.monotonic() - left < 1.0
    response.close()
    response.close()
    assert closed == ["closed"] and hub.subscriber_count == 0


def test_a_stream_ends_within_a_second_or_two_of_its_client_leaving(make_app: Callable[..., Any],
                                                                   monkeypatch: Any) -> None:
    # Keep-alives 60 s apart and no event: nothing is written that could fail.
    app = make_app(ARW_EVENTS_MAX_STREAMS=2, ARW_EVENTS_KEEPALIVE_SECS=60, ARW_EVENTS_RETRY_MS=2500)
    live = LiveServer(app)
    try:
        state = ArwModels.state(app)
        released = threading.Condition()
        unsubscribe = state.hub.unsubscribe

        def unsubscribe_and_tell(sub: Any) -> None:
            unsubscribe(sub)
            with released:
                released.notify_all()

        monkeypatch.setattr(state.hub, "unsubscribe", unsubscribe_and_tell)
        with SSEClient(live.url + "/events") as one, SSEClient(live.url + "/events") as two:
            assert one.next().event == two.next().event == "service.connected"
            r = requests.get(live.url + "/events", timeout=5)
            assert r.status_code == 503 and r.headers["Content-Type"] == "application/problem+json"
            assert r.json()["code"] == "too-many-streams" and r.json()["status"] == 503
            assert r.headers["Retry-After"] == "3"  # the SSE retry hint, in whole seconds
            assert requests.get(live.url + "/probe", timeout=5).json()["streams"] == 2
            one.close()
            left = time.monotonic()
            with released:
                assert released.wait_for(lambda: state.streams.in_use == 1, timeout=5)
            assert time.monotonic() - left < 2.5
            with SSEClient(live.url + "/events") as three:  # its slot is free again
                assert three.next().event == "service.connected"
    finally:
        live.close()


# -- request bodies -------------------------------------------------------------------


def _post_head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_body_that_stops_is_answered_408_and_the_connection_closed(make_app: Callable[..., Any]) -> None:
    app = make_app(ARW_BODY_TIMEOUT_SECS=0.5)
    live = LiveServer(app)
    try:
        with socket.create_connection(("127.0.0.1", live.server.server_port), timeout=5) as sock:
            sent = time.monotonic()
            sock.sendall(_post_head("/models/download", 50) + b'{"')
            status, headers, body = _response(sock)
            took = time.monotonic() - sent
            assert status == 408 and headers["content-type"] == "application/problem+json"
            assert json.loads(body)["code"] == "request-timeout"
            assert headers["connection"] == "close" and _closed(sock)
            assert 0.45 <= took < 3
        assert requests.get(live.url + "/models/downloads", timeout=5).json() == {"items": []}
    finally:
        live.close()


def test_a_body_cut_short_is_a_400_and_a_slow_whole_one_is_read(make_app: Callable[..., Any]) -> None:
    app = make_app(ARW_BODY_TIMEOUT_SECS=3)
    live = LiveServer(app)
    address = ("127.0.0.1", live.server.server_port)
    try:
        with socket.create_connection(address, timeout=5) as sock:
            sock.sendall(_post_head(CANCEL, 50) + b'{"id": "x"')
            sock.shutdown(socket.SHUT_WR)  # the client gives up, but still listens
            status, _, body = _response(sock)
            assert status == 400 and json.loads(body)["code"] == "incomplete-body"

        whole = b'{"id": "nothing-here"}'
        with socket.create_connection(address, timeout=5) as sock:
            sock.sendall(_post_head(CANCEL, len(whole)))
            for i in range(0, len(whole), 8):
                time.sleep(0.1)  # the client's pace, well within the limit
                sock.sendall(whole[i:i + 8])
            status, _, body = _response(sock)
            assert status == 404 and json.loads(body)["code"] == "no-active-download"
    finally:
        live.close()


def test_read_body_ends_a_trickle_at_the_deadline_and_restores_the_socket(
    tcp_pair: Callable[[], tuple[socket.socket, socket.socket]],
) -> None:
    server, client = tcp_pair()
    stop = threading.Event()

    def trickle() -> None:  # a byte every 50 ms: each recv has data long before any timeout
        while not stop.wait(0.05):
            try:
                client.sendall(b" ")
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    stream = server.makefile("rb")
    try:
        started = time.monotonic()
        with pytest.raises(BodyTimeout):
            read_body(stream, {"werkzeug.socket": server}, limit=100, timeout=0.5, expected=100)
        assert 0.45 <= time.monotonic() - started < 1.5
        assert server.gettimeout() is None  # handed back to the server as it was
    finally:
        stop.set()
        sender.join(5)
        stream.close()
    # Without a socket (another server, or the test client) the body is read as it comes.
    assert read_body(io.BytesIO(b"{}"), {}, limit=10, timeout=0.001, expected=2) == b"{}"


# -- under gunicorn ---------------------------------------------------------------------


def _recv_until(sock: socket.socket, data: bytes, done: Callable[[bytes], bool]) -> bytes:
    while not done(data):
        piece = sock.recv(65536)
        if not piece:
            raise EOFError(f"the connection closed after {data!r}")
        data += piece
    return data


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response read from a raw socket: the status, the headers and the body
    (of an event stream, up to the end of its first frame)."""
    head, _, body = _recv_until(sock, b"", lambda d: b"\r\n\r\n" in d).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("content-type", "").startswith("text/event-stream"):
        body = _recv_until(sock, body, lambda b: b"\n\n" in b.partition(b"event: service.connected")[2])
    else:
        body = _recv_until(sock, body, lambda b: len(b) >= int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


def _worker_pid(state: Path) -> int:
    return int((state / "arw-models.lock").read_text().split()[1])


def _tasks(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _fds(pid: int) -> tuple[int, int]:
    """(all descriptors, sockets) of the process."""
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return len(links), sum(link.startswith("socket:") for link in links)


def _until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Polls another process's state (there is nothing to wait on) until true or timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Prober:
    """Asks /healthz and POSTs a cancel, over and over on new connections, and
    keeps how long each answer took."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[str, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-prober")
        self._thread.start()

    def _run(self) -> None:
        close = {"Connection": "close"}
        while not self._stop.wait(0.05):
            for name, call in (
                ("healthz", lambda: requests.get(self.url + "/healthz", headers=close, timeout=5)),
                ("post", lambda: requests.post(self.url + CANCEL, json={"id": "nope"}, headers=close, timeout=5)),
            ):
                started = time.monotonic()
                try:
                    status = call().status_code
                except requests.RequestException:
                    status = 0
                self.answers.append((name, status, time.monotonic() - started))

    def stop(self) -> list[tuple[str, int, float]]:
        self._stop.set()
        self._thread.join(10)
        return self.answers


def _open_stream(port: int) -> tuple[socket.socket, int, dict[str, str], bytes]:
    """An /events request on a raw socket, and its answer (a first frame, or a refusal)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        return (sock, *_response(sock))
    except BaseException:
        sock.close()
        raise


def _assert_refused(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 503, body
    assert headers["content-type"] == "application/problem+json" and int(headers["retry-after"]) >= 1
    problem = json.loads(body)
    assert problem["code"] == "too-many-streams" and problem["status"] == 503 and problem["detail"]


def test_streams_and_slow_clients_do_not_starve_the_service_under_gunicorn(
    gunicorns: Callable[..., Gunicorn], tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    # The environment says 4 threads, the command line 8: the app must learn the real number.
    g = gunicorns("limits", state, argv=["-c", CONF, "--threads", "8", "wsgi:app"],
                  ARW_BODY_TIMEOUT_SECS="1")
    g.wait_ready()
    settings = requests.get(g.url + "/probe", timeout=5).json()["settings"]
    assert settings["threads"] == 8 and settings["events_max_streams"] == 4  # 8 - max(4, 8 // 4)
    pid = _worker_pid(state)

    # Baseline with every pool thread started: 8 connections that send nothing hold
    # all 8 until they close.
    idle = [socket.create_connection(("127.0.0.1", g.port), timeout=5) for _ in range(8)]
    try:
        assert _until(lambda: _tasks(pid) >= 9, 5), _tasks(pid)
    finally:
        for sock in idle:
            sock.close()
    assert _until(lambda: _fds(pid)[1] == 1, 5), _fds(pid)  # the listener alone
    tasks, (fds, _) = _tasks(pid), _fds(pid)

    prober = Prober(g.url)
    held: list[socket.socket] = []
    try:
        # 100 clients that connect, read the first frame and leave, over about 5 s.
        statuses = []
        for _ in range(100):
            sock, status, headers, body = _open_stream(g.port)
            sock.close()
            statuses.append(status)
            if status != 200:
                _assert_refused(status, headers, body)
            time.sleep(0.05)  # the clients' pace
        assert statuses.count(200) >= 4 and set(statuses) <= {200, 503}, statuses
        # Those left within a second or so of each other; their slots come back.
        assert _until(lambda: requests.get(g.url + "/probe", timeout=5).json()["streams"] == 0, 3)

        # 50 clients that stay: 4 streams, 46 refusals, and the service still answers.
        for _ in range(50):
            sock, status, headers, body = _open_stream(g.port)
            held.append(sock)
            statuses.append(status)
            if status != 200:
                _assert_refused(status, headers, body)
        assert statuses[-50:].count(200) == 4, statuses[-50:]
        prober_mark = len(prober.answers)
        assert _until(lambda: len(prober.answers) >= prober_mark + 6, 5)  # a few answers while they stay
    finally:
        for sock in held:
            sock.close()
        answers = prober.stop()
    left = time.monotonic()
    assert len(answers) >= 40 and {(name, status) for name, status, _ in answers} == {
        ("healthz", 200), ("post", 404)}, answers
    slowest = max(took for _, _, took in answers)
    assert slowest < 1.0, sorted(took for _, _, took in answers)[-5:]

    # Every stream ends and every connection closes within 2 s of the clients leaving.
    def back_to_baseline() -> bool:
        return _tasks(pid) <= tasks and _fds(pid)[0] <= fds

    assert _until(back_to_baseline, 2), (_tasks(pid), tasks, _fds(pid), fds)
    assert time.monotonic() - left < 2.5
    probe = requests.get(g.url + "/probe", timeout=5).json()
    assert probe["streams"] == 0 and probe["subscribers"] == 0

    # 8 bodies that stop after 2 of their 50 bytes take every thread; each is cut off
    # at 1 s and its connection closed, and the threads serve again at once, even
    # though those clients keep their sockets open. A ninth body keeps trickling.
    stalled = [socket.create_connection(("127.0.0.1", g.port), timeout=5) for _ in range(8)]
    trickling = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    stop = threading.Event()

    def trickle() -> None:
        trickling.sendall(_post_head(CANCEL, 50) + b'{"')
        while not stop.wait(0.2):
            try:
                trickling.sendall(b" ")
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    try:
        sent = time.monotonic()
        for sock in stalled:
            sock.sendall(_post_head(CANCEL, 50) + b'{"')
        sender.start()
        for sock in [*stalled, trickling]:
            status, _, body = _response(sock)
            assert status == 408 and json.loads(body)["code"] == "request-timeout", body
            assert _closed(sock)
        assert time.monotonic() - sent < 2.5
        started = time.monotonic()
        assert requests.get(g.url + "/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
    finally:
        stop.set()
        if sender.is_alive():
            sender.join(5)
        for sock in [*stalled, trickling]:
            sock.close()
    # A body cut short by its client (which still listens) is a 400, not a parse of half a body.
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as sock:
        sock.sendall(_post_head(CANCEL, 50) + b'{"id": "x"')
        sock.shutdown(socket.SHUT_WR)
        status, _, body = _response(sock)
        assert status == 400 and json.loads(body)["code"] == "incomplete-body", body
    assert "Traceback" not in g.output()


def test_many_short_event_streams_leave_no_subscriber(make_app: Callable[..., Any], monkeypatch: Any) -> None:
    # A closed stream keeps its slot until it notices its client left: make room for all.
    app = make_app(ARW_EVENTS_MAX_STREAMS=256)
    live = LiveServer(app)
    try:
        _many_short_streams(app, live, monkeypatch)
    finally:
        live.close()


def _many_short_streams(app: Any, live: LiveServer, monkeypatch: Any) -> None:
    hub = ArwModels.state(app).hub
    released = threading.Condition()
    unsubscribe = hub.unsubscribe

    def counting_unsubscribe(sub: Any) -> None:
        unsubscribe(sub)
        with released:
            released.notify_all()

    monkeypatch.setattr(hub, "unsubscribe", counting_unsubscribe)
    for _ in range(200):
        with SSEClient(live.url + "/events") as sse:
            assert sse.next().event == "service.connected"
    # A stream notices its closed client at its next write: one event reaches them all.
    hub.publish("Test.Ping", {})
    with released:
        assert released.wait_for(lambda: hub.subscriber_count == 0, timeout=5), hub.subscriber_count
    assert requests.get(live.url + "/probe", timeout=5).json()["subscribers"] == 0
