"""Blobs no manifest names are removed: at a delete (the deleted model's digest)
and at start, under the state lock, for all of them (what a crash between a blob's
link and its manifest's write left behind). A blob that the plan of a many-file
download in progress marks done (:mod:`.staging`) is kept too: a resume, even after
a restart, must not fetch it again.

Run under the manager's lock (a delete) or before the manager exists (start): no
install is between placing a blob and naming it in a manifest then.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .blobs import Blobs, valid_digest
from .manifests import Manifests
from .staging import staged_digests

log = logging.getLogger(__name__)


def collect(blobs: Blobs, manifests: Manifests, digests: Iterable[str | None] | None = None) -> list[str]:
    """Removes the blobs (of ``digests``, or every one) that no manifest names;
    returns the digests removed."""
    candidates = blobs.digests() if digests is None else [d for d in digests if isinstance(d, str) and valid_digest(d)]
    if not candidates:
        return []
    named = manifests.digests() | staged_digests(blobs.state)
    removed = []
    for digest in candidates:
        if digest not in named and blobs.remove(digest):
            log.info("removed blob %s: no model names it", digest)
            removed.append(digest)
    return removed
