"""The HTTP side of a transfer: a ``requests`` session whose sockets a cancel can
reach, and the parsing of the headers that resume depends on.

A cancel must not wait for a blocked ``connect`` or ``recv`` to time out. The
connection classes below hand each socket to the job that is using it (through a
thread-local set by the worker for the duration of its request) before it connects
and again before it waits for response headers; the cancelling thread then shuts the
socket down, which wakes a blocked connect or read at once with an error or an EOF.
Only the name lookup before the connect cannot be woken.
"""

from __future__ import annotations

import errno
import os
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
)
from urllib3.util.connection import allowed_gai_family

_tls = threading.local()


def _hand_over(sock: socket.socket | None) -> bool:
    """Gives ``sock`` to this thread's job; True if that job is already stopped."""
    hook: Callable[[socket.socket], bool] | None = getattr(_tls, "on_socket", None)
    if hook is not None and sock is not None:
        return hook(sock)
    return False


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


def new_session(user_agent: str) -> requests.Session:
    session = requests.Session()
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


class ContentRange(NamedTuple):
    start: int | None
    end: int | None
    total: int | None


# ASCII digits only: \d and str.isdigit() also take other scripts' digits and '²'.
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(?:([0-9]+)-([0-9]+)|\*)/([0-9]+|\*)\s*", re.IGNORECASE)


def _digits(value: str) -> bool:
    return value.isascii() and value.isdigit()


def parse_content_range(value: str | None) -> ContentRange | None:
    """``bytes 10-19/100``, ``bytes 10-19/*`` or ``bytes */100``; None if malformed."""
    if not value:
        return None
    match = _CONTENT_RANGE.fullmatch(value)
    if not match:
        return None
    start, end, total = match.groups()
    parsed = ContentRange(
        int(start) if start is not None else None,
        int(end) if end is not None else None,
        int(total) if total != "*" else None,
    )
    if parsed.start is not None and parsed.end is not None and parsed.end < parsed.start:
        return None
    return parsed


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if _digits(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def strong_etag(value: str | None) -> str | None:
    """The ETag if it is strong; a weak one must not be used in ``If-Range``."""
    if not value:
        return None
    value = value.strip()
    if value.startswith(("W/", "w/")) or not (value.startswith('"') and value.endswith('"')):
        return None
    return value


def same_version(recorded_etag: str | None, recorded_modified: str | None, headers: Any) -> bool | None:
    """Whether an answer that continues a ``.part`` (a 206, a 416) is of the version
    of the file whose bytes the ``.part`` holds, judged by the answer's own
    validators: many origins and CDNs ignore ``If-Range`` and send the range of
    whatever version they have now.

    The recorded strong ETag decides when the answer carries an ETag (a weak one is
    not the same strong one); without one, the recorded Last-Modified decides when
    the answer carries that. None: the answer carries nothing to compare.
    """
    recorded_etag = strong_etag(recorded_etag)
    etag = (headers.get("ETag") or "").strip()
    if recorded_etag and etag:
        return etag == recorded_etag
    modified = (headers.get("Last-Modified") or "").strip()
    if recorded_modified and modified:
        return modified == recorded_modified.strip()
    return None


def content_length(headers: Any) -> int | None:
    value = headers.get("Content-Length")
    if value is None or not _digits(value.strip()):
        return None
    return int(value)


def redact_url(url: str) -> str:
    """The url as shown to clients and in logs: without userinfo, query string, path
    parameters (``;token=...`` in any segment) or fragment, any of which may carry
    credentials."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port else "")
    if parts.username is not None or parts.password is not None:
        netloc = "***@" + netloc
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, _PARAMS.sub(r"\1;***", parts.path), query, ""))


# The characters that end a url quoted in a message: urllib3 and requests put urls and
# request targets between quotes or before " (Caused by ...)".
_QUERY = re.compile(r"\?[^\s'\"()]*")
_USERINFO = re.compile(r"//[^/\s'\"@]*@")
# A ';' counts only inside a path (after a '/' with no space between): prose keeps its semicolons.
_PARAMS = re.compile(r"(/[^\s'\"()/;?#]*);[^\s'\"()/?#]*")
_FRAGMENT = re.compile(r"(/[^\s'\"()#]*)#[^\s'\"()]*")


def redact_text(text: str) -> str:
    """A message (an exception's, say) without the query strings, path parameters,
    fragments or userinfo of the urls it quotes: urllib3 quotes the request target,
    and urls often carry credentials there."""
    text = _FRAGMENT.sub(r"\1#***", text)
    text = _QUERY.sub("?***", text)
    return _USERINFO.sub("//***@", _PARAMS.sub(r"\1;***", text))


def url_filename(url: str) -> str:
    """The last path segment, without its parameters (``f.bin;token=...`` is ``f.bin``)."""
    from urllib.parse import unquote

    path = urlsplit(url).path
    return unquote(path.rstrip("/").rsplit("/", 1)[-1].split(";", 1)[0]) if path else ""
