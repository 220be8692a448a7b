"""No model fetched twice: a download whose SHA-256 the store already holds gets
that blob instead of a transfer.

:meth:`Adopter.adopt` puts the blob (see :mod:`arw_models.store.blobs`) at the
job's ``.part``: a hard link where the file system makes one (no byte written, no
space taken), else a copy (checked against the disk budget first, fsynced). The
manager then installs that ``.part`` like any verified download, under the job's own
file name: its file is one more link of the blob, and a delete of one model leaves
the other's bytes where they are. The blob is not hashed again: its digest was
verified when it was stored, and a blob is never written in place (it is renamed
into place), so the file opened here holds exactly those bytes; only its size is
checked against an installed model's entry (a file changed by hand through a
model's name changes its blob too: such a blob is not shared).

Concurrency: the lookup, the open of the blob and the link happen under the
manager's lock, which installs and deletes take too, so the entry, the blob and the
file agree. A copy reads from the open descriptor outside that lock (a long copy must
not hold up the API); a later delete cannot change the file it reads.

The seams for tests are the store's: :data:`arw_models.store.blobs.link` and
:data:`arw_models.store.blobs.copy_file_range`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from ..errors import TransferError
from ..store import blobs as store_blobs
from ..store.blobs import Blobs
from ..store.files import fsync_dir, remove_quietly, rename_over, temp_path
from ..store.registry import Registry
from ..store.storage import StateDir
from .jobs import DownloadJob

log = logging.getLogger(__name__)

Budget = Callable[[DownloadJob, "int | None", int], None]


class Adopter:
    """Puts a blob of the store at a job's ``.part``, for the manager."""

    def __init__(self, state: StateDir, registry: Registry, lock: threading.RLock, budget: Budget) -> None:
        self.state = state
        self.registry = registry
        self.blobs = Blobs(state)
        self._lock = lock
        self._budget = budget

    def adopt(self, job: DownloadJob, digest: str) -> int | None:
        """Replaces the job's ``.part`` (and sidecar) by a link or copy of the blob
        ``digest``, and returns its size; None, touching nothing, when the store does
        not hold it for an installed model (or a copy would not fit: the transfer
        then decides, with its own budget). Raises
        :class:`~arw_models.errors.JobStopped` when the job is stopped during a
        copy."""
        with self._lock:
            found = self._open_blob(digest)
            if found is None:
                return None
            size, fd = found
            try:
                linked = self._link(digest, job.id, fd)
            except BaseException:
                os.close(fd)
                raise
        try:
            if linked:
                log.info("download %s: %s is in the store, linked", job.id, digest[:12])
                return size
            return self._copy(job, digest, size, fd)
        finally:
            os.close(fd)

    def _open_blob(self, digest: str) -> tuple[int, int] | None:
        """Under the lock: the size of an installed model with ``digest`` and its
        blob, opened."""
        sizes = {e.get("bytes") for e in self.registry.all()
                 if e.get("sha256") == digest and not e.get("unstored") and isinstance(e.get("bytes"), int)}
        if not sizes:
            return None
        try:
            fd = self.blobs.open(digest)
        except OSError:
            return None
        if fd is None:
            return None
        size = os.fstat(fd).st_size
        if size in sizes:
            return size, fd
        os.close(fd)  # changed by hand since its install: not the bytes its digest vouches for
        log.warning("blob %s has another size than when it was stored; not shared", digest[:12])
        return None

    def _link(self, digest: str, model_id: str, fd: int) -> bool:
        """Under the lock: the blob (open at ``fd``) linked at the ``.part`` of
        ``model_id``; False when the file system makes no link."""
        part = self.state.part_path(model_id)
        tmp = temp_path(part)
        remove_quietly(tmp)  # left by a process that died with our pid
        if not self.blobs.link_at(digest, tmp, os.fstat(fd)):
            return False
        # The sidecar goes first: a crash in between leaves a .part that no record
        # describes, which is fetched again rather than trusted.
        remove_quietly(self.state.sidecar_path(model_id))
        try:
            rename_over(tmp, part)
        except OSError:
            remove_quietly(tmp)  # one more name of the blob, which would keep its bytes after a delete
            raise
        fsync_dir(self.state.models_dir)
        return True

    def _copy(self, job: DownloadJob, digest: str, size: int, fd: int) -> int | None:
        try:
            self._budget(job, size, 0)
        except TransferError as err:
            log.info("download %s: a copy of %s does not fit (%s); fetching it instead", job.id, digest[:12],
                     err.message)
            return None
        part = self.state.part_path(job.id)
        self.state.remove_partial(job.id)
        try:
            store_blobs.copy_fd(fd, part, size, job.stop_event)
        except OSError as exc:
            remove_quietly(part)
            log.warning("download %s: copying blob %s failed (%s); fetching it instead", job.id, digest[:12],
                        exc.strerror or exc)
            return None
        log.info("download %s: %s is in the store, copied", job.id, digest[:12])
        return size

