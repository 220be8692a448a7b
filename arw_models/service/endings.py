"""How a job that stops or fails leaves its ``.part``: kept for a resume (a pause,
a shutdown, a newer request that takes it over, a retryable failure), or removed
(a cancel, a failure that makes the bytes worthless); and the job's last status.

These run in the job's own thread (a slot's), or in the thread that stopped a job
holding no slot, always with no lock of the manager's held: they write sidecars,
and the status they set is told to the host's receivers (docs/design.rst,
"Concurrency").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from ..engine.plan import continuation
from ..errors import NotFound, TransferError
from ..store import sidecar as sidecars
from ..store.sidecar import Sidecar
from ..store.storage import StateDir, utcnow
from .jobs import DownloadJob, Status
from .listing import on_disk

log = logging.getLogger(__name__)


def stopped(state: StateDir, job: DownloadJob) -> None:
    """The job was asked to stop (:attr:`~DownloadJob.stop_reason` says why)."""
    if job.stop_reason in ("shutdown", "superseded"):
        # The .part and its sidecar stay: the next start, or the job that took
        # this one over, continues them.
        note_ranges(state, job)
        job.transition(Status.INTERRUPTED, quiet=True)
        return
    if job.stop_reason == "pause":
        # The .part and its sidecar stay (unless they are of an earlier request
        # this one does not keep), marked so that a restart leaves them be.
        sidecar = _asked_now(state, job)
        sidecar["paused"] = True
        if job.accept_ranges is not None:
            sidecar["accept_ranges"] = job.accept_ranges
        try:
            state.write_sidecar(job.id, sidecar)
        except OSError as exc:
            # A full disk, say: the .part and its last record stay, only unmarked as
            # paused (a restart resumes it). The pause itself must not fail.
            log.warning("download %s: paused, but its sidecar cannot say so: %s", job.id, exc.strerror or exc)
        job.downloaded = on_disk(state, job.id) or 0
        job.transition(Status.PAUSED, downloaded=job.downloaded)
        return
    discarded = on_disk(state, job.id) or job.downloaded  # for the log: what the cancel threw away
    state.remove_partial(job.id)
    job.downloaded = 0
    job.transition(Status.CANCELED, downloaded=discarded)


def _asked_now(state: StateDir, job: DownloadJob) -> dict[str, Any]:
    """The sidecar a paused job leaves, saying what this job was asked for: what a
    resume (or a restart) asks for again. A job paused before it started (queued)
    may find the ``.part`` and sidecar of an earlier request, of another url, digest
    or headers: its bytes stay, with what is known of them, if this request keeps
    them (as its first attempt would have), else they go, as the answer to its POST
    said."""
    asked = {"url": job.url, "sha256": job.sha256, "provider": job.provider, "rate_limit": job.rate_limit,
             **({"headers": dict(job.headers)} if job.headers else {})}
    previous = job.after
    if previous is not None:
        previous.done.wait()  # the job it took over has let go of the .part, as an attempt waits for
    recorded = state.read_sidecar(job.id)
    if recorded is not None:
        if {k: recorded.get(k) for k in (*asked, "headers")} == {"headers": None, **asked}:
            return recorded  # its own, written by its attempt
        recorded.pop("headers", None)
        if continuation(Sidecar.from_json(recorded), state.part_size(job.id), job.url, job.sha256).resumes:
            return {**recorded, **asked}
        state.truncate_part(job.id)
    return {"id": job.id, **asked, "created_at": utcnow()}


def cancel_leftover(state: StateDir, model_id: str, job: DownloadJob | None,
                    new_job: Callable[[str, str, str | None, str], DownloadJob]) -> DownloadJob:
    """A cancel with no job running (``job``: the paused, failed or finished one the
    table holds, if any): removes the ``.part`` and sidecar an earlier run, a pause
    or a failure left, and returns the canceled job that answers for the id from
    now on (the one it held would still say it is resumable). Under the manager's
    lock; the caller ends the job once it has let go."""
    part, sidecar = state.part_path(model_id), state.sidecar_path(model_id)
    if not (os.path.lexists(part) or os.path.lexists(sidecar)):
        raise NotFound(f"no download of {model_id} is active or resumable", code="no-active-download")
    recorded = sidecars.read(state, model_id) or Sidecar()
    state.remove_partial(model_id)
    url = job.url if job is not None else recorded.url or ""
    sha256 = job.sha256 if job is not None else recorded.sha256
    provider = job.provider if job is not None else recorded.provider or "local"
    leftover = new_job(model_id, url, sha256, provider)
    leftover.transition(Status.CANCELED)
    return leftover


def failed(state: StateDir, job: DownloadJob, err: TransferError) -> None:
    # Logged once, from the error event, by the job log (logs.JobLog), with the bytes.
    if not err.keep_part:
        state.remove_partial(job.id)
    else:
        note_ranges(state, job)
    served = job.served()
    job.transition(Status.ERROR, code=err.code, error=err.message, downloaded=job.downloaded, **err.context,
                   **({"sources": served} if served is not None else {}))


def note_ranges(state: StateDir, job: DownloadJob) -> None:
    """In the job's thread, between attempts: records in the sidecar whether the
    origin served ranges, so that a later resume's answer can say what it will
    keep (see listing.outlook). The transfer rewrites the sidecar from its own
    record while it runs; this is written when it has stopped."""
    if job.accept_ranges is None:
        return
    sidecar = state.read_sidecar(job.id)
    if sidecar is not None and sidecar.get("accept_ranges") is not job.accept_ranges:
        sidecar["accept_ranges"] = job.accept_ranges
        try:
            state.write_sidecar(job.id, sidecar)
        except OSError as exc:  # a full disk, say: only the answer's forecast is the poorer for it
            log.info("download %s: cannot note in its sidecar whether the origin serves ranges: %s", job.id,
                     exc.strerror or exc)
