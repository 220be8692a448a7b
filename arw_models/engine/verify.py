"""The SHA-256 of a file whose ranges arrive out of order, computed while they
arrive: a thread hashes the contiguous prefix as it grows (reading it back from the
page cache, where the writes have just put it), so that when the last byte lands
the digest is nearly done and the file is never read a second time from disk.
hashlib releases the GIL on large buffers, so this runs beside the transfers.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

READ = 4 * 1024 * 1024


@functools.cache
def sha256_speed() -> float:
    """Bytes per second one core hashes with SHA-256 here: the best of three runs
    over 4 MiB, measured once per process (about 8 ms)."""
    data, best = bytes(READ), float("inf")
    for _ in range(3):
        began = time.perf_counter()
        hashlib.sha256(data)
        best = min(best, time.perf_counter() - began)
    return READ / max(best, 1e-9)


class PrefixHasher:
    """Hashes ``fd`` from byte ``start`` (``hasher`` has hashed the bytes before it)
    up to ``prefix()``, whenever :meth:`poke` says it may have grown."""

    def __init__(self, fd: int, prefix: Callable[[], int], hasher: Any = None, start: int = 0) -> None:
        self.fd = fd
        self.hasher = hasher if hasher is not None else hashlib.sha256()
        self.hashed = start
        self.read_back = 0  # bytes read from the file to hash them
        self._prefix = prefix
        self._cond = threading.Condition()
        self._done = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="arw-hash", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        with self._cond:
            self._cond.notify()

    def _run(self) -> None:
        buf = bytearray(READ)
        view = memoryview(buf)
        try:
            while True:
                with self._cond:
                    while not self._done and self._prefix() <= self.hashed:
                        self._cond.wait(0.5)
                    done = self._done
                end = self._prefix()
                while self.hashed < end:
                    n = os.preadv(self.fd, [view[: min(READ, end - self.hashed)]], self.hashed)
                    if n <= 0:
                        raise OSError("the .part is shorter than its ranges say")
                    self.hasher.update(view[:n])
                    self.hashed += n
                    self.read_back += n
                if done:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to finish(), in the transfer's thread
            self._error = exc

    def finish(self) -> Any:
        """Hashes what is left of the prefix and returns the hasher; stops the
        thread in any case."""
        with self._cond:
            self._done = True
            self._cond.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.hasher

    def abandon(self) -> None:
        """Stops the thread, keeping what it hashed (``hasher`` and ``hashed``)."""
        with self._cond:
            self._done = True
            self._cond.notify()
        self._thread.join()
