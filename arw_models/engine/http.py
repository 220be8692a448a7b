"""The ``requests`` session whose sockets a cancel can reach.

A cancel must not wait for a blocked ``connect`` or ``recv`` to time out. The
connection classes below hand each socket to the job that is using it (through a
thread-local set by the worker for the duration of its request) before it connects
and again before it waits for response headers; the cancelling thread then shuts the
socket down, which wakes a blocked connect or read at once with an error or an EOF.
Only the name lookup before the connect cannot be woken.

That takes names of urllib3 and of requests' adapter that are not their public API,
and this is the only module of the package that touches them. Each one is listed in
:data:`PRIVATE_NAMES`, with why it is needed (the list is appended to this docstring
below); ``tests/test_http_fence.py`` checks every one against the installed urllib3
and requests, so an upgrade that moves one of them fails by name rather than as a
cancel that silently stops being prompt. ``setup.cfg`` keeps urllib3 below its next
major version for the same reason.

The body of a download is read here too, by :func:`body_reader`: straight from the
socket into the caller's buffer, past urllib3 (whose ``read`` makes a new object of
every chunk, which a fast link pays for in allocations and page faults), through
the ``http.client`` response under it, keeping its framing.

It is longer than most modules on purpose: every use of urllib3's and requests'
private names is fenced here, in one file, so that tests/test_http_fence.py can
check them against each release.
"""

from __future__ import annotations

import errno
import http.client
import io
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    IncompleteRead,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
)
from urllib3.util.connection import allowed_gai_family


class Private(NamedTuple):
    """A name of urllib3 or requests that this module relies on beyond their
    documented API."""

    where: str  # dotted: module, then class and attribute
    kind: str  # "method", "function", "class attribute", "instance attribute", "inherited", "marker"
    why: str
    params: tuple[str, ...] | None = None  # the parameter names of a method or function
    source_has: tuple[str, ...] = ()  # code its source must still contain (the behaviour relied on)


