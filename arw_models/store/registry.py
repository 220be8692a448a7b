"""``models.json``: the installed models, keyed by id, written atomically.

An index of the manifests (:mod:`.manifests`), with what they do not keep: the url
as it was asked for (a repeated POST compares it). ``version`` 2 marks the
content-addressed layout; a registry of version 1 is what the version before it
wrote, which :mod:`.migrate` upgrades at start. An entry that migration could not
put in the store (its file missing, or not the bytes of its digest) says
``unstored: true`` and keeps its file as it was.

Read once, then kept in memory; every change writes the whole file anew (readers
see the old registry or the new one, never a mix). Its lock is a leaf (see
docs/design.rst, "Concurrency"): the manager's may be held when it is taken.
"""

from __future__ import annotations

import threading
from typing import Any

from .storage import StateDir, atomic_write_json, read_json, valid_id

LAYOUT = 2


class Registry:
    """``models.json``: the installed models, keyed by id, written atomically."""

    def __init__(self, state: StateDir) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, Any]] | None = None
        self._version = LAYOUT

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._items is None:
            try:
                data = read_json(self._state.registry_path, follow_parent=True)
            except FileNotFoundError:
                data = {}
                self._version = LAYOUT  # nothing to migrate
            else:
                version = data.get("version") if isinstance(data, dict) else None
                self._version = version if isinstance(version, int) else 1
            items = data.get("models", {}) if isinstance(data, dict) else {}
            self._items = {k: v for k, v in items.items() if valid_id(k) and isinstance(v, dict)}
        return self._items

    def _save(self, items: dict[str, dict[str, Any]]) -> None:
        atomic_write_json(self._state.registry_path, {"version": LAYOUT, "models": items}, follow_parent=True)
        self._items = items
        self._version = LAYOUT

    def version(self) -> int:
        """The layout the registry was written for: 1 before the blob store."""
        with self._lock:
            self._load()
            return self._version

    def replace(self, entries: list[dict[str, Any]]) -> None:
        """Writes these entries as the whole registry, of the current layout."""
        with self._lock:
            self._save({e["id"]: e for e in entries})

    def get(self, model_id: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._load().get(model_id)
            return dict(entry) if entry else None

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(v) for _, v in sorted(self._load().items())]

    def files_in_use(self, except_id: str | None = None) -> set[str]:
        with self._lock:
            return {v.get("file") for k, v in self._load().items() if k != except_id}

    def put(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        """Add or replace an entry; returns the entry it replaced."""
        with self._lock:
            items = dict(self._load())
            old = items.get(entry["id"])
            items[entry["id"]] = entry
            self._save(items)
            return old

    def remove(self, model_id: str) -> dict[str, Any] | None:
        with self._lock:
            items = dict(self._load())
            old = items.pop(model_id, None)
            if old is not None:
                self._save(items)
            return old
