"""What a failed request or read was, in words a person reads.

requests and urllib3 raise their errors wrapped in one another, and the text of
each quotes reprs of the pool and connection objects (``_TrackedHTTPSPool(host=...,
port=...)`` of :mod:`arw_models.engine.http`, ``<urllib3.connection.HTTPConnection object
at 0x...>``), which mean nothing to a user and name private classes. Here a
failure is classified by the exception types in its chain (never by parsing its
text) and described by its kind, its host and the system's own reason
(``Connection refused``, ``Name or service not known``).
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import NamedTuple

import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)


class Failure(NamedTuple):
    """A failed request or read, in words: what kind of failure (``dns``,
    ``refused``, ``connect-timeout``, ``timeout``, ``tls`` or ``network``), the
    ``host`` and ``port`` it concerned (None when not known) and the system's reason."""

    kind: str
    host: str | None
    port: int | None
    reason: str
    transient: bool = False  # a dns failure the resolver says may pass (EAI_AGAIN)

    @property
    def address(self) -> str | None:
        """``host:port`` (``[v6]:port``), or the host alone."""
        if self.host is None or self.port is None:
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def failure_of(exc: BaseException) -> Failure:
    """Classifies what requests or urllib3 raised, by the exception types in its
    chain (never by its text, which quotes reprs of arw_models.engine.http's pools). The
    reason is the text of the system error underneath (``Connection refused``,
    ``Name or service not known``), never a repr of a urllib3 object."""
    chain = _chain(exc)
    host, port = next((a for a in map(_address_of, chain) if a[0]), (None, None))
    system = [e for e in chain if isinstance(e, OSError) and not _wrapper(e)]
    reason = next((_os_reason(e) for e in system), "")
    if any(isinstance(e, NameResolutionError) for e in chain):
        gai = next((e for e in chain if isinstance(e, socket.gaierror)), None)
        transient = gai is not None and gai.errno == socket.EAI_AGAIN
        return Failure("dns", host, port, reason or "the name does not resolve", transient)
    if any(isinstance(e, NewConnectionError) for e in chain) and any(
            isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED
            for e in system):
        return Failure("refused", host, port, reason or "connection refused")
    if any(isinstance(e, (ConnectTimeoutError, requests.exceptions.ConnectTimeout)) for e in chain):
        return Failure("connect-timeout", host, port, "timed out")
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return Failure("tls", host, port, reason or "the TLS handshake failed")
    if any(isinstance(e, (ReadTimeoutError, requests.exceptions.ReadTimeout, TimeoutError)) for e in chain):
        return Failure("timeout", host, port, "no data arrived within the idle timeout")
    if not reason:
        # No system error underneath: say what kind of failure it was, by its
        # class (a public name of requests or urllib3), without its text.
        reason = next((e.__class__.__name__ for e in reversed(chain) if not _wrapper(e)), exc.__class__.__name__)
    return Failure("network", host, port, reason)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it wraps: arguments (requests wraps urllib3's
    error), ``reason`` (urllib3's MaxRetryError and ProtocolError), causes."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 32:
        e = todo.pop(0)
        if any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend(a for a in e.args if isinstance(a, BaseException))
        reason = getattr(e, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
        todo.extend(c for c in (e.__cause__, e.__context__) if c is not None)
    return seen


def _wrapper(exc: BaseException) -> bool:
    """An exception of requests or urllib3 (requests' are OSErrors too): its text
    quotes pool and connection reprs, so only the system error under it is shown."""
    module = exc.__class__.__module__
    return module.startswith(("requests", "urllib3"))


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        # "self-signed certificate"; else OpenSSL's reason, WRONG_VERSION_NUMBER, in words.
        return getattr(exc, "verify_message", None) or (exc.reason or "TLS error").lower().replace("_", " ")
    return exc.strerror or str(exc) or exc.__class__.__name__


def _address_of(exc: BaseException) -> tuple[str | None, int | None]:
    """The host and port a urllib3 error names through its connection or pool."""
    for where in (getattr(exc, "conn", None), getattr(exc, "pool", None)):
        host = getattr(where, "host", None)
        if isinstance(host, str) and host:
            port = getattr(where, "port", None)
            return host, port if isinstance(port, int) else None
    return None, None
