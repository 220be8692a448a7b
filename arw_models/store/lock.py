"""The state directory's lock: one process serves one state directory.

An advisory ``flock`` on ``{state_dir}/arw-models.lock``, taken when the service
starts (or a server worker boots) and held until it stops.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import time

from .files import open_fd
from .storage import StateDir

log = logging.getLogger(__name__)

try:  # POSIX; the lock is advisory and only needed there
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


class StateLockError(RuntimeError):
    pass


LOCK_POLL_SECS = 0.05
_HOLDER = re.compile(r"pid (\d+) on (\S+)(?: parent (\d+))?")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sibling(holder: str) -> bool:
    """Whether the holder is this process or another child of its parent (another
    worker of the same server): a real conflict, not a process on its way out."""
    match = _HOLDER.match(holder)
    if match is None or match.group(3) is None:
        return False
    pid, host, parent = int(match.group(1)), match.group(2), int(match.group(3))
    if host != socket.gethostname():
        return False
    # This very process (another app on the same directory) will not let go either.
    return pid == os.getpid() or (parent == os.getppid() and parent != 1 and _alive(pid))


class StateLock:
    """An exclusive lock on a state directory, held while the service runs.

    Two processes serving one directory would split jobs and events between them
    and race on the same ``.part`` files; the second one fails at start instead.
    The lock file names its holder (``pid N on HOST parent P``), for the message
    and to tell a sibling worker (fail at once) from a process still exiting
    after a kill (worth waiting a moment for).
    """

    def __init__(self, state: StateDir) -> None:
        self._state = state
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: float = 0.0) -> None:
        """Takes the lock, waiting up to ``wait`` seconds for a holder that is not a
        sibling worker; raises :class:`StateLockError` naming the directory, the
        lock file and the holder."""
        if fcntl is None:  # pragma: no cover
            return
        self._state.ensure()
        fd = open_fd(self._state.lock_path, os.O_RDWR | os.O_CREAT, follow_parent=True)
        deadline = time.monotonic() + wait
        waited = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                holder = self._holder(fd)
                if _sibling(holder) or time.monotonic() >= deadline:
                    raise StateLockError(self._refusal(holder))
                if not waited:
                    waited = True
                    log.warning("state directory %s is held by %s; waiting up to %.1fs for it",
                                self._state.root, holder or "another process", wait)
                time.sleep(LOCK_POLL_SECS)  # flock has no timed wait; the holder may be exiting
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} parent {os.getppid()}\n".encode(), 0)
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            return os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _refusal(self, holder: str) -> str:
        who = " ".join(holder.split()[:4]) or "another process"
        return (
            f"state directory {self._state.root} is already in use by {who} (lock {self._state.lock_path}); "
            "one process serves one state directory: run gunicorn with one worker "
            "(-w 1, as the bundled configuration does), or give each instance its own ARW_STATE_DIR"
        )

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