PRIVATE_NAMES: tuple[Private, ...] = (
    Private("urllib3.connection.HTTPConnection._new_conn", "method",
            "overridden so that the socket is made by _connect, which hands it to the job "
            "before connect(); its body is urllib3's own, around create_connection", ("self",),
            ("create_connection(",)),
    Private("urllib3.connection.HTTPConnection._dns_host", "instance attribute",
            "the host to resolve as given (a trailing dot kept), which urllib3's _new_conn connects to"),
    Private("urllib3.connection.HTTPConnection.sock", "instance attribute",
            "the kept-alive socket that getresponse() hands over before it waits for the answer"),
    Private("urllib3.connection.HTTPConnection.connect", "method",
            "takes its socket from _new_conn", ("self",), ("self._new_conn()",)),
    Private("urllib3.connection.HTTPSConnection.connect", "method",
            "takes its socket from _new_conn, tunnels and handshakes on it, and leaves the TLS "
            "socket in self.sock, which is handed over when connect() returns",
            ("self",), ("self._new_conn()", "self.sock = ")),
    Private("urllib3.connection.HTTPSConnection._new_conn", "inherited",
            "the tracked HTTPS connection puts the cancellable _new_conn before HTTPSConnection "
            "in its bases: an _new_conn of HTTPSConnection's own would be bypassed"),
    Private("urllib3.connectionpool.HTTPConnectionPool.ConnectionCls", "class attribute",
            "the pools make their connections from it: set to the tracked classes"),
    Private("urllib3.connectionpool.HTTPSConnectionPool.ConnectionCls", "class attribute",
            "the pools make their connections from it: set to the tracked classes"),
    Private("urllib3.poolmanager.PoolManager.pool_classes_by_scheme", "instance attribute",
            "replaced on the adapter's pool manager and on each HTTP(S) proxy manager, so that "
            "every pool they make is a tracked one"),
    Private("urllib3.util.connection.allowed_gai_family", "function",
            "the address family urllib3 resolves with (IPv4 alone where IPv6 does not work); "
            "_connect resolves with the same",
            ()),
    Private("urllib3.util.connection.create_connection", "function",
            "mirrored by _connect (plus the hand-over and a wakeable wait): new parameters mean "
            "new behaviour to mirror", ("address", "timeout", "source_address", "socket_options")),
    Private("urllib3.util.timeout._DEFAULT_TIMEOUT", "marker",
            "the 'no timeout given' sentinel that may reach _new_conn as self.timeout; _connect "
            "takes anything that is not a number for it"),
    Private("urllib3.exceptions.NameResolutionError.__init__", "method",
            "raised the way urllib3's _new_conn raises it, so that requests maps it the same way",
            ("self", "host", "conn", "reason")),
    Private("urllib3.exceptions.NewConnectionError.__init__", "method",
            "raised the way urllib3's _new_conn raises it, so that requests maps it the same way",
            ("self", "conn", "message")),
    Private("requests.adapters.HTTPAdapter.init_poolmanager", "method",
            "overridden to put the tracked pools into the pool manager it makes",
            ("self", "connections", "maxsize", "block", "pool_kwargs")),
    Private("requests.adapters.HTTPAdapter.poolmanager", "instance attribute",
            "the pool manager that init_poolmanager made"),
    Private("requests.adapters.HTTPAdapter.proxy_manager_for", "method",
            "overridden to put the tracked pools into each HTTP(S) proxy manager",
            ("self", "proxy", "proxy_kwargs")),
    Private("urllib3.response.HTTPResponse._fp", "instance attribute",
            "the http.client response under urllib3's, whose body body_reader reads"),
    Private("http.client.HTTPResponse.fp", "instance attribute",
            "the buffered socket file the body is read from: first the bytes it holds, then "
            "from its raw file; None once the body has ended"),
    Private("http.client.HTTPResponse.length", "instance attribute",
            "the body bytes still to come (None: up to the end of the connection), kept as "
            "readinto keeps it"),
    Private("http.client.HTTPResponse.chunked", "instance attribute",
            "a chunked body is left to urllib3: only a plain one is read past it"),
    Private("requests.models.Response._content_consumed", "instance attribute",
            "set by close_response once a body was read to its end past requests, so that "
            "close() gives the kept-alive connection back to the pool instead of closing it"),
    Private("requests.models.Response.close", "method",
            "closes the connection under a response whose content is not consumed, and only "
            "then gives it back to the pool", ("self",),
            ("if not self._content_consumed:", "self.raw.close()", "release_conn")),
    Private("http.client.HTTPResponse._close_conn", "method",
            "called where readinto calls it, at the end of the body", ("self",)),
    Private("http.client.HTTPResponse.readinto", "method",
            "mirrored by body_reader, which reads what has arrived where readinto waits for a "
            "full buffer: the clip to length, the bookkeeping and the close must stay the same",
            ("self", "b"), ("self.fp.readinto(b)", "self.length -= n", "self._close_conn()")),
)

__doc__ = (__doc__ or "") + "\nThe names relied on:\n\n" + "\n".join(
    f"* ``{p.where}`` ({p.kind}): {p.why}." for p in PRIVATE_NAMES
) + "\n"

#: A declared seam: called with each socket right after it was handed to its job
#: (before a connect, and before the wait for an answer), so that a test can act at
#: a known point of a connect without patching this module's helpers.
on_hand_over: Callable[[socket.socket], None] | None = None

_tls = threading.local()


def _hand_over(sock: socket.socket | None) -> bool:
    """Gives ``sock`` to this thread's job; True if that job is already stopped."""
    hook: Callable[[socket.socket], bool] | None = getattr(_tls, "on_socket", None)
    if sock is None:
        return False
    stopped = hook(sock) if hook is not None else False
    if on_hand_over is not None:
        on_hand_over(sock)
    return stopped


def _connect(address: tuple[str, int], timeout: Any, source_address: tuple[str, int] | None,
             socket_options: Any) -> socket.socket:
    """urllib3's ``create_connection``, with the socket handed to the job before
    ``connect()``: shutting it down from another thread ends a connect that hangs."""
    host, port = address
    host = host.strip("[]")
    try:
        host.encode("idna")
    except UnicodeError:
        raise LocationParseError(f"'{host}', label empty or too long") from None
    limit = float(timeout) if isinstance(timeout, (int, float)) else None  # else urllib3's "default" marker
    err: OSError | None = None
    for af, socktype, proto, _name, sa in socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM):
        sock = None
        try:
            sock = socket.socket(af, socktype, proto)
            for option in socket_options or ():
                sock.setsockopt(*option)
            if source_address:
                sock.bind(source_address)
            _connect_waking(sock, sa, limit)
            sock.settimeout(limit)
            return sock
        except OSError as exc:
            err = exc
            if sock is not None:
                sock.close()
            if isinstance(exc, _Stopped):
                break  # not a reason to try the next address
    if err is not None:
        raise err
    raise OSError("getaddrinfo returned no address")


