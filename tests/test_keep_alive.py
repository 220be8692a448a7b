"""Kept-alive connections: a worker's connection goes back to its session for the
next request only when the body before was read to its end; a range cut short
(taken over, or the first answer's whole-file body read only up to its range)
closes its connection, since what is left of that body is still in the socket.
Against nginx, which keeps connections alive and numbers them in its log."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from arw_models.engine import single
from arw_models.engine.http import body_reader, close_response, new_session

from .support import debian
from .support.app import Service, post_download
from .support.helpers import models_dir, read
from .support.nginx import Nginx
from .support.origin import payload

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
def nginx(tmp_path: Any) -> Iterator[Nginx]:
    server = Nginx(debian.binary("nginx-light", "nginx", "/usr/sbin/nginx"), str(tmp_path / "nginx"),
                   log_format='$connection $status "$http_range"')
    yield server
    server.close()


def requests_by_connection(nginx: Nginx) -> list[tuple[int, str, str]]:
    """(nginx's number of the connection, status, Range) of each request, in order."""
    return [(int(c), status, rng.strip('"')) for c, status, rng in (line.split(" ", 2) for line in nginx.log())]


def read_body(response: Any, up_to: int | None = None) -> int:
    readinto, view, got = body_reader(response), memoryview(bytearray(64 * KiB)), 0
    while up_to is None or got < up_to:
        n = readinto(view)
        if not n:
            break
        got += n
    return got


def test_a_connection_is_kept_for_the_next_request_only_after_a_body_read_to_its_end(nginx: Nginx) -> None:
    """Four ranges in turn on one session: the first read whole, the second cut
    short, the third and fourth read whole. The second goes on the first's
    connection; the third needs a new one (the second's body was left in its
    socket); the fourth goes on the third's."""
    with open(os.path.join(nginx.root, "f.bin"), "wb") as fh:
        fh.write(payload(4 * MiB, seed=190))
    session = new_session("test")
    try:
        for start, whole in ((0, True), (MiB, False), (2 * MiB, True), (3 * MiB, True)):
            response = session.get(nginx.url("f.bin"), headers={"Range": f"bytes={start}-{start + MiB - 1}"},
                                   stream=True, timeout=10)
            assert response.status_code == 206
            got = read_body(response, None if whole else 128 * KiB)
            assert got == MiB if whole else 128 * KiB <= got < MiB
            close_response(response)
    finally:
        session.close()
    seen = requests_by_connection(nginx)
    assert [status for _, status, _ in seen] == ["206"] * 4
    first, second, third, fourth = (conn for conn, _, _ in seen)
    assert first == second and third != second and fourth == third, seen


def test_parallel_ranges_from_nginx_keep_one_connection_per_worker(service: Service, nginx: Nginx,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A file in many more ranges than connections (none larger than 2 MiB): each
    range after a worker's first goes on that worker's connection, so nginx sees
    no more connections for the ranges than the download has workers; the file is
    whole and verified."""
    monkeypatch.setattr(single, "PIECE", 2 * MiB)
    data = payload(24 * MiB, seed=191)
    with open(os.path.join(nginx.root, "r.bin"), "wb") as fh:
        fh.write(data)
    app, client, watch = service(ARW_DL_SEGMENTS=4, ARW_DL_SEGMENT_MIN_MB=1, ARW_DL_STREAM_KEEP_MB_S=0,
                                 ARW_DL_CHUNK_BYTES=64 * KiB)
    post_download(client, "r", nginx.url("r.bin"), sha256=hashlib.sha256(data).hexdigest())
    assert watch.terminal("r", timeout=30)["status"] == "complete"
    assert read(os.path.join(models_dir(app), "r.bin")) == data
    seen = requests_by_connection(nginx)
    ranges = [(conn, rng) for conn, status, rng in seen if status == "206" and rng != "bytes=0-0"]
    per_connection = Counter(conn for conn, _ in ranges)
    assert len(ranges) >= 8 and len(per_connection) <= 4, seen  # 11 ranges or more, the first answer serving one
    assert max(per_connection.values()) >= 2, seen
    # The first answer (the whole file, read up to its first range) kept its connection to itself.
    whole = [conn for conn, status, rng in seen if status == "200"]
    assert len(whole) == 1 and whole[0] not in per_connection, seen
    # Once the download has ended, none of its connections is left open.
    assert until(lambda: not open_connections_to(nginx.port), 5), open_connections_to(nginx.port)


def open_connections_to(port: int) -> list[str]:
    """The established TCP connections of this machine to ``port`` on 127.0.0.1, from
    their client's side (Linux's /proc/net/tcp)."""
    with open("/proc/net/tcp") as fh:
        rows = [line.split() for line in fh.readlines()[1:]]
    return [row[1] for row in rows if int(row[2].split(":")[1], 16) == port and row[3] == "01"]


def until(condition: Callable[[], Any], timeout: float) -> Any:
    """Waits for ``condition`` (a bounded poll of what other threads change)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not (found := condition()):
        if time.monotonic() > deadline:
            return found
        pause.wait(0.02)
    return found
