"""What the listings show: an installed model, a job, and a download that left a
resumable ``.part`` behind (from this run or an earlier one); and what the answer
to a POST says of the bytes on disk."""

from __future__ import annotations

import os
from typing import Any

from ..engine.plan import Plan, continuation
from ..redact import redact_url
from ..store import folders
from ..store import sidecar as sidecars
from ..store.blobs import valid_digest
from ..store.sidecar import Sidecar
from ..store.storage import StateDir
from .jobs import DownloadJob, Status


def on_disk(state: StateDir, model_id: str, sidecar: Sidecar | None = None) -> int | None:
    """The bytes a partial download has: the size of its ``.part``, or, for one
    fetched in parallel ranges (preallocated to the whole size), what its ranges
    record."""
    size = state.part_size(model_id)
    if size is None:
        return None
    sidecar = sidecar if sidecar is not None else sidecars.read(state, model_id)
    if sidecar is not None:
        plan = Plan.from_json(sidecar.total, sidecar.ranges)
        if plan is not None and plan.segmented:
            return min(size, plan.durable)
    return size


def ranges_known(sidecar: Sidecar | None) -> bool | None:
    """Whether the origin of a partial download served byte ranges, as its sidecar
    says (a plan of several ranges shows it did); None when not known."""
    if sidecar is None:
        return None
    if sidecar.accept_ranges is not None:
        return sidecar.accept_ranges
    plan = Plan.from_json(sidecar.total, sidecar.ranges)
    return True if plan is not None and plan.segmented else None


def outlook(state: StateDir, model_id: str, url: str, sha256: str | None) -> dict[str, Any]:
    """What a POST (or a resume) of ``url`` will do with the bytes on disk:
    ``resumed`` keeping ``kept`` bytes, or ``started`` throwing ``discarded`` away.
    The continuation rule decides, and then the origin: one recorded not to serve
    ranges will send the whole file again. ``provisional``: the origin has not shown
    either way, so its first answer may still make a ``resumed`` start over."""
    sidecar = sidecars.read(state, model_id)
    have = on_disk(state, model_id, sidecar) or 0
    keeps = continuation(sidecar, state.part_size(model_id), url, sha256)
    ranges = ranges_known(sidecar)
    if keeps.resumes and have and ranges is not False:
        return {"status": "resumed", "kept": have, "discarded": 0, "provisional": ranges is None}
    return {"status": "started", "kept": 0, "discarded": have, "provisional": False}


def began_as(job: DownloadJob) -> dict[str, Any]:
    """What a repeated POST says of a running job: how it began, and what it keeps."""
    if not job.answered:  # the origin has not answered yet: as the first answer said
        status = "queued" if job.status is Status.QUEUED else (
            "resumed" if job.prospect.get("kept") or job.status is Status.RESUMED else "started")
        return {"status": status, **job.prospect}
    status = "queued" if job.status is Status.QUEUED else ("resumed" if job.offset else "started")
    return {"status": status, "kept": job.offset, "discarded": 0, "provisional": False}


def public_model(entry: dict[str, Any], state: StateDir) -> dict[str, Any]:
    """A registry entry as clients see it: the url redacted, ``path`` where its file
    is in this state directory, ``blob`` where the store keeps its bytes (left out
    for a model an older version installed that could not be stored), ``missing``
    if its file is gone (or is no longer a regular file)."""
    item = dict(entry)
    unstored = item.pop("unstored", False)
    item["url"] = redact_url(str(entry.get("url", "")))
    item["path"] = state.model_path(entry["file"])
    digest = entry.get("sha256")
    if not unstored and valid_digest(digest):
        item["blob"] = os.path.join(state.blobs_dir, str(digest))
    there = folders.is_folder(state, entry["file"]) if isinstance(entry.get("files"), list) else (
        state.has_model_file(entry["file"]))
    if not there:
        item["status"] = "missing"
    return item


def snapshot(job: DownloadJob) -> dict[str, Any]:
    """A job as the API shows it (in listings, in a repeated POST's answer, in a
    conflict's problem document)."""
    snap: dict[str, Any] = {
        "id": job.id,
        "url": redact_url(job.url),
        "provider": job.provider,
        "sha256": job.sha256,
        "status": job.status.value,
        "retries": job.retries,
        "created_at": job.created_at,
    }
    snap.update(job.progress_fields())
    if job.offset:
        snap["offset"] = job.offset
    if job.file:
        snap["file"] = job.file
    if job.error:
        snap.update(job.error)
    last_error = job.last_error
    if last_error:
        snap["last_error"] = dict(last_error)
    if job.finished_at:
        snap["finished_at"] = job.finished_at
    sources = job.served()
    if sources is not None:
        snap["sources"] = sources
    return snap


def job_item(job: DownloadJob, state: StateDir) -> dict[str, Any]:
    """A job's snapshot; one that ended and kept its ``.part`` says it is resumable
    and how many bytes are on disk."""
    snap = snapshot(job)
    size = on_disk(state, job.id)
    if not job.active and job.status not in (Status.COMPLETE, Status.CANCELED) and (
            size is not None or job.status is Status.PAUSED):
        snap["resumable"] = True
        snap["downloaded"] = size or 0
    return snap


def resumable_item(model_id: str, state: StateDir) -> dict[str, Any] | None:
    """A partial download with no job in memory, from its ``.part`` and sidecar."""
    sidecar = sidecars.read(state, model_id)
    size = on_disk(state, model_id, sidecar)
    if size is None and sidecar is None:
        return None
    paused = sidecar is not None and sidecar.paused
    item: dict[str, Any] = {"id": model_id, "status": "paused" if paused else "resumable",
                            "resumable": sidecar is not None, "downloaded": size or 0}
    if sidecar is not None:
        item["url"] = redact_url(sidecar.url or "")
        item["provider"] = sidecar.provider or "local"
        item["sha256"] = sidecar.sha256
        total = sidecar.total
        if total is not None:
            item["total"] = total
            if total:
                item["progress"] = min(100, (size or 0) * 100 // total)
    return item
