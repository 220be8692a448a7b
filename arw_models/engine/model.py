"""One download of a model made of many files.

A :class:`ModelDownload` fetches the files of a resolved
:class:`~.fileset.FileSet` into the model's staging folder
(:class:`~arw_models.store.staging.Staging`): each file is a
:class:`~.download.Download` of its own, on a :class:`FileTransfer` (an id such as
``f0003``, the file's url and listed digest, the headers :data:`~.fileset.Authorize`
gives), in a view of the state directory whose ``models/`` is the staging folder, so
its ``.part``, sidecar, ranges and resume are those of any single download. Up to
``ARW_DL_FILES_AT_ONCE`` files are fetched at once, each still split into ranges
when it is large; all draw from the model job's bandwidth bucket, so the job's rate
limit holds for the model, and a stop of the job (pause, cancel, shutdown) stops
every file.

A file is retried as a single download is (its :meth:`~.download.Download.retry_delay`,
waiting on the stop); after a 401 its headers are asked for afresh, once. A verified
file goes into the blob store at once and is marked done in the plan, under the
manager's lock (no blob collection runs between the two), so a restart, a pause or a
kill never fetches it again; a file whose digest the store holds already is not
fetched at all (``stored``). A file whose digest or size is not the listed one fails
the model with an error that names it, and the other files stop.

The model's job (:class:`ModelTransfer`) shows the files (``path``, ``downloaded``,
``total``, ``status``) and their bytes summed as its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..errors import JobStopped, TransferError
from ..store.blobs import Blobs
from ..store.staging import Staging, done_files
from .digests import git_blob_id
from .download import Download, Opener
from .fileset import Authorize, FileSet, RemoteFile
from .transfer import Transfer

log = logging.getLogger(__name__)

# A file's status, as the job's ``files`` list shows it.
QUEUED, DOWNLOADING, VERIFYING, COMPLETE, STORED, FAILED = (
    "queued", "downloading", "verifying", "complete", "stored", "failed")


class FileState:
    """One file of a model job, as its listings show it."""

    def __init__(self, path: str, total: int | None) -> None:
        self.path = path
        self.total = total
        self.status = QUEUED
        self.kept = 0  # its bytes on disk, or all of them once done
        self.transfer: Transfer | None = None  # while it is being fetched

    @property
    def downloaded(self) -> int:
        transfer = self.transfer
        return transfer.downloaded if transfer is not None else self.kept

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "downloaded": self.downloaded, "total": self.total, "status": self.status}


class ModelTransfer(Transfer):
    """The transfer of a whole model: its files' states, and their transfers, which
    a stop of this one reaches. Its ``downloaded`` is the sum of its files'."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.files: list[FileState] = []
        self.revision: str | None = None
        self._plain = 0
        self._children: set[Transfer] = set()
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def downloaded(self) -> int:
        files = self.files
        return sum(f.downloaded for f in files) if files else self._plain

    @downloaded.setter
    def downloaded(self, value: int) -> None:
        self._plain = value

    def files_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self.files]

    def attach_child(self, child: Transfer) -> None:
        """A file's transfer begins: a stop of the model stops it too."""
        with self._lock:
            self._children.add(child)
            stopped = self.stop_event.is_set()
        if stopped:
            child.stop_event.set()

    def detach_child(self, child: Transfer) -> None:
        with self._lock:
            self._children.discard(child)

    def stop_children(self) -> None:
        """Stops every file's transfer and wakes its connections."""
        with self._lock:
            children = list(self._children)
        for child in children:
            child.stop_event.set()
            child.interrupt()

    def interrupt(self) -> None:
        # Called by a stop of the model (its own event is set by then): every file stops.
        super().interrupt()
        if self.stop_event.is_set():
            self.stop_children()


class FileTransfer(Transfer):
    """One file of a model, fetched as a single download is."""

    def __init__(self, file_id: str, file: RemoteFile, model: Transfer, state: FileState) -> None:
        super().__init__(file_id, file.url, file.sha256, model.provider, clock=model.clock)
        self.size = file.size
        self.bucket = model.bucket  # the model's rate limit holds for all its files together
        self.state = state

    def began(self, offset: int, total: int | None) -> None:
        super().began(offset, total)
        self.state.status = DOWNLOADING

    def verifying(self) -> None:
        self.state.status = VERIFYING


