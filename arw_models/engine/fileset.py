"""A model made of many files, as its source lists it.

A reference that names more than one file (a hub repository, ``hf://OWNER/REPO``;
a registry's model, ``ollama://NAME:TAG`` or ``oci://HOST/REPO:TAG``) resolves,
once, to a :class:`FileSet`: the revision it was pinned to (the hub's commit, the
registry's manifest digest) and each file with where to fetch it, its size and the
digest its listing vouches for. Every file is fetched at that revision, so a branch
that moves during the download never mixes two revisions, and a restart resumes the
same files: the set is kept (as :meth:`FileSet.to_json`, which holds no secret)
beside the download's partial files.

What may go with a request for a file (a hub token, a registry's bearer token) is
never part of the set: :data:`Authorize` gives it, per file and per attempt, so a
token that expired is asked for again and a restart needs no stored secret.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..store.paths import safe_path

__all__ = ["Authorize", "FileSet", "InvalidFileSet", "RemoteFile", "Selection", "safe_path"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


class InvalidFileSet(ValueError):
    """A listing that cannot be a model's files (a path that would climb out of
    the model's folder, two files at one path, a digest that is no digest)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a model.

    ``path`` is where it goes in the model's folder (the repository's path, or a
    registry layer's readable name); ``url`` where its bytes are asked for (an
    absolute ``http(s)`` url, pinned to the set's revision); ``size`` as listed
    (None: not listed). The digest its listing vouches for is ``sha256`` (a hub's
    LFS ``oid``, a registry blob's digest) or, for a small file of a hub
    repository, ``git_oid`` (the SHA-1 of ``blob <size>\\0`` + content); a file with
    neither is not accepted. ``role`` says what a registry layer is (``model``,
    ``projector``, ``template``, ``params``, ``license``, ``manifest``...), empty
    for a hub file.
    """

    path: str
    url: str
    size: int | None
    sha256: str | None = None
    git_oid: str | None = None
    role: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "url": self.url, "size": self.size, "sha256": self.sha256,
                "git_oid": self.git_oid, "role": self.role}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RemoteFile:
        return cls(path=data["path"], url=data["url"], size=data.get("size"), sha256=data.get("sha256"),
                   git_oid=data.get("git_oid"), role=data.get("role") or "")


@dataclass(frozen=True)
class FileSet:
    """A reference resolved: ``provider`` (``hf``, ``ollama``, ``oci``), the
    ``revision`` every file is pinned to, and the ``files``. ``inline`` are small
    files the resolver already holds whole (a registry's manifest, kept with the
    model), path to bytes: nothing to fetch, their digest is computed."""

    reference: str
    provider: str
    revision: str
    files: tuple[RemoteFile, ...]
    inline: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for path in [f.path for f in self.files] + list(self.inline):
            if not safe_path(path):
                raise InvalidFileSet(f"the listing names an unsafe path: {path!r}")
            if path in seen:
                raise InvalidFileSet(f"the listing names {path!r} twice")
            seen.add(path)
        for f in self.files:
            if f.sha256 is not None and not _SHA256.fullmatch(f.sha256):
                raise InvalidFileSet(f"{f.path}: the listing's sha256 is not a SHA-256")
            if f.git_oid is not None and not _SHA1.fullmatch(f.git_oid):
                raise InvalidFileSet(f"{f.path}: the listing's oid is not a git blob id")
            if f.sha256 is None and f.git_oid is None:
                raise InvalidFileSet(f"{f.path}: the listing vouches for no digest")
            if f.size is not None and f.size < 0:
                raise InvalidFileSet(f"{f.path}: the listing's size is negative")

    @property
    def total(self) -> int | None:
        """The bytes to fetch in all (None when a size is not listed)."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "provider": self.provider, "revision": self.revision,
                "files": [f.to_json() for f in self.files],
                "inline": {path: data.hex() for path, data in self.inline.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileSet:
        return cls(reference=data["reference"], provider=data["provider"], revision=data["revision"],
                   files=tuple(RemoteFile.from_json(f) for f in data["files"]),
                   inline={path: bytes.fromhex(text) for path, text in (data.get("inline") or {}).items()})


@dataclass(frozen=True)
class Selection:
    """Which files of a repository a request asks for: ``include`` and ``exclude``
    (glob patterns, as huggingface_hub's ``allow_patterns`` and ``ignore_patterns``),
    or ``files`` (exact paths). Empty: every file."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        return {"include": list(self.include), "exclude": list(self.exclude), "files": list(self.files)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Selection:
        data = data or {}
        return cls(tuple(data.get("include") or ()), tuple(data.get("exclude") or ()), tuple(data.get("files") or ()))


#: The private headers for one request of a file (a hub token, a registry's bearer
#: token), for the file url's own host only; ``fresh=True`` after a 401, when a
#: cached token must be asked for again.
Authorize = Callable[[RemoteFile, bool], Mapping[str, str]]
