"""The writer of a single stream's ``.part``, past the page cache where it can.

Writing through the page cache costs a copy into it and the kernel's work to
manage and write back those pages: on a fast link that, not the network, is what
holds a download back, and it fills the cache with bytes nobody reads again (the
digest is computed from the buffer in memory). So :class:`PartFile` can write
through a second descriptor of the same file opened with ``O_DIRECT``, which moves
the bytes from the caller's buffer to the device.

``O_DIRECT`` takes only whole blocks, at aligned offsets, from aligned memory
(``ALIGN``, a page, covers 512-byte and 4 KiB sectors). Everything else goes through
the ordinary descriptor: the head of a write up to the next aligned offset (a resume
from any byte), the tail that is not a whole block (the end of the file, or the end
of what one read brought), and a buffer that is not aligned. The two never share a
block: bytes before the position were written, the block at an aligned position was
not touched, so no page written through the cache is overwritten by a direct write.

A file system that refuses ``O_DIRECT`` says so with ``EINVAL``, at the open or at
the first write: the file then falls back to the page cache, unless it was required.
``fsync`` (on :meth:`PartFile.fileno`) still makes the bytes durable: a direct write
leaves them in the device's cache and the file's size in the journal.

Declared seams, for tests: :data:`open_direct` (opens the ``O_DIRECT`` descriptor of
a path) and :data:`pwrite_direct` (writes through it). A test replaces one to act as
a file system that refuses, or to see whether the page cache was bypassed.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from collections.abc import Callable
from typing import Any, Self

from .files import open_fd

log = logging.getLogger(__name__)

ALIGN = 4096
O_DIRECT: int = getattr(os, "O_DIRECT", 0)


def _open_direct(path: str) -> int:
    if not O_DIRECT:
        raise OSError(errno.EINVAL, "this platform has no O_DIRECT")
    return open_fd(path, os.O_WRONLY | O_DIRECT)


#: Opens ``path`` for writes with ``O_DIRECT``, never through a link; ``OSError``
#: with ``EINVAL`` when the file system refuses it.
open_direct: Callable[[str], int] = _open_direct
#: ``os.pwrite`` for the ``O_DIRECT`` descriptor.
pwrite_direct: Callable[[int, Any, int], int] = os.pwrite


def _libc_sync_file_range() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):  # not Linux: the final fsync writes it all
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_sync_file_range = _libc_sync_file_range()
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Starts writing the file's dirty pages to the device without waiting for them
    (Linux's ``sync_file_range(SYNC_FILE_RANGE_WRITE)``), so that the next fsync
    waits only for what came since. The pages stay cached (a hash may still read
    them). A no-op where the call does not exist; its errors are left to the fsync
    that follows, which sees them too."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


class DirectIORefused(OSError):
    """The file system refused ``O_DIRECT``, and it was required."""

    def __init__(self, path: str, cause: OSError) -> None:
        super().__init__(errno.EINVAL, f"the file system of {os.path.dirname(path)} refuses direct I/O (O_DIRECT: "
                         f"{cause.strerror or cause}), which ARW_DL_DIRECT_IO=on requires; set it to auto or off")


def aligned(view: memoryview) -> bool:
    """Whether ``view``'s bytes start at an ``ALIGN`` boundary in memory (a read-only
    buffer, whose address ctypes does not give, counts as not: it goes through the
    page cache)."""
    return not view.readonly and ctypes.addressof(ctypes.c_char.from_buffer(view)) % ALIGN == 0


class PartFile:
    """A ``.part`` open for writing at its end, from byte ``fstat().st_size`` on.

    ``write`` takes any buffer and writes all of it, or returns a short count when
    an error stopped it midway (the next call raises it): the file system wrote
    those bytes, and a caller that counts them need not hash the ``.part`` again.
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._direct: int | None = None
        self._required = False
        self.pos = os.fstat(fd).st_size

    @property
    def direct(self) -> bool:
        """Whether writes bypass the page cache (so far: a refusal at a write ends it)."""
        return self._direct is not None

    def bypass_page_cache(self, required: bool = False) -> bool:
        """Opens the ``O_DIRECT`` descriptor; True if it is in effect. A refusal
        raises :class:`DirectIORefused` when ``required``, else keeps the page cache."""
        self._required = required
        if self._direct is not None:
            return True
        try:
            fd = open_direct(self.path)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._refused(exc)
            return False
        mine, theirs = os.fstat(self._fd), os.fstat(fd)
        if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
            # Replaced under its name since it was opened: write the file we have.
            os.close(fd)
            self._refused(OSError(errno.ESTALE, "the file was replaced"))
            return False
        self._direct = fd
        return True

    def _refused(self, exc: OSError) -> None:
        if self._required:
            raise DirectIORefused(self.path, exc) from None
        log.info("writing %s through the page cache: direct I/O refused (%s)", self.path, exc.strerror or exc)
        if self._direct is not None:
            fd, self._direct = self._direct, None
            os.close(fd)

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        done, size = 0, len(view)
        while done < size:
            try:
                done += self._write_some(view[done:] if done else view)
            except OSError:
                if done:
                    return done  # the caller counts these; the error comes again on its next write
                raise
        return done

    def _write_some(self, view: memoryview) -> int:
        pos, direct = self.pos, self._direct
        if direct is not None and len(view) >= ALIGN:
            head = -pos % ALIGN
            if head:
                view = view[:head]  # up to the next aligned offset, through the cache
            elif aligned(view):
                whole = view[: len(view) - len(view) % ALIGN]
                try:
                    n = pwrite_direct(direct, whole, pos)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self._refused(exc)
                    n = os.pwrite(self._fd, whole, pos)
                self.pos = pos + n
                return n
        n = os.pwrite(self._fd, view, pos)
        self.pos = pos + n
        return n

    def fileno(self) -> int:
        """The ordinary descriptor: ``fsync`` on it makes every byte durable."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        direct, self._direct = self._direct, None
        fd, self._fd = self._fd, -1
        for each in (direct, fd):
            if each is not None and each >= 0:
                os.close(each)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
