"""A resolver of many-file references to files on the local test origin: the
manager's ``references`` seam, set by the tests of models of many files.

It does what a real resolver does (a reference to a FileSet pinned to a revision,
a selection applied, an Authorize for each request) over files the test origin
serves; it counts its resolutions, so a test can show that a resume reads its plan
instead of resolving again.
"""

from __future__ import annotations

import fnmatch
import hashlib
import threading
from collections.abc import Mapping
from typing import Any

from arw_models.config import Settings
from arw_models.engine.fileset import Authorize, FileSet, RemoteFile, Selection

from .origin import Origin


class LocalModels:
    """``hf://acme/<name>`` references to files on ``origin``."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.models: dict[str, list[RemoteFile]] = {}
        self.inline: dict[str, dict[str, bytes]] = {}
        self.resolved = 0
        self.fresh: list[str] = []  # paths whose headers were asked for afresh (after a 401)
        self._lock = threading.Lock()

    def add(self, name: str, files: Mapping[str, bytes], *, revision: str = "0" * 40,
            digests: Mapping[str, str] = {}, sizes: Mapping[str, int] = {}, git: tuple[str, ...] = (),
            inline: Mapping[str, bytes] = {}, **options: Any) -> str:
        """Serves ``files`` (path to bytes) and lists them as ``hf://acme/<name>``;
        ``digests`` and ``sizes`` list other values than the true ones, ``git``
        lists those paths by their git blob id instead of their SHA-256."""
        listed = []
        for path, data in files.items():
            served = f"/{name}/{revision}/{path}"
            self.origin.add(served, data, **options)
            if path in git:
                oid = hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()
                listed.append(RemoteFile(path, self.origin.url(served), sizes.get(path, len(data)), git_oid=oid))
            else:
                listed.append(RemoteFile(path, self.origin.url(served), sizes.get(path, len(data)),
                                         digests.get(path, hashlib.sha256(data).hexdigest())))
        reference = f"hf://acme/{name}"
        self.models[reference] = listed
        self.inline[reference] = dict(inline)
        return reference

    # -- the seam: names_many, resolve, authorizer ----------------------------------------------

    def names_many(self, url: str) -> bool:
        return url.split("@", 1)[0] in self.models

    def resolve(self, url: str, selection: Selection, settings: Settings, session: Any,
                headers: Mapping[str, str]) -> tuple[FileSet, Authorize]:
        with self._lock:
            self.resolved += 1
        reference = url.split("@", 1)[0]
        files = [f for f in self.models[reference] if picked(f.path, selection)]
        fileset = FileSet(url, "hf", "0" * 40, tuple(files), self.inline[reference])
        return fileset, self.authorizer(url, settings, headers)

    def authorizer(self, url: str, settings: Settings, headers: Mapping[str, str]) -> Authorize:
        def authorize(file: RemoteFile, fresh: bool) -> Mapping[str, str]:
            if fresh:
                with self._lock:
                    self.fresh.append(file.path)
            return {"Authorization": "Bearer fresh" if fresh else "Bearer first", **headers}

        return authorize


def picked(path: str, selection: Selection) -> bool:
    if selection.files:
        return path in selection.files
    if selection.include and not any(fnmatch.fnmatch(path, p) for p in selection.include):
        return False
    return not any(fnmatch.fnmatch(path, p) for p in selection.exclude)
