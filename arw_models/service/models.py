"""Model jobs: a download of many files (a hub repository, a registry's model).

A :class:`ModelJob` is a :class:`~arw_models.service.jobs.DownloadJob` (one status
machine, one slot, one bandwidth share, the same events) whose transfer is a
:class:`~arw_models.engine.model.ModelDownload`. Its snapshot and progress events
carry the totals as any job's do, plus ``revision`` and ``files``.

:func:`run` is one model job in its slot's thread: the reference is resolved once
(its plan, :mod:`arw_models.store.staging`, keeps the file set, so a resume, even
after a restart, fetches the same revision and is not resolved again), the disk is
budgeted for every byte not yet in the store before the first one is asked for, the
files are fetched, and the model is installed (:mod:`.model_install`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..engine.fileset import FileSet, InvalidFileSet, Selection
from ..engine.model import ModelDownload, ModelTransfer
from ..errors import ArwError, TransferError
from ..redact import redact_url
from ..store.blobs import Blobs
from ..store.staging import Staging, done_files, staged_ids
from ..store.storage import StateDir, utcnow
from .jobs import DownloadJob, Status
from .listing import snapshot


class ModelJob(ModelTransfer, DownloadJob):
    """The job of one model of many files."""

    def __init__(self, *args: Any, selection: Selection | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.selection = selection or Selection()
        self.hf_cache: bool | None = None

    def progress_fields(self) -> dict[str, Any]:
        fields = DownloadJob.progress_fields(self)
        fields["revision"] = self.revision
        fields["files"] = self.files_json()
        return fields


log = logging.getLogger(__name__)


def new_plan(job: ModelJob, fileset: FileSet) -> dict[str, Any]:
    """The staging plan of a job just resolved: what a resume needs to go on
    without resolving again (the request's headers too: the plan is 0600)."""
    plan: dict[str, Any] = {
        "id": job.id, "url": job.url, "provider": job.provider, "selection": job.selection.to_json(),
        "fileset": fileset.to_json(), "rate_limit": job.rate_limit, "force": job.force, "hf_cache": job.hf_cache,
        "created_at": utcnow(), "done": {}}
    if job.headers:
        plan["headers"] = dict(job.headers)
    return plan


def plan_matches(plan: dict[str, Any] | None, url: str, selection: Selection) -> bool:
    return plan is not None and plan.get("url") == url and Selection.from_json(plan.get("selection")) == selection


def staged_fileset(plan: dict[str, Any]) -> FileSet | None:
    try:
        return FileSet.from_json(plan["fileset"])
    except (KeyError, TypeError, ValueError, InvalidFileSet):
        return None


def run(job: ModelJob, settings: Settings, state: StateDir, references: Any, *, session: Callable[[], Any],
        opener: Any, lock: Any, budget: Callable[[DownloadJob, int | None, int], None],
        checkpoint: Callable[[str], None]) -> ModelDownload:
    """Resolves (or reads the plan of) the model, budgets the disk, and fetches
    every file; returns the finished download for the install. Raises
    :class:`~arw_models.errors.TransferError` or
    :class:`~arw_models.errors.JobStopped`."""
    staging = Staging(state, job.id)
    plan = staging.read_plan()
    fileset = staged_fileset(plan) if plan_matches(plan, job.url, job.selection) else None
    if plan is not None and fileset is not None:
        authorize = references.authorizer(job.url, settings, job.headers)
        if plan.pop("paused", None):
            staging.write_plan(plan)
    else:
        staging.remove()  # another request's, or unreadable
        resolving = session()
        try:
            fileset, authorize = references.resolve(job.url, job.selection, settings, resolving, job.headers)
        finally:
            resolving.close()
        plan = new_plan(job, fileset)
        staging.write_plan(plan)
        log.info("download %s: %s resolved to %d files at %s", job.id, redact_url(job.url), len(fileset.files),
                 fileset.revision)
    download = ModelDownload(job, fileset, authorize, settings, staging, plan, session=session, opener=opener,
                             lock=lock, force=job.force, checkpoint=checkpoint)
    missing = download.prepare()
    budget(job, missing, 0)  # every byte not in the store yet, before the first is asked for
    total = sum(f.total or 0 for f in job.files)
    job.began(job.downloaded, total)
    download.run()
    job.verifying()
    return download


# -- the listings ---------------------------------------------------------------------------


def done_size(done: dict[str, Any]) -> int | None:
    """The size a plan records for a file done; None when it is no count of bytes
    (a plan damaged by hand or by the disk: the listings and a resume go on)."""
    size = done.get("size")
    return size if isinstance(size, int) else None


def staged_item(state: StateDir, model_id: str) -> dict[str, Any] | None:
    """A staged model download with no job in memory, from its plan."""
    staging = Staging(state, model_id)
    plan = staging.read_plan()
    if plan is None:
        return None
    fileset = staged_fileset(plan)
    done = done_files(plan)
    files = []
    for file in fileset.files if fileset is not None else ():
        finished = done.get(file.path)
        if finished is not None:
            # A file listed with no size has one once it is done, as the running job shows it.
            size = done_size(finished)
            files.append({"path": file.path, "downloaded": size, "total": file.size if file.size is not None else size,
                          "status": "stored" if finished.get("stored") else "complete"})
        else:
            files.append({"path": file.path, "downloaded": 0, "total": file.size, "status": "queued"})
    downloaded = sum(f["downloaded"] or 0 for f in files)
    total = sum(f["total"] or 0 for f in files)
    item: dict[str, Any] = {
        "id": model_id, "status": "paused" if plan.get("paused") else "resumable", "resumable": True,
        "url": redact_url(str(plan.get("url") or "")), "provider": plan.get("provider") or "hf", "sha256": None,
        "downloaded": downloaded, "total": total, "revision": fileset.revision if fileset else None, "files": files}
    if total:
        item["progress"] = min(100, downloaded * 100 // total)
    return item


def staged_items(state: StateDir, skip: Callable[[str], bool]) -> list[dict[str, Any]]:
    return [item for model_id in staged_ids(state) if not skip(model_id)
            for item in [staged_item(state, model_id)] if item is not None]


# -- how a model job ends -------------------------------------------------------------------


def stopped(state: StateDir, job: ModelJob) -> None:
    """As :func:`.endings.stopped`, for a model: its staging folder is kept (a
    pause marks its plan), or removed (a cancel)."""
    staging = Staging(state, job.id)
    if job.stop_reason in ("shutdown", "superseded"):
        job.transition(Status.INTERRUPTED, quiet=True)
        return
    if job.stop_reason == "pause":
        plan = staging.read_plan()
        if plan is not None:
            plan["paused"] = True
            try:
                staging.write_plan(plan)
            except OSError as exc:
                log.warning("download %s: paused, but its plan cannot say so: %s", job.id, exc.strerror or exc)
        job.transition(Status.PAUSED, downloaded=job.downloaded, **last_files(job))
        return
    discarded = job.downloaded
    staging.remove()  # blobs its plan named go at the next collection, unless a model names them
    job.files = []
    job.downloaded = 0
    job.transition(Status.CANCELED, downloaded=discarded)


def failed(state: StateDir, job: ModelJob, err: TransferError) -> None:
    """The staging folder stays (the files done are not fetched again by a resume)."""
    job.transition(Status.ERROR, code=err.code, error=err.message, downloaded=job.downloaded, **last_files(job),
                   **err.context)


def last_files(job: ModelJob) -> dict[str, Any]:
    """The files as the job's last event leaves them: a client that follows the
    events (the CLI, the web page) shows each file's end, a ``failed`` one too,
    without asking for the snapshot."""
    return {"revision": job.revision, "files": job.files_json()} if job.files else {}


def dry_run(state: StateDir, settings: Settings, references: Any, model_id: str, url: str, selection: Selection,
            headers: dict[str, str], session: Callable[[], Any]) -> dict[str, Any]:
    """What a download of ``url`` would fetch: nothing is started or written."""
    resolving = session()
    try:
        fileset, _ = references.resolve(url, selection, settings, resolving, headers)
    finally:
        resolving.close()
    blobs = Blobs(state)
    files, to_fetch = [], 0
    for file in fileset.files:
        st = blobs.stat(file.sha256) if file.sha256 else None
        in_store = st is not None and (file.size is None or st.st_size == file.size)
        files.append({"path": file.path, "bytes": file.size, "sha256": file.sha256, "in_store": in_store})
        if not in_store:
            to_fetch += file.size or 0
    for path, data in fileset.inline.items():
        files.append({"path": path, "bytes": len(data), "sha256": None, "in_store": False})
    total = sum(f["bytes"] or 0 for f in files)
    return {"id": model_id, "url": redact_url(url), "provider": fileset.provider, "revision": fileset.revision,
            "files": files, "total": total, "to_fetch": to_fetch}


def outlook(state: StateDir, model_id: str, url: str, selection: Selection) -> dict[str, Any]:
    """What a POST of a model will do with its staging folder: resume it when it is
    of the same request (its files done are kept), else start anew."""
    plan = Staging(state, model_id).read_plan()
    if plan is None:
        return {"status": "started", "kept": 0, "discarded": 0, "provisional": False}
    kept = sum(done_size(d) or 0 for d in done_files(plan).values())
    if plan_matches(plan, url, selection):
        return {"status": "resumed" if kept else "started", "kept": kept, "discarded": 0, "provisional": False}
    return {"status": "started", "kept": 0, "discarded": kept, "provisional": False}


@dataclass
class Asked:
    """What a staging plan says its download was asked with."""

    url: str
    provider: str
    selection: Selection
    rate_limit: int | None
    headers: dict[str, str]
    force: bool
    hf_cache: bool | None
    paused: bool


def asked_with(state: StateDir, model_id: str) -> Asked | None:
    plan = Staging(state, model_id).read_plan()
    if plan is None or not isinstance(plan.get("url"), str):
        return None
    headers = plan.get("headers") if isinstance(plan.get("headers"), dict) else {}
    rate = plan.get("rate_limit")
    return Asked(url=plan["url"], provider=str(plan.get("provider") or "hf"),
                 selection=Selection.from_json(plan.get("selection")),
                 rate_limit=rate if isinstance(rate, int) else None, headers=dict(headers),
                 force=bool(plan.get("force")), hf_cache=plan.get("hf_cache"), paused=bool(plan.get("paused")))


def cancel_leftover(state: StateDir, model_id: str, job: DownloadJob | None,
                    new_job: Callable[..., DownloadJob]) -> DownloadJob | None:
    """A cancel with no model job running: removes the staging folder a pause, a
    failure or an earlier run left, and returns the canceled job that answers for
    the id from now on; None when there is no staging folder."""
    staging = Staging(state, model_id)
    asked = asked_with(state, model_id)
    if not staging.remove():
        return None
    url = job.url if job is not None else asked.url if asked is not None else ""
    provider = job.provider if job is not None else asked.provider if asked is not None else "hf"
    leftover = new_job(model_id, url, None, provider, selection=asked.selection if asked else Selection())
    leftover.transition(Status.CANCELED)
    return leftover


def job_item(job: ModelJob, state: StateDir) -> dict[str, Any]:
    """A model job's snapshot; one that ended and kept its staging says it is resumable."""
    snap = snapshot(job)
    if not job.active and job.status not in (Status.COMPLETE, Status.CANCELED) and Staging(state, job.id).exists():
        snap["resumable"] = True
    return snap


def recover(settings: Settings, state: StateDir, submit: Callable[..., Any]) -> None:
    """At start: a staging folder untouched for longer than
    ``ARW_DL_STALE_PART_SECS`` goes; a paused one stays paused; the others resume
    from their plans (no second resolution: the revision holds)."""
    now = time.time()
    for model_id in staged_ids(state):
        staging = Staging(state, model_id)
        mtime = staging.mtime()
        if mtime is not None and now - mtime > settings.stale_part_secs:
            log.info("removing stale staged download %s", model_id)
            staging.remove()
            continue
        asked = asked_with(state, model_id)
        if asked is None:
            log.info("removing staged download %s: its plan is unreadable", model_id)
            staging.remove()
            continue
        if asked.paused:
            log.info("leaving %s paused", model_id)
            continue
        if not settings.resume_on_start:
            continue
        log.info("resuming %s from %s", model_id, redact_url(asked.url))
        try:
            submit(model_id, asked.url, None, asked.provider, auto=True, rate_limit=asked.rate_limit,
                   headers=asked.headers, selection=asked.selection, force=asked.force, hf_cache=asked.hf_cache)
        except ArwError as exc:
            log.warning("cannot resume %s: %s", model_id, exc.detail)
