"""The install of a model of many files: its folder in ``models/``, its manifest,
its registry entry.

Runs inside :meth:`~arw_models.service.jobs.DownloadJob.finish`, under the manager's
lock, as :func:`.install.install` does. Every file is in the store already (each was
put there once verified); the folder is built of links of those blobs beside its
final name and renamed into place in one step (:func:`arw_models.store.folders.build`),
then the manifest names every file, then the registry records the model, then the
staging folder goes. A crash before the manifest leaves the staging plan, which
keeps the blobs and resumes to this same install.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..engine.model import ModelDownload
from ..errors import TransferError
from ..redact import redact_url
from ..store import folders, gc
from ..store.blobs import Blobs
from ..store.manifests import VERSION, Manifests
from ..store.names import free_name
from ..store.registry import Registry
from ..store.staging import Staging
from ..store.storage import StateDir, utcnow
from .models import ModelJob


def install(state: StateDir, registry: Registry, job: ModelJob, download: ModelDownload) -> dict[str, Any]:
    """Builds the model's folder and records it; returns the ``complete`` event's fields."""
    blobs, manifests = Blobs(state), Manifests(state)
    fileset = download.fileset
    old = registry.get(job.id)
    own = old.get("file") if old else None
    taken = registry.files_in_use(except_id=job.id)
    name = free_name(job.id, job.id, lambda n: n in taken or (n != own and folders.exists(state, n)))
    listed: list[dict[str, Any]] = []
    for file in fileset.files:
        done = download.done[file.path]
        item: dict[str, Any] = {"path": file.path, "bytes": done.size, "sha256": done.sha256,
                                "sha256_source": done.sha256_source}
        if done.git_oid or file.git_oid:
            item["git_oid"] = done.git_oid or file.git_oid
        listed.append(item)
    for path, data in fileset.inline.items():
        digest = hashlib.sha256(data).hexdigest()
        folders.put_bytes(state, blobs, data, digest)
        listed.append({"path": path, "bytes": len(data), "sha256": digest, "sha256_source": "computed"})
    try:
        path = folders.build(state, blobs, name, [(f["path"], f["sha256"]) for f in listed])
    except FileNotFoundError as exc:
        raise TransferError("resume-invalid", f"a file of the model left the store: {exc}", keep_part=False) from None
    total = sum(f["bytes"] for f in listed)
    url = redact_url(job.url)
    now = utcnow()
    manifests.write({
        "version": VERSION, "id": job.id, "provider": job.provider, "url": url, "downloaded_at": now,
        "folder": name, "revision": fileset.revision,
        "files": [{"path": f["path"], "size": f["bytes"], "sha256": f["sha256"], "source": url,
                   "sha256_source": f["sha256_source"], "revision": fileset.revision,
                   **({"git_oid": f["git_oid"]} if "git_oid" in f else {})} for f in listed]})
    entry = {
        "id": job.id, "provider": job.provider, "status": "available", "file": name, "path": path,
        "sha256": None, "bytes": total, "url": job.url, "downloaded_at": now, "revision": fileset.revision,
        "selection": job.selection.to_json(),
        "files": [{k: v for k, v in f.items() if k != "sha256_source"} for f in listed],
    }
    registry.put(entry)
    if own and own != name:
        folders.remove_model(state, own)
    Staging(state, job.id).remove()
    if old is not None:
        gc.collect(blobs, manifests, _digests(old))
    job.file = name
    return {"file": name, "provider": job.provider, "sha256": None, "bytes": total, "path": path,
            "revision": fileset.revision, "files": entry["files"]}


def _digests(entry: dict[str, Any]) -> list[str | None]:
    """Every blob an entry's model names: its file's, or each of its folder's."""
    files = entry.get("files")
    digests = [f.get("sha256") for f in files if isinstance(f, dict)] if isinstance(files, list) else []
    return [entry.get("sha256"), *digests]


def uninstall(state: StateDir, registry: Registry, model_id: str) -> dict[str, Any] | None:
    """As :func:`.install.uninstall`, for a model of either kind: its manifest, entry
    and file or folder go, then the blobs no other model (or staged download) names."""
    blobs, manifests = Blobs(state), Manifests(state)
    entry = registry.get(model_id)
    if entry is None:
        return None
    manifests.remove(model_id)
    registry.remove(model_id)
    name = entry.get("file")
    if isinstance(name, str) and not any(e.get("file") == name for e in registry.all()):
        try:
            folders.remove_model(state, name)
        except ValueError:
            pass
    gc.collect(blobs, manifests, _digests(entry))
    return entry
