"""Bandwidth limits: one token bucket per download, whose rate the manager's
ticker sets each interval from the limit for all downloads together
(``ARW_DL_RATE_LIMIT``, changeable at run time) shared equally between the
downloads that are transferring, and from the download's own ``rate_limit``.
The connections of one download (its parallel ranges) share its bucket, so a
download's share does not grow with its connections.

Unlimited costs one attribute test per chunk: :attr:`Bucket.rate` is None.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# A limited transfer reads this many seconds' worth of bytes at most at a time, so
# that a change of the limit shows within a fraction of a second.
SLICE_SECS = 0.1
MIN_READ = 16 * 1024


class Bucket:
    def __init__(self, rate: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._at = clock()

    def set_rate(self, rate: float | None) -> None:
        with self._lock:
            if rate != self.rate:
                self._refill()
                self.rate = rate

    def _refill(self) -> None:
        now = self._clock()
        if self.rate:
            # At most one slice may be saved up: a limited download never bursts far above it.
            self._tokens = min(self._tokens + (now - self._at) * self.rate, self.rate * SLICE_SECS)
        self._at = now

    def read_size(self, chunk: int) -> int:
        """How much to read at once: a slice of the rate, at most ``chunk``."""
        rate = self.rate
        return chunk if not rate else max(MIN_READ, min(chunk, int(rate * SLICE_SECS)))

    def take(self, n: int, stop: threading.Event) -> bool:
        """Waits until ``n`` more bytes are within the rate; False if ``stop`` was set
        meanwhile. Waiters queue up (the tokens go negative), so the connections of
        a download take turns."""
        with self._lock:
            if not self.rate:
                return True
            self._refill()
            self._tokens -= n
            owed = -self._tokens
        while owed > 0:
            rate = self.rate
            if not rate:
                return True
            if stop.wait(min(owed / rate, SLICE_SECS)):
                return False
            with self._lock:
                self._refill()
                owed = -self._tokens
        return True


def shares(limit: float | None, own: dict[object, float | None]) -> dict[object, float | None]:
    """Each transferring download's rate: an equal share of ``limit`` (None: no
    limit for all together), capped by its own limit; what a capped download leaves
    goes to the others."""
    if not own:
        return {}
    if limit is None:
        return dict(own)
    out: dict[object, float | None] = {}
    left, open_ = float(limit), dict(own)
    while open_:
        share = left / len(open_)
        capped = {k: v for k, v in open_.items() if v is not None and v < share}
        if not capped:
            for key in open_:
                out[key] = share
            break
        for key, value in capped.items():
            out[key] = value
            left -= value  # type: ignore[operator]
            del open_[key]
    return out
