"""Limits that keep slow or departed clients from holding the request threads.

The service runs on a fixed number of server threads (gunicorn gthread), and
two kinds of client can keep one busy for much longer than a request needs:

* an event stream: it holds its thread for as long as it is open, so the number
  of streams is capped (:class:`StreamSlots`), leaving threads for every other
  request;
* an event stream whose client has left: the server notices only when a write
  fails, which for an idle stream is the next keep-alive, seconds away. The
  stream looks at its socket between waits instead (:func:`client_gone`).

Nothing here knows Flask; it works on the WSGI environ and the client socket
that gunicorn (``gunicorn.socket``) and werkzeug's server (``werkzeug.socket``)
put into it. Under any other server there is no socket, and the check is skipped.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

_RDHUP = getattr(select, "POLLRDHUP", 0)  # Linux: the peer sent FIN, even with bytes still unread
_HUNG_UP = select.POLLHUP | select.POLLERR | select.POLLNVAL | _RDHUP


class StreamSlots:
    """Counts open event streams against a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
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
