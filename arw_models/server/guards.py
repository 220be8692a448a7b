"""Guards that keep slow or departed clients from holding the request threads.

The service runs on a fixed number of server threads (gunicorn gthread), and
three kinds of client can keep one busy for much longer than a request needs:

* an event stream: it holds its thread for as long as it is open, so the number
  of streams is capped (:class:`StreamSlots`), leaving threads for every other
  request;
* an event stream whose client has left: the server notices only when a write
  fails, which for an idle stream is the next keep-alive, seconds away. The
  stream looks at its socket between waits instead (:func:`client_gone`);
* a request body that trickles in, or stops: :func:`read_body` reads it within a
  deadline. A socket timeout alone cannot bound the whole read, because the
  server's reader calls ``recv`` again and again until it has the bytes it wants,
  and each call starts a new timeout. So while a body is being read, one shared
  thread (:class:`SocketDeadlines`) lowers the timeout of its socket to the time
  left, and once the deadline has passed the next ``recv`` times out at once.
  A timeout inside the server's reader also tells gunicorn (27) not to reuse the
  connection, so bytes that arrive later are never parsed as a request.

Nothing here knows Flask; it works on the WSGI environ and the client socket
that gunicorn (``gunicorn.socket``) and werkzeug's server (``werkzeug.socket``)
put into it. Under any other server there is no socket, and the checks that need
one are skipped.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from werkzeug.exceptions import ClientDisconnected, HTTPException

_RDHUP = getattr(select, "POLLRDHUP", 0)  # Linux: the peer sent FIN, even with bytes still unread
_HUNG_UP = select.POLLHUP | select.POLLERR | select.POLLNVAL | _RDHUP


class StreamSlots:
    """Counts open event streams against a limit; ``why`` says where the limit
    came from, for the refusal that names it."""

    def __init__(self, limit: int, why: str = "") -> None:
        self.limit = limit
        self.why = why
        self._in_use = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    def acquire(self) -> Callable[[], None] | None:
        """A release function for one slot, or None when all are taken. Releasing
        twice frees one slot only, so every path that ends a stream may call it."""
        with self._lock:
            if self._in_use >= self.limit:
                return None
            self._in_use += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self._in_use -= 1

        return release


def client_socket(environ: Mapping[str, Any]) -> socket.socket | None:
    """The client's socket, when the server says which it is and it carries this
    request alone (an HTTP/2 connection multiplexes many)."""
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if not isinstance(sock, socket.socket):
        return None
    if environ.get("HTTP_VERSION") == "2" or str(environ.get("SERVER_PROTOCOL", "")).startswith("HTTP/2"):
        return None
    return sock


def client_gone(sock: socket.socket) -> bool:
    """Whether the peer has closed or reset the connection. Never blocks and
    consumes nothing: bytes waiting to be read (a pipelined request) mean the
    client is still there."""
    try:
        fd = sock.fileno()
    except OSError:
        return True
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | _RDHUP)
    try:
        events = poller.poll(0)
    except OSError:
        return True
    if not events:
        return False
    if events[0][1] & _HUNG_UP:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except ValueError:  # a TLS socket takes no flags; without POLLRDHUP it cannot be told
        return False
    except OSError:  # reset, or not connected any more
        return True


def client_probe(environ: Mapping[str, Any]) -> Callable[[], bool] | None:
    """A cheap "has this request's client gone?" check, or None without a socket."""
    sock = client_socket(environ)
    if sock is None:
        return None
    return lambda: client_gone(sock)


class _Guard:
    __slots__ = ("deadline", "prior", "sock")

    def __init__(self, sock: socket.socket, deadline: float, prior: float | None) -> None:
        self.sock = sock
        self.deadline = deadline
        self.prior = prior


class SocketDeadlines:
    """Keeps the timeout of each armed socket no longer than the time left to its
    deadline (at most ``tick`` late), so that a read made of many ``recv`` calls
    ends by the deadline too.

    Its one thread starts when a socket is armed and ends as soon as none is.
    Every change to an armed socket's timeout happens under the lock, and
    :meth:`disarm` restores the socket's own timeout under it, so the socket is
    never touched after it has been handed back to the server.
    """

    FLOOR = 0.001  # past the deadline: a recv that finds nothing waiting times out at once

    def __init__(self, tick: float = 0.1) -> None:
        self.tick = tick
        self._cond = threading.Condition(threading.Lock())
        self._armed: set[_Guard] = set()
        self._thread: threading.Thread | None = None

    def arm(self, sock: socket.socket, timeout: float) -> _Guard:
        guard = _Guard(sock, time.monotonic() + timeout, sock.gettimeout())
        with self._cond:
            sock.settimeout(timeout)
            self._armed.add(guard)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="arw-body-deadlines", daemon=True)
                self._thread.start()
        return guard

    def disarm(self, guard: _Guard) -> None:
        with self._cond:
            self._armed.discard(guard)
            try:
                guard.sock.settimeout(guard.prior)
            except OSError:
                pass
            if not self._armed:
                self._cond.notify_all()

    def _run(self) -> None:
        with self._cond:
            while self._armed:
                self._cond.wait(self.tick)
                now = time.monotonic()
                for guard in self._armed:
                    try:
                        guard.sock.settimeout(max(guard.deadline - now, self.FLOOR))
                    except OSError:
                        pass
            self._thread = None


DEADLINES = SocketDeadlines()


class BodyTimeout(Exception):
    """The body did not arrive within its time."""


class BodyIncomplete(Exception):
    """The body ended before its announced length, or its framing broke."""


def read_body(stream: IO[bytes], environ: Mapping[str, Any], *, limit: int, timeout: float,
              expected: int | None = None) -> bytes:
    """Up to ``limit`` bytes of the request body, read within ``timeout`` seconds
    when the client socket is known (otherwise as fast as the server gives them).

    Raises :class:`BodyTimeout` when time runs out and :class:`BodyIncomplete`
    when fewer than ``expected`` bytes came. After either, the connection must not
    carry another request; see :func:`close_after_response`.
    """
    sock = client_socket(environ)
    guard = None
    if sock is not None:
        try:
            guard = DEADLINES.arm(sock, timeout)
        except OSError:  # closed under us: the read below says how the body ends
            guard = None
    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit:
            piece = stream.read(limit - size)
            if not piece:
                break
            chunks.append(piece)
            size += len(piece)
    except HTTPException as exc:
        if not isinstance(exc, ClientDisconnected):  # 413 from a host app's MAX_CONTENT_LENGTH, say
            raise
        raise _failure(exc, guard) from None
    # A timeout, a reset, or a server's own error type (gunicorn's for broken chunk framing).
    except Exception as exc:  # noqa: BLE001 - re-raised as what it means to the client
        raise _failure(exc, guard) from None
    finally:
        if guard is not None:
            DEADLINES.disarm(guard)
    if expected is not None and size < min(expected, limit):
        raise BodyIncomplete(f"the body ended after {size} of {expected} bytes")
    return b"".join(chunks)


def _failure(exc: BaseException, guard: _Guard | None) -> Exception:
    # werkzeug turns a socket error into ClientDisconnected; the cause is its context.
    timed_out = isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)
    if timed_out or (guard is not None and time.monotonic() >= guard.deadline):
        return BodyTimeout("the request body did not arrive in time")
    return BodyIncomplete("the request body could not be read to its end")


def close_after_response(environ: Mapping[str, Any]) -> Callable[[], None]:
    """What to run once the answer to a cut-off body is sent: shut the reading
    side of the connection. gunicorn closes such a connection "gracefully", on
    its main thread, waiting up to 2 s for the client to close first; a client
    that does not would stall the accept loop each time. With the reading side
    shut that wait ends at once (bytes already queued are still drained)."""
    sock = client_socket(environ)

    def shut() -> None:
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    return shut
