"""How many event streams the server can hold, under any command line: the cap
follows gunicorn's real thread count, a refusal says what to set, and a server
that a stream would block for good (gunicorn's sync worker) refuses streams at
once instead of hanging.

Real gunicorn processes; streams opened on raw sockets, each read to its first
frame and then closed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from .support.servers import Gunicorn, plain

STREAMS = 100


@contextmanager
def open_streams(url: str, count: int, timeout: float = 10.0) -> Iterator[list[socket.socket]]:
    """``count`` raw ``GET /events``, all sent before any is read; yields the sockets
    once each has answered, and closes them all."""
    host, port = url.removeprefix("http://").split(":")
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection((host, int(port)), timeout=timeout)
            socks.append(s)
            s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        yield socks
    finally:
        for s in socks:
            s.close()


def first_frame(sock: socket.socket) -> bytes:
    """The status line through the first SSE frame (or the whole answer, if refused)."""
    seen = b""
    deadline = time.monotonic() + 10
    while b"\n\n" not in seen.partition(b"event: service.connected")[2]:  # the frame's end
        assert time.monotonic() < deadline, seen
        if seen.startswith(b"HTTP/") and not seen.startswith(b"HTTP/1.1 200") and b"\r\n\r\n" in seen:
            break  # refused: the status line says enough
        chunk = sock.recv(65536)
        if not chunk:
            break
        seen += chunk
    return seen


def serves_streams_at_once(g: Gunicorn, count: int) -> None:
    with open_streams(g.url, count) as socks:
        answers = [first_frame(s) for s in socks]
        refused = [a.split(b"\r\n", 1)[0] for a in answers if not a.startswith(b"HTTP/1.1 200")]
        assert not refused, f"{len(refused)} of {count} refused: {refused[:3]}\n{answers[-1][:600]!r}"
        assert requests.get(g.url + "/probe", timeout=5).json()["streams"] == count
    # Every stream closed: its slot comes back (the probe says when).
    deadline = time.monotonic() + 5
    while requests.get(g.url + "/probe", timeout=5).json()["streams"]:
        assert time.monotonic() < deadline, "the streams' slots were not given back"


def test_a_plain_gthread_command_line_with_160_threads_serves_100_streams(
    gunicorns: Callable[..., Gunicorn], tmp_path: Path,
) -> None:
    g = plain(gunicorns, "plain", tmp_path / "state", "-k", "gthread", "--threads", "160", "wsgi:app")
    g.wait_ready()
    serves_streams_at_once(g, STREAMS)
    settings = requests.get(g.url + "/probe", timeout=5).json()["settings"]
    assert settings["events_max_streams"] == 120 and settings["threads"] == 160  # 160 threads less a reserve of 40


def test_the_bundled_configuration_serves_100_streams(gunicorns: Callable[..., Gunicorn], tmp_path: Path) -> None:
    g = gunicorns("bundled", tmp_path / "state", ARW_THREADS="")  # its own default thread count
    g.wait_ready()
    serves_streams_at_once(g, STREAMS)


def test_a_refused_stream_names_the_cap_where_it_came_from_and_what_to_set(
    make_app: Callable[..., Any],
) -> None:
    client = make_app(ARW_THREADS=8).test_client()
    held = [client.get("/events") for _ in range(4)]  # 8 threads less a reserve of 4
    try:
        refused = client.get("/events")
        assert refused.status_code == 503 and refused.json["code"] == "too-many-streams"
        detail = refused.json["detail"]
        for words in ("4 event streams", "8 server threads", "ARW_THREADS", "ARW_EVENTS_MAX_STREAMS", "--threads"):
            assert words in detail, detail
    finally:
        for r in held:
            r.close()


def test_an_unknown_thread_count_says_so_in_the_refusal(make_app: Callable[..., Any]) -> None:
    client = make_app(ARW_THREADS=None, ARW_EVENTS_MAX_STREAMS=None).test_client()
    held = [client.get("/events") for _ in range(8)]
    try:
        detail = client.get("/events").json["detail"]
        assert "8 event streams" in detail and "unknown" in detail and "ARW_THREADS" in detail, detail
    finally:
        for r in held:
            r.close()


# -- a server that a stream would hold for good ----------------------------------------


def test_the_sync_worker_refuses_streams_at_once_and_keeps_serving(
    gunicorns: Callable[..., Gunicorn], tmp_path: Path,
) -> None:
    g = plain(gunicorns, "sync", tmp_path / "state", "-k", "sync", "wsgi:app")
    g.wait_ready()
    for _ in range(2):
        started = time.monotonic()
        r = requests.get(g.url + "/events", timeout=(2, 5))
        assert time.monotonic() - started < 2
        assert r.status_code == 503, r.text
        assert r.headers["Content-Type"] == "application/problem+json"
        problem = r.json()
        assert problem["code"] == "streams-unsupported"
        assert "gthread" in problem["detail"] and "gevent" in problem["detail"], problem
        assert "Retry-After" not in r.headers  # waiting does not help: this server never serves one
        assert requests.get(g.url + "/healthz", timeout=5).json() == {"ok": True}
        assert requests.get(g.url + "/probe", timeout=5).json()["streams"] == 0


@pytest.mark.parametrize(("environ", "refused"), [
    # gunicorn's sync worker (and its tornado worker): one request at a time.
    ({"wsgi.multithread": False, "SERVER_SOFTWARE": "gunicorn/27.0.1"}, True),
    # werkzeug's server run with threaded=False.
    ({"wsgi.multithread": False, "SERVER_SOFTWARE": "Werkzeug/3.1", "werkzeug.socket": object()}, True),
    # gunicorn's gthread and gevent workers, werkzeug's threaded server, waitress.
    ({"wsgi.multithread": True, "SERVER_SOFTWARE": "gunicorn/27.0.1"}, False),
    # gevent's own server says False, though each request has a greenlet of its own.
    ({"wsgi.multithread": False, "SERVER_SOFTWARE": "gevent/24.2 Python/3.11"}, False),
    # A test client calls the app in-process: no server thread to hold.
    ({"wsgi.multithread": False}, False),
], ids=["gunicorn-sync", "werkzeug-unthreaded", "threaded", "gevent-pywsgi", "test-client"])
def test_which_servers_cannot_hold_a_stream(environ: dict[str, Any], refused: bool) -> None:
    from arw_models.server import hosting

    assert (hosting.streams_unsupported(environ) is not None) is refused
