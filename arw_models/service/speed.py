"""A job's recent speed: byte counts sampled by the ticker over a few seconds.

The ticker (docs/design.rst, "Concurrency") is the only thread that samples, and
the one that reads the rate for the progress event; the transfer only writes the
byte counter it samples.
"""

from __future__ import annotations

from collections import deque

WINDOW_SECS = 3.0


class Speed:
    """The bytes per second over the last :data:`WINDOW_SECS` or so (the window keeps
    at least two samples, so a slow ticker still gives a rate)."""

    def __init__(self, window: float = WINDOW_SECS) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def restart(self, now: float, count: int) -> None:
        """The count starts again from ``count`` (an answer was accepted): the rate
        counts from here, not from an earlier attempt's bytes."""
        self._samples.clear()
        self._samples.append((now, count))

    def sample(self, now: float, count: int) -> None:
        samples = self._samples
        samples.append((now, count))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()

    def rate(self, now: float, count: int) -> float:
        """Bytes per second from the oldest sample kept to ``count`` at ``now``."""
        if not self._samples:
            return 0.0
        first_t, first_n = self._samples[0]
        return (count - first_n) / (now - first_t) if now > first_t else 0.0
