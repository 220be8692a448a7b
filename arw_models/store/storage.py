"""The state directory: its layout, safe names, partial files with their sidecars,
atomic writes. The model registry (``models.json``) is :mod:`.registry`'s, the
directory lock :mod:`.lock`'s, and a sidecar's fields :mod:`.sidecar`'s.

Layout::

    {state_dir}/models.json          the installed models, written atomically
    {state_dir}/arw-models.lock      held by the one process that serves this directory
    {state_dir}/models/<file>        finished model files
    {state_dir}/models/<id>.part     bytes of a download in progress
    {state_dir}/models/<id>.part.json  its sidecar: url, validators, expected size
    {state_dir}/blobs/sha256/<digest>  the bytes of installed models, once (:mod:`.blobs`)
    {state_dir}/manifests/<id>.json  an installed model: its files (:mod:`.manifests`)

Every name that reaches the file system comes from :func:`valid_id` (ids) or
:func:`sanitize_filename` (final names), so nothing a client sends can name a path
outside ``models/``; and no file is reached through a symbolic link (see
:mod:`arw_models.store.files`).

Modes: what can hold a url, a header or a token (``models.json``, manifests, the
lock, ``.part`` files and sidecars, temporary files) is ``0600``. Installed model files
are not secrets, and runtimes often run as another user: they get the models
mode (``ARW_MODELS_MODE``, ``0644``), set explicitly whatever the umask, when
installed and, for files an older version installed, at start; ``models/`` gets
the matching read and search bits (``0755``), and the state directory only the
search bits (``0711``), so that a model can be opened by its path while the state
directory cannot be listed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import stat
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO

from .files import (
    DIR_MODE,
    StateDirError,
    directory_fd,
    fsync_dir,
    is_regular,
    linked_dir_error,
    lstat_file,
    open_fd,
    remove_quietly,
    rename_over,
    restrict_tree,
    write_atomic,
)
from .partfile import PartFile

log = logging.getLogger(__name__)

ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
PART_SUFFIX = ".part"
SIDECAR_SUFFIX = ".part.json"
MAX_NAME_BYTES = 200
_RESERVED = {
    "con", "prn", "aux", "nul",
    *(f"com{i}" for i in range(10)),
    *(f"lpt{i}" for i in range(10)),
}
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')


def valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def utcnow() -> str:
    """The time as the events and the registry write it: ISO 8601, ms, UTC."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def sanitize_filename(name: str, fallback: str) -> str:
    """One safe path component from an untrusted name.

    Keeps the last segment after any ``/`` or ``\\``; drops control and reserved
    characters, leading dots and trailing dots or spaces; renames Windows device
    names; shortens overlong names keeping the extension; never ends in the
    partial-file suffixes. Falls back to ``fallback`` (a valid id) when nothing
    usable is left.
    """
    name = unicodedata.normalize("NFC", name or "")
    name = re.split(r"[/\\]", name)[-1]
    name = _UNSAFE_CHARS.sub("_", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = name.strip().lstrip(".").rstrip(". ")
    if not name or set(name) <= {"_", " "}:
        name = fallback
    if name.partition(".")[0].lower() in _RESERVED:
        name = "_" + name
    lowered = name.lower()
    if lowered.endswith((PART_SUFFIX, SIDECAR_SUFFIX)):
        name += ".bin"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        base, ext = os.path.splitext(name)
        ext = ext if len(ext.encode("utf-8")) <= 16 else ""
        room = MAX_NAME_BYTES - len(ext.encode("utf-8"))
        base = base.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(". ")
        name = (base or fallback[:room]) + ext
    return name


def disk_free(path: str) -> int:
    """Free bytes on the file system of ``path``."""
    return shutil.disk_usage(path).free


def allocated(path: str) -> int:
    """Bytes of disk the file at ``path`` occupies (its allocated blocks: all of a
    preallocated file, only the written parts of a sparse one); 0 when there is
    none, or a link is there (not followed)."""
    st = lstat_file(path)
    return 0 if st is None or not stat.S_ISREG(st.st_mode) else st.st_blocks * 512


def atomic_write_json(path: str, data: Any, *, follow_parent: bool = False) -> None:
    """Write JSON so that readers see the old file or the new one, never a mix."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_atomic(path, text.encode("utf-8"), follow_parent=follow_parent)


def read_json(path: str, *, follow_parent: bool = False) -> Any:
    with os.fdopen(open_fd(path, os.O_RDONLY, follow_parent=follow_parent), encoding="utf-8") as fh:
        return json.load(fh)


def open_part(path: str, append: bool) -> PartFile:
    """A ``.part`` opened for writing at its end (emptied first unless ``append``),
    never through a link, unbuffered so that a failed write leaves nothing behind
    to fail again on close; it can bypass the page cache (see :mod:`.partfile`)."""
    return PartFile(path, open_fd(path, os.O_WRONLY | os.O_CREAT | (0 if append else os.O_TRUNC)))


def open_part_at(path: str) -> BinaryIO:
    """A ``.part`` opened for writes at any offset (``os.pwrite`` on its descriptor),
    created if need be, never truncated, never through a link."""
    return os.fdopen(open_fd(path, os.O_RDWR | os.O_CREAT), "r+b", buffering=0)


def read_part(path: str) -> BinaryIO:
    """A ``.part`` opened for reading, never through a link (``FileNotFoundError``
    if there is none, or there was a link)."""
    return os.fdopen(open_fd(path, os.O_RDONLY), "rb")


class StateDir:
    """Paths inside one state directory."""

    def __init__(self, root: str, models_mode: int = 0o644) -> None:
        self.root = os.path.abspath(root)
        # The mode of installed model files, and what their folders need for it:
        # read and search where the files are readable, search alone on the way.
        self.models_mode = models_mode
        readable = models_mode & 0o044
        self.models_dir_mode = DIR_MODE | readable | readable >> 2
        self.search_bits = readable >> 2
        self.models_dir = os.path.join(self.root, "models")
        self.registry_path = os.path.join(self.root, "models.json")
        self.lock_path = os.path.join(self.root, "arw-models.lock")
        self.store_dir = os.path.join(self.root, "blobs")
        self.blobs_dir = os.path.join(self.store_dir, "sha256")
        self.manifests_dir = os.path.join(self.root, "manifests")

    def ensure(self) -> None:
        """Creates the directories, narrows the modes of the private files we own
        there, gives the installed models (and their folders) the models mode;
        refuses a ``models/`` that is not a real directory."""
        # The state directory itself may be a link: the operator chose that path.
        os.makedirs(self.root, mode=DIR_MODE, exist_ok=True)
        try:
            os.mkdir(self.models_dir, DIR_MODE)
        except FileExistsError:
            pass
        st = os.lstat(self.models_dir)
        if stat.S_ISLNK(st.st_mode):
            raise linked_dir_error(self.models_dir)
        if not stat.S_ISDIR(st.st_mode):
            raise StateDirError(f"{self.models_dir} is not a directory")
        restrict_tree(self.root, [os.path.basename(self.registry_path), os.path.basename(self.lock_path)],
                      follow=True)
        names = os.listdir(self.models_dir)
        restrict_tree(self.models_dir, [n for n in names if self._private(n)])
        with directory_fd(self.root, follow=True) as dfd:
            chmod_own(dfd, stat.S_IMODE(os.fstat(dfd).st_mode) | self.search_bits)
        with directory_fd(self.models_dir) as dfd:
            chmod_own(dfd, self.models_dir_mode)
            # Models an older version installed 0600 get the mode now, as new ones do.
            for name in names:
                if not self._private(name):
                    set_mode(dfd, name, self.models_mode)

    @staticmethod
    def _private(name: str) -> bool:
        return name.endswith((PART_SUFFIX, SIDECAR_SUFFIX)) or _TEMPORARY.fullmatch(name) is not None

    def part_path(self, model_id: str) -> str:
        assert valid_id(model_id), model_id
        return os.path.join(self.models_dir, model_id + PART_SUFFIX)

    def sidecar_path(self, model_id: str) -> str:
        assert valid_id(model_id), model_id
        return os.path.join(self.models_dir, model_id + SIDECAR_SUFFIX)

    def model_path(self, filename: str) -> str:
        path = os.path.join(self.models_dir, filename)
        if os.path.dirname(path) != self.models_dir:
            raise ValueError(f"unsafe file name {filename!r}")
        return path

    def read_sidecar(self, model_id: str) -> dict[str, Any] | None:
        try:
            data = read_json(self.sidecar_path(model_id))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_sidecar(self, model_id: str, data: dict[str, Any]) -> None:
        atomic_write_json(self.sidecar_path(model_id), data)

    def remove_partial(self, model_id: str) -> bool:
        """Remove the ``.part`` and its sidecar; True if there was a ``.part``."""
        removed = remove_quietly(self.part_path(model_id))
        remove_quietly(self.sidecar_path(model_id))
        return removed

    def part_size(self, model_id: str) -> int | None:
        st = lstat_file(self.part_path(model_id))
        return None if st is None else st.st_size

    def truncate_part(self, model_id: str) -> None:
        try:
            fd = open_fd(self.part_path(model_id), os.O_WRONLY)
        except FileNotFoundError:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def has_model_file(self, filename: str) -> bool:
        """Whether the model file is there, as a regular file: one replaced by a link
        counts as missing (and is not followed)."""
        return is_regular(self.model_path(filename))

    def install_part(self, model_id: str, filename: str) -> str:
        """Renames the ``.part`` to its final name in ``models/``; returns the path.

        ``FileNotFoundError`` when there is no ``.part`` as a regular file (a link
        there is removed, never installed).
        """
        part, path = self.part_path(model_id), self.model_path(filename)
        st = lstat_file(part)
        if st is None or not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(errno.ENOENT, "the partial file is gone", part)
        rename_over(part, path)  # the .part may be a link of the file it replaces
        st = lstat_file(path)
        if st is None or not stat.S_ISREG(st.st_mode):
            # Swapped for a link between the check and the rename: that link was
            # removed by lstat_file, not installed.
            raise FileNotFoundError(errno.ENOENT, "the partial file was not a regular file", part)
        with directory_fd(self.models_dir) as dfd:
            set_mode(dfd, filename, self.models_mode)  # the .part was 0600
        fsync_dir(self.models_dir)
        return path

    def sweep_temporaries(self) -> list[str]:
        """Removes the temporary files (``.<name>.<pid>.<thread>.tmp``, see
        :func:`~arw_models.store.files.temp_path`) a process that died left in the state
        directory and in ``models/``. Called at start, under the state lock, when no
        other process writes here: each one is stale. A temporary hard link of a model
        would otherwise keep its bytes on the disk after the model is deleted."""
        removed = []
        for directory in (self.root, self.models_dir, self.blobs_dir, self.manifests_dir):
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if not _TEMPORARY.fullmatch(name):
                    continue
                path = os.path.join(directory, name)
                try:
                    if directory == self.models_dir and _is_dir(path):
                        # A model's folder being built (store.folders): never a link followed.
                        shutil.rmtree(path)
                        removed.append(path)
                    elif remove_quietly(path):
                        removed.append(path)
                except OSError as exc:  # a directory of that name, say: not ours to touch
                    log.warning("cannot remove %s: %s", os.path.join(directory, name), exc.strerror or exc)
        return removed

    def partial_ids(self) -> Iterator[str]:
        """Ids that have a ``.part`` or a sidecar in ``models/``."""
        try:
            names = os.listdir(self.models_dir)
        except FileNotFoundError:
            return
        seen: set[str] = set()
        for name in sorted(names):
            for suffix in (SIDECAR_SUFFIX, PART_SUFFIX):
                if name.endswith(suffix):
                    model_id = name[: -len(suffix)]
                    if valid_id(model_id) and model_id not in seen:
                        seen.add(model_id)
                        yield model_id
                    break


def _is_dir(path: str) -> bool:
    st = lstat_file(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


# The names files.temp_path gives: "." + a name + "." + pid + "." + thread id + ".tmp".
_TEMPORARY = re.compile(r"\..+\.[0-9]+\.[0-9]+\.tmp")


def chmod_own(fd: int, mode: int) -> None:
    """``fchmod`` on an open file or directory of ours (another user's is left as
    it is), whatever the umask was when it was made."""
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


def set_mode(dir_fd: int, name: str, mode: int) -> None:
    """Gives the regular file ``name`` of ours (never through a link) ``mode``."""
    try:
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return  # gone, a link, or not ours to read: nothing to give a mode to
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            chmod_own(fd, mode)
    except OSError as exc:
        log.warning("cannot set the mode of model file %s: %s", name, exc.strerror or exc)
    finally:
        os.close(fd)


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
