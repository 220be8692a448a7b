"""Blobs: the bytes of installed models, once, named by their SHA-256.

``{state_dir}/blobs/sha256/<digest>`` holds a verified file's bytes; each model's
file in ``models/`` is a hard link of its blob (a copy where the file system makes
no link), so two models with one digest share one blob, and a delete of one leaves
the other's bytes where they are. A blob is never written under its final name: the
verified ``.part`` (or an installed file, at migration) is linked, or copied, to a
temporary name beside it and renamed into place. Blobs are not secrets: they get
the models mode (``ARW_MODELS_MODE``), as model files do (they are the same inodes).

What names a blob is a manifest (:mod:`.manifests`); a blob that none names is
removed (:mod:`.gc`). All of it runs under the manager's lock, or at start under
the state lock, so a blob is not removed while an install is about to name it.

Declared seams, for tests: :data:`link` (makes a hard link; a test replaces it to act
as a file system without hard links) and :data:`copy_file_range` (likewise, for one
that cannot copy in the kernel).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
from collections.abc import Callable

from ..errors import JobStopped
from .files import (
    directory_fd,
    fsync_dir,
    is_regular,
    lstat_file,
    make_dir,
    open_existing,
    open_fd,
    remove_quietly,
    rename_over,
    same_file,
    temp_path,
)
from .storage import StateDir, chmod_own, set_mode

log = logging.getLogger(__name__)

DIGEST_RE = re.compile(r"[0-9a-f]{64}")

#: ``os.link`` as the store calls it (names relative to directory descriptors, no
#: link followed); anything it raises means "copy instead" (EXDEV, EPERM, EMLINK,
#: ENOTSUP, ... from file systems without, or out of, hard links).
link: Callable[..., None] = os.link
#: ``os.copy_file_range`` where the platform has it (None: plain reads and writes);
#: a test sets one that fails as a file system without it does.
copy_file_range: Callable[..., int] | None = getattr(os, "copy_file_range", None)

COPY_CHUNK = 16 * 1024 * 1024
# copy_file_range refuses these where the kernel or file system lacks it: then plain
# reads and writes.
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM}


def valid_digest(value: object) -> bool:
    return isinstance(value, str) and DIGEST_RE.fullmatch(value) is not None


class Blobs:
    """``{state_dir}/blobs/sha256/``: one file per digest."""

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.dir = state.blobs_dir

    def ensure(self) -> None:
        """Creates ``blobs/sha256/`` (the models' directory mode: like ``models/``, it
        holds no secret); refuses one that is a link or no directory."""
        for path in (self.state.store_dir, self.dir):
            make_dir(path)
            with directory_fd(path) as dfd:
                chmod_own(dfd, self.state.models_dir_mode)

    def set_modes(self) -> None:
        """Gives every blob the models mode: a copy (no link to a model file, whose
        mode is set at start) follows a changed ``ARW_MODELS_MODE`` too."""
        with directory_fd(self.dir) as dfd:
            for digest in self.digests():
                set_mode(dfd, digest, self.state.models_mode)

    def path(self, digest: str) -> str:
        if not valid_digest(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return os.path.join(self.dir, digest)

    def stat(self, digest: str) -> os.stat_result | None:
        """The blob's own status; None when there is none (a link there is removed)."""
        st = lstat_file(self.path(digest))
        return st if st is not None and stat.S_ISREG(st.st_mode) else None

    def has(self, digest: str) -> bool:
        return valid_digest(digest) and is_regular(self.path(digest))

    def open(self, digest: str) -> int | None:
        """The blob opened for reading, or None."""
        if not self.has(digest):
            return None
        return open_existing(self.path(digest))

    def digests(self) -> list[str]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if valid_digest(n))

    def total_bytes(self) -> int:
        """The bytes the blobs hold, each once."""
        total = 0
        for digest in self.digests():
            st = self.stat(digest)
            total += st.st_size if st is not None else 0
        return total

    def put(self, path: str, digest: str, size: int | None = None) -> None:
        """Makes the verified regular file at ``path`` the blob of ``digest``, unless
        there is one already (of ``size`` bytes, when given: one of another size was
        changed by hand, and is replaced): a hard link (no byte copied), else a copy,
        both under a temporary name renamed into place. ``FileNotFoundError`` when
        ``path`` is not a regular file (a link there is removed, never stored)."""
        self.ensure()
        there = self.stat(digest)
        if there is not None and (size is None or there.st_size == size):
            return
        src = lstat_file(path)
        if src is None or not stat.S_ISREG(src.st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file", path)
        blob = self.path(digest)
        tmp = temp_path(blob)
        remove_quietly(tmp)  # left by a process that died with our pid
        if not self._link(os.path.dirname(path), os.path.basename(path), tmp, src):
            fd = open_existing(path)
            if fd is None:
                raise FileNotFoundError(errno.ENOENT, "the file went away", path)
            try:
                copy_fd(fd, tmp, os.fstat(fd).st_size)
            except BaseException:
                remove_quietly(tmp)
                raise
            finally:
                os.close(fd)
        with directory_fd(self.dir) as dfd:
            set_mode(dfd, os.path.basename(tmp), self.state.models_mode)
        rename_over(tmp, blob)
        fsync_dir(self.dir)

    def place(self, digest: str, path: str) -> bool:
        """Makes ``path`` a hard link of the blob, replacing (atomically) what is
        there; True when it is one now, False when no link could be made (what is
        there is left as it is)."""
        st = self.stat(digest)
        if st is None:
            return False
        there = lstat_file(path)
        if same_file(st, there):
            return True
        tmp = temp_path(path)
        remove_quietly(tmp)
        if not self.link_at(digest, tmp, st):
            return False
        rename_over(tmp, path)
        fsync_dir(os.path.dirname(path))
        return True

    def link_at(self, digest: str, path: str, expected: os.stat_result) -> bool:
        """The blob hard-linked at the new name ``path``, if it is the file of
        ``expected`` (one opened before); False when no link was made."""
        self.path(digest)  # refuses what is not a digest
        return self._link(self.dir, digest, path, expected)

    def remove(self, digest: str) -> bool:
        return remove_quietly(self.path(digest))

    def _link(self, src_dir: str, name: str, dst: str, expected: os.stat_result) -> bool:
        """``src_dir/name`` hard-linked at ``dst``, if it still is the file of
        ``expected``; False when the file system makes no link (or the name was
        swapped since: then nothing is left at ``dst``)."""
        with directory_fd(src_dir) as sfd, directory_fd(os.path.dirname(dst)) as dfd:
            dst_name = os.path.basename(dst)
            try:
                link(name, dst_name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            except OSError as exc:
                log.info("no hard link of %s (%s): copying it", name, exc.strerror or exc)
                return False
            if not same_file(os.stat(dst_name, dir_fd=dfd, follow_symlinks=False), expected):
                os.unlink(dst_name, dir_fd=dfd)
                return False
        return True


def copy_fd(src: int, path: str, size: int, stop: threading.Event | None = None) -> None:
    """``size`` bytes of ``src`` into a new file (0600) at ``path``, fsynced; a stop
    (:class:`~arw_models.errors.JobStopped`) leaves the bytes copied so far."""
    dst = open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        offset = 0
        while offset < size:
            if stop is not None and stop.is_set():
                raise JobStopped()
            n = _copy_range(src, dst, offset, min(COPY_CHUNK, size - offset))
            if not n:
                raise OSError(errno.EIO, "the source is shorter than it should be")
            offset += n
        os.fsync(dst)
    finally:
        os.close(dst)
    fsync_dir(os.path.dirname(path))


def _copy_range(src: int, dst: int, offset: int, count: int) -> int:
    if copy_file_range is not None:  # in the kernel, and a reflink where the file system shares extents
        try:
            return copy_file_range(src, dst, count, offset, offset)
        except OSError as exc:
            if exc.errno not in _NO_COPY_RANGE:
                raise
    data = os.pread(src, count, offset)
    done = 0
    while done < len(data):
        done += os.pwrite(dst, data[done:], offset + done)
    return done

