"""The Hugging Face hub's HTTP API, as :mod:`.hub` uses it: which commit a
revision is at (``/api/{models,datasets,spaces}/OWNER/REPO/revision/REV``) and the
files of a commit (``.../tree/COMMIT?recursive=true``, in pages linked by
``Link: <...>; rel="next"``).

Each answer is read to a cap and checked before anything of it is used: a listing
that cannot be a model's (not JSON, an entry without a path, a digest that is no
digest, a next page on another host, more pages or entries than any model has) is an
``invalid-listing``. HTTP answers and network failures become the codes a download's
own requests use (:mod:`.fetch`): ``http-status`` with ``http_status`` (408, 429 and
5xx retryable), ``network``, ``dns-error``, ``connection-refused``, ``tls``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests
import urllib3.exceptions

from ..errors import TransferError
from ..redact import redact_text, redact_url
from .failures import failure_of
from .headers import parse_retry_after

# Far more than any model has (the largest public repositories list some tens of
# thousands of files), yet a bound on what a listing may make this process hold.
MAX_PAGES = 1_000
MAX_ENTRIES = 200_000
MAX_ANSWER_BYTES = 64 * 1024 * 1024

_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

# What the hub's X-Error-Code says of a refusal, for the message.
_HUB_ERRORS = {
    "GatedRepo": "the repository is gated: accept its conditions on the hub with an account whose token "
                 "(ARW_HF_TOKEN) is set",
    "RepoNotFound": "no such repository, or a private one the token (if any) cannot see",
    "RevisionNotFound": "no such revision",
}


@dataclass(frozen=True)
class Entry:
    """A file of a commit: its path, size, git blob id and, in LFS, its SHA-256."""

    path: str
    size: int
    oid: str
    lfs_oid: str | None


class Api:
    """Requests to one hub ``endpoint``, with ``private`` headers for its host alone."""

    def __init__(self, session: Any, endpoint: str, private: Mapping[str, str], timeout: tuple[float, float]) -> None:
        self.session = session
        self.endpoint = endpoint.rstrip("/")
        self.private = dict(private)
        self.timeout = timeout

    def commit(self, kind: str, repo_id: str, revision: str, shown: str) -> str:
        """The commit ``revision`` is at. A commit id is asked too: the answer proves
        it exists (and that the token may see it) before any file is listed."""
        url = f"{self.endpoint}/api/{kind}/{repo_id}/revision/{quote(revision, safe='')}"
        answer, _ = self._get(url, f"the revision {shown}")
        sha = answer.get("sha") if isinstance(answer, dict) else None
        if not isinstance(sha, str) or not _SHA1.fullmatch(sha):
            raise TransferError("invalid-listing", f"the hub names no commit for {shown}", url=redact_url(url))
        if _SHA1.fullmatch(revision) and sha != revision:
            raise TransferError("invalid-listing", f"the hub answered commit {sha} for commit {revision}",
                                url=redact_url(url))
        return sha

    def tree(self, kind: str, repo_id: str, commit: str, shown: str) -> list[Entry]:
        """Every file of ``commit``, over all the listing's pages."""
        url: str | None = f"{self.endpoint}/api/{kind}/{repo_id}/tree/{commit}?recursive=true&expand=false"
        entries: list[Entry] = []
        asked: set[str] = set()
        while url is not None:
            if len(asked) >= MAX_PAGES:
                raise TransferError("invalid-listing", f"the listing of {shown} has more than {MAX_PAGES} pages")
            asked.add(url)
            page, response = self._get(url, f"the listing of {shown}")
            if not isinstance(page, list):
                raise TransferError("invalid-listing", f"the listing of {shown} is not a list of files",
                                    url=redact_url(url))
            entries.extend(e for e in (_entry(raw, shown) for raw in page) if e is not None)
            if len(entries) > MAX_ENTRIES:
                raise TransferError("invalid-listing", f"the listing of {shown} has more than {MAX_ENTRIES} files")
            url = self._next(response, url, asked, shown)
        return entries

    def _next(self, response: requests.Response, url: str, asked: set[str], shown: str) -> str | None:
        """The next page's url, which must be on the endpoint's own scheme and host
        (it gets the token); None on the last page."""
        link = response.links.get("next", {}).get("url")
        if not link:
            return None
        following = urljoin(url, link)
        if not same_origin(following, self.endpoint):
            raise TransferError("invalid-listing", f"the listing of {shown} continues on another host "
                                f"({redact_url(following)}); it is not followed", url=redact_url(url))
        if following in asked:
            raise TransferError("invalid-listing", f"the listing of {shown} links back to a page it has shown",
                                url=redact_url(following))
        return following

    def _get(self, url: str, what: str) -> tuple[Any, requests.Response]:
        """The JSON answer to a GET of ``url``, and the response (for its headers)."""
        shown = redact_url(url)
        # The session drops these on a redirect to another host (arw_models.engine.http._Session).
        self.session.private_headers = frozenset(self.private)
        try:
            response = self.session.get(url, headers={**self.private, "Accept": "application/json"},
                                        timeout=self.timeout, stream=True, allow_redirects=True)
        except requests.exceptions.TooManyRedirects:
            raise TransferError("too-many-redirects", f"too many redirects asking for {what}", url=shown) from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _network(exc, what, shown) from None
        with response:
            _check_status(response, what, shown)
            try:
                body = _read_capped(response)
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise _network(exc, what, shown) from None
        try:
            return json.loads(body), response
        except ValueError:
            raise TransferError("invalid-listing", f"the hub's answer for {what} is not JSON", url=shown) from None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        return scheme, "", None  # a port that is no port matches nothing
    return scheme, (parts.hostname or "").lower(), port


