"""A Hugging Face hub repository, resolved to the files of one commit.

``hf://OWNER/REPO[@REVISION]`` names a whole repository (``hf://datasets/...`` and
``hf://spaces/...`` other kinds), and ``hf://OWNER/REPO/PATH/NAME-00001-of-00003.gguf``
one shard of a split GGUF, which stands for all of its shards. :func:`resolve` asks the
hub once which commit the revision is at, lists that commit's files (following the
listing's pages) and picks those a :class:`~.fileset.Selection` asks for; every file's
url names the commit, so a branch that moves while the files download never mixes two
revisions. The hub's HTTP API, its answers and its failures are in :mod:`.hubapi`.

A single ordinary file (``hf://OWNER/REPO/PATH``) stays the one-file download of
:mod:`.sources`; :func:`names_many` tells the two apart.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

import requests

from ..errors import TransferError
from .fileset import Authorize, FileSet, InvalidFileSet, RemoteFile, Selection
from .hubapi import Api, Entry, same_origin
from .sources import _KINDS, _NAME, HF_SCHEME, InvalidReference

# llama.cpp's name for the parts of a split GGUF (gguf-split): NAME-00001-of-00003.gguf.
_SHARD = re.compile(r"(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf")
# Revisions with a slash that the hub makes itself, and that may be written after the
# repository as they are (any other revision with a slash is written with %2F there).
_HUB_REFS = re.compile(r"refs/(?:pr/[0-9]+|convert/[A-Za-z0-9._-]+)")


@dataclass(frozen=True)
class RepoRef:
    """A repository at a revision (a branch, a tag, ``refs/pr/N`` or a commit);
    ``shard_of``: the path of one shard of a split GGUF, which stands for all of
    them. ``url`` is the reference as it was written."""

    url: str
    kind: str | None  # None: a model repository; else "datasets" or "spaces"
    owner: str
    repo: str
    revision: str = "main"
    shard_of: str | None = None

    @property
    def repo_id(self) -> str:
        return f"{self.owner}/{self.repo}"

    @property
    def shown(self) -> str:
        """How messages name it: ``[kind/]OWNER/REPO@REVISION``."""
        return f"{self.kind + '/' if self.kind else ''}{self.repo_id}@{self.revision}"

    def file_url(self, endpoint: str, commit: str, path: str) -> str:
        """The hub's ``/resolve/`` url of ``path`` at ``commit``."""
        prefix = f"/{self.kind}" if self.kind else ""
        return f"{endpoint.rstrip('/')}{prefix}/{self.repo_id}/resolve/{commit}/{quote(path)}"


def parse_repo(url: str) -> RepoRef:
    """``hf://[datasets/|spaces/]OWNER/REPO[@REVISION]``, or one shard of a split GGUF:
    ``hf://OWNER/REPO/PATH/NAME-0000I-of-0000N.gguf[@REVISION]`` (or huggingface_hub's
    ``hf://OWNER/REPO@REVISION/PATH...``). A revision with a slash is written with
    ``%2F`` after the repository, except the hub's own ``refs/pr/N``. Anything else,
    a single ordinary file included, raises :class:`InvalidReference`."""
    if not isinstance(url, str) or not url.startswith(HF_SCHEME):
        raise InvalidReference("not an hf:// reference")
    rest = url[len(HF_SCHEME):]
    if "?" in rest or "#" in rest or "\\" in rest:
        raise InvalidReference("an hf:// reference has no query, fragment or backslash")
    parts = rest.split("/")
    kind = parts.pop(0) if parts and parts[0] in _KINDS else None
    if len(parts) < 2:
        raise InvalidReference("an hf:// repository is hf://OWNER/REPO[@REVISION]")
    owner, repo, tail = parts[0], parts[1], parts[2:]
    revision, path = "main", None  # a path: one shard of a split GGUF
    if "@" in repo:
        repo, _, written = repo.partition("@")
        if not tail or _HUB_REFS.fullmatch("/".join([written, *tail])):
            revision = unquote("/".join([written, *tail]))
        else:  # huggingface_hub's form: the revision, then the path
            revision, path = unquote(written), "/".join(tail)
    elif tail:
        path = "/".join(tail)
        if "@" in path:
            path, _, revision = path.rpartition("@")
    if not _NAME.fullmatch(owner) or not _NAME.fullmatch(repo):
        raise InvalidReference("the owner and repository must be hub names (letters, digits, . _ -)")
    if not revision or any(part in ("", ".", "..") for part in revision.split("/")):
        raise InvalidReference("the revision after @ must name a branch, tag or commit")
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in revision):
        raise InvalidReference("the revision must not hold control characters")
    if path is None:
        return RepoRef(url, kind, owner, repo, revision)
    # %2e is a dot to the hub's server, which decodes before it resolves.
    if any(part.lower().replace("%2e", ".") in ("", ".", "..") for part in path.split("/")):
        raise InvalidReference("the path in the repository must not have empty, . or .. segments")
    shard = _SHARD.fullmatch(path.rsplit("/", 1)[-1])
    if shard is None:
        raise InvalidReference(f"{path!r} is one file, not a repository or a shard of a split GGUF")
    index, count = int(shard["index"]), int(shard["count"])
    if not 1 <= index <= count:
        raise InvalidReference(f"{path!r}: a split GGUF's shards are numbered 1 to {count}")
    return RepoRef(url, kind, owner, repo, revision, shard_of=path)


def names_many(url: str) -> bool:
    """Whether ``url`` is an hf:// repository or one shard of a split GGUF (many
    files); False for a single ordinary file, a malformed reference or any other url."""
    try:
        parse_repo(url)
    except (InvalidReference, TypeError, ValueError):
        return False
    return True