STOP_CHECK_SECS = 0.1


class _Stopped(ConnectionAbortedError):
    """The job stopped while its connection was being made."""

    def __init__(self) -> None:
        super().__init__(errno.ECONNABORTED, "the download was stopped")


def _connect_waking(sock: socket.socket, address: Any, timeout: float | None) -> None:
    """``sock.connect(address)`` that a stop of this thread's job ends at once: the
    job shuts the socket down (waking the wait), and should that land before the
    connect began, the wait notices the stop within ``STOP_CHECK_SECS``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    sock.setblocking(False)
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        if _hand_over(sock):
            raise _Stopped()
        err = sock.connect_ex(address)
        # (EAGAIN here means no local port is free, not "in progress": it is an error.)
        while err in (errno.EINPROGRESS, errno.EALREADY, errno.EINTR):
            wait = STOP_CHECK_SECS if deadline is None else min(STOP_CHECK_SECS, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError("timed out")
            ready = selector.select(wait)
            if _hand_over(sock):
                raise _Stopped()
            if ready:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                break
    if err:
        raise OSError(err, os.strerror(err))
    try:
        sock.getpeername()
    except OSError:
        # Ready without an error, yet not connected: the socket was shut down before
        # the connect began (which marks it hung up without ending the connect).
        raise ConnectionAbortedError(errno.ECONNABORTED, "the connection was shut down") from None


class _CancellableConnect(HTTPConnection):
    """``_new_conn`` as in urllib3, with :func:`_connect` in place of its own."""

    def _new_conn(self) -> socket.socket:
        try:
            sock = _connect((self._dns_host, self.port), self.timeout, self.source_address, self.socket_options)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
        sys.audit("http.client.connect", self, self.host, self.port)
        return sock

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _hand_over(self.sock)  # a kept-alive connection was handed over by an earlier request
        return super().getresponse(*args, **kwargs)


class _TrackedHTTPConnection(_CancellableConnect):
    pass


class _TrackedHTTPSConnection(_CancellableConnect, HTTPSConnection):
    _handshake_handle: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        # Wrapping for TLS detaches this socket object (its fileno becomes -1), so
        # through the tunnel and the handshake the job holds a duplicate: shutting
        # either down ends the connection. It is closed once the TLS socket is handed over.
        self._handshake_handle = sock.dup()
        if _hand_over(self._handshake_handle):
            self._close_handshake_handle()
            sock.close()
            raise NewConnectionError(self, "the download was stopped")
        return sock

    def connect(self) -> None:
        try:
            super().connect()
        finally:
            if self.sock is not None:
                _hand_over(self.sock)
            self._close_handshake_handle()

    def _close_handshake_handle(self) -> None:
        handle, self._handshake_handle = self._handshake_handle, None
        if handle is not None:
            handle.close()


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


_TRACKED_POOLS = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}


class _TrackingAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_TRACKED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # Through an HTTP(S)_PROXY too, the sockets (to the proxy, and the tunnel
        # through it) are the job's to shut down. SOCKS pools are left as they are.
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_TRACKED_POOLS)
        return manager


class _Session(requests.Session):
    """A session that keeps ``private_headers`` for the host they were meant for:
    on a redirect to another host (or port) they are dropped, as requests drops
    ``Authorization``. A gated origin's credentials or the hub's token must not
    reach the CDN it redirects to. On a redirect within that host they stay, even
    ``Cookie``, which requests drops on every redirect unless its cookie jar made it."""

    private_headers: frozenset[str] = frozenset()

    def __init__(self) -> None:
        super().__init__()
        # The private headers of the request under way, while its redirects stay on its host.
        self._given: dict[str, str] = {}

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        private = {name.lower() for name in self.private_headers}
        self._given = {k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() in private}
        return super().request(method, url, *args, **kwargs)

    def rebuild_auth(self, prepared_request: Any, response: Any) -> None:
        super().rebuild_auth(prepared_request, response)
        if self.private_headers and self.should_strip_auth(response.request.url, prepared_request.url):
            for name in self.private_headers:
                prepared_request.headers.pop(name, None)
            self._given = {}  # nor to a later hop back to the host: the chain has left it
            return
        for name, value in self._given.items():
            made = prepared_request.headers.get(name)  # by the jar, from a Set-Cookie on the way
            prepared_request.headers[name] = f"{value}; {made}" if made and name.lower() == "cookie" else value


def new_session(user_agent: str) -> requests.Session:
    """A session for one worker thread: one connection at a time, no retries of its
    own (the worker's loop retries, resuming from the bytes on disk), and sockets that
    go to the hook of :class:`socket_hook` while one is set."""
    session = _Session()
    adapter = _TrackingAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    # What is hashed and written must be the bytes the origin sent.
    session.headers["Accept-Encoding"] = "identity"
    return session


class socket_hook:
    """Context manager: sockets this thread's requests use go to ``hook``."""

    def __init__(self, hook: Callable[[socket.socket], bool]) -> None:
        self._hook = hook

    def __enter__(self) -> None:
        _tls.on_socket = self._hook

    def __exit__(self, *exc: object) -> None:
        _tls.on_socket = None


def body_reader(response: Any) -> Callable[[memoryview], int]:
    """A ``readinto`` for the body of a streamed ``requests`` response: it puts the
    bytes that have arrived (waiting for at least one) at the start of the buffer,
    exactly as sent (no content decoding), and returns how many; 0 at the end of the
    body. A body shorter than its ``Content-Length`` raises urllib3's
    ``IncompleteRead``, and socket errors come as they are (``OSError``).

    A plain body goes from the socket into the buffer, with no copy in between and
    no object made per read; a chunked one (or a response that is not urllib3's over
    ``http.client``, such as a test double) is read through urllib3 and copied."""
    raw = response.raw
    fp = getattr(raw, "_fp", None)
    if (isinstance(fp, http.client.HTTPResponse) and fp.chunked is False
            and isinstance(getattr(fp, "fp", None), io.BufferedReader)):
        return _PlainBody(fp).readinto
    read = getattr(raw, "read1", None) or raw.read

    def readinto(view: memoryview) -> int:
        data = read(len(view), decode_content=False)
        n = len(data)
        view[:n] = data
        return n

    return readinto


def close_response(response: Any) -> None:
    """Closes a streamed ``requests`` response. When :func:`body_reader` has read
    its body to the end (nothing of it left in the socket), its connection goes
    back to the session's pool, for the session's next request to that origin
    (parallel ranges: one connection per worker for the whole download, not one
    per range, which would pay a TCP and TLS handshake and a new slow start for
    each); otherwise the connection is closed with it."""
    fp = getattr(response.raw, "_fp", None)
    if (isinstance(fp, http.client.HTTPResponse) and fp.fp is None and fp.length == 0
            and fp.chunked is False):
        response._content_consumed = True
    response.close()


class _PlainBody:
    """``http.client.HTTPResponse.readinto`` that returns what has arrived instead
    of waiting for a full buffer: a stall must not hold back bytes already received
    (they are written, counted and resumable), and a cancel must find them on disk.

    The bytes that came with the headers sit in the buffered socket file; once they
    are taken, each read is one ``recv_into`` on its raw file. (``readinto1`` of the
    buffered file is no substitute: with a few bytes buffered and a large buffer to
    fill, it waits for more after copying them, and a timeout then loses them.)"""

    def __init__(self, fp: http.client.HTTPResponse) -> None:
        self._fp = fp
        self._got = 0
        self._buffered: int | None = None  # bytes the buffered file holds, once known

    def readinto(self, view: memoryview) -> int:
        fp = self._fp
        source = fp.fp
        if source is None:
            return 0
        length = fp.length
        if length is not None and len(view) > length:
            view = view[:length]
        if not len(view):
            n = 0
        else:
            if self._buffered is None:
                self._buffered = len(source.peek(1))  # reads once if nothing is buffered
            if self._buffered:
                n = source.readinto(view[: self._buffered])  # a copy of buffered bytes, no read
                self._buffered -= n
            else:
                got = source.raw.readinto(view)
                if got is None:  # only a non-blocking socket says "nothing yet", and ours block
                    raise BlockingIOError(errno.EAGAIN, "the socket has no bytes to read yet")
                n = got
        if not n and len(view):
            fp._close_conn()
            if length:
                raise IncompleteRead(self._got, length)
        elif length is not None:
            fp.length = length - n
            if not fp.length:
                fp._close_conn()
        self._got += n
        return n
