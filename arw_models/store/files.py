"""Files of the state directory, never reached through a symbolic link, and private.

What the service keeps there (partial files, sidecars, ``models.json``, the lock)
holds full urls, credentials included, because a resume and a repeated POST need
them; so every file is created ``0600`` and every directory ``0700``, and wider
modes found on our own files are narrowed.

The service never makes a symbolic link in its state directory. One found where one
of its files belongs was planted (or left by hand), and following it would read or
overwrite a file elsewhere: it is removed, with a warning naming the path, and the
operation goes on as if the file were absent. Files are opened relative to their
directory with ``O_NOFOLLOW``, and that directory too is opened with ``O_NOFOLLOW``
when it lies inside the state directory (``models/``); only the state directory
itself may be a link, since the operator chose that path.

POSIX only, like the lock: ``O_NOFOLLOW`` and ``dir_fd`` are what make this work.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import ArwError

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
_PRIVATE = 0o077  # the bits that a state file must not have
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# A FIFO planted at a file's name would block a plain open until someone opens the
# other end; with O_NONBLOCK the open returns and the type check below refuses it.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class StateDirError(ArwError):
    """The state directory cannot be used safely; the service does not start, or
    the request is refused."""

    status = 503
    code = "state-dir-unsafe"
    title = "Service unavailable"


def linked_dir_error(path: str) -> StateDirError:
    # Removing the link would make the models it leads to vanish from the service
    # without a word; following it would put files outside the state directory.
    return StateDirError(
        f"{path} is a symbolic link, and the service follows no link inside its state directory; "
        "replace it by a directory, or set ARW_STATE_DIR to a directory on the disk that should hold the models"
    )


def make_dir(path: str) -> None:
    """Creates the folder ``path`` (0700) if it is not there, and refuses one that is a
    link or no folder: what every folder of the store is made with."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise linked_dir_error(path)
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"{path} is not a directory")


@contextmanager
def directory_fd(path: str, follow: bool = False) -> Iterator[int]:
    """The directory at ``path``, opened; unless ``follow``, not if it is a link
    (:class:`StateDirError`: ``models/`` was replaced by one while we run)."""
    try:
        fd = os.open(path, os.O_RDONLY | _DIRECTORY | _CLOEXEC | (0 if follow else _NOFOLLOW))
    except OSError as exc:
        if not follow and exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise linked_dir_error(path) from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def _drop_link(dir_fd: int, name: str, path: str) -> bool:
    """Removes the link ``name`` if it still is one; True if it was a link."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISLNK(st.st_mode):
        return False
    try:
        target = os.readlink(name, dir_fd=dir_fd)
    except OSError:
        target = "?"
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return True
    log.warning("removed the symbolic link %s (to %s): nothing in the state directory is read or written "
                "through a link", path, target)
    return True


def restrict(fd: int) -> None:
    """Narrows an open file or directory of ours to owner-only access."""
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if mode & _PRIVATE and st.st_uid == os.geteuid():
        os.fchmod(fd, mode & ~_PRIVATE)


def open_fd(path: str, flags: int, *, follow_parent: bool = False) -> int:
    """A file descriptor for the regular file at ``path``, never through a link.

    A link at the name is removed (see the module docstring); then, with
    ``O_CREAT`` in ``flags``, a new file is made, and without it the file is absent
    (``FileNotFoundError``). Anything else than a regular file is refused with
    ``EINVAL``. New files are ``0600``; an existing one of ours is narrowed to that.
    """
    directory, name = os.path.split(path)
    flags |= _NOFOLLOW | _CLOEXEC | _NONBLOCK
    with directory_fd(directory, follow=follow_parent) as dfd:
        for tries_left in (1, 0):
            try:
                fd = os.open(name, flags, FILE_MODE, dir_fd=dfd)
                break
            except OSError as exc:
                # ELOOP from O_NOFOLLOW; EEXIST from O_CREAT|O_EXCL on a link.
                if exc.errno not in (errno.ELOOP, errno.EEXIST) or not _drop_link(dfd, name, path):
                    raise
                if not flags & os.O_CREAT or not tries_left:
                    raise FileNotFoundError(errno.ENOENT, "was a symbolic link, now removed", path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
        restrict(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lstat_file(path: str, *, follow_parent: bool = False) -> os.stat_result | None:
    """The file's own status, or None if absent; a link there is removed and reads
    as absent."""
    directory, name = os.path.split(path)
    try:
        with directory_fd(directory, follow=follow_parent) as dfd:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                _drop_link(dfd, name, path)
                return None
    except FileNotFoundError:
        return None
    return st


def is_regular(path: str) -> bool:
    """True for a regular file, False for a link (left alone) or anything else."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def open_existing(path: str) -> int | None:
    """The regular file at ``path`` opened for reading, or None: absent, a link (left
    where it is, not followed) or anything else than a regular file."""
    directory, name = os.path.split(path)
    with directory_fd(directory) as dfd:
        try:
            fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK, dir_fd=dfd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
                return None
            raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return fd


def same_file(a: os.stat_result | None, b: os.stat_result | None) -> bool:
    return a is not None and b is not None and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def rename_over(src: str, dst: str) -> None:
    """``os.replace(src, dst)``, also when both names are hard links of one file:
    rename(2) then does nothing at all (POSIX), and ``src`` would stay behind."""
    try:
        there = os.lstat(dst)
    except FileNotFoundError:
        there = None
    if same_file(os.lstat(src), there):
        os.unlink(src)
    else:
        os.replace(src, dst)


def temp_path(path: str) -> str:
    """The temporary name :func:`write_atomic` uses for ``path`` in this thread."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, *, follow_parent: bool = False) -> None:
    """Writes ``data`` so that readers see the old file or the new one, never a mix.

    The temporary file is created exclusively (``O_EXCL``, no link followed): a name
    planted in advance is never written through. A leftover there, from a process
    that died with our pid, is removed first.
    """
    tmp = temp_path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = open_fd(tmp, flags, follow_parent=follow_parent)
    except FileExistsError:
        os.unlink(tmp)
        fd = open_fd(tmp, flags, follow_parent=follow_parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(path))


def remove_quietly(path: str) -> bool:
    try:
        os.unlink(path)  # a link itself, never its target
        return True
    except FileNotFoundError:
        return False


def restrict_tree(directory: str, names: list[str] | None = None, *, follow: bool = False) -> None:
    """Narrows ``directory`` and the regular files in it (or just ``names``) of
    ours to owner-only access; links and other entries are left alone."""
    with directory_fd(directory, follow=follow) as dfd:
        restrict(dfd)
        for name in os.listdir(dfd) if names is None else names:
            try:
                # Checked before the open: opening a device node can have effects.
                if not stat.S_ISREG(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    continue
                fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK, dir_fd=dfd)
            except OSError:
                continue  # absent, a link by now, or not ours to read
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    restrict(fd)
            except OSError as exc:
                log.warning("cannot narrow the mode of %s: %s", os.path.join(directory, name), exc.strerror)
            finally:
                os.close(fd)
