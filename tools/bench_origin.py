"""The benchmark's origins (:class:`Origins`), and its own HTTP origin: the files of one directory, by ``sendfile`` at full
speed or paced to a rate per connection, logging when each byte left.

It stands in for nginx where nginx cannot be had, and it is the origin of the
latency measurements, where what counts is *when* the origin sent the bytes that a
progress event reports: every paced write appends ``(time.monotonic(), total bytes
sent so far, over all connections)`` to ``sent_log``.

Design: a ``ThreadingHTTPServer``, one thread per connection; pacing waits on the
``closing`` event so that ``close()`` ends every handler at once and joins it.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.server
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

from tests.support.nginx import Nginx

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
PIECE = 64 * 1024
MiB = 1024 * 1024


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.rate = self.server.origin.connected()  # this connection's pace, fixed for its life

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        origin = self.server.origin
        name = os.path.basename(self.path.split("?", 1)[0])
        path = os.path.join(origin.root, name)
        if not name or not os.path.isfile(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        st = os.stat(path)
        size = st.st_size
        start, end, status = 0, size - 1, 200
        requested = _RANGE.match(self.headers.get("Range", ""))
        etag = f'"{st.st_mtime_ns:x}-{size:x}"'
        if requested and self.headers.get("If-Range", etag) == etag:
            start = int(requested.group(1))
            end = min(end, int(requested.group(2))) if requested.group(2) else end
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(end + 1 - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        self.send_header("Content-Type", "application/octet-stream")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if not body:
            return
        self.wfile.flush()
        try:
            with open(path, "rb") as fh:
                if self.rate is None:
                    self.connection.sendfile(fh, offset=start, count=end + 1 - start)
                else:
                    self._paced(fh, start, end + 1 - start, self.rate)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a cancel, say): nothing more to send

    def _paced(self, fh: Any, offset: int, count: int, rate: float) -> None:
        origin = self.server.origin
        began = time.monotonic()
        sent = 0
        while sent < count and not origin.closing.is_set():
            buf = os.pread(fh.fileno(), min(PIECE, count - sent), offset + sent)
            self.connection.sendall(buf)
            sent += len(buf)
            origin.record(len(buf))
            # Each write is due at its place on the line `rate` draws from the start,
            # so that slow writes do not add up to a slower rate.
            delay = began + sent / rate - time.monotonic()
            if delay > 0:
                origin.closing.wait(delay)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close joins every handler: nothing is left running
    block_on_close = True
    origin: PyOrigin


class PyOrigin:
    """Serves the files in ``root`` on 127.0.0.1, honouring ``Range``; at full speed
    with ``sendfile``, or paced at ``rate`` bytes per second per connection. With
    ``slow_nth``, the connection accepted ``slow_nth``-th (from 1) is paced at
    ``slow_rate`` instead: one slow connection among fast ones."""

    def __init__(self, root: str, rate: float | None = None, slow_nth: int | None = None,
                 slow_rate: float | None = None) -> None:
        self.root = root
        self.rate = rate
        self.slow_nth = slow_nth
        self.slow_rate = slow_rate
        self.connections = 0
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._total = 0
        self.sent_log: list[tuple[float, int]] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.origin = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="bench-origin")
        self._thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{name}"

    def connected(self) -> float | None:
        """Counts a new connection; the rate it is to be paced at (None: unpaced)."""
        with self._lock:
            self.connections += 1
            return self.slow_rate if self.connections == self.slow_nth else self.rate

    def record(self, n: int) -> None:
        with self._lock:
            self._total += n
            self.sent_log.append((time.monotonic(), self._total))

    def reset_log(self) -> None:
        """Forget what was sent so far: the log starts again from zero bytes."""
        with self._lock:
            self._total = 0
            self.sent_log = []

    def log(self) -> list[tuple[float, int]]:
        with self._lock:
            return list(self.sent_log)

    def close(self) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def write_file(path: str, size: int) -> str:
    """``size`` random bytes (one random block, repeated: as costly to move and hash
    as any other bytes); returns their SHA-256."""
    block = os.urandom(16 * MiB)
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            fh.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


class Origins:
    """The origins of ``make bench``, all serving one directory (:attr:`root`): fast
    (nginx with ``sendfile``), throttled (``limit_rate`` on each connection), and,
    one per run, throttled with its ``slow_nth`` connection (counted from 1 for that
    run's fresh nginx) at a tenth of the rate. The Python origin stands in for nginx
    when ``binary`` is None."""

    def __init__(self, base: str, binary: str | None, rate: int, slow_nth: int) -> None:
        self.base = base
        self.binary = binary
        self.rate = rate
        self.slow_nth = slow_nth
        self.nginx: Nginx | None = None
        self.py_fast: PyOrigin | None = None
        self.py_slow: PyOrigin | None = None
        self._runs = 0
        if binary is None:
            self.root = base
            os.makedirs(base)
            self.py_fast = PyOrigin(base)
            self.py_slow = PyOrigin(base, rate=rate)
            return
        root = os.path.join(base, "root")
        self.nginx = Nginx(binary, base, f"""
        sendfile on;
        tcp_nopush on;
        location /slow/ {{ alias {root}/; limit_rate {rate}; sendfile_max_chunk 128k; }}""")
        self.root = self.nginx.root

    def fast_url(self, name: str) -> str:
        return self.nginx.url(name) if self.nginx else self.py_fast.url(name)  # type: ignore[union-attr]

    def slow_url(self, name: str) -> str:
        return self.nginx.url("slow/" + name) if self.nginx else self.py_slow.url(name)  # type: ignore[union-attr]

    @contextlib.contextmanager
    def one_slow(self, name: str) -> Iterator[str]:
        """The URL of ``name`` on a throttled origin of its own whose ``slow_nth``
        connection runs at a tenth of the rate, for the life of the context."""
        slow_rate = max(1, self.rate // 10)
        if self.binary is None:
            origin = PyOrigin(self.root, rate=self.rate, slow_nth=self.slow_nth, slow_rate=slow_rate)
            try:
                yield origin.url(name)
            finally:
                origin.close()
            return
        self._runs += 1
        base = os.path.join(os.path.dirname(self.base), f"one-slow-{self._runs}")
        # $connection is nginx's serial number of the connection, from 1 in a fresh
        # nginx; limit_rate takes a variable (nginx >= 1.17).
        nginx = Nginx(self.binary, base, f"""
        sendfile on;
        tcp_nopush on;
        set $bench_rate {self.rate};
        if ($connection = {self.slow_nth}) {{ set $bench_rate {slow_rate}; }}
        location / {{ alias {self.root}/; limit_rate $bench_rate; sendfile_max_chunk 128k; }}""")
        try:
            yield nginx.url(name)
        finally:
            nginx.close()
            shutil.rmtree(base, ignore_errors=True)

    def close(self) -> None:
        for origin in (self.nginx, self.py_fast, self.py_slow):
            if origin is not None:
                origin.close()
