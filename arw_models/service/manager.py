"""The job table, the transfer slots and their queue, retry timers, progress, and
the install of verified downloads.

Concurrency model: request threads call :meth:`DownloadManager.submit`,
:meth:`~DownloadManager.cancel` and the listings, which touch the job table under
one lock. The :class:`~arw_models.service.slots.Slots` run one attempt of a job's
:class:`~arw_models.engine.Download` at a time per slot; a retryable failure does
not keep its slot: the job waits as ``retrying`` on a timer. A job's status
changes only through :meth:`~arw_models.service.jobs.DownloadJob.transition`.

Declared seams, for tests and for embedding: :attr:`DownloadManager.open_part`
(how a ``.part`` is opened for writing; set it before the job starts),
:attr:`~DownloadManager.disk_free`, :attr:`~DownloadManager.checkpoint` (called
with a point's name and the job, in the job's thread: ``transferred`` when the body
is on disk, ``verified`` before the install, ``installed`` after it, ``answered``
once the origin's answer has come (before it is checked), ``failed``
when an attempt failed, before the retry is decided), and the ``clock``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .._version import __version__
from ..config import Settings
from ..engine import Download, Result
from ..engine.fetch import QUICK_CODES, QUICK_RETRIES
from ..engine.http import new_session
from ..engine.ratelimit import shares
from ..errors import ArwError, Conflict, JobStopped, NotFound, TransferError
from ..redact import redact_url
from ..store import storage
from ..store.names import free_name
from ..store.storage import Registry, StateDir, remove_quietly, utcnow
from .dedup import Adopter
from .events import EventHub
from .jobs import DownloadJob, Status
from .listing import began_as, job_item, on_disk, outlook, public_model, resumable_item
from .slots import Slots

log = logging.getLogger(__name__)

PROGRESS = "Models.DownloadProgress"
CHANGED = "Models.Changed"


class DownloadManager:
    def __init__(
        self,
        settings: Settings,
        state: StateDir,
        registry: Registry,
        hub: EventHub,
        notify: Callable[[str, dict[str, Any]], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.state = state
        self.registry = registry
        self.hub = hub
        self._notify = notify
        self.clock = clock
        self.open_part: Callable[[str, bool], Any] = storage.open_part
        self.disk_free: Callable[[str], int] = storage.disk_free
        self.checkpoint: Callable[[str, DownloadJob], None] = lambda point, job: None
        self._jobs: dict[str, DownloadJob] = {}
        # Finished jobs, oldest first: the last ARW_JOBS_KEEP stay answerable.
        self._finished: OrderedDict[str, DownloadJob] = OrderedDict()
        self._downloads: dict[DownloadJob, Download] = {}
        self._lock = threading.RLock()
        self.rate_limit: int | None = settings.rate_limit
        self.slots = Slots(settings.max_conc, settings.progress_interval, self._lock, self._run, clock,
                           self._balance)
        self._closed = False
        self.adopter = Adopter(state, registry, self._lock, self.check_limits)

    # -- events -------------------------------------------------------------------------

    def _publish(self, payload: dict[str, Any]) -> None:
        self.hub.publish(PROGRESS, payload)

    def _signal(self, payload: dict[str, Any]) -> None:
        if self._notify is not None:
            self._notify(PROGRESS, payload)

    def _changed(self, op: str, model_id: str) -> None:
        payload = {"op": op, "id": model_id}
        self.hub.publish(CHANGED, payload)
        if self._notify is not None:
            self._notify(CHANGED, payload)

    def _new_job(self, model_id: str, url: str, sha256: str | None, provider: str, auto: bool = False) -> DownloadJob:
        return DownloadJob(model_id, url, sha256, provider, self._publish, self._signal, auto=auto, clock=self.clock)

    # -- submitting ---------------------------------------------------------------------

    def set_rate_limit(self, bytes_per_sec: int | None) -> None:
        """The limit for all downloads together, from now on (running ones too)."""
        with self._lock:
            self.rate_limit = bytes_per_sec
            self.slots.rebalance()
        log.info("rate limit for all downloads: %s", "none" if bytes_per_sec is None else f"{bytes_per_sec} B/s")

    def _balance(self, running: list[DownloadJob]) -> None:
        """Under the lock: each running download's share of the limit."""
        for job, rate in shares(self.rate_limit, {j: j.rate_limit for j in running}).items():
            job.bucket.set_rate(rate)  # type: ignore[attr-defined]

    def submit(self, model_id: str, url: str, sha256: str | None, provider: str,
               *, auto: bool = False, rate_limit: int | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """Starts, resumes or joins a download; (200, model) when already installed.
        ``auto``: resumed by the service itself, so a POST that differs takes it over.
        ``headers``: for a gated origin (its host alone); not part of what the
        download is, so a POST that differs only in them joins the running job."""
        with self._lock:
            if self._closed:
                raise ArwError("the service is shutting down", status=503, code="shutting-down",
                               title="Service unavailable")
            job = self._jobs.get(model_id)
            previous = None
            if job is not None and job.active and (job.stop_event.is_set() or job.terminal):
                # Its end is decided but not yet done (its events and signals are on
                # their way, or its transfer is stopping): joining it would be a lie,
                # and a new job now would race it. Installed already? Then say so.
                installed = self._installed_as_asked(model_id, url, sha256) if job.status is Status.COMPLETE else None
                if installed is None:
                    raise Conflict(f"the previous download of {model_id} is ending; try again in a moment",
                                   code="download-ending", job=job.snapshot())
                return 200, public_model(installed, self.state)
            if job is not None and job.active:
                if job.url == url and (sha256 is None or sha256 == job.sha256):
                    if rate_limit is not None:  # asked again with another limit: the new one holds
                        job.rate_limit = rate_limit
                        self.slots.rebalance()
                    # The running job, its status put as a start would have been: how it began.
                    return 202, {**job.snapshot(), **began_as(job)}
                if not job.auto:
                    raise Conflict(f"{model_id} is already downloading from another url or with another sha256",
                                   code="already-downloading", job=job.snapshot())
                # The service resumed it on its own with what an earlier run asked for; this
                # request says what is wanted now. Its .part is kept for the new job.
                log.info("download %s: a new request takes over the resumed download", model_id)
                previous = job
                self._stop_job(job, "superseded")
            installed = self._installed_as_asked(model_id, url, sha256)
            if installed is not None:
                return 200, public_model(installed, self.state)
            job = self._new_job(model_id, url, sha256, provider, auto=auto)
            job.rate_limit = rate_limit
            job.headers = dict(headers or {})
            job.after = previous
            self._unpause(model_id)
            self._jobs[model_id] = job
            prospect = outlook(self.state, model_id, url, sha256)
            job.downloaded = prospect["kept"]
            job.prospect = {k: v for k, v in prospect.items() if k != "status"}
            if self.slots.busy() >= self.settings.max_conc:
                job.announce()
            else:
                # What the slot will do, as the answer says it; the event comes when the
                # origin has answered.
                job.transition(Status.RESUMED if prospect["status"] == "resumed" else Status.STARTED, quiet=True)
            answer = {**job.snapshot(), **job.prospect}  # as it begins: a slot may take it over at once
            self.slots.enqueue(job)
            return 202, answer

    def _unpause(self, model_id: str) -> None:
        """A paused download is asked for again: a restart must resume it now."""
        sidecar = self.state.read_sidecar(model_id)
        if sidecar is not None and sidecar.pop("paused", None):
            self.state.write_sidecar(model_id, sidecar)

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

    # -- one attempt ------------------------------------------------------------------------

    def _run(self, job: DownloadJob) -> None:
        previous = job.after
        if previous is not None:
            previous.done.wait()  # the job this one takes over has let go of the .part
            job.after = None
        try:
            # Inside the try: a job whose transfer cannot even be set up must still end.
            download = self._downloads.get(job)
            if download is None:
                download = self._downloads[job] = Download(
                    job, self.settings, self.state, session=lambda: new_session(f"arw-models/{__version__}"),
                    opener=self.open_part, limits=self.check_limits,
                    checkpoint=lambda point: self.checkpoint(point, job),
                    adopt=lambda digest: self.adopter.adopt(job, digest))
            self._install(job, download.attempt())
        except JobStopped:
            self._stopped(job)
        except TransferError as err:
            self.checkpoint("failed", job)
            if err.retryable and self._retry_later(job, download, err):
                return  # not ended: its timer will queue it again
            if job.stop_event.is_set():
                self._stopped(job)  # the failure is the stop's doing
            else:
                self._failed(job, err)
        except Exception as exc:  # a bug must still end the job, visibly
            log.exception("download %s failed unexpectedly", job.id)
            # Only the class: the text of an unexpected error may quote a url with its credentials.
            self._failed(job, TransferError("internal-error", f"the service failed ({exc.__class__.__name__});"
                                            " its log has the details"))
        self._ended(job)

    def _retry_later(self, job: DownloadJob, download: Download, err: TransferError) -> bool:
        delay = download.retry_delay(err)
        if delay is None or (err.code in QUICK_CODES and download.failures > QUICK_RETRIES):
            return False
        self._note_ranges(job)  # before the timer: the next attempt writes the sidecar
        with self._lock:
            moved = job.transition(Status.RETRYING, unless_stopped=True, deferred=True, attempt=download.failures,
                                   delay_ms=int(delay * 1000), code=err.code, error=err.message,
                                   downloaded=job.downloaded)
            if moved is None:
                return False
            job.last_error = {"code": err.code, "error": err.message}
            job.retries += 1
            self.slots.wait(job, delay)
        log.info("download %s: %s; retry %d in %.2fs", job.id, err.message, download.failures, delay)
        job.notify(moved)
        return True

    def _install(self, job: DownloadJob, result: Result) -> None:
        """Moves a verified ``.part`` to its final name and records the model; a
        cancel either lands before the rename (and wins) or finds the job complete."""
        self.checkpoint("verified", job)
        state = self.state

        def install() -> dict[str, Any]:
            old = self.registry.get(job.id)
            own = old.get("file") if old else None
            taken = self.registry.files_in_use(except_id=job.id)
            final = free_name(result.name, job.id,
                               lambda n: n in taken or (n != own and os.path.lexists(state.model_path(n))))
            try:
                path = state.install_part(job.id, final)
            except FileNotFoundError:
                raise TransferError("resume-invalid", "the partial file disappeared", keep_part=False) from None
            remove_quietly(state.sidecar_path(job.id))
            self.registry.put({
                "id": job.id,
                "provider": job.provider,
                "status": "available",
                "file": final,
                "path": path,
                "sha256": result.digest,
                "sha256_source": result.sha256_source,
                "bytes": result.size,
                "url": job.url,
                "downloaded_at": utcnow(),
            })
            if own and own != final:
                remove_quietly(state.model_path(own))
            job.file = final
            job.downloaded = job.total = result.size
            done = {"file": final, "provider": job.provider, "sha256": result.digest, "bytes": result.size,
                    "sha256_source": result.sha256_source}
            done["path"] = path  # where a host (a signal receiver) finds the file, not just its name
            if result.deduplicated:
                done["deduplicated"] = True
            return done

        with self._lock:
            done = job.finish(install)
        if done is None:
            raise JobStopped()
        self.checkpoint("installed", job)

    def _stopped(self, job: DownloadJob) -> None:
        if job.stop_reason in ("shutdown", "superseded"):
            # The .part and its sidecar stay: the next start, or the job that took
            # this one over, continues them.
            self._note_ranges(job)
            job.transition(Status.INTERRUPTED, quiet=True)
            return
        if job.stop_reason == "pause":
            # The .part and its sidecar stay, marked so that a restart leaves them be.
            sidecar = self.state.read_sidecar(job.id) or {
                "id": job.id, "url": job.url, "sha256": job.sha256, "provider": job.provider, "created_at": utcnow(),
                **({"headers": dict(job.headers)} if job.headers else {})}
            sidecar["paused"] = True
            if job.accept_ranges is not None:
                sidecar["accept_ranges"] = job.accept_ranges
            try:
                self.state.write_sidecar(job.id, sidecar)
            except OSError as exc:
                # A full disk, say: the .part and its last record stay, only unmarked as
                # paused (a restart resumes it). The pause itself must not fail.
                log.warning("download %s: paused, but its sidecar cannot say so: %s", job.id, exc.strerror or exc)
            job.downloaded = on_disk(self.state, job.id) or 0
            job.transition(Status.PAUSED, downloaded=job.downloaded)
            return
        discarded = on_disk(self.state, job.id) or job.downloaded  # for the log: what the cancel threw away
        self.state.remove_partial(job.id)
        job.downloaded = 0
        job.transition(Status.CANCELED, downloaded=discarded)

    def _failed(self, job: DownloadJob, err: TransferError) -> None:
        # Logged once, from the error event, by the job log (logs.JobLog), with the bytes.
        if not err.keep_part:
            self.state.remove_partial(job.id)
        else:
            self._note_ranges(job)
        served = job.served()
        job.transition(Status.ERROR, code=err.code, error=err.message, downloaded=job.downloaded, **err.context,
                       **({"sources": served} if served is not None else {}))

    def _note_ranges(self, job: DownloadJob) -> None:
        """In the job's thread, between attempts: records in the sidecar whether the
        origin served ranges, so that a later resume's answer can say what it will
        keep (see listing.outlook). The transfer rewrites the sidecar from its own
        record while it runs; this is written when it has stopped."""
        if job.accept_ranges is None:
            return
        sidecar = self.state.read_sidecar(job.id)
        if sidecar is not None and sidecar.get("accept_ranges") is not job.accept_ranges:
            sidecar["accept_ranges"] = job.accept_ranges
            try:
                self.state.write_sidecar(job.id, sidecar)
            except OSError as exc:  # a full disk, say: only the answer's forecast is the poorer for it
                log.info("download %s: cannot note in its sidecar whether the origin serves ranges: %s", job.id,
                         exc.strerror or exc)

    def _ended(self, job: DownloadJob) -> None:
        """Marks the job done and forgets the oldest finished jobs beyond ``jobs_keep``,
        so that the job table does not grow with every id ever asked for."""
        job.finished_at = job.finished_at or utcnow()
        with self._lock:
            self._downloads.pop(job, None)
            self._finished[job.id] = job
            self._finished.move_to_end(job.id)
            while len(self._finished) > self.settings.jobs_keep:
                old_id, old = self._finished.popitem(last=False)
                if self._jobs.get(old_id) is old:  # not a newer job of the same id
                    del self._jobs[old_id]
            # Under the lock a POST takes: once the terminal event is out, the job is done.
            final = job.close()
        if final is not None:
            job.notify(final)
        if job.status is Status.COMPLETE:
            self._changed("add", job.id)

    # -- limits -------------------------------------------------------------------------------

    def check_limits(self, job: DownloadJob, total: int | None, offset: int) -> None:
        """Refuses a file over ``ARW_MODELS_MAX_MB``, or one the disk cannot hold
        beside the other downloads and the reserve. What the job's ``.part``
        already occupies is not asked for again: a ``.part`` preallocated for
        parallel ranges holds the blocks of the whole file, however few bytes are
        done, so a download cut short by a full disk can go on once a little
        space is free."""
        s = self.settings
        if total is None:
            return
        if s.max_bytes is not None and total > s.max_bytes:
            raise TransferError("size-limit", f"the file has {total} bytes, more than the limit of {s.max_bytes}",
                                keep_part=False, limit=s.max_bytes, expected_bytes=total)
        with self._lock:
            others = sum(max(0, j.total - j.downloaded) for j in self._jobs.values()
                         if j is not job and j.active and j.total is not None)
        held = storage.allocated(self.state.part_path(job.id))
        missing = max(0, total - max(offset, min(held, total)))
        need = missing + others + s.disk_reserve_bytes
        free = self.disk_free(self.state.models_dir)
        if free < need:
            raise TransferError(
                "disk-insufficient",
                f"not enough free space: {missing} bytes to fetch (besides the {held} the partial file holds), "
                f"{others} for other downloads and {s.disk_reserve_bytes} reserved, {free} free",
                needed=need, free=free,
            )

    # -- cancel, delete, listing --------------------------------------------------------------

    def _stop_job(self, job: DownloadJob, reason: str) -> None:
        """Under the lock: asks ``job`` to stop; one that holds no slot ends here."""
        job.stop(reason)
        if self.slots.take_back(job):
            self._stopped(job)
            self._ended(job)

    def pause(self, model_id: str, wait: float = 10.0) -> dict[str, Any]:
        """Stops a running, queued or waiting job, keeping its ``.part``; answers
        once it has stopped, with the job as it is then."""
        with self._lock:
            job = self._jobs.get(model_id)
            if job is None or not job.active or job.status is Status.COMPLETE or job.stop_event.is_set():
                raise NotFound(f"no download of {model_id} is running or queued", code="no-active-download")
            self._stop_job(job, "pause")
        job.done.wait(wait)
        return job_item(job, self.state)

    def resume(self, model_id: str) -> tuple[int, dict[str, Any]]:
        """Continues a paused (or any resumable) download with what it was asked
        for; a running one is answered as a repeated POST would be."""
        with self._lock:
            job = self._jobs.get(model_id)
            if job is not None and job.active:
                return self.submit(model_id, job.url, job.sha256, job.provider)
        sidecar = self.state.read_sidecar(model_id)
        if sidecar is None or not isinstance(sidecar.get("url"), str):
            raise NotFound(f"no download of {model_id} is paused or resumable", code="no-active-download")
        return self.submit(model_id, sidecar["url"], sidecar.get("sha256"), sidecar.get("provider") or "local",
                           rate_limit=_rate(sidecar), headers=_headers(sidecar))

    def cancel(self, model_id: str, wait: float = 10.0) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(model_id)
            if job is not None and job.active and job.status is not Status.COMPLETE:
                self._stop_job(job, "cancel")
                leftover = None
            else:
                # Nothing runs (or its model is installed already); a .part left by an
                # earlier run, a paused or a failed job is canceled too.
                part, sidecar = self.state.part_path(model_id), self.state.sidecar_path(model_id)
                if not (os.path.lexists(part) or os.path.lexists(sidecar)):
                    raise NotFound(f"no download of {model_id} is active or resumable", code="no-active-download")
                recorded = self.state.read_sidecar(model_id) or {}
                self.state.remove_partial(model_id)
                # The table answers for the id from now on as for any canceled job:
                # the paused (or failed) job it held would still say it is resumable.
                url = job.url if job is not None else str(recorded.get("url") or "")
                sha256 = job.sha256 if job is not None else recorded.get("sha256")
                sha256 = sha256 if isinstance(sha256, str) else None
                provider = job.provider if job is not None else str(recorded.get("provider") or "local")
                leftover = self._new_job(model_id, url, sha256, provider)
                leftover.transition(Status.CANCELED)
                self._jobs[model_id] = leftover
        if leftover is None:
            job.done.wait(wait)  # type: ignore[union-attr]
        else:
            self._ended(leftover)  # out of the lock: it tells the host's receivers
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
        return job_item(job, self.state) if job is not None else resumable_item(model_id, self.state)

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

    # -- start and stop -----------------------------------------------------------------------

    def start(self) -> None:
        """Sweeps stale partial files and resumes the others if so configured."""
        s = self.settings
        for path in self.state.sweep_temporaries():
            log.info("removed %s, left by a process that stopped while writing it", path)
        now = time.time()
        for model_id in list(self.state.partial_ids()):
            paths = [self.state.part_path(model_id), self.state.sidecar_path(model_id)]
            mtimes = [os.lstat(p).st_mtime for p in paths if os.path.lexists(p)]
            if mtimes and now - max(mtimes) > s.stale_part_secs:
                log.info("removing stale partial download %s", model_id)
                self.state.remove_partial(model_id)
                continue
            sidecar = self.state.read_sidecar(model_id)
            if sidecar and sidecar.get("paused"):
                log.info("leaving %s paused", model_id)
                continue
            if s.resume_on_start and sidecar and isinstance(sidecar.get("url"), str):
                log.info("resuming %s from %s", model_id, redact_url(sidecar["url"]))
                try:
                    self.submit(model_id, sidecar["url"], sidecar.get("sha256"), sidecar.get("provider") or "local",
                                auto=True, rate_limit=_rate(sidecar), headers=_headers(sidecar))
                except ArwError as exc:
                    log.warning("cannot resume %s: %s", model_id, exc.detail)

    def shutdown(self, wait: bool = True) -> None:
        """Stops every transfer, keeping its ``.part`` resumable."""
        with self._lock:
            self._closed = True
            for job in [j for j in self._jobs.values() if j.active]:
                self._stop_job(job, "shutdown")
        self.slots.close(wait)

    def find(self, model_id: str) -> DownloadJob | None:
        """The job of ``model_id`` the table holds (running, or among the last finished)."""
        with self._lock:
            return self._jobs.get(model_id)

    def wait(self, model_id: str, timeout: float | None = None) -> bool:
        with self._lock:
            job = self._jobs.get(model_id)
        return True if job is None else job.done.wait(timeout)


def _rate(sidecar: dict[str, Any]) -> int | None:
    value = sidecar.get("rate_limit")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _headers(sidecar: dict[str, Any]) -> dict[str, str]:
    """The gated origin's headers a paused or interrupted download was asked with."""
    value = sidecar.get("headers")
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
