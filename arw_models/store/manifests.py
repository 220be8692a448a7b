"""Manifests: ``{state_dir}/manifests/<id>.json``, one installed model each.

A manifest says what a model is: its ``id``, ``provider``, ``url`` (as the API
shows it: without credentials), ``downloaded_at``, and its ``files``, each with
``path`` (its name under ``models/``), ``size``, ``sha256`` (the blob that holds its
bytes, see :mod:`.blobs`), ``source`` (the url it came from, redacted),
``sha256_source`` (who vouched for the digest: ``request``, ``origin`` or
``computed``) and, for an ``hf://`` reference, its ``revision``; ``gated`` says
whether the download carried credentials (the request's headers, a hub token), so
that its blobs are not passed on to peers unless the operator allows it
(:meth:`Manifests.gated`; a manifest written before the key existed counts as gated).

A manifest is what keeps a blob: written (atomically) once the blob is in place,
removed first when the model is deleted, so a crash in between leaves a blob no
manifest names, which the next start removes (:mod:`.gc`). It is the owner's alone
(0600), like the registry: it names a url.
"""

from __future__ import annotations

import os
from typing import Any

from ..redact import redact_url
from .files import make_dir, remove_quietly, restrict_tree
from .storage import StateDir, atomic_write_json, read_json, valid_id

VERSION = 1
SUFFIX = ".json"


class Manifests:
    """The manifests of one state directory."""

    def __init__(self, state: StateDir) -> None:
        self.dir = state.manifests_dir

    def ensure(self) -> None:
        """Creates ``manifests/`` (0700, its files 0600); refuses one that is a link."""
        make_dir(self.dir)
        restrict_tree(self.dir)

    def path(self, model_id: str) -> str:
        assert valid_id(model_id), model_id
        return os.path.join(self.dir, model_id + SUFFIX)

    def read(self, model_id: str) -> dict[str, Any] | None:
        """The manifest of ``model_id``; None when there is none or it is unreadable."""
        try:
            data = read_json(self.path(model_id))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("id") != model_id or not isinstance(data.get("files"), list):
            return None
        return data

    def write(self, manifest: dict[str, Any]) -> None:
        self.ensure()
        atomic_write_json(self.path(manifest["id"]), manifest)

    def remove(self, model_id: str) -> bool:
        return remove_quietly(self.path(model_id))

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(n[: -len(SUFFIX)] for n in names if n.endswith(SUFFIX) and valid_id(n[: -len(SUFFIX)]))

    def all(self) -> dict[str, dict[str, Any]]:
        found = {}
        for model_id in self.ids():
            manifest = self.read(model_id)
            if manifest is not None:
                found[model_id] = manifest
        return found

    def gated(self, digest: str) -> bool:
        """Whether the blob of ``digest`` is to be withheld as gated: a manifest that
        names it is of a gated download (or does not say: one written before
        ``gated`` was recorded), or none names it yet (an install between its blob
        and its manifest, whose download may be gated). Any one is enough: the same
        bytes fetched once with credentials and once without are withheld."""
        naming = [m for m in self.all().values()
                  if any(isinstance(f, dict) and f.get("sha256") == digest for f in m["files"])]
        return not naming or any(m.get("gated") is not False for m in naming)

    def digests(self) -> set[str]:
        """Every digest a manifest names: the blobs to keep."""
        return {f.get("sha256") for m in self.all().values() for f in m["files"] if isinstance(f, dict)}


def manifest_of(entry: dict[str, Any], revision: str | None = None, gated: bool | None = None) -> dict[str, Any]:
    """The manifest of a registry entry (one file, in ``models/``); ``gated`` None:
    not known (an entry from before the store), which counts as gated."""
    url = redact_url(str(entry.get("url", "")))
    file: dict[str, Any] = {"path": entry["file"], "size": entry["bytes"], "sha256": entry["sha256"],
                            "source": url, "sha256_source": entry.get("sha256_source") or "computed"}
    if revision is not None:
        file["revision"] = revision
    manifest = {"version": VERSION, "id": entry["id"], "provider": entry.get("provider") or "local", "url": url,
                "downloaded_at": entry.get("downloaded_at"), "files": [file]}
    if gated is not None:
        manifest["gated"] = gated
    return manifest


def entry_of(manifest: dict[str, Any], state: StateDir) -> dict[str, Any] | None:
    """The registry entry of a manifest, for a registry that lost it (a crash between
    the two writes): the url is the redacted one, all the manifest keeps."""
    files = [f for f in manifest["files"] if isinstance(f, dict)]
    if isinstance(manifest.get("folder"), str):
        return _folder_entry(manifest, files, state)
    if len(files) != 1 or not isinstance(files[0].get("path"), str):
        return None
    file = files[0]
    try:
        path = state.model_path(file["path"])
    except ValueError:
        return None
    return {"id": manifest["id"], "provider": manifest.get("provider") or "local", "status": "available",
            "file": file["path"], "path": path, "sha256": file.get("sha256"),
            "sha256_source": file.get("sha256_source"), "bytes": file.get("size"), "url": manifest.get("url"),
            "downloaded_at": manifest.get("downloaded_at")}


def _folder_entry(manifest: dict[str, Any], files: list[dict[str, Any]], state: StateDir) -> dict[str, Any] | None:
    """The entry of a model of many files, from its manifest."""
    try:
        path = state.model_path(manifest["folder"])
    except ValueError:
        return None
    listed = [{"path": f.get("path"), "bytes": f.get("size"), "sha256": f.get("sha256"),
               **({"git_oid": f["git_oid"]} if f.get("git_oid") else {})} for f in files]
    return {"id": manifest["id"], "provider": manifest.get("provider") or "hf", "status": "available",
            "file": manifest["folder"], "path": path, "sha256": None,
            "bytes": sum(int(f.get("size") or 0) for f in files), "url": manifest.get("url"),
            "downloaded_at": manifest.get("downloaded_at"), "revision": manifest.get("revision"), "files": listed}
