"""The install of a verified download: its bytes become a blob of the store, its
file in ``models/`` a link of that blob, its manifest and the registry record the
model.

:func:`install` runs inside :meth:`~arw_models.service.jobs.DownloadJob.finish`,
under the manager's lock and the job's (see docs/design.rst, "Concurrency"): a
cancel either lands before the rename (and wins) or finds the job complete, a free
name chosen here is not taken by another install in the meantime, and no delete
collects the blob between its link and the manifest that names it.

The order is the crash story: the ``.part`` is linked into the blob first (a crash
then leaves the ``.part``, which resumes, and a blob no manifest names, which the
next start removes), then renamed to its final name, then the manifest is written,
then the registry.

A manifest says whether the download was gated (:func:`gated`): a blob of a gated
download is not served to peers unless the operator says so
(``ARW_SERVE_GATED_BLOBS``), since its licence may not allow passing it on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..engine import Result
from ..engine.sources import HF_SCHEME, InvalidReference, parse_hf
from ..errors import TransferError
from ..store import gc
from ..store.blobs import Blobs
from ..store.manifests import Manifests, manifest_of
from ..store.names import free_name
from ..store.registry import Registry
from ..store.storage import StateDir, remove_quietly, utcnow
from .jobs import DownloadJob

# Query parameters that carry credentials: signed urls (S3's X-Amz-Signature and
# X-Amz-Credential, GCS's X-Goog-Signature, Azure's sig), tokens and keys.
_SECRET_PARAM = re.compile(r"sig|token|key|credential|auth|passw|secret", re.IGNORECASE)


def gated(url: str, headers: Mapping[str, str], hf_token: str | None) -> bool:
    """Whether a download carried credentials to its origin: the request's own
    ``headers`` (a gated origin, a registry's login), the hub token (sent with every
    ``hf://`` download when one is set), a ``user:password@`` or a signed or keyed
    query string in its url. Whether the origin needed them is not known here, so
    any credential counts."""
    if headers or (url.startswith(HF_SCHEME) and hf_token):
        return True
    if url.startswith(HF_SCHEME):
        return False
    parts = urlsplit(url)
    return ("@" in parts.netloc
            or any(_SECRET_PARAM.search(name) for name, _ in parse_qsl(parts.query, keep_blank_values=True)))


def install(state: StateDir, registry: Registry, job: DownloadJob, result: Result, *,
            gated: bool = False) -> dict[str, Any]:
    """Moves the job's ``.part`` into place and records it; returns the fields of
    the ``complete`` event. ``gated``: the download carried credentials."""
    blobs, manifests = Blobs(state), Manifests(state)
    old = registry.get(job.id)
    own = old.get("file") if old else None
    taken = registry.files_in_use(except_id=job.id)
    final = free_name(result.name, job.id,
                      lambda n: n in taken or (n != own and os.path.lexists(state.model_path(n))))
    try:
        blobs.put(state.part_path(job.id), result.digest, result.size)
        path = state.install_part(job.id, final)
    except FileNotFoundError:
        raise TransferError("resume-invalid", "the partial file disappeared", keep_part=False) from None
    # Bytes the store held already (fetched again, their digest not known before):
    # the model's file becomes a link of that blob, and these bytes go.
    blobs.place(result.digest, path)
    remove_quietly(state.sidecar_path(job.id))
    entry = {
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
    }
    manifests.write(manifest_of(entry, revision=_revision(job.url), gated=gated))
    registry.put(entry)
    if own and own != final:
        remove_quietly(state.model_path(own))
    if old is not None and old.get("sha256") != result.digest:
        gc.collect(blobs, manifests, [old.get("sha256")])
    job.file = final
    job.downloaded = job.total = result.size
    done = {"file": final, "provider": job.provider, "sha256": result.digest, "bytes": result.size,
            "sha256_source": result.sha256_source}
    done["path"] = path  # where a host (a signal receiver) finds the file, not just its name
    if result.deduplicated:
        done["deduplicated"] = True
    return done


def _revision(url: str) -> str | None:
    if not url.startswith(HF_SCHEME):
        return None
    try:
        return parse_hf(url).revision
    except InvalidReference:
        return None
