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
import logging
import os
from typing import Any

from ..config import Settings
from ..engine import hub
from ..engine.model import ModelDownload
from ..errors import TransferError
from ..redact import redact_url
from ..store import folders, gc, hfcache
from ..store.blobs import Blobs
from ..store.manifests import VERSION, Manifests
from ..store.names import free_name
from ..store.registry import Registry
from ..store.staging import Staging
from ..store.storage import StateDir, utcnow
from .models import ModelJob

log = logging.getLogger(__name__)


def install(state: StateDir, registry: Registry, job: ModelJob, download: ModelDownload,
            hf_cache: str | None = None, *, gated: bool = False) -> dict[str, Any]:
    """Builds the model's folder and records it; returns the ``complete`` event's
    fields. ``hf_cache``: a Hugging Face cache folder the model of a hub repository is
    also put in (hard-linked), so that huggingface_hub opens it offline."""
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
        if done.git_oid:  # its listing's: every file done carries the git blob id it was listed with
            item["git_oid"] = done.git_oid
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
        "folder": name, "revision": fileset.revision, "gated": gated,
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
    # The event's files in the shape every event of the job gives them (a client
    # merges them by path over what it saw last: without a status, a file would stay
    # "verifying" there), and what the entry says of each.
    stored = {p for p, d in download.done.items() if d.stored}
    done = {"file": name, "provider": job.provider, "sha256": None, "bytes": total, "path": path,
            "revision": fileset.revision,
            "files": [{"path": f["path"], "downloaded": f["bytes"], "total": f["bytes"],
                       "status": "stored" if f["path"] in stored else "complete", **f} for f in entry["files"]]}
    if hf_cache is not None and hub.names_many(job.url):
        snapshot = export_to_hf_cache(hf_cache, blobs, job, fileset.revision, listed)
        if snapshot is not None:
            done["hf_cache"] = snapshot
    return done


def hf_cache_dir(settings: Settings, asked: bool | None) -> str | None:
    """Where a hub model is also put for huggingface_hub: ``ARW_HF_CACHE``, unless the
    request said no; a request that asks with no folder set gets huggingface_hub's
    own (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    if asked is False or (asked is None and settings.hf_cache is None):
        return None
    if settings.hf_cache is not None:
        return settings.hf_cache
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")


def export_to_hf_cache(cache: str, blobs: Blobs, job: ModelJob, commit: str,
                       listed: list[dict[str, Any]]) -> str | None:
    """The hub model's files, also in the Hugging Face cache at ``cache``; the
    snapshot folder, or None when the export failed (the model is installed all the
    same: the cache is a second way in, and the failure is logged)."""
    ref = hub.parse_repo(job.url)
    kind = {"datasets": "dataset", "spaces": "space"}.get(ref.kind or "", "model")
    # huggingface_hub names a blob by its etag: an LFS file's SHA-256, a small file's git blob id.
    files = [(f["path"], blobs.path(f["sha256"]), f.get("git_oid") or f["sha256"]) for f in listed]
    try:
        return hfcache.export(cache, repo_type=kind, repo_id=ref.repo_id, commit=commit, revision=ref.revision,
                              files=files)
    except (OSError, hfcache.InvalidExport, hfcache.UnsafeCache) as exc:
        log.warning("download %s: installed, but not put in the Hugging Face cache %s: %s", job.id, cache, exc)
        return None


def _digests(entry: dict[str, Any]) -> list[str | None]:
    """Every blob an entry's model names: its file's, or each of its folder's."""
    files = entry.get("files")
    digests = [f.get("sha256") for f in files if isinstance(f, dict)] if isinstance(files, list) else []
    return [entry.get("sha256"), *digests]


def uninstall(state: StateDir, registry: Registry, model_id: str) -> dict[str, Any] | None:
    """Under the manager's lock, for a model of either kind: its manifest, entry and
    file or folder go, then the blobs no other model (or staged download) names;
    returns the entry, None if there was none. The manifest goes first: a crash
    after it leaves an entry the next start drops."""
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
