"""Asking an OCI registry (the distribution spec's ``/v2/`` API) for something, with
the authentication it asks for.

A registry that wants a client to authenticate answers 401 with a challenge:
``WWW-Authenticate: Bearer realm="…",service="…",scope="…"`` (Docker Hub, ghcr.io,
a distribution registry with ``auth: token``), or ``Basic realm="…"`` (a registry
behind ``htpasswd``). For a Bearer challenge the client asks the realm (the token
service) for a token, anonymously or with the caller's credentials as HTTP Basic,
and asks the registry again with ``Authorization: Bearer <token>``; the token
lasts ``expires_in`` seconds (60 when the answer does not say, as the token spec
has it).

The caller's credentials are the ``Authorization`` value a request meant for the
registry: ``Basic <base64(user:password)>`` (sent to the token service, or to the
registry itself when it asks for Basic), or ``Bearer <token>`` (a token obtained
elsewhere, sent to the registry as it is). Nothing here sends them, or a token,
over plain http to a host that is not in ``ARW_REGISTRY_INSECURE``, nor to any
host but the registry's own and its token service's; no message names them.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import urllib3.exceptions

from ..errors import TransferError
from ..redact import redact_text
from .failures import failure_of
from .headers import parse_retry_after

# A token is asked for again this long before the registry would refuse it.
EXPIRY_MARGIN_SECS = 5.0
DEFAULT_EXPIRES_IN = 60.0  # the token spec's default
MAX_TOKEN_ANSWER = 64 * 1024

#: A declared seam: the clock a token's lifetime is measured on, which a test may
#: move forward instead of waiting for the token to expire.
clock: Callable[[], float] = time.monotonic

_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))')


def parse_challenge(value: str) -> tuple[str, dict[str, str]] | None:
    """``WWW-Authenticate`` as (scheme lowercased, parameters); the first challenge
    of a Bearer or Basic scheme when several are given. None: neither."""
    for match in re.finditer(r"(?:^|,)\s*(Bearer|Basic)\b", value, re.IGNORECASE):
        scheme = match.group(1).lower()
        rest = value[match.end():]
        nxt = re.search(r",\s*(Bearer|Basic|Digest|Negotiate)\b\s", rest, re.IGNORECASE)
        params = rest[: nxt.start()] if nxt else rest
        found = {m.group(1).lower(): (m.group(2).replace('\\"', '"') if m.group(2) is not None else m.group(3))
                 for m in _PARAM.finditer(params)}
        return scheme, found
    return None


def scheme_of(host: str, insecure: tuple[str, ...]) -> str:
    """``http`` for a host (``HOST[:PORT]``) listed in ``insecure``, else ``https``."""
    return "http" if host.lower() in {h.lower() for h in insecure} else "https"


def request_error(exc: BaseException, what: str) -> TransferError:
    """What requests raised while asking ``what``, as fetch.py names such failures."""
    failure = failure_of(exc)
    reason = redact_text(failure.reason)
    if failure.kind == "dns":
        return TransferError("dns-error", f"cannot resolve host {failure.host or '?'} ({what}): {reason}",
                             retryable=failure.transient, host=failure.host)
    if failure.kind == "refused":
        return TransferError("connection-refused", f"cannot connect to {failure.address or '?'} ({what}): "
                             "connection refused", retryable=True, host=failure.host)
    if failure.kind == "tls":
        with_host = f" with {failure.address}" if failure.address else ""
        return TransferError("tls", f"TLS error{with_host} ({what}): {reason}")
    if failure.kind == "connect-timeout":
        reason = f"cannot connect to {failure.address or 'the registry'}: timed out"
    return TransferError("network", f"network error ({what}): {reason}", retryable=True)


def status_error(status: int, what: str, headers: Mapping[str, str] | None = None,
                 detail: str = "") -> TransferError:
    """An answer of ``status`` to ``what``, in fetch.py's terms: ``http-status``,
    retryable for 408, 429 and 5xx."""
    words = {401: "unauthorized", 403: "forbidden", 404: "not found"}.get(status, "")
    text = f"{what}: the registry answered {status}" + (f" ({words})" if words else "") + (f": {detail}" if detail else "")
    retry = status in (408, 429) or 500 <= status <= 599
    retry_after = None
    if retry and headers is not None:
        retry_after = parse_retry_after(headers.get("Retry-After"))
    return TransferError("http-status", text, retryable=retry, http_status=status, retry_after=retry_after)


class RegistryAuth:
    """The ``Authorization`` a registry wants, learnt from its challenges and kept
    (a Bearer token until shortly before it expires). Thread-safe: the files of one
    model may be fetched by several threads at once."""

    def __init__(self, host: str, repository: str, session: requests.Session, insecure: tuple[str, ...],
                 credentials: str | None, timeouts: tuple[float, float], label: str) -> None:
        self.host = host
        self.repository = repository
        self.session = session
        self.insecure = insecure
        self.credentials = credentials.strip() if credentials and credentials.strip() else None
        self.timeouts = timeouts
        self.label = label  # "registry.ollama.ai/library/qwen:latest", for messages
        self._lock = threading.Lock()
        self._ping_lock = threading.Lock()  # a second caller waits for the first one's answer
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._token: str | None = None
        self._expires = 0.0
        self._learnt = False

    @property
    def base(self) -> str:
        return f"{scheme_of(self.host, self.insecure)}://{self.host}"

    def headers(self, fresh: bool = False) -> dict[str, str]:
        """The ``Authorization`` for a request to the registry now (empty: none is
        needed, or none is known yet); ``fresh`` asks for a new token."""
        with self._lock:
            if self._challenge is None:
                if self.credentials and self.credentials.lower().startswith("bearer "):
                    return {"Authorization": self.credentials}
                return {}
            scheme, params = self._challenge
            if scheme == "basic":
                return {"Authorization": self.credentials} if self._basic() else {}
            if fresh or self._token is None or clock() >= self._expires:
                self._fetch_token(params)
            assert self._token is not None
            return {"Authorization": f"Bearer {self._token}"}

    def learn(self, response: Any) -> None:
        """Takes the challenge of a 401 (a Bearer one's token is then asked for anew);
        one this process cannot answer leaves what was learnt before."""
        found = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        with self._lock:
            if found is None:
                return
            scheme, params = found
            if scheme == "bearer":
                if not params.get("realm"):
                    raise TransferError("registry-auth", f"{self.label}: the registry's Bearer challenge names "
                                        "no realm to ask for a token")
                if not params.get("scope"):  # the /v2/ ping names none: the pull of this repository
                    params["scope"] = f"repository:{self.repository}:pull"
            elif not self._basic():
                return  # nothing to answer a Basic challenge with
            self._challenge = (scheme, params)
            self._token = None

    def ping(self) -> None:
        """Learns the registry's challenge, if it has one, from ``GET /v2/`` (the
        spec's version check), once: for a new object that fetches blobs before it
        has met a challenge (a restarted download)."""
        with self._ping_lock:
            if self._learnt or self._challenge is not None:
                return
            response = self.get(f"{self.base}/v2/", "the registry's API check", auth=False)
            with response:
                if response.status_code == 401:
                    self.learn(response)
            self._learnt = True

    def get(self, url: str, what: str, headers: Mapping[str, str] | None = None, auth: bool = True) -> Any:
        """``GET url`` with the registry's ``Authorization`` (for its host alone),
        answering a 401 once with what its challenge asks. Returns the response
        (any status); network failures raise :class:`TransferError`."""
        response = self._send(url, what, headers, auth)
        if auth and response.status_code == 401:
            try:
                self.learn(response)
            except TransferError:
                response.close()
                raise
            if self._challenge is not None:  # asked again as the challenge (this one or one before) asks
                response.close()
                response = self._send(url, what, headers, auth, fresh=True)
        return response

    def _send(self, url: str, what: str, headers: Mapping[str, str] | None, auth: bool,
              fresh: bool = False) -> Any:
        private = self.headers(fresh) if auth else {}
        # The session drops these on a redirect to another host (engine.http._Session).
        self.session.private_headers = frozenset(private)  # type: ignore[attr-defined]
        try:
            return self.session.get(url, headers={**(headers or {}), **private}, stream=True,
                                    timeout=self.timeouts, allow_redirects=True)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise request_error(exc, what) from None

    def _basic(self) -> bool:
        return bool(self.credentials and self.credentials.lower().startswith("basic "))

    def _fetch_token(self, params: dict[str, str]) -> None:
        """Asks the realm for a token (with the lock held)."""
        realm = params["realm"]
        parts = urlsplit(realm)
        where = f"{self.label}: the token service {parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        if parts.scheme == "http" and parts.netloc.lower() not in {h.lower() for h in self.insecure}:
            raise TransferError("registry-auth", f"{where} is plain http and not in ARW_REGISTRY_INSECURE: "
                                "no token is asked of it")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransferError("registry-auth", f"{self.label}: the token realm is not an http(s) url")
        query = urlencode([(k, params[k]) for k in ("service", "scope") if params.get(k)])
        url = realm + ("&" if parts.query else "?") + query if query else realm
        private = {"Authorization": self.credentials} if self._basic() else {}
        self.session.private_headers = frozenset(private)  # type: ignore[attr-defined]
        try:
            response = self.session.get(url, headers=private, timeout=self.timeouts, stream=True)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise request_error(exc, where) from None
        with response:
            if response.status_code != 200:
                detail = "the credentials were refused" if private and response.status_code in (401, 403) else ""
                raise status_error(response.status_code, where, response.headers, detail)
            body = response.raw.read(MAX_TOKEN_ANSWER + 1, decode_content=True)
        try:
            if len(body) > MAX_TOKEN_ANSWER:
                raise ValueError("too large")
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
            if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
                raise ValueError("no token")
            expires_in = float(answer.get("expires_in") or DEFAULT_EXPIRES_IN)
        except (ValueError, TypeError, AttributeError):
            raise TransferError("registry-auth", f"{where} answered without a usable token") from None
        self._token = token
        self._expires = clock() + max(0.0, expires_in - EXPIRY_MARGIN_SECS)