@dataclass(frozen=True)
class DoneFile:
    """A file verified and in the store."""

    path: str
    size: int
    sha256: str
    sha256_source: str
    git_oid: str | None = None
    stored: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "sha256_source": self.sha256_source,
                "git_oid": self.git_oid, "stored": self.stored}

    @classmethod
    def from_json(cls, path: str, data: dict[str, Any]) -> DoneFile:
        return cls(path, int(data["size"]), str(data["sha256"]), str(data.get("sha256_source") or "computed"),
                   data.get("git_oid"), bool(data.get("stored")))


def file_id(index: int) -> str:
    return f"f{index:04d}"


class ModelDownload:
    """The files of one model, fetched into its staging folder."""

    def __init__(self, job: ModelTransfer, fileset: FileSet, authorize: Authorize, settings: Settings,
                 staging: Staging, plan: dict[str, Any], *, session: Callable[[], Any], opener: Opener,
                 lock: threading.RLock, force: bool = False,
                 checkpoint: Callable[[str], None] = lambda point: None) -> None:
        self.job = job
        self.fileset = fileset
        self.authorize = authorize
        self.s = settings
        self.staging = staging
        self.view = staging.view()
        self.plan = plan
        self.blobs = Blobs(staging.state)
        self._session = session
        self._open = opener
        self._lock = lock  # the manager's: a blob and the plan that keeps it change together
        self.force = force
        self._checkpoint = checkpoint
        self._queue: list[int] = []
        self._queue_lock = threading.Lock()
        self._failure: Exception | None = None
        self.done: dict[str, DoneFile] = {}

    # -- before the first byte ------------------------------------------------------------

    def prepare(self) -> int:
        """Sets the job's files from the plan and the store; returns the bytes
        still to fetch (those of the files neither done nor in the store)."""
        job, recorded = self.job, done_files(self.plan)
        job.revision = self.fileset.revision
        states, missing = [], 0
        for index, file in enumerate(self.fileset.files):
            state = FileState(file.path, file.size)
            states.append(state)
            done = self._recorded(file, recorded.get(file.path))
            if done is None and file.sha256 and not self.force and self._in_store(file.sha256, file.size):
                done = DoneFile(file.path, self._blob_size(file.sha256), file.sha256, "origin", file.git_oid,
                                stored=True)
                self._mark_done(done)
            if done is not None:
                self.done[file.path] = done
                state.status, state.kept, state.total = (STORED if done.stored else COMPLETE), done.size, done.size
                continue
            state.kept = self.view.part_size(file_id(index)) or 0
            missing += max(0, (file.size or 0) - state.kept)
            self._queue.append(index)
        job.files = states
        return missing

    def _recorded(self, file: RemoteFile, data: dict[str, Any] | None) -> DoneFile | None:
        """A file the plan marks done, if its blob is still there."""
        if data is None:
            return None
        try:
            done = DoneFile.from_json(file.path, data)
        except (KeyError, TypeError, ValueError):
            return None
        return done if self._in_store(done.sha256, done.size) else None

    def _in_store(self, digest: str, size: int | None) -> bool:
        st = self.blobs.stat(digest)
        return st is not None and (size is None or st.st_size == size)

    def _blob_size(self, digest: str) -> int:
        st = self.blobs.stat(digest)
        return st.st_size if st is not None else 0

    def _mark_done(self, done: DoneFile) -> None:
        """Under the manager's lock: the plan says the file is done."""
        with self._lock:
            self.plan.setdefault("done", {})[done.path] = done.to_json()
            self.staging.write_plan(self.plan)

    # -- the transfer -----------------------------------------------------------------------

    def run(self) -> None:
        """Fetches the files still to fetch, ``ARW_DL_FILES_AT_ONCE`` at a time,
        until every file is done (:attr:`done`, by path). Raises the first file's
        failure (:class:`~arw_models.errors.TransferError`, naming it) or
        :class:`~arw_models.errors.JobStopped`."""
        workers = [threading.Thread(target=self._work, name=f"arw-files-{self.job.id}-{n}", daemon=True)
                   for n in range(min(self.s.files_at_once, len(self._queue)))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if self._failure is not None:
            raise self._failure
        if self.job.stop_event.is_set() or len(self.done) < len(self.fileset.files):
            raise JobStopped()

    def _work(self) -> None:
        while True:
            with self._queue_lock:
                if not self._queue or self._failure is not None or self.job.stop_event.is_set():
                    return
                index = self._queue.pop(0)
            try:
                self._fetch(index)
            except JobStopped:
                return
            except TransferError as exc:
                self._fail(exc)
                return
            except Exception as exc:  # a bug must still end the model, visibly
                log.exception("download %s: file %s failed unexpectedly", self.job.id, self.fileset.files[index].path)
                self._fail(exc)
                return

    def _fail(self, exc: Exception) -> None:
        """The first failure ends the model: the other files stop."""
        with self._queue_lock:
            first = self._failure is None
            if first:
                self._failure = exc
        if first:
            self.job.stop_children()

    def _fetch(self, index: int) -> None:
        file, state = self.fileset.files[index], self.job.files[index]
        child = FileTransfer(file_id(index), file, self.job, state)
        child.headers = dict(self.authorize(file, False))
        state.transfer = child
        child.downloaded = state.kept
        self.job.attach_child(child)
        try:
            result = self._attempts(child, file)
            done = self._check(child, file, result.digest, result.size)
            with self._lock:
                self.blobs.put(self.view.part_path(child.id), done.sha256, done.size)
                self._mark_done(done)
            self.view.remove_partial(child.id)
            self.done[file.path] = done
            state.kept, state.status = done.size, COMPLETE
        except TransferError as err:
            state.kept = 0 if not err.keep_part else child.downloaded
            if not err.keep_part:
                self.view.remove_partial(child.id)
            state.status = FAILED
            raise TransferError(err.code, f"{file.path}: {err.message}", retryable=False, keep_part=err.keep_part,
                                file=file.path, **{k: v for k, v in err.context.items() if k != "file"}) from None
        except JobStopped:
            state.kept = self.view.part_size(child.id) or 0
            state.status = QUEUED
            raise
        finally:
            state.transfer = None
            self.job.detach_child(child)

    def _attempts(self, child: FileTransfer, file: RemoteFile) -> Any:
        """The file's attempts until one verifies; its retries as a single download's."""
        download = self._download(child, file)
        fresh = False
        while True:
            try:
                return download.attempt()
            except TransferError as err:
                if err.context.get("http_status") == 401 and not fresh:
                    # A token that expired: asked for again, once, and a new transfer uses it.
                    fresh = True
                    child.headers = dict(self.authorize(file, True))
                    download = self._download(child, file)
                    continue
                delay = download.retry_delay(err) if err.retryable else None
                if delay is None:
                    raise
                log.info("download %s: %s: %s; retry %d in %.2fs", self.job.id, file.path, err.message,
                         download.failures, delay)
                if child.stop_event.wait(delay):
                    raise JobStopped() from None

    def _download(self, child: FileTransfer, file: RemoteFile) -> Download:
        def budget(job: Transfer, total: int | None, offset: int) -> None:
            # The disk was budgeted for the whole model before its first byte; what a
            # file's origin announces must be what the listing said.
            if file.size is not None and total is not None and total != file.size:
                raise TransferError("size-mismatch", f"the origin announces {total} bytes, the listing {file.size}",
                                    keep_part=False, expected_bytes=file.size, received=total)

        return Download(child, self.s, self.view, session=self._session, opener=self._open, budget=budget,
                        checkpoint=self._checkpoint)

    def _check(self, child: FileTransfer, file: RemoteFile, digest: str, size: int) -> DoneFile:
        """The verified file is the one listed: its size, and its git blob id when
        that is what the listing vouches for (its SHA-256 the transfer checked)."""
        if file.size is not None and size != file.size:
            raise TransferError("size-mismatch", f"the file has {size} bytes, the listing {file.size}",
                                keep_part=False, received=size, expected_bytes=file.size)
        if file.sha256 is None and file.git_oid is not None:
            actual = git_blob_id(self.view.part_path(child.id), size, child.stop_event)
            if actual != file.git_oid:
                raise TransferError("checksum-mismatch", "checksum mismatch: not the git blob the listing names",
                                    keep_part=False, expected=file.git_oid, actual=actual)
            return DoneFile(file.path, size, digest, "computed", file.git_oid)
        return DoneFile(file.path, size, digest, "origin", file.git_oid)
