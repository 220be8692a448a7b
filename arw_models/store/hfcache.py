"""A model's files as huggingface_hub's cache holds them, for other tools to open.

Tools built on ``huggingface_hub`` (transformers, diffusers, llama.cpp's ``-hf``,
vLLM...) look for a repository in their cache before they download it. With
``ARW_HF_CACHE`` set, an installed hub model is also put there, in the layout
huggingface_hub's ``file_download.py`` writes::

    <cache>/models--OWNER--REPO/            (datasets--..., spaces--... by repo type)
        blobs/<etag>                        the bytes, named by the hub's etag
        snapshots/<commit>/<path in repo>   a relative symlink to ../../blobs/<etag>
        refs/<revision>                     the commit a branch or tag name stood at

so that ``snapshot_download(repo_id, revision=..., local_files_only=True)`` (or
``HF_HUB_OFFLINE=1``) finds it. The etag of a file is its SHA-256 when the hub
keeps it in LFS, else its git blob id: what the hub's ``ETag`` header says, and so
the name huggingface_hub itself would give the blob.

No byte is stored twice: ``blobs/<etag>`` is a hard link of the store's own blob
(the same inode), a copy only where the file system makes no link (another file
system, say; logged). Nothing appears half made: every blob, symlink and ref is made
under a temporary name beside its final one and renamed into place. The cache is
shared with other tools, so nothing in it is followed through a link: each folder
is opened relative to its parent with ``O_NOFOLLOW``, a link found where a folder
belongs is refused (:class:`UnsafeCache`), and a name that is a link where a blob
or ref belongs is replaced (a rename replaces the link, never its target). Only
``cache_dir`` itself may be a link: the operator chose that path.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from .paths import safe_path

log = logging.getLogger(__name__)

REPO_TYPES = ("model", "dataset", "space")
_COMMIT = re.compile(r"[0-9a-f]{40}")
# A hub etag: the SHA-256 of an LFS file, or the git blob id (SHA-1) of a small one.
_ETAG = re.compile(r"[0-9a-f]{64}|[0-9a-f]{40}")
# huggingface_hub's validate_repo_id: letters, digits, "-", "_", "." (no "--" nor
# "..", no "-" or "." at either end), at most 96 characters each side of the "/".
_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?")
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_COPY_CHUNK = 16 * 1024 * 1024

#: ``os.link`` as the export calls it; a test replaces it to act as a file system
#: without hard links (anything it raises means "copy instead").
link = os.link


class InvalidExport(ValueError):
    """Arguments that cannot name a cache entry: an unknown repo type, a repo id,
    commit, revision or etag of the wrong form, a path that would climb out of the
    snapshot, one path twice, or a file and a folder at one path."""


class UnsafeCache(OSError):
    """The cache holds something the export will not write through: a link, or a
    file, where one of its folders belongs, or a folder where a file belongs."""


def repo_folder_name(repo_type: str, repo_id: str) -> str:
    """``models--OWNER--REPO`` (huggingface_hub's ``repo_folder_name``)."""
    return f"{repo_type}s--" + repo_id.replace("/", "--")


def export(cache_dir: str | os.PathLike[str], *, repo_type: str, repo_id: str, commit: str, revision: str,
           files: Iterable[tuple[str, str | os.PathLike[str], str]]) -> str:
    """Puts a repository's files at ``commit`` into the Hugging Face cache at
    ``cache_dir``; returns the snapshot folder (``.../snapshots/<commit>``).

    ``repo_type`` is ``model``, ``dataset`` or ``space``; ``repo_id`` is
    ``OWNER/REPO``; ``commit`` the 40 hex digits the files were fetched at;
    ``revision`` what was asked for (a branch, a tag, ``refs/pr/1``, or the commit
    itself): unless it is the commit, ``refs/<revision>`` is set to the commit, so a
    later ``revision="main"`` finds this snapshot. ``files`` are
    ``(path_in_repo, blob_path, etag)``: ``blob_path`` a regular file of the store
    (never a link) holding the verified bytes, ``etag`` its SHA-256 for an LFS file
    or its git blob id for a small one (lowercase hex).

    Everything is checked before anything is written (:class:`InvalidExport`).
    Exporting again is harmless: what is already right is left as it is, a blob of
    the wrong size or a snapshot link with the wrong target is replaced. Files of
    the snapshot that ``files`` does not name are left alone (huggingface_hub adds
    files to a snapshot one by one too). :class:`UnsafeCache` when a link or a file
    stands where a folder of the entry belongs; ``OSError`` for the file system's
    own errors (no space, no permission). Runs in the caller's thread; safe to run
    at the same time as another export or a huggingface_hub download of the same
    repository (each name is replaced atomically, and the bytes behind an etag are
    the same whoever writes them).
    """
    entries = _checked(repo_type, repo_id, commit, revision, files)
    os.makedirs(cache_dir, exist_ok=True)
    root = os.path.join(os.fspath(cache_dir), repo_folder_name(repo_type, repo_id))
    with _open_dir(os.fspath(cache_dir)) as cache_fd, \
            _subdir(cache_fd, repo_folder_name(repo_type, repo_id)) as repo_fd:
        with _subdir(repo_fd, "blobs") as blobs_fd:
            for etag, blob in {etag: blob for _, blob, etag in entries}.items():
                _put_blob(blobs_fd, etag, blob, os.path.join(root, "blobs", etag))
        with _subdir(repo_fd, "snapshots") as snapshots_fd, _subdir(snapshots_fd, commit) as snap_fd:
            for path, _, etag in entries:
                *folders, name = path.split("/")
                target = "/".join([".."] * (len(folders) + 2) + ["blobs", etag])
                with _walk(snap_fd, folders) as dfd:
                    _put_symlink(dfd, name, target)
        if revision != commit:
            *folders, name = revision.split("/")
            with _subdir(repo_fd, "refs") as refs_fd, _walk(refs_fd, folders) as dfd:
                _put_ref(dfd, name, commit)
    return os.path.join(root, "snapshots", commit)


def _checked(repo_type: str, repo_id: str, commit: str, revision: str,
             files: Iterable[tuple[str, str | os.PathLike[str], str]]) -> list[tuple[str, str, str]]:
    if repo_type not in REPO_TYPES:
        raise InvalidExport(f"repo_type must be one of {', '.join(REPO_TYPES)}: {repo_type!r}")
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if (len(parts) != 2 or "--" in repo_id or ".." in repo_id
            or not all(len(part) <= 96 and _NAME.fullmatch(part) for part in parts)):
        raise InvalidExport(f"not a hub repository id (OWNER/REPO): {repo_id!r}")
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        raise InvalidExport(f"not a commit (40 lowercase hex digits): {commit!r}")
    # A ref name is a path under refs/ ("main", "v1.0", "refs/pr/1" as "pr/1"
    # would be too): the same rule as a file's path keeps it inside refs/.
    if not safe_path(revision) or len(revision) > 255:
        raise InvalidExport(f"not a revision name: {revision!r}")
    # huggingface_hub takes 40 hex digits for a commit and never looks them up in
    # refs/: a revision of that form other than the commit itself is a mix-up.
    if _COMMIT.fullmatch(revision) and revision != commit:
        raise InvalidExport(f"the revision {revision} is a commit, and not the commit {commit} the files are of")
    entries: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    folders: set[str] = set()
    for path, blob, etag in files:
        if not safe_path(path):
            raise InvalidExport(f"an unsafe path in the repository: {path!r}")
        if not isinstance(etag, str) or not _ETAG.fullmatch(etag):
            raise InvalidExport(f"{path}: the etag is neither a SHA-256 nor a git blob id: {etag!r}")
        if path in seen:
            raise InvalidExport(f"{path!r} is named twice")
        seen.add(path)
        parts = path.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        entries.append((path, os.fspath(blob), etag))
    clash = seen & folders
    if clash:
        raise InvalidExport(f"{min(clash)!r} is named as a file and as a folder")
    return entries


@contextmanager
def _open_dir(path: str) -> Iterator[int]:
    """The cache folder itself, which may be a link (only what is in it is not followed)."""
    fd = os.open(path, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _subdir(parent: int, name: str) -> Iterator[int]:
    """The folder ``name`` in ``parent``, made if absent, opened without following
    a link; :class:`UnsafeCache` for a link or anything else than a folder there."""
    try:
        os.mkdir(name, 0o777, dir_fd=parent)  # the umask decides, as for huggingface_hub's own folders
    except FileExistsError:
        pass
    try:
        fd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            there = _lstat(parent, name)
            kind = "a symbolic link" if there is not None and stat.S_ISLNK(there.st_mode) else "not a folder"
            raise UnsafeCache(errno.ENOTDIR, f"{name!r} in the Hugging Face cache is {kind}; the export "
                              "follows no link there and replaces nothing it did not make") from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _walk(parent: int, names: list[str]) -> Iterator[int]:
    """The folder at ``parent/names[0]/names[1]/...``, each made and opened as :func:`_subdir` does."""
    if not names:
        yield parent  # the caller's descriptor: the caller closes it
        return
    with _subdir(parent, names[0]) as fd, _walk(fd, names[1:]) as inner:
        yield inner


def _temp(name: str) -> str:
    # Beside the final name; never a name huggingface_hub uses (its own are
    # "<etag>.incomplete" and "<etag>.lock"). At most 200 characters of the name,
    # so that a name of up to 255 (the longest a file system takes) still has one.
    return f".{name[:200]}.arw-{os.getpid()}-{threading.get_ident()}.tmp"


def _lstat(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(dfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass


def _put_blob(dfd: int, etag: str, blob: str, shown: str) -> None:
    """``blobs/<etag>`` as a hard link of ``blob`` (else a copy), unless a regular
    file of the same size is there already (our link, or the same bytes that
    huggingface_hub fetched itself)."""
    src = os.lstat(blob)
    if not stat.S_ISREG(src.st_mode):
        raise InvalidExport(f"{blob} is not a regular file")
    there = _lstat(dfd, etag)
    if there is not None and stat.S_ISDIR(there.st_mode):
        raise UnsafeCache(errno.EISDIR, f"{shown} is a folder, where a file belongs")
    if there is not None and stat.S_ISREG(there.st_mode) and there.st_size == src.st_size:
        return
    tmp = _temp(etag)
    _remove(dfd, tmp)  # left by a process that died with our pid
    try:
        linked = True
        try:
            link(blob, tmp, dst_dir_fd=dfd, follow_symlinks=False)
        except OSError as exc:
            linked = False
            log.warning("no hard link of %s at %s (%s): copying it, which takes the disk space a second time",
                        blob, shown, exc.strerror or exc)
        if linked:
            made = os.stat(tmp, dir_fd=dfd, follow_symlinks=False)
            if (made.st_dev, made.st_ino) != (src.st_dev, src.st_ino):
                raise InvalidExport(f"{blob} changed while it was linked")
        else:
            _copy(blob, dfd, tmp, src)
        os.rename(tmp, etag, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        _remove(dfd, tmp)
        raise
    os.fsync(dfd)


def _copy(blob: str, dfd: int, tmp: str, src: os.stat_result) -> None:
    """The bytes of ``blob`` (opened without following a link) into a new ``tmp``, fsynced."""
    inp = os.open(blob, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    try:
        if (os.fstat(inp).st_dev, os.fstat(inp).st_ino) != (src.st_dev, src.st_ino):
            raise InvalidExport(f"{blob} changed while it was copied")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                      stat.S_IMODE(src.st_mode) | 0o400, dir_fd=dfd)
        try:
            while data := os.read(inp, _COPY_CHUNK):
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view):]
            os.fsync(out)
        finally:
            os.close(out)
    finally:
        os.close(inp)


def _put_symlink(dfd: int, name: str, target: str) -> None:
    there = _lstat(dfd, name)
    if there is not None:
        if stat.S_ISLNK(there.st_mode) and os.readlink(name, dir_fd=dfd) == target:
            return
        if stat.S_ISDIR(there.st_mode):
            raise UnsafeCache(errno.EISDIR, f"{name!r} in the snapshot is a folder, where a file belongs")
    tmp = _temp(name)
    _remove(dfd, tmp)
    try:
        os.symlink(target, tmp, dir_fd=dfd)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        _remove(dfd, tmp)
        raise


def _put_ref(dfd: int, name: str, commit: str) -> None:
    """``refs/<name>`` holding the commit, as huggingface_hub writes it (no newline)."""
    there = _lstat(dfd, name)
    if there is not None and stat.S_ISDIR(there.st_mode):
        raise UnsafeCache(errno.EISDIR, f"the ref {name!r} is a folder, where a file belongs")
    if there is not None and stat.S_ISREG(there.st_mode):
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _CLOEXEC, dir_fd=dfd)
        try:
            if os.read(fd, 64) == commit.encode():
                return
        finally:
            os.close(fd)
    tmp = _temp(name)
    _remove(dfd, tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666, dir_fd=dfd)
        try:
            os.write(fd, commit.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        _remove(dfd, tmp)
        raise