def same_origin(url: str, endpoint: str) -> bool:
    """Whether ``url`` is on the endpoint's scheme, host and port (the token's
    only destination)."""
    own = _origin(endpoint)
    return bool(own[1]) and _origin(url) == own


def _read_capped(response: requests.Response) -> bytes:
    body = bytearray()
    for chunk in response.iter_content(64 * 1024):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise TransferError("invalid-listing", f"the hub's answer is larger than {MAX_ANSWER_BYTES} bytes",
                                url=redact_url(response.url))
    return bytes(body)


def _check_status(response: requests.Response, what: str, shown: str) -> None:
    status = response.status_code
    if status == 200:
        return
    hub_error = response.headers.get("X-Error-Code", "")
    context: dict[str, Any] = {"url": shown, "http_status": status}
    if hub_error:
        context["hub_error"] = hub_error
    if status in (408, 429) or 500 <= status <= 599:
        raise TransferError("http-status", f"the hub answered {status} for {what}", retryable=True,
                            retry_after=parse_retry_after(response.headers.get("Retry-After")), **context)
    if status in (401, 403):
        why = _HUB_ERRORS.get(hub_error) or ("a gated or private repository needs a token (ARW_HF_TOKEN) that may "
                                             "see it" if status == 401 else "the token may not see the repository")
        raise TransferError("http-status", f"the hub answered {status} for {what}: {why}", **context)
    if status == 404:
        why = _HUB_ERRORS.get(hub_error) or "no such repository or revision"
        raise TransferError("http-status", f"the hub answered 404 for {what}: {why}", **context)
    raise TransferError("http-status", f"the hub answered {status} for {what}", **context)


def _network(exc: BaseException, what: str, url: str) -> TransferError:
    """A failed request, as :func:`.fetch.network_error` words it (no job here)."""
    failure = failure_of(exc)
    reason = redact_text(failure.reason)
    if failure.kind == "dns":
        return TransferError("dns-error", f"cannot resolve host {failure.host or '?'} asking for {what}: {reason}",
                             retryable=failure.transient, host=failure.host, url=url)
    if failure.kind == "refused":
        return TransferError("connection-refused", f"cannot connect to {failure.address or '?'} asking for {what}: "
                             "connection refused", retryable=True, host=failure.host, url=url)
    if failure.kind == "tls":
        return TransferError("tls", f"TLS error with {failure.address or 'the hub'} asking for {what}: {reason}",
                             url=url)
    text = f"{reason} ({failure.address})" if failure.address else reason
    return TransferError("network", f"network error asking for {what}: {text}", retryable=True, url=url)


def _entry(raw: Any, shown: str) -> Entry | None:
    """A listing's entry as a file (None: a folder); anything else is refused."""
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
        raise TransferError("invalid-listing", f"the listing of {shown} has an entry without a path")
    path, kind = raw["path"], raw.get("type")
    if kind == "directory":
        return None
    if kind != "file":
        raise TransferError("invalid-listing", f"the listing of {shown} has {path!r} of type {kind!r}")
    size, oid, lfs = raw.get("size"), raw.get("oid"), raw.get("lfs")
    if not isinstance(oid, str) or not _SHA1.fullmatch(oid):
        raise TransferError("invalid-listing", f"the listing of {shown} gives {path!r} no git blob id")
    lfs_oid = None
    if lfs is not None:
        lfs_oid, lfs_size = (lfs.get("oid"), lfs.get("size")) if isinstance(lfs, dict) else (None, None)
        if not isinstance(lfs_oid, str) or not _SHA256.fullmatch(lfs_oid):
            raise TransferError("invalid-listing", f"the listing of {shown} gives {path!r} no LFS SHA-256")
        size = lfs_size if isinstance(lfs_size, int) and not isinstance(lfs_size, bool) else size
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise TransferError("invalid-listing", f"the listing of {shown} gives {path!r} no size")
    return Entry(path, size, oid, lfs_oid)
