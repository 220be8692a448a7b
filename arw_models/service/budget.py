"""The disk budget: a file over ``ARW_MODELS_MAX_MB`` is refused, and so is one the
disk cannot hold beside the other downloads and the reserve.

The manager computes what the other downloads still need (under its lock, from the
job table) and asks :func:`check_budget` here, outside it: the checks read the file
system, which must not hold up the API.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Settings
from ..errors import TransferError
from ..store import storage
from ..store.storage import StateDir


def check_budget(settings: Settings, state: StateDir, disk_free: Callable[[str], int], model_id: str,
                 total: int, offset: int, others: int) -> None:
    """Refuses ``total`` bytes for ``model_id`` (``offset`` of them kept) when they
    are over the size limit or do not fit; ``others``: the bytes the other
    downloads still need. What the job's ``.part`` already occupies is not asked
    for again: a ``.part`` preallocated for parallel ranges holds the blocks of the
    whole file, however few bytes are done, so a download cut short by a full disk
    can go on once a little space is free. A file of unknown size is not checked:
    the manager does not ask."""
    if settings.max_bytes is not None and total > settings.max_bytes:
        raise TransferError("size-limit", f"the file has {total} bytes, more than the limit of {settings.max_bytes}",
                            keep_part=False, limit=settings.max_bytes, expected_bytes=total)
    held = storage.allocated(state.part_path(model_id))
    missing = max(0, total - max(offset, min(held, total)))
    need = missing + others + settings.disk_reserve_bytes
    free = disk_free(state.models_dir)
    if free < need:
        raise TransferError(
            "disk-insufficient",
            f"not enough free space: {missing} bytes to fetch (besides the {held} the partial file holds), "
            f"{others} for other downloads and {settings.disk_reserve_bytes} reserved, {free} free",
            needed=need, free=free,
        )