def shards(shard_of: str) -> list[str]:
    """Every shard of the split GGUF that ``shard_of`` is one of, in order."""
    match = _SHARD.fullmatch(shard_of.rsplit("/", 1)[-1])
    if match is None:
        raise InvalidReference(f"{shard_of!r} is not a shard of a split GGUF")
    folder = shard_of[: len(shard_of) - len(match[0])]
    count = int(match["count"])
    return [f"{folder}{match['prefix']}-{i:05d}-of-{match['count']}.gguf" for i in range(1, count + 1)]


def resolve(ref: RepoRef, selection: Selection, session: requests.Session, endpoint: str, token: str | None,
            headers: Mapping[str, str] = {}, *, timeout: tuple[float, float]) -> FileSet:
    """The files of ``ref`` that ``selection`` asks for (with ``ref.shard_of``: its
    shards too), pinned to the commit its revision is at now. ``timeout`` is the
    connect and read timeout of each request (``ARW_DL_CONNECT_TIMEOUT_SECS``,
    ``ARW_DL_IDLE_TIMEOUT_SECS``). The token (or the request's own ``headers``) goes
    to the endpoint's host alone. Every failure is a :class:`TransferError`."""
    api = Api(session, endpoint, private_headers(token, headers), timeout)
    where = ref.kind or "models"
    commit = api.commit(where, ref.repo_id, ref.revision, ref.shown)
    shown = f"{ref.shown} (commit {commit})"
    listed = api.tree(where, ref.repo_id, commit, shown)
    chosen = select(listed, selection, ref.shard_of, shown)
    try:
        files = tuple(RemoteFile(e.path, ref.file_url(endpoint, commit, e.path), e.size,
                                 sha256=e.lfs_oid, git_oid=None if e.lfs_oid else e.oid) for e in chosen)
        return FileSet(reference=ref.url, provider="hf", revision=commit, files=files)
    except InvalidFileSet as exc:
        raise TransferError("invalid-listing", f"the hub's listing of {shown}: {exc}",
                            repository=ref.repo_id, revision=commit) from None


def select(listed: list[Entry], selection: Selection, shard_of: str | None, shown: str) -> list[Entry]:
    """The files of ``listed`` that ``selection`` picks, in the listing's order.

    ``include``/``exclude`` are huggingface_hub's ``allow_patterns``/``ignore_patterns``
    (``filter_repo_objects``: :func:`fnmatch.fnmatch` on the path, ``*`` matching ``/``
    too, a pattern ending in ``/`` standing for everything under that folder); ``files``
    are exact paths, each of which must be listed. A file named in ``files`` or a shard
    of ``shard_of`` is taken whatever the patterns say (a union). With no selection at
    all: every file, or only the shards for a shard reference."""
    by_path = {e.path: e for e in listed}
    wanted: set[str] = set()
    for pattern in (*selection.include, *selection.exclude):
        if not isinstance(pattern, str) or not pattern:
            raise TransferError("invalid-selection", "an include or exclude pattern must be a non-empty string")
    missing = [p for p in selection.files if p not in by_path]
    if missing:
        raise TransferError("invalid-selection", f"{shown} has no file {', '.join(map(repr, missing))}",
                            missing=missing)
    wanted.update(selection.files)
    if shard_of is not None:
        parts = shards(shard_of)
        absent = [p for p in parts if p not in by_path]
        if absent:
            raise TransferError("invalid-selection", f"{shown} lacks shards of the split GGUF "
                                f"{shard_of!r}: {', '.join(absent)}", missing=absent)
        wanted.update(parts)
    if selection.include or selection.exclude:
        wanted.update(filter_paths(by_path, selection.include, selection.exclude))
    elif not selection.files and shard_of is None:
        wanted.update(by_path)
    if not wanted:
        raise TransferError("invalid-selection", f"the selection picks none of the {len(listed)} files of {shown}",
                            include=list(selection.include), exclude=list(selection.exclude))
    return [e for e in listed if e.path in wanted]


def filter_paths(paths: Iterable[str], include: Iterable[str], exclude: Iterable[str]) -> list[str]:
    """huggingface_hub's ``filter_repo_objects``, with ``include`` empty meaning no
    allow list (every path) rather than an empty one."""
    allow = [_folder_wildcard(p) for p in include]
    ignore = [_folder_wildcard(p) for p in exclude]
    return [path for path in paths
            if (not allow or any(fnmatch.fnmatch(path, p) for p in allow))
            and not any(fnmatch.fnmatch(path, p) for p in ignore)]


def _folder_wildcard(pattern: str) -> str:
    return pattern + "*" if pattern.endswith("/") else pattern


def private_headers(token: str | None, headers: Mapping[str, str]) -> dict[str, str]:
    """What goes to the hub's host with each request: the request's own headers, and
    the token as ``Authorization: Bearer`` unless they carry an ``Authorization``."""
    private = dict(headers)
    if token and not any(name.lower() == "authorization" for name in private):
        private["Authorization"] = f"Bearer {token}"
    return private


def authorizer(endpoint: str, token: str | None, headers: Mapping[str, str] = {}) -> Authorize:
    """The private headers for one request of a file: :func:`private_headers` when
    the file's url is on the endpoint's scheme, host and port, nothing otherwise. A
    hub token does not expire during a download, so ``fresh`` asks for the same."""
    private = private_headers(token, headers)

    def authorize(file: RemoteFile, fresh: bool) -> Mapping[str, str]:
        return dict(private) if same_origin(file.url, endpoint) else {}

    return authorize
