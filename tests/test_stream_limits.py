"""Event streams cannot starve the request threads: the cap on streams, and the
end of a stream whose client left.

The first part runs in-process (units on real sockets, werkzeug's server); the
last test runs the service under gunicorn as ``gunicorn -c
python:arw_models.gunicorn_conf`` does, and measures it from the outside.
"""

from __future__ import annotations

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
from arw_models.events import KEEPALIVE, EventHub, stream_response
from arw_models.limits import StreamSlots, client_gone

from .conftest import LiveServer
from .sse import SSEClient
from .test_deploy import CONF, Gunicorn, gunicorns  # noqa: F401 - gunicorns is a fixture

CANCEL = "/models/download/cancel"


# -- settings -------------------------------------------------------------------------


def test_the_default_stream_cap_leaves_a_reserve_of_threads() -> None:
    assert [events_stream_cap(n) for n in (1, 4, 5, 8, 16, 32, 100)] == [1, 1, 1, 4, 12, 24, 75]
    assert events_stream_cap(None) == 8  # a server whose thread count is unknown
    assert Settings.from_config(dict(DEFAULTS, ARW_THREADS=32)).max_streams == 24
    assert Settings.from_config(dict(DEFAULTS, ARW_THREADS=32, ARW_EVENTS_MAX_STREAMS=3)).max_streams == 3
    assert from_env({"ARW_EVENTS_MAX_STREAMS": "", "ARW_THREADS": "16"}) == {
        "ARW_EVENTS_MAX_STREAMS": None, "ARW_THREADS": 16}
    for bad in ({"ARW_EVENTS_MAX_STREAMS": 0}, {"ARW_THREADS": 0}):
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
    gunicorns: Callable[..., Gunicorn], tmp_path: Path,  # noqa: F811 - the fixture
) -> None:
    state = tmp_path / "state"
    # The environment says 4 threads, the command line 8: the app must learn the real number.
    g = gunicorns("limits", state, argv=["-c", CONF, "--threads", "8", "wsgi:app"])
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
    assert "Traceback" not in g.output()
