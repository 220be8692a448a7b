"""What one transfer needs and touches: the request (id, url, sha256, headers), the
stop event, the byte counters, the bandwidth bucket, and the sockets and responses
a stop must shut.

The engine works on a :class:`Transfer` and knows nothing of the job table above
it: the service's job (:class:`arw_models.service.jobs.DownloadJob`) builds on this
class, and the two moves the engine reports (the origin's answer was accepted, the
bytes are being verified) are methods the job overrides to change its status.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .ratelimit import Bucket


class Transfer:
    """The state of one download that its transfer threads read and write."""

    def __init__(self, model_id: str, url: str, sha256: str | None, provider: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.id = model_id
        self.url = url
        self.sha256 = sha256
        self.provider = provider
        # Request headers for a gated origin: sent to its host alone, never shown.
        self.headers: dict[str, str] = {}
        # What each source served, when the download has mirrors (engine.route.Route:
        # began(offset), summary(downloaded)); set by the transfer.
        self.sources: Any = None
        # Whether the origin was seen to serve byte ranges (None: not known), set by
        # the transfer; kept in the sidecar so that a later resume's answer knows.
        self.accept_ranges: bool | None = None
        self.clock = clock
        # The request's own limit (bytes/s), and the bucket its connections draw from.
        self.rate_limit: int | None = None
        self.bucket = Bucket(None, clock)
        self.total: int | None = None
        # The file's size when it is known before the first byte (a listing's): fills
        # the {size} of a mirror template.
        self.size: int | None = None
        self.downloaded = 0
        self.offset = 0
        self.segments = 0
        self.stop_event = threading.Event()
        self._lock = threading.RLock()
        # What each of the transfer's threads waits on (one per connection).
        self._socks: dict[int, socket.socket] = {}
        self._responses: dict[int, Any] = {}

    # -- what the engine reports -----------------------------------------------------------

    def began(self, offset: int, total: int | None) -> None:
        """The origin's answer was accepted: from ``offset`` of ``total`` bytes."""
        self.total, self.offset, self.downloaded = total, offset, offset
        if self.sources is not None:
            self.sources.began(offset)

    def verifying(self) -> None:
        """Every byte is on disk and is being hashed (a job says so in its status)."""

    # -- what a stop must be able to reach ---------------------------------------------------

    def interrupt(self) -> None:
        """Wakes every connection of the transfer without stopping it (one of its
        parallel ranges failed, and the others must end their reads)."""
        with self._lock:
            socks, responses = list(self._socks.values()), list(self._responses.values())
        for sock in socks:
            self.wake(sock)
        for response in responses:
            try:
                response.raw.shutdown()
            except (AttributeError, ValueError, RuntimeError, OSError):
                pass

    @staticmethod
    def wake(sock: socket.socket) -> None:
        """Shuts ``sock`` down: a connect or read blocked on it returns at once."""
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def attach_socket(self, sock: socket.socket) -> bool:
        """The socket the transfer is about to connect or read; True if it is
        already stopped (the socket is then shut down at once)."""
        with self._lock:
            self._socks[threading.get_ident()] = sock
            stopped = self.stop_event.is_set()
        if stopped:
            self.wake(sock)
        return stopped

    def attach_response(self, response: Any) -> None:
        """The response this thread reads (None: it is done with its connection)."""
        ident = threading.get_ident()
        with self._lock:
            if response is None:
                self._responses.pop(ident, None)
                self._socks.pop(ident, None)
            else:
                self._responses[ident] = response
