"""Installed models of many files: ``{state_dir}/models/<name>/``, with the
repository's paths, each file a hard link of its blob (a copy where the file system
makes no link, as :mod:`.blobs` does).

A folder is built under a temporary name beside it (``.<name>.<pid>.<thread>.tmp``,
which a start sweeps away if a process died while building it) and renamed into place
in one step; a model installed again has its old folder exchanged for the new one
atomically (``renameat2(RENAME_EXCHANGE)`` where the kernel has it, else two renames
in a row), and the old one removed after. Files and folders get the models mode, as
single model files do: runtimes may run as another user.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterable

from .blobs import Blobs, copy_fd
from .files import directory_fd, fsync_dir, lstat_file, remove_quietly, temp_path
from .storage import StateDir, chmod_own

log = logging.getLogger(__name__)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def is_folder(state: StateDir, name: str) -> bool:
    """Whether the model named ``name`` in ``models/`` is a folder (never a link)."""
    st = lstat_file(state.model_path(name)) if _plain(name) else None
    return st is not None and stat.S_ISDIR(st.st_mode)


def _plain(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..")


def remove_model(state: StateDir, name: str) -> bool:
    """Removes the model file or folder ``name`` from ``models/`` (a link itself,
    never what it points to); True if something was there."""
    path = state.model_path(name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
        return True
    return remove_quietly(path)


def build(state: StateDir, blobs: Blobs, name: str, files: Iterable[tuple[str, str]]) -> str:
    """Builds the folder ``models/<name>/`` from blobs (``(path, digest)`` pairs)
    and puts it in place of what is there; returns its path. Raises
    ``FileNotFoundError`` when a blob is missing (nothing changes)."""
    final = state.model_path(name)
    tmp = temp_path(final)
    _remove_tree(tmp)
    os.mkdir(tmp, 0o700)
    try:
        for path, digest in files:
            _place(state, blobs, tmp, path, digest)
        _open_up(state, tmp)
        _swap(tmp, final)
    except BaseException:
        _remove_tree(tmp)
        raise
    fsync_dir(state.models_dir)
    return final


def _parent(state: StateDir, root: str, path: str) -> str:
    """``root/path``, its folders made (the models' folder mode)."""
    target = os.path.join(root, *path.split("/"))
    os.makedirs(os.path.dirname(target), mode=state.models_dir_mode, exist_ok=True)
    return target


def _place(state: StateDir, blobs: Blobs, root: str, path: str, digest: str) -> None:
    target = _parent(state, root, path)
    fd = blobs.open(digest)
    if fd is None:
        raise FileNotFoundError(errno.ENOENT, f"the store has no blob {digest} for {path}")
    try:
        st = os.fstat(fd)
        if not blobs.link_at(digest, target, st):
            copy_fd(fd, target, st.st_size)
            os.chmod(target, state.models_mode)
    finally:
        os.close(fd)


def _open_up(state: StateDir, root: str) -> None:
    """The folders get the models' folder mode (the files have the models mode)."""
    for directory, _, _ in os.walk(root):
        with directory_fd(directory) as dfd:
            chmod_own(dfd, state.models_dir_mode)


def _swap(tmp: str, final: str) -> None:
    """``tmp`` takes the place of ``final``; an old ``final`` goes once it is out."""
    try:
        there = os.lstat(final)
    except FileNotFoundError:
        os.rename(tmp, final)
        return
    if stat.S_ISDIR(there.st_mode) and _exchange(tmp, final):
        _remove_tree(tmp)  # the old folder, under the temporary name now
        return
    old = temp_path(final + ".old")
    _remove_tree(old)
    os.rename(final, old)
    os.rename(tmp, final)
    _remove_tree(old)


def _exchange(a: str, b: str) -> bool:
    """Exchanges two names atomically; False where the kernel or libc cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result != 0:
        log.info("no atomic exchange of %s (%s): renaming in two steps", b, os.strerror(ctypes.get_errno()))
        return False
    return True


def _remove_tree(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        remove_quietly(path)


def put_bytes(state: StateDir, blobs: Blobs, data: bytes, digest: str) -> None:
    """Puts ``data`` (an inline file) in the store as the blob ``digest``."""
    scratch = temp_path(os.path.join(state.blobs_dir, digest + ".inline"))
    remove_quietly(scratch)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        blobs.put(scratch, digest, len(data))
    finally:
        remove_quietly(scratch)


def exists(state: StateDir, name: str) -> bool:
    """Whether anything (a file, a folder, a link) is at ``models/<name>``."""
    try:
        return os.path.lexists(state.model_path(name))
    except ValueError:
        return True
