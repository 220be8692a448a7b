"""The job table and its operations: the coordinator of the service.

:class:`DownloadManager` holds the job table (the live jobs, and the last
``ARW_JOBS_KEEP`` finished ones) and the :class:`~arw_models.service.slots.Slots`,
and answers the API's calls on them. What each operation decides lives in a module
of its own: the submit policy in :mod:`.submit`, the install of a verified result
in :mod:`.install`, the disk budget in :mod:`.budget`, how a stopped or failed job
leaves its ``.part`` in :mod:`.endings`, start-up recovery in :mod:`.recovery`. A
job's status changes only through :meth:`~arw_models.service.jobs.DownloadJob.transition`.
About 400 lines: the table's operations themselves, each a few lines under the
lock that call out to those modules.

Which thread runs what, which locks exist and in which order they are taken is
written once, in docs/design.rst ("Concurrency"). Here: the table, the slots'
queue and the registry's installs and deletes are read and changed under the
manager's lock; nothing that calls host code (signal receivers, the observer) runs
under it, so the operations gather what they have to tell and tell it once they
have let go (:meth:`DownloadManager._locked`).

Declared seams, for tests and for embedding: :attr:`DownloadManager.open_part`
(how a ``.part`` is opened for writing; set it before the job starts),
:attr:`~DownloadManager.disk_free`, :attr:`~DownloadManager.checkpoint` (called
with a point's name and the job, in the job's thread: ``transferred`` when the body
is on disk, ``verified`` before the install, ``installed`` after it, ``answered``
once the origin's answer has come (before it is checked), ``failed``
when an attempt failed, before the retry is decided), the ``clock``, and
:attr:`~DownloadManager.references` (what says which urls name a model of many files
and resolves them: :mod:`arw_models.engine.references`, or a resolver of the same
three functions, ``names_many``, ``resolve`` and ``authorizer``). A model of many
files is a :class:`~.models.ModelJob` in the same table; its run, listings and ends
are :mod:`.models`'s, its install :mod:`.model_install`'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .._version import __version__
from ..config import Settings
from ..engine import Download, references
from ..engine.fetch import QUICK_CODES, QUICK_RETRIES
from ..engine.fileset import Selection
from ..engine.http import new_session
from ..engine.ratelimit import shares
from ..engine.references import provider_of
from ..errors import ArwError, Conflict, JobStopped, NotFound, TransferError
from ..store import sidecar as sidecars
from ..store import storage
from ..store.registry import Registry
from ..store.storage import StateDir, utcnow
from . import budget, endings, install, model_install, models, recovery
from .dedup import Adopter
from .events import EventHub
from .jobs import DownloadJob, Status
from .listing import began_as, job_item, outlook, public_model, resumable_item, snapshot
from .slots import Slots
from .submit import Verdict, asked_with, installed_as_asked, unpause, verdict

log = logging.getLogger(__name__)

PROGRESS = "Models.DownloadProgress"
CHANGED = "Models.Changed"

# What an operation tells once the manager's lock is released.
Later = list[Callable[[], None]]


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
        self.references: Any = references
        self._jobs: dict[str, DownloadJob] = {}
        # Finished jobs, oldest first: the last ARW_JOBS_KEEP stay answerable.
        self._finished: OrderedDict[str, DownloadJob] = OrderedDict()
        self._downloads: dict[DownloadJob, Download] = {}
        self._lock = threading.RLock()
        self.rate_limit: int | None = settings.rate_limit
        self.slots = Slots(settings.max_conc, settings.progress_interval, self._lock, self._run, clock,
                           self._balance)
        self._closed = False
        self.adopter = Adopter(state, registry, self._lock, self.check_budget)

    @contextmanager
    def _locked(self) -> Iterator[Later]:
        """The manager's lock, and a list of steps to run once it is released: what
        tells host code (receivers, the observer) of what happened under it. Never
        taken by a thread that holds the lock already: its steps would run under it."""
        later: Later = []
        try:
            with self._lock:
                yield later
        finally:
            for step in later:
                step()

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

    def _new_job(self, model_id: str, url: str, sha256: str | None, provider: str, auto: bool = False,
                 selection: Selection | None = None) -> DownloadJob:
        if selection is not None:
            return models.ModelJob(model_id, url, None, provider, self._publish, self._signal, auto=auto,
                                   clock=self.clock, selection=selection)
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
               headers: dict[str, str] | None = None, selection: Selection | None = None, force: bool = False,
               hf_cache: bool | None = None) -> tuple[int, dict[str, Any]]:
        """Starts, resumes or joins a download; (200, model) when already installed.
        ``auto``: resumed by the service itself, so a POST that differs takes it over.
        ``headers``: for a gated origin (its host alone); not part of what the
        download is, so a POST that differs only in them joins the running job.
        A url that names many files (``references.names_many``) is a model job, of
        the files ``selection`` picks; ``force`` fetches again what is installed or
        in the store."""
        if selection is None and self.references.names_many(url):
            selection = Selection()
        if selection is not None and provider == "local":  # not said: the source's own name
            provider = provider_of(url)
        with self._locked() as later:
            if self._closed:
                raise ArwError("the service is shutting down", status=503, code="shutting-down",
                               title="Service unavailable")
            job = self._jobs.get(model_id)
            previous = None
            decided = verdict(job, url, sha256, selection)
            if decided is Verdict.ENDING:
                assert job is not None
                # Installed already? Then say so.
                installed = (self._installed_as_asked(model_id, url, sha256, selection)
                             if job.status is Status.COMPLETE and not force else None)
                if installed is None:
                    raise Conflict(f"the previous download of {model_id} is ending; try again in a moment",
                                   code="download-ending", job=snapshot(job))
                return 200, public_model(installed, self.state)
            if decided is Verdict.JOIN:
                assert job is not None
                if rate_limit is not None:  # asked again with another limit: the new one holds
                    job.rate_limit = rate_limit
                    self.slots.rebalance()
                # The running job, its status put as a start would have been: how it began.
                return 202, {**snapshot(job), **began_as(job)}
            if decided is Verdict.CONFLICT:
                assert job is not None
                raise Conflict(f"{model_id} is already downloading from another url or with another sha256",
                               code="already-downloading", job=snapshot(job))
            if decided is Verdict.TAKE_OVER:
                assert job is not None
                # Its .part is kept for the new job.
                log.info("download %s: a new request takes over the resumed download", model_id)
                previous = job
                self._stop_job(job, "superseded", later)
            installed = None if force else self._installed_as_asked(model_id, url, sha256, selection)
            if installed is not None:
                return 200, public_model(installed, self.state)
            job = self._new_job(model_id, url, sha256, provider, auto=auto, selection=selection)
            job.force = force
            if isinstance(job, models.ModelJob):
                job.hf_cache = hf_cache
            job.rate_limit = rate_limit
            job.headers = dict(headers or {})
            job.after = previous
            unpause(self.state, model_id)
            self._jobs[model_id] = job
            prospect = (models.outlook(self.state, model_id, url, selection) if selection is not None
                        else outlook(self.state, model_id, url, sha256))
            job.downloaded = prospect["kept"]
            job.prospect = {k: v for k, v in prospect.items() if k != "status"}
            if self.slots.busy() >= self.settings.max_conc:
                job.announce()
                later.append(job.tell)
            else:
                # What the slot will do, as the answer says it; the event comes when the
                # origin has answered.
                job.transition(Status.RESUMED if prospect["status"] == "resumed" else Status.STARTED, quiet=True)
            answer = {**snapshot(job), **job.prospect}  # as it begins: a slot may take it over at once
            self.slots.enqueue(job)
            return 202, answer

    def _installed_as_asked(self, model_id: str, url: str, sha256: str | None,
                            selection: Selection | None = None) -> dict[str, Any] | None:
        return installed_as_asked(self.registry, self.state, model_id, url, sha256, selection)

    def dry_run(self, model_id: str, url: str, selection: Selection, headers: dict[str, str]) -> dict[str, Any]:
        """What a download of the model at ``url`` would fetch; nothing starts."""
        return models.dry_run(self.state, self.settings, self.references, model_id, url, selection, headers,
                              self._session)

    def _session(self) -> Any:
        return new_session(f"arw-models/{__version__}")

    # -- one attempt ------------------------------------------------------------------------

    def _run(self, job: DownloadJob) -> None:
        """In a slot's thread, holding no lock: one attempt of the job."""
        previous = job.after
        if previous is not None:
            previous.done.wait()  # the job this one takes over has let go of the .part
            job.after = None
        if isinstance(job, models.ModelJob):
            self._run_model(job)
            return
        try:
            # Inside the try: a job whose transfer cannot even be set up must still end.
            download = self._downloads.get(job)
            if download is None:
                download = self._downloads[job] = Download(
                    job, self.settings, self.state, session=lambda: new_session(f"arw-models/{__version__}"),
                    opener=self.open_part, budget=self.check_budget,
                    checkpoint=lambda point: self.checkpoint(point, job),
                    adopt=None if job.force else lambda digest: self.adopter.adopt(job, digest))
            self._install(job, download.attempt())
        except JobStopped:
            endings.stopped(self.state, job)
        except TransferError as err:
            self.checkpoint("failed", job)
            if err.retryable and self._retry_later(job, download, err):
                return  # not ended: its timer will queue it again
            if job.stop_event.is_set():
                endings.stopped(self.state, job)  # the failure is the stop's doing
            else:
                endings.failed(self.state, job, err)
        except Exception as exc:  # a bug must still end the job, visibly
            log.exception("download %s failed unexpectedly", job.id)
            # Only the class: the text of an unexpected error may quote a url with its credentials.
            endings.failed(self.state, job, TransferError(
                "internal-error", f"the service failed ({exc.__class__.__name__}); its log has the details"))
        self._ended(job)

    def _run_model(self, job: models.ModelJob) -> None:
        """In a slot's thread: the whole model, its files' retries its own."""
        try:
            download = models.run(job, self.settings, self.state, self.references, session=self._session,
                                  opener=self.open_part, lock=self._lock, budget=self.check_budget,
                                  checkpoint=lambda point: self.checkpoint(point, job))
            self.checkpoint("verified", job)
            with self._lock:
                done = job.finish(lambda: model_install.install(
                    self.state, self.registry, job, download,
                    model_install.hf_cache_dir(self.settings, job.hf_cache),
                    gated=install.gated(job.url, job.headers, self.settings.hf_token)))
            if done is None:
                raise JobStopped()
            self.checkpoint("installed", job)
        except JobStopped:
            models.stopped(self.state, job)
        except TransferError as err:
            self.checkpoint("failed", job)
            if job.stop_event.is_set():
                models.stopped(self.state, job)
            else:
                models.failed(self.state, job, err)
        except Exception as exc:  # a bug must still end the job, visibly
            log.exception("download %s failed unexpectedly", job.id)
            models.failed(self.state, job, TransferError(
                "internal-error", f"the service failed ({exc.__class__.__name__}); its log has the details"))
        self._ended(job)

    def _retry_later(self, job: DownloadJob, download: Download, err: TransferError) -> bool:
        delay = download.retry_delay(err)
        if delay is None or (err.code in QUICK_CODES and download.failures > QUICK_RETRIES):
            return False
        endings.note_ranges(self.state, job)  # before the timer: the next attempt writes the sidecar
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
        job.tell()
        return True

    def _install(self, job: DownloadJob, result: Any) -> None:
        """Moves a verified ``.part`` to its final name and records the model; a
        cancel either lands before the rename (and wins) or finds the job complete."""
        self.checkpoint("verified", job)
        with self._lock:
            done = job.finish(lambda: install.install(self.state, self.registry, job, result,
                                                      gated=install.gated(job.url, job.headers,
                                                                          self.settings.hf_token)))
        if done is None:
            raise JobStopped()
        self.checkpoint("installed", job)

    def _ended(self, job: DownloadJob) -> None:
        """Marks the job done and forgets the oldest finished jobs beyond ``jobs_keep``,
        so that the job table does not grow with every id ever asked for. Called
        with no lock held: it tells the job's last event."""
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
            job.close()
        job.tell()
        if job.status is Status.COMPLETE:
            self._changed("add", job.id)

    def check_budget(self, job: DownloadJob, total: int | None, offset: int) -> None:
        """Refuses a file over ``ARW_MODELS_MAX_MB``, or one the disk cannot hold
        beside the other downloads and the reserve (:func:`.budget.check_budget`)."""
        if total is None:
            return
        with self._lock:
            others = sum(max(0, j.total - j.downloaded) for j in self._jobs.values()
                         if j is not job and j.active and j.total is not None)
        budget.check_budget(self.settings, self.state, self.disk_free, job.id, total, offset, others)

    # -- pause, cancel, delete, listing -------------------------------------------------------

    def _stop_job(self, job: DownloadJob, reason: str, later: Later) -> None:
        """Under the lock: asks ``job`` to stop. One that holds no slot ends once the
        lock is released (``later``): no slot will take it any more."""
        job.stop(reason)
        if self.slots.take_back(job):
            later.append(lambda: self._end_stopped(job))

    def _end_stopped(self, job: DownloadJob) -> None:
        if isinstance(job, models.ModelJob):
            models.stopped(self.state, job)
        else:
            endings.stopped(self.state, job)
        self._ended(job)

    def pause(self, model_id: str, wait: float = 10.0) -> dict[str, Any]:
        """Stops a running, queued or waiting job, keeping its ``.part``; answers
        once it has stopped, with the job as it is then."""
        with self._locked() as later:
            job = self._jobs.get(model_id)
            if job is None or not job.active or job.status is Status.COMPLETE or job.stop_event.is_set():
                raise NotFound(f"no download of {model_id} is running or queued", code="no-active-download")
            self._stop_job(job, "pause", later)
        job.done.wait(wait)
        return job_item(job, self.state)

    def resume(self, model_id: str) -> tuple[int, dict[str, Any]]:
        """Continues a paused (or any resumable) download with what it was asked
        for; a running one is answered as a repeated POST would be."""
        with self._lock:
            job = self._jobs.get(model_id)
        if job is not None and job.active:
            return self.submit(model_id, job.url, job.sha256, job.provider, rate_limit=job.rate_limit,
                               headers=job.headers, selection=getattr(job, "selection", None), force=job.force,
                               hf_cache=getattr(job, "hf_cache", None))
        staged = models.asked_with(self.state, model_id)
        if staged is not None:
            return self.submit(model_id, staged.url, None, staged.provider, rate_limit=staged.rate_limit,
                               headers=staged.headers, selection=staged.selection, force=staged.force,
                               hf_cache=staged.hf_cache)
        asked = asked_with(sidecars.read(self.state, model_id))
        if asked is None:
            raise NotFound(f"no download of {model_id} is paused or resumable", code="no-active-download")
        return self.submit(model_id, asked.url, asked.sha256, asked.provider, rate_limit=asked.rate_limit,
                           headers=asked.headers)

    def cancel(self, model_id: str, wait: float = 10.0) -> dict[str, Any]:
        with self._locked() as later:
            job = self._jobs.get(model_id)
            if job is not None and job.active and job.status is not Status.COMPLETE:
                self._stop_job(job, "cancel", later)
                leftover = None
            else:
                # Nothing runs (or its model is installed already); a .part left by an
                # earlier run, a paused or a failed job is canceled too.
                leftover = (models.cancel_leftover(self.state, model_id, job, self._new_job)
                            or endings.cancel_leftover(self.state, model_id, job, self._new_job))
                self._jobs[model_id] = leftover
                later.append(lambda: self._ended(leftover))
        if leftover is None:
            job.done.wait(wait)  # type: ignore[union-attr]
        return {"id": model_id, "status": "canceled"}

    def delete(self, model_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(model_id)
            if job is not None and job.active:
                raise Conflict(f"{model_id} is downloading; cancel it first", code="download-in-progress")
            entry = model_install.uninstall(self.state, self.registry, model_id)
            if entry is None:
                raise NotFound(f"no model {model_id} is installed", code="unknown-model")
        self._changed("remove", model_id)
        return {"id": model_id, "status": "deleted"}

    def job(self, model_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(model_id)
        if job is not None:
            return models.job_item(job, self.state) if isinstance(job, models.ModelJob) else job_item(job, self.state)
        return resumable_item(model_id, self.state) or models.staged_item(self.state, model_id)

    def jobs(self) -> list[dict[str, Any]]:
        """Active jobs, then downloads that left a resumable ``.part``."""
        with self._lock:
            jobs = dict(self._jobs)
        items = [snapshot(j) for j in jobs.values() if j.active]
        for model_id in self.state.partial_ids():
            job = jobs.get(model_id)
            if job is not None and job.active:
                continue
            item = self.job(model_id)
            if item is not None and item.get("resumable"):
                items.append(item)
        items.extend(models.staged_items(self.state, lambda model_id: model_id in jobs and jobs[model_id].active))
        return items

    # -- start and stop -----------------------------------------------------------------------

    def start(self) -> None:
        """Sweeps stale partial files and resumes the others if so configured."""
        recovery.recover(self.settings, self.state, self.submit)
        models.recover(self.settings, self.state, self.submit)

    def shutdown(self, wait: bool = True) -> None:
        """Stops every transfer, keeping its ``.part`` resumable."""
        with self._locked() as later:
            self._closed = True
            for job in [j for j in self._jobs.values() if j.active]:
                self._stop_job(job, "shutdown", later)
        self.slots.close(wait)

    def find(self, model_id: str) -> DownloadJob | None:
        """The job of ``model_id`` the table holds (running, or among the last finished)."""
        with self._lock:
            return self._jobs.get(model_id)

    def wait(self, model_id: str, timeout: float | None = None) -> bool:
        with self._lock:
            job = self._jobs.get(model_id)
        return True if job is None else job.done.wait(timeout)
