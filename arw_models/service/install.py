"""The install of a verified download: its ``.part`` moves to its final name in
``models/`` and the registry records the model.

:func:`install` runs inside :meth:`~arw_models.service.jobs.DownloadJob.finish`,
under the manager's lock and the job's (see docs/design.rst, "Concurrency"): a
cancel either lands before the rename (and wins) or finds the job complete, and a
free name chosen here is not taken by another install in the meantime.
"""

from __future__ import annotations

import os
from typing import Any

from ..engine import Result
from ..errors import TransferError
from ..store.names import free_name
from ..store.registry import Registry
from ..store.storage import StateDir, remove_quietly, utcnow
from .jobs import DownloadJob


def install(state: StateDir, registry: Registry, job: DownloadJob, result: Result) -> dict[str, Any]:
    """Moves the job's ``.part`` into place and records it; returns the fields of
    the ``complete`` event."""
    old = registry.get(job.id)
    own = old.get("file") if old else None
    taken = registry.files_in_use(except_id=job.id)
    final = free_name(result.name, job.id,
                      lambda n: n in taken or (n != own and os.path.lexists(state.model_path(n))))
    try:
        path = state.install_part(job.id, final)
    except FileNotFoundError:
        raise TransferError("resume-invalid", "the partial file disappeared", keep_part=False) from None
    remove_quietly(state.sidecar_path(job.id))
    registry.put({
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
