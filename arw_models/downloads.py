"""Download jobs and the manager that queues, runs, cancels and lists them.

Concurrency model: request threads call :meth:`DownloadManager.submit` and
:meth:`~DownloadManager.cancel`, which only touch the job table under one lock and
hand work to a ``ThreadPoolExecutor`` of ``ARW_MODELS_MAX_CONC`` threads, created
on first use (never at import or in ``init_app``, so forking servers and
``--preload`` work). Jobs wait in the manager's own FIFO queue as ``queued``; each
executor thread is a slot that takes the oldest until none is left, so a job
canceled while queued is simply taken out. Finished jobs stay in the table for
``GET /models/downloads/<id>`` until ``ARW_JOBS_KEEP`` newer ones have finished.
Each running job is owned by one :class:`~arw_models.worker.Worker`;
only the owner touches its ``.part``, except for a job that never started, which
the cancelling thread cleans up itself. Events go to the hub, which never blocks.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from . import __version__
from .config import Settings
from .errors import ArwError, Conflict, NotFound
from .events import EventHub
from .headers import redact_url, strong_etag
from .http import new_session
from .storage import Registry, StateDir, remove_quietly, utcnow
from .worker import JobStopped, TransferError, Worker, disk_free

log = logging.getLogger(__name__)

PROGRESS = "Models.DownloadProgress"
CHANGED = "Models.Changed"
TERMINAL = ("complete", "error", "canceled")


class DownloadJob:
    """The state of one transfer, shared between its worker and the API."""

    def __init__(self, model_id: str, url: str, sha256: str | None, provider: str) -> None:
        self.id = model_id
        self.url = url
        self.sha256 = sha256
        self.provider = provider
        self.status = "queued"
        self.total: int | None = None
        self.downloaded = 0
        self.offset = 0
        self.retries = 0
        self.error: dict[str, Any] | None = None
        self.file: str | None = None
        self.created_at = utcnow()
        self.finished_at: str | None = None
        self.stop_event = threading.Event()
        self.stop_reason: str | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._response: requests.Response | None = None

    @property
    def active(self) -> bool:
        return not self.done.is_set()

    def progress_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"downloaded": self.downloaded}
        if self.total:
            fields["total"] = self.total
            fields["progress"] = min(100, self.downloaded * 100 // self.total)
        elif self.total == 0:
            fields["total"] = 0
        return fields

    def snapshot(self) -> dict[str, Any]:
        snap = {
            "id": self.id,
            "url": redact_url(self.url),
            "provider": self.provider,
            "sha256": self.sha256,
            "status": self.status,
            "retries": self.retries,
            "created_at": self.created_at,
        }
        snap.update(self.progress_fields())
        if self.offset:
            snap["offset"] = self.offset
        if self.file:
            snap["file"] = self.file
        if self.error:
            snap.update(self.error)
        if self.finished_at:
            snap["finished_at"] = self.finished_at
        return snap

    # Called by the worker thread, in its request, before it waits for the origin.
    def attach_socket(self, sock: socket.socket) -> bool:
        """The socket the worker is about to connect or read; True if already stopped."""
        with self._lock:
            self._sock = sock
            stopped = self.stop_event.is_set()
        if stopped:
            _shutdown(sock)
        return stopped

    def attach_response(self, response: requests.Response | None) -> None:
        with self._lock:
            self._response = response
            if response is None:
                self._sock = None

    def stop(self, reason: str) -> None:
        """Asks the worker to stop and wakes it if it is blocked on the network."""
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = reason
            self.stop_event.set()
            sock, response = self._sock, self._response
        if sock is not None:
            _shutdown(sock)
        if response is not None:
            try:
                response.raw.shutdown()
            except (AttributeError, ValueError, RuntimeError, OSError):
                pass


def _began(job: DownloadJob) -> str:
    if job.status == "queued":
        return "queued"
    return "resumed" if job.offset or job.status == "resumed" else "started"


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class DownloadManager:
    def __init__(
        self,
        settings: Settings,
        state: StateDir,
        registry: Registry,
        hub: EventHub,
        notify: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.registry = registry
        self.hub = hub
        self._notify = notify
        self._jobs: dict[str, DownloadJob] = {}
        # Finished jobs, oldest first: the last ARW_JOBS_KEEP stay answerable.
        self._finished: OrderedDict[str, DownloadJob] = OrderedDict()
        # Jobs waiting for a slot, in order. The executor runs at most max_conc drain
        # loops, never one task per job: a queued job that is canceled leaves nothing
        # behind in the executor's own queue.
        self._pending: deque[DownloadJob] = deque()
        self._draining = 0
        self._lock = threading.RLock()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    # -- events -----------------------------------------------------------------

    def emit(self, job: DownloadJob, status: str, **fields: Any) -> None:
        job.status = status
        payload = {"id": job.id, "status": status, **fields}
        self.hub.publish(PROGRESS, payload)
        if self._notify is not None:
            self._notify(PROGRESS, payload)

    def progress(self, job: DownloadJob) -> None:
        self.emit(job, "downloading", **job.progress_fields())

    def _changed(self, op: str, model_id: str) -> None:
        payload = {"op": op, "id": model_id}
        self.hub.publish(CHANGED, payload)
        if self._notify is not None:
            self._notify(CHANGED, payload)

    # -- submitting -------------------------------------------------------------

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.settings.max_conc, thread_name_prefix="arw-download")
        return self._executor

    def new_session(self) -> requests.Session:
        return new_session(f"arw-models/{__version__}")

    def submit(self, model_id: str, url: str, sha256: str | None, provider: str) -> tuple[int, dict[str, Any]]:
        """Starts, resumes or joins a download; (200, model) when already installed."""
        with self._lock:
            if self._closed:
                raise ArwError("the service is shutting down", status=503, code="shutting-down",
                               title="Service unavailable")
            job = self._jobs.get(model_id)
            if job is not None and job.active and (job.stop_event.is_set() or job.status in TERMINAL):
                # Its end is decided but not yet done (its events and signals are on
                # their way, or its worker is stopping): joining it would be a lie,
                # and a new job now would race it. Installed already? Then say so.
                installed = self._installed_as_asked(model_id, url, sha256) if job.status == "complete" else None
                if installed is None:
                    raise Conflict(f"the previous download of {model_id} is ending; try again in a moment",
                                   code="download-ending", job=job.snapshot())
                return 200, public_model(installed, self.state)
            if job is not None and job.active:
                if job.url != url or (sha256 is not None and sha256 != job.sha256):
                    raise Conflict(f"{model_id} is already downloading from another url or with another sha256",
                                   code="already-downloading", job=job.snapshot())
                # The running job, its status put as a start would have been: how it began.
                return 202, {**job.snapshot(), "status": _began(job)}
            installed = self._installed_as_asked(model_id, url, sha256)
            if installed is not None:
                return 200, public_model(installed, self.state)
            busy = sum(1 for j in self._jobs.values() if j.active)
            job = DownloadJob(model_id, url, sha256, provider)
            self._jobs[model_id] = job
            if busy >= self.settings.max_conc:
                self.emit(job, "queued")
            else:
                job.status = "resumed" if self._resumable_part(model_id, url, sha256) else "started"
            answer = job.snapshot()  # as it begins: a slot may take it over at once
            self._pending.append(job)
            if self._draining < self.settings.max_conc:
                self._draining += 1
                self._pool().submit(self._drain)
            return 202, answer

    def _installed_as_asked(self, model_id: str, url: str, sha256: str | None) -> dict[str, Any] | None:
        """The installed model, if it is what a POST of ``url`` (and ``sha256``) asks for."""
        installed = self.registry.get(model_id)
        if (
            installed is not None
            and installed.get("url") == url
            and (sha256 is None or sha256 == installed.get("sha256"))
            and self.state.has_model_file(installed["file"])
        ):
            return installed
        return None

    def _resumable_part(self, model_id: str, url: str, sha256: str | None) -> bool:
        """Whether the worker will continue the ``.part`` (the same rules as its own):
        bytes of this url, and a validator or a digest to catch a changed file."""
        sidecar = self.state.read_sidecar(model_id)
        if not self.state.part_size(model_id) or sidecar is None or sidecar.get("url") != url:
            return False
        return bool(sha256 or strong_etag(sidecar.get("etag")) or sidecar.get("last_modified"))

    def _drain(self) -> None:
        """One slot: runs queued jobs, oldest first, until none is left."""
        while True:
            with self._lock:
                if not self._pending or self._closed:
                    self._draining -= 1
                    return
                job = self._pending.popleft()
            self._run(job)

    def _unqueue(self, job: DownloadJob) -> bool:
        """Takes a job that never reached a slot out of the queue (under the lock)."""
        try:
            self._pending.remove(job)
        except ValueError:
            return False
        return True

    def _run(self, job: DownloadJob) -> None:
        try:
            Worker(self, job).run()
        except JobStopped:
            self._stopped(job)
        except TransferError as err:
            self._failed(job, err)
        except Exception as exc:  # a bug must still end the job, visibly
            log.exception("download %s failed unexpectedly", job.id)
            # Only the class: the text of an unexpected error may quote a url with its credentials.
            self._failed(job, TransferError("internal-error", f"the service failed ({exc.__class__.__name__});"
                                            " its log has the details"))
        finally:
            self._ended(job)

    def _ended(self, job: DownloadJob) -> None:
        """Marks the job done and forgets the oldest finished jobs beyond ``jobs_keep``,
        so that the job table does not grow with every id ever asked for."""
        job.finished_at = job.finished_at or utcnow()
        with self._lock:
            self._finished[job.id] = job
            self._finished.move_to_end(job.id)
            while len(self._finished) > self.settings.jobs_keep:
                old_id, old = self._finished.popitem(last=False)
                if self._jobs.get(old_id) is old:  # not a newer job of the same id
                    del self._jobs[old_id]
        job.done.set()

    def _stopped(self, job: DownloadJob) -> None:
        if job.stop_reason == "shutdown":
            # The .part and its sidecar stay; the next start resumes them.
            job.status = "interrupted"
            return
        self.state.remove_partial(job.id)
        job.downloaded = 0
        self.emit(job, "canceled")

    def _failed(self, job: DownloadJob, err: TransferError) -> None:
        if not err.keep_part:
            self.state.remove_partial(job.id)
        job.error = {"code": err.code, "error": err.message, **err.context}
        log.warning("download %s failed: %s (%s)", job.id, err.message, err.code)
        self.emit(job, "error", **job.error)

    # -- checks the worker asks for ----------------------------------------------

    def check_limits(self, job: DownloadJob, total: int | None, offset: int) -> None:
        s = self.settings
        if total is None:
            return
        if s.max_bytes is not None and total > s.max_bytes:
            raise TransferError("size-limit", f"the file has {total} bytes, more than the limit of {s.max_bytes}",
                                keep_part=False, limit=s.max_bytes, expected_bytes=total)
        with self._lock:
            others = sum(
                max(0, j.total - j.downloaded)
                for j in self._jobs.values()
                if j is not job and j.active and j.total is not None
            )
        need = (total - offset) + others + s.disk_reserve_bytes
        free = disk_free(self.state.models_dir)
        if free < need:
            raise TransferError(
                "disk-insufficient",
                f"not enough free space: {total - offset} bytes to fetch, {others} for other downloads and "
                f"{s.disk_reserve_bytes} reserved, {free} free",
                needed=need, free=free,
            )

    def install(self, job: DownloadJob, name: str, digest: str, size: int) -> None:
        """Moves a verified ``.part`` to its final name and records the model."""
        state = self.state
        with self._lock:
            # Under the lock that cancel() takes: a cancel either lands before the
            # rename (and wins) or finds the model installed (and nothing to cancel).
            if job.stop_event.is_set():
                raise JobStopped()
            old = self.registry.get(job.id)
            own = old.get("file") if old else None
            taken = self.registry.files_in_use(except_id=job.id)
            final = _free_name(name, job.id, lambda n: n in taken or (n != own and os.path.lexists(state.model_path(n))))
            try:
                path = state.install_part(job.id, final)
            except FileNotFoundError:
                raise TransferError("resume-invalid", "the partial file disappeared", keep_part=False) from None
            remove_quietly(state.sidecar_path(job.id))
            entry = {
                "id": job.id,
                "provider": job.provider,
                "status": "available",
                "file": final,
                "path": path,
                "sha256": digest,
                "bytes": size,
                "url": job.url,
                "downloaded_at": utcnow(),
            }
            self.registry.put(entry)
            if own and own != final:
                remove_quietly(state.model_path(own))
            job.status = "complete"
        job.file = final
        job.downloaded = job.total = size
        self.emit(job, "complete", file=final, provider=job.provider, sha256=digest, bytes=size)
        self._changed("add", job.id)

    # -- cancel, delete, listing ------------------------------------------------

    def cancel(self, model_id: str, wait: float = 10.0) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(model_id)
            if job is None or not job.active or job.status == "complete":
                # Nothing runs (or its model is installed already); a .part left by an
                # earlier run or a failed job is canceled too.
                part, sidecar = self.state.part_path(model_id), self.state.sidecar_path(model_id)
                if not (os.path.lexists(part) or os.path.lexists(sidecar)):
                    raise NotFound(f"no download of {model_id} is active or resumable", code="no-active-download")
                self.state.remove_partial(model_id)
                target = job or DownloadJob(model_id, "", None, "local")
                target.error, target.downloaded = None, 0
                self.emit(target, "canceled")
                return {"id": model_id, "status": "canceled"}
            job.stop("cancel")
            if self._unqueue(job):
                # It never reached a worker: nobody else owns its files.
                self._stopped(job)
                self._ended(job)
        job.done.wait(wait)
        return {"id": model_id, "status": "canceled"}

    def delete(self, model_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(model_id)
            if job is not None and job.active:
                raise Conflict(f"{model_id} is downloading; cancel it first", code="download-in-progress")
            entry = self.registry.remove(model_id)
            if entry is None:
                raise NotFound(f"no model {model_id} is installed", code="unknown-model")
            remove_quietly(self.state.model_path(entry["file"]))
        self._changed("remove", model_id)
        return {"id": model_id, "status": "deleted"}

    def job(self, model_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(model_id)
        if job is not None:
            snap = job.snapshot()
            if not job.active and job.status not in ("complete", "canceled") and self.state.part_size(model_id) is not None:
                snap["resumable"] = True
                snap["downloaded"] = self.state.part_size(model_id)
            return snap
        return self._resumable(model_id)

    def jobs(self) -> list[dict[str, Any]]:
        """Active jobs, then downloads that left a resumable ``.part``."""
        with self._lock:
            jobs = dict(self._jobs)
        items = [j.snapshot() for j in jobs.values() if j.active]
        for model_id in self.state.partial_ids():
            job = jobs.get(model_id)
            if job is not None and job.active:
                continue
            item = self.job(model_id)
            if item is not None and item.get("resumable"):
                items.append(item)
        return items

    def _resumable(self, model_id: str) -> dict[str, Any] | None:
        size = self.state.part_size(model_id)
        sidecar = self.state.read_sidecar(model_id)
        if size is None and sidecar is None:
            return None
        item: dict[str, Any] = {"id": model_id, "status": "resumable", "resumable": sidecar is not None,
                                "downloaded": size or 0}
        if sidecar:
            item["url"] = redact_url(str(sidecar.get("url", "")))
            item["provider"] = sidecar.get("provider", "local")
            item["sha256"] = sidecar.get("sha256")
            total = sidecar.get("total")
            if isinstance(total, int):
                item["total"] = total
                if total:
                    item["progress"] = min(100, (size or 0) * 100 // total)
        return item

    # -- start and stop -----------------------------------------------------------

    def start(self) -> None:
        """Sweeps stale partial files and resumes the others if so configured."""
        s = self.settings
        now = time.time()
        for model_id in list(self.state.partial_ids()):
            paths = [self.state.part_path(model_id), self.state.sidecar_path(model_id)]
            mtimes = [os.lstat(p).st_mtime for p in paths if os.path.lexists(p)]
            if mtimes and now - max(mtimes) > s.stale_part_secs:
                log.info("removing stale partial download %s", model_id)
                self.state.remove_partial(model_id)
                continue
            sidecar = self.state.read_sidecar(model_id)
            if s.resume_on_start and sidecar and isinstance(sidecar.get("url"), str):
                log.info("resuming %s from %s", model_id, redact_url(sidecar["url"]))
                try:
                    self.submit(model_id, sidecar["url"], sidecar.get("sha256"), sidecar.get("provider") or "local")
                except ArwError as exc:
                    log.warning("cannot resume %s: %s", model_id, exc.detail)

    def shutdown(self, wait: bool = True) -> None:
        """Stops every transfer, keeping its ``.part`` resumable."""
        with self._lock:
            self._closed = True
            jobs = [j for j in self._jobs.values() if j.active]
            for job in jobs:
                job.stop("shutdown")
                if self._unqueue(job):
                    job.status = "interrupted"
                    job.done.set()
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)

    def wait(self, model_id: str, timeout: float | None = None) -> bool:
        with self._lock:
            job = self._jobs.get(model_id)
        return True if job is None else job.done.wait(timeout)


def _free_name(name: str, model_id: str, taken: Callable[[str], bool]) -> str:
    if not taken(name):
        return name
    stem, ext = os.path.splitext(name)
    for n in range(1, 10000):
        candidate = f"{stem}-{model_id}{ext}" if n == 1 else f"{stem}-{model_id}-{n}{ext}"
        if not taken(candidate):
            return candidate
    raise TransferError("internal-error", f"no free file name for {name}")


def public_model(entry: dict[str, Any], state: StateDir) -> dict[str, Any]:
    item = dict(entry)
    item["url"] = redact_url(str(entry.get("url", "")))
    if not state.has_model_file(entry["file"]):
        item["status"] = "missing"
    return item
