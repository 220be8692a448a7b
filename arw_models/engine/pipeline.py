"""A single stream's buffers, and the two threads behind its reads.

Design: the stream's own thread only reads. Each read lands in one of a few large
buffers and is handed on at once to a writer thread, which writes it (with the
reads queued behind it that continue it in the same buffer: one larger write when
the disk is what the stream waits for) into the
``.part`` (past the page cache where the file can: such a write waits for the
device, and reading goes on meanwhile), counts it, and fsyncs and records what is
durable every ``sync_secs`` seconds or ``sync_every`` bytes, whichever comes first
(the clock is looked at once every few pieces, not per piece), starting the
writeback of what went through the page cache every ``WRITEBACK_BYTES`` in between
so that the fsync finds little left to write; then to a hashing
thread (hashlib lets go of the GIL on large buffers). A read, a write and a hash of three pieces run at once,
and the digest covers exactly the bytes written, in order, and no other. A buffer
is read into again only once all its bytes are hashed. The buffers are ``mmap``
pages: aligned, as ``O_DIRECT`` needs, and allocated once per stream, not per read.

A failed write (a full disk) is the writer's to report: it counts what reached the
file, lets the pieces after it pass unwritten (their buffers still come back), and
wakes the reader, which may be waiting on a stalled origin, through ``wake``; the
reader raises the error at its next :meth:`Pipeline.check`. However the body ends
(its end, a stop, a network error), what was written is fsynced and recorded before
the pipeline is left, unless a write or an fsync failed.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, Self

from ..store.partfile import start_writeback

RING = 4  # buffers: one being read into, the others being written or hashed
LOOK_EVERY = 8  # pieces written between two looks at the clock
WRITEBACK_BYTES = 8 * 1024 * 1024  # written bytes after which their writeback is started, not waited for

_Item = tuple[memoryview | None, memoryview | None] | None  # (a piece to pass on, a buffer to give back)
_Write = tuple[memoryview, int, int] | None  # a buffer, and the bytes start:end of it to write (end GIVE_BACK: none)
GIVE_BACK = -1
_NOTHING: Any = object()


class Pipeline:
    """Writes and hashes, on threads of their own, what the caller reads into the
    buffers from :meth:`take`. Use it as a context manager; :meth:`finish` at the
    end of the body."""

    def __init__(self, fh: Any, offset: int, size: int, *, update: Callable[[Any], Any],
                 progress: Callable[[int], None], durable: Callable[[int], None], sync_every: int,
                 fail: Callable[[OSError, int], BaseException], wake: Callable[[], None], count: int = RING,
                 sync_secs: float = 1.0) -> None:
        self._fh = fh
        self.written = offset
        self._update, self._progress, self._durable = update, progress, durable
        self._sync_every, self._unsynced = sync_every, 0
        self._flushed = 0  # of the unsynced bytes, those whose writeback was started
        self._sync_secs = sync_secs
        self._sync_at = time.monotonic() + sync_secs
        self._pieces = 0
        self._fail, self._wake = fail, wake
        self._error: BaseException | None = None
        self._free: SimpleQueue[memoryview] = SimpleQueue()
        for _ in range(count):
            self._free.put(memoryview(mmap.mmap(-1, size)))
        self._writes: SimpleQueue[_Write] = SimpleQueue()
        self._hashes: SimpleQueue[_Item] = SimpleQueue()
        self._threads = [threading.Thread(target=self._write_loop, name="arw-write", daemon=True),
                         threading.Thread(target=self._hash_loop, name="arw-hash", daemon=True)]
        self._ended = False
        for thread in self._threads:
            thread.start()

    # -- the reader's side ------------------------------------------------------------------

    def take(self) -> memoryview:
        """A buffer to read into, once its earlier bytes are written and hashed."""
        return self._free.get()

    def write(self, buffer: memoryview, start: int, end: int) -> None:
        """Writes, then hashes, ``buffer[start:end]``; ``buffer`` is from :meth:`take`,
        and those bytes are not to be read into again before it comes back from
        :meth:`take`."""
        self._writes.put((buffer, start, end))

    def give_back(self, buffer: memoryview) -> None:
        """``buffer`` is full: it comes back from :meth:`take` once its bytes are through."""
        self._writes.put((buffer, 0, GIVE_BACK))

    def check(self) -> None:
        """Raises the error of a write, an fsync or the hash, if one failed."""
        if self._error is not None:
            raise self._error

    def finish(self) -> int:
        """Waits until everything read is written and hashed, fsyncs, and returns the
        bytes in the file."""
        self._end()
        self.check()
        self._sync()
        self.check()
        return self.written

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._end()
        if exc[0] is not None and self._unsynced and self._error is None:
            # A stop or a failure of the stream: what reached the file is kept, on
            # record, so a pause costs nothing and a resume fetches none of it again.
            try:
                self._sync()
            except Exception as refused:  # noqa: BLE001 - the error on its way out says more; the last record stands
                self._failed(refused)

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._writes.put(None)
            for thread in self._threads:
                thread.join()

    # -- the threads ------------------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            self._wake()

    def _write_loop(self) -> None:
        writes, held = self._writes, _NOTHING
        try:
            while (item := writes.get() if held is _NOTHING else held) is not None:
                held = _NOTHING
                buffer, start, end = item
                if end == GIVE_BACK:
                    self._hashes.put((None, buffer))
                    continue
                # The reads queued since that continue these bytes in the same buffer
                # go in the same write: when the disk is what the stream waits for,
                # its writes grow to a buffer's size (O_DIRECT takes fewer, larger
                # writes faster), and a read is never held back waiting for more.
                while not writes.empty():
                    held = writes.get()
                    if held is None or held[0] is not buffer or held[1] != end or held[2] == GIVE_BACK:
                        break
                    end, held = held[2], _NOTHING
                if self._error is None:
                    self._hashes.put((self._write(buffer[start:end]), None))
                    self._pieces += 1
                    if self._error is None and (self._unsynced >= self._sync_every or (
                            not self._pieces % LOOK_EVERY and time.monotonic() >= self._sync_at)):
                        try:
                            self._sync()
                        except BaseException as exc:  # noqa: BLE001 - raised in the reader's thread by check()
                            self._failed(exc)
                    elif self._unsynced - self._flushed >= WRITEBACK_BYTES:
                        self._flushed = self._unsynced
                        start_writeback(self._fh.fileno())  # what went through the page cache
        finally:
            self._hashes.put(None)

    def _write(self, piece: memoryview) -> memoryview:
        """Writes ``piece``; returns the part of it now in the file (all of it, unless
        the write failed)."""
        write, size, done = self._fh.write, len(piece), 0
        try:
            while done < size:  # a short write: the disk is filling up
                done += write(piece[done:] if done else piece)
        except OSError as exc:
            self._failed(self._fail(exc, self.written + done))
        self.written += done
        self._unsynced += done
        self._progress(self.written)
        return piece[:done] if done < size else piece

    def _sync(self) -> None:
        """fsyncs the file; then the bytes written so far may be recorded as durable."""
        try:
            os.fsync(self._fh.fileno())
        except OSError as exc:
            self._failed(self._fail(exc, self.written))
            return
        self._unsynced = self._flushed = 0
        self._sync_at = time.monotonic() + self._sync_secs
        self._durable(self.written)

    def _hash_loop(self) -> None:
        while (item := self._hashes.get()) is not None:
            piece, buffer = item
            if piece is not None:
                try:
                    self._update(piece)
                except BaseException as exc:  # noqa: BLE001 - raised in the reader's thread by check()
                    self._failed(exc)
            if buffer is not None:
                self._free.put(buffer)
