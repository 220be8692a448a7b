"""At start, under the state lock: the state directory brought to the blob store's
layout, and put back in order after a crash.

A registry of version 1 (``models.json`` and ``models/<file>``, written before the
blob store) is migrated model by model: its file is hard-linked into
``blobs/sha256/<digest>`` (a link carries the bytes: none is copied, unless the file
system makes no link) and its manifest written; two ids that share a file (the old
dedup's hard link) get one blob. A file missing, or whose bytes are not those of
its recorded digest (checked by reading it once), is reported in the log and left
where it is: its entry stays, marked ``unstored``. ``.part`` files, sidecars and
paused downloads are not touched: their place did not change. The registry is
rewritten as version 2 last, so a crash mid-way leaves version 1, and the next
start goes on where this one stopped (a model that has its manifest is done).

A registry of version 2 is reconciled with the manifests: a manifest the registry
lacks (a crash between the two writes of an install) is indexed again; an entry
whose manifest is gone (a crash in a delete, which removes the manifest first) is
removed with its file. Then the blobs no manifest names go (:mod:`.gc`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from . import folders, gc
from .blobs import Blobs, valid_digest
from .files import open_existing, same_file
from .manifests import Manifests, entry_of, manifest_of
from .registry import LAYOUT, Registry
from .storage import StateDir

log = logging.getLogger(__name__)


@dataclass
class Upgrade:
    """What a start did to the state directory."""

    migrated: list[str] = field(default_factory=list)
    unstored: list[str] = field(default_factory=list)
    indexed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    collected: list[str] = field(default_factory=list)


def upgrade(state: StateDir, registry: Registry) -> Upgrade:
    """Migrates or reconciles (see the module docstring), then collects the blobs
    no manifest names. Idempotent: a second run changes nothing."""
    blobs, manifests = Blobs(state), Manifests(state)
    blobs.ensure()
    blobs.set_modes()
    manifests.ensure()
    done = Upgrade()
    if registry.version() < LAYOUT:
        _migrate(state, registry, blobs, manifests, done)
    else:
        _reconcile(state, registry, manifests, done)
    done.collected = gc.collect(blobs, manifests)
    return done


def _migrate(state: StateDir, registry: Registry, blobs: Blobs, manifests: Manifests, done: Upgrade) -> None:
    entries = registry.all()
    for entry in entries:
        model_id = entry["id"]
        if manifests.read(model_id) is not None:
            continue  # done by a start that stopped before the registry was rewritten
        if _store(state, blobs, entry):
            manifests.write(manifest_of(entry))
            entry.pop("unstored", None)
            done.migrated.append(model_id)
        else:
            entry["unstored"] = True
            done.unstored.append(model_id)
    registry.replace(entries)  # version 2: the migration is complete
    if done.migrated or done.unstored:
        log.info("state directory moved to the blob store: %d models stored, %d left as they were",
                 len(done.migrated), len(done.unstored))


def _store(state: StateDir, blobs: Blobs, entry: dict[str, Any]) -> bool:
    """Makes an entry's file a link of its blob; False (and a warning) when it
    cannot be: then the file is left where it is."""
    model_id, digest, name = entry["id"], entry.get("sha256"), entry.get("file")
    if not valid_digest(digest) or not isinstance(name, str) or not isinstance(entry.get("bytes"), int):
        log.warning("model %s: its entry names no file and digest; left as it is", model_id)
        return False
    try:
        path = state.model_path(name)
        st = os.lstat(path)
    except (OSError, ValueError):
        log.warning("model %s: its file %s is missing; left as it is", model_id, name)
        return False
    if not stat.S_ISREG(st.st_mode):
        log.warning("model %s: %s is not a regular file; left as it is", model_id, name)
        return False
    assert isinstance(digest, str)
    if same_file(st, blobs.stat(digest)):
        return True  # linked by a start that stopped before the manifest was written
    actual = _digest_of(path)
    if actual != digest:
        log.warning("model %s: its file %s does not match its recorded sha256 (%s, found %s); left where it is, "
                    "not stored", model_id, name, digest, actual)
        return False
    if blobs.stat(digest) is None:
        blobs.put(path, digest)
    else:
        blobs.place(digest, path)  # the same bytes in a file of their own: one copy is enough
    return True


def _digest_of(path: str) -> str | None:
    fd = open_existing(path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _reconcile(state: StateDir, registry: Registry, manifests: Manifests, done: Upgrade) -> None:
    found = manifests.all()
    entries = {e["id"]: e for e in registry.all()}
    for model_id, manifest in found.items():
        if model_id not in entries:
            entry = entry_of(manifest, state)
            if entry is not None:
                entries[model_id] = entry
                done.indexed.append(model_id)
                log.info("model %s: indexed again from its manifest", model_id)
    for model_id, entry in list(entries.items()):
        if model_id in found or entry.get("unstored"):
            continue
        del entries[model_id]
        done.dropped.append(model_id)
        name = entry.get("file")
        if isinstance(name, str) and not any(e.get("file") == name for e in entries.values()):
            try:
                folders.remove_model(state, name)
            except ValueError:
                pass
        log.info("model %s: its delete was interrupted; finished now", model_id)
    if done.indexed or done.dropped:
        registry.replace(list(entries.values()))
