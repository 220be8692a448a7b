"""The HTTP side of a transfer: a ``requests`` session whose sockets a cancel can
reach, and the parsing of the headers that resume depends on.

A cancel must not wait for a blocked ``recv`` to time out. The connection class
below hands each socket to the job that is using it (through a thread-local set by
the worker for the duration of its request) right before it waits for response
headers; the cancelling thread then shuts the socket down, which wakes the blocked
read at once with an EOF or an error.
"""

from __future__ import annotations

import re
import socket
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

_tls = threading.local()


def _hand_over(sock: socket.socket | None) -> None:
    hook: Callable[[socket.socket], None] | None = getattr(_tls, "on_socket", None)
    if hook is not None and sock is not None:
        hook(sock)


class _TrackedHTTPConnection(HTTPConnection):
    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _hand_over(self.sock)
        return super().getresponse(*args, **kwargs)


class _TrackedHTTPSConnection(HTTPSConnection):
    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _hand_over(self.sock)
        return super().getresponse(*args, **kwargs)


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _TrackingAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _TrackedHTTPPool,
            "https": _TrackedHTTPSPool,
        }


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

    def __init__(self, hook: Callable[[socket.socket], None]) -> None:
        self._hook = hook

    def __enter__(self) -> None:
        _tls.on_socket = self._hook

    def __exit__(self, *exc: object) -> None:
        _tls.on_socket = None


class ContentRange(NamedTuple):
    start: int | None
    end: int | None
    total: int | None


_CONTENT_RANGE = re.compile(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", re.IGNORECASE)


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
    if value.isdigit():
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


def content_length(headers: Any) -> int | None:
    value = headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def redact_url(url: str) -> str:
    """The url without userinfo or query string, as shown to clients and in logs."""
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
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def url_filename(url: str) -> str:
    from urllib.parse import unquote

    path = urlsplit(url).path
    return unquote(path.rstrip("/").rsplit("/", 1)[-1]) if path else ""
