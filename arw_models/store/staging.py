"""Staging: ``{state_dir}/partial/<id>/``, one many-file download in progress.

A model of many files (see :mod:`arw_models.engine.fileset`) is fetched into a
folder of its own, owner-only (``0700``): ``plan.json`` (the resolved file set,
the selection it was asked with, the request's fields, and which files are done
with their digests) and, for each file being fetched, its ``.part`` and sidecar
under a short id (``f0003``) that the single-file transfer writes as it writes any
``.part`` (:meth:`Staging.view` is the :class:`~.storage.StateDir` it is given).

A file verified goes into the blob store at once and is marked done in the plan,
so a restart never fetches it again: :func:`staged_digests` is what the blob
collector (:mod:`.gc`) must keep besides what the manifests name. The plan is
written atomically and holds the request's headers (a gated origin's): it is the
owner's alone, as sidecars are.
"""

from __future__ import annotations

import os
import shutil
import stat
from typing import Any

from .files import make_dir, restrict_tree
from .storage import StateDir, atomic_write_json, read_json, valid_id

PLAN = "plan.json"


def staging_root(state: StateDir) -> str:
    return os.path.join(state.root, "partial")


class Staging:
    """The staging folder of one many-file download."""

    def __init__(self, state: StateDir, model_id: str) -> None:
        assert valid_id(model_id), model_id
        self.state = state
        self.id = model_id
        self.root = staging_root(state)
        self.dir = os.path.join(self.root, model_id)
        self.plan_path = os.path.join(self.dir, PLAN)

    def ensure(self) -> None:
        """Creates ``partial/`` and the model's folder (0700); refuses links."""
        for path in (self.root, self.dir):
            make_dir(path)
        restrict_tree(self.dir)

    def exists(self) -> bool:
        return os.path.isfile(self.plan_path) and not os.path.islink(self.dir)

    def read_plan(self) -> dict[str, Any] | None:
        if os.path.islink(self.dir):
            return None
        try:
            data = read_json(self.plan_path)
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("id") != self.id or not isinstance(data.get("fileset"), dict):
            return None
        return data

    def write_plan(self, plan: dict[str, Any]) -> None:
        self.ensure()
        atomic_write_json(self.plan_path, plan)

    def view(self) -> StateDir:
        """The state directory as the single-file transfer sees it: its ``models/``
        is this folder, so each file's ``.part`` and sidecar are written here."""
        view = StateDir(self.state.root, self.state.models_mode)
        view.models_dir = self.dir
        return view

    def remove(self) -> bool:
        """Removes the folder and all in it (never through a link); True if it was there."""
        try:
            st = os.lstat(self.dir)
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(st.st_mode):
            os.unlink(self.dir)
            return True
        shutil.rmtree(self.dir, ignore_errors=True)
        return True

    def mtime(self) -> float | None:
        """When the download last wrote anything here."""
        try:
            times = [os.lstat(self.dir).st_mtime]
            for name in os.listdir(self.dir):
                times.append(os.lstat(os.path.join(self.dir, name)).st_mtime)
        except FileNotFoundError:
            return None
        return max(times)


def staged_ids(state: StateDir) -> list[str]:
    """Ids of the many-file downloads that have a staging folder."""
    root = staging_root(state)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if valid_id(n) and os.path.isdir(os.path.join(root, n))
                  and not os.path.islink(os.path.join(root, n)))


def done_files(plan: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The files a plan marks done, path to ``{"sha256", "size", ...}``."""
    done = (plan or {}).get("done")
    if not isinstance(done, dict):
        return {}
    return {p: d for p, d in done.items() if isinstance(p, str) and isinstance(d, dict)}


def staged_digests(state: StateDir) -> set[str]:
    """The digests of every file a staging plan marks done: blobs a resume needs."""
    digests: set[str] = set()
    for model_id in staged_ids(state):
        for done in done_files(Staging(state, model_id).read_plan()).values():
            if isinstance(done.get("sha256"), str):
                digests.add(done["sha256"])
    return digests
