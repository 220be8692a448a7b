"""No model fetched twice: a download whose SHA-256 an installed model already has
gets that model's file instead of a transfer.

:meth:`Adopter.adopt` finds an installed model with the digest and puts its file at
the job's ``.part``: a hard link where the file system makes one (no byte written,
no space taken), else a copy (checked against the disk limits first, fsynced). The
manager then installs that ``.part`` like any verified download, under the job's own
file name, so each model keeps its own name and a delete of one leaves the other's
file (and, for a link, its bytes) where they are. The file is not hashed again: its
digest was verified when it was installed, and an installed file is never written in
place (installs rename), so the file opened here holds exactly those bytes; only its
size is checked against the entry.

Concurrency: the lookup, the open of the installed file and the link happen under the
manager's lock, which installs and deletes take too, so the entry, the name and the
file agree. A copy reads from the open descriptor outside that lock (a long copy must
not hold up the API); a later install or delete under that name cannot change the
file it reads.

Declared seams, for tests: :data:`link` (makes the hard link; a test replaces it to
act as a file system without hard links) and :data:`copy_file_range` (likewise, for
one that cannot copy in the kernel).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from ..errors import JobStopped, TransferError
from ..store.files import (
    directory_fd,
    fsync_dir,
    open_existing,
    open_fd,
    remove_quietly,
    rename_over,
    same_file,
    temp_path,
)
from ..store.registry import Registry
from ..store.storage import StateDir
from .jobs import DownloadJob

log = logging.getLogger(__name__)

#: ``os.link`` as :meth:`Adopter.adopt` calls it (names relative to ``models/``'s
#: descriptor, no link followed); anything it raises means "copy instead" (EXDEV,
#: EPERM, EMLINK, ENOTSUP, ... from file systems without, or out of, hard links).
link: Callable[..., None] = os.link
#: ``os.copy_file_range`` where the platform has it (None: plain reads and writes);
#: a test sets one that fails as a file system without it does.
copy_file_range: Callable[..., int] | None = getattr(os, "copy_file_range", None)

COPY_CHUNK = 16 * 1024 * 1024
# copy_file_range refuses these where the kernel or file system lacks it: then plain
# reads and writes.
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM}

Limits = Callable[[DownloadJob, "int | None", int], None]


class Adopter:
    """Puts an installed model's file at a job's ``.part``, for the manager."""

    def __init__(self, state: StateDir, registry: Registry, lock: threading.RLock, limits: Limits) -> None:
        self.state = state
        self.registry = registry
        self._lock = lock
        self._limits = limits

    def adopt(self, job: DownloadJob, digest: str) -> int | None:
        """Replaces the job's ``.part`` (and sidecar) by a link or copy of an installed
        file whose SHA-256 is ``digest``, and returns its size; None, touching
        nothing, when no installed model has it (or a copy would not fit: the
        transfer then decides, with its own limits). Raises
        :class:`~arw_models.errors.JobStopped` when the job is stopped during a
        copy. The caller holds the ``.part`` open for nothing."""
        with self._lock:
            found = self._open_installed(digest)
            if found is None:
                return None
            entry, fd = found
            try:
                linked = self._link(entry["file"], job.id, fd)
            except BaseException:
                os.close(fd)
                raise
        try:
            if linked:
                log.info("download %s: %s is the file of %s, linked", job.id, digest[:12], entry["id"])
                return entry["bytes"]
            return self._copy(job, entry, fd, self.state.part_path(job.id))
        finally:
            os.close(fd)

    def _open_installed(self, digest: str) -> tuple[dict[str, Any], int] | None:
        """Under the lock: an installed model with ``digest`` and its file, opened."""
        for entry in self.registry.all():
            size = entry.get("bytes")
            if entry.get("sha256") != digest or not isinstance(size, int):
                continue
            try:
                fd = open_existing(self.state.model_path(entry["file"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if fd is None:
                continue
            if os.fstat(fd).st_size == size:
                return entry, fd
            os.close(fd)  # changed by hand since its install: not the bytes its digest vouches for
            log.warning("model %s: its file has another size than when it was installed; not shared", entry["id"])
        return None

    def _link(self, name: str, model_id: str, fd: int) -> bool:
        """Under the lock: ``name`` (the file open at ``fd``) linked at the ``.part``
        of ``model_id``; False when the file system makes no link."""
        part = self.state.part_path(model_id)
        tmp = os.path.basename(temp_path(part))
        with directory_fd(self.state.models_dir) as dfd:
            try:
                os.unlink(tmp, dir_fd=dfd)  # left by a process that died with our pid
            except FileNotFoundError:
                pass
            try:
                link(name, tmp, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
            except OSError as exc:
                log.info("no hard link of %s (%s): copying it", name, exc.strerror or exc)
                return False
            if not same_file(os.stat(tmp, dir_fd=dfd, follow_symlinks=False), os.fstat(fd)):
                os.unlink(tmp, dir_fd=dfd)  # the name was swapped since it was opened
                return False
        # The sidecar goes first: a crash in between leaves a .part that no record
        # describes, which is fetched again rather than trusted.
        remove_quietly(self.state.sidecar_path(model_id))
        rename_over(os.path.join(self.state.models_dir, tmp), part)
        fsync_dir(self.state.models_dir)
        return True

    def _copy(self, job: DownloadJob, entry: dict[str, Any], fd: int, part: str) -> int | None:
        size: int = entry["bytes"]
        try:
            self._limits(job, size, 0)
        except TransferError as err:
            log.info("download %s: a copy of %s does not fit (%s); fetching it instead", job.id, entry["id"],
                     err.message)
            return None
        self.state.remove_partial(job.id)
        try:
            _copy_file(fd, part, size, job.stop_event)
        except OSError as exc:
            remove_quietly(part)
            log.warning("download %s: copying the file of %s failed (%s); fetching it instead", job.id,
                        entry["id"], exc.strerror or exc)
            return None
        log.info("download %s: %s is the file of %s, copied", job.id, entry["sha256"][:12], entry["id"])
        return size


def _copy_file(src: int, path: str, size: int, stop: threading.Event) -> None:
    """``size`` bytes of ``src`` into a new file at ``path``, fsynced; a stop leaves
    the bytes copied so far (the manager keeps or removes them as it does a ``.part``)."""
    dst = open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        offset = 0
        while offset < size:
            if stop.is_set():
                raise JobStopped()
            n = _copy_range(src, dst, offset, min(COPY_CHUNK, size - offset))
            if not n:
                raise OSError(errno.EIO, "the installed file is shorter than its entry")
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
