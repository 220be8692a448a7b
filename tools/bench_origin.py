"""The benchmark's own HTTP origin: the files of one directory, by ``sendfile`` at full
speed or paced to a rate per connection, logging when each byte left.

It stands in for nginx where nginx cannot be had, and it is the origin of the
latency measurements, where what counts is *when* the origin sent the bytes that a
progress event reports: every paced write appends ``(time.monotonic(), total bytes
sent so far, over all connections)`` to ``sent_log``.

Design: a ``ThreadingHTTPServer``, one thread per connection; pacing waits on the
``closing`` event so that ``close()`` ends every handler at once and joins it.
"""

from __future__ import annotations

import email.utils
import http.server
import os
import re
import threading
import time
from typing import Any

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
PIECE = 64 * 1024


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

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
                if origin.rate is None:
                    self.connection.sendfile(fh, offset=start, count=end + 1 - start)
                else:
                    self._paced(fh, start, end + 1 - start, origin.rate)
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
    with ``sendfile``, or paced at ``rate`` bytes per second per connection."""

    def __init__(self, root: str, rate: float | None = None) -> None:
        self.root = root
        self.rate = rate
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
