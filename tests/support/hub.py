"""Local stand-ins for the Hugging Face hub, its CDN and gated origins.

:class:`Server` is the test origin of :mod:`tests.support.origin` (ranges, ETag, drops,
stalls, every request recorded with its headers) on any loopback address, that can
also require a header of a path (401 without it) and answer a path with a redirect.

:class:`Hub` is two of them, as the real hub is: the hub itself on 127.0.0.1 checks
``Authorization: Bearer <token>`` on ``/OWNER/REPO/resolve/REVISION/PATH`` and
answers 302 (with ``X-Linked-Etag`` and ``X-Linked-Size``) to a signed url on its
CDN, a different host (127.0.0.2), which serves the bytes and must never see the
token: :meth:`Hub.close` fails the test if it did.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest

from .origin import Origin, Resource, Seen, _Handler, _Server


@dataclass
class _Redirect:
    location: str
    status: int
    headers: dict[str, str]


def _carries(given: str | None, name: str, value: str) -> bool:
    """Whether a request's header ``name`` (``given``) holds ``value``: the whole
    value, or for ``Cookie`` one of its pairs (others may have been set on the way)."""
    if given is None:
        return False
    if name.lower() == "cookie":
        return value in [pair.strip() for pair in given.split(";")]
    return given == value


class _GateHandler(_Handler):
    server: _Server

    def do_GET(self) -> None:
        gate: Server = self.server.origin  # type: ignore[assignment]
        path = self.path.split("?", 1)[0]
        with gate.lock:
            required = gate.required.get(path)
            redirect = gate.redirects.get(path)
        refused = required is not None and not _carries(self.headers.get(required[0]), *required)
        if not refused and redirect is None:
            return super().do_GET()  # the origin's own answer, recorded there
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        with gate.lock:
            gate.seen.append(seen)
        if refused:
            return self._plain(seen, 401, {"WWW-Authenticate": 'Bearer realm="test"', "X-Error-Code": "GatedRepo"})
        assert redirect is not None
        self._plain(seen, redirect.status, {"Location": redirect.location, **redirect.headers})


class Server(Origin):
    """:class:`tests.support.origin.Origin` bound to ``host``, with gates and redirects."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.lock = threading.Lock()
        self.resources: dict[str, Resource] = {}
        self.seen: list[Seen] = []
        self.closing = threading.Event()
        self.required: dict[str, tuple[str, str]] = {}
        self.redirects: dict[str, _Redirect] = {}
        self._server = _Server((host, 0), _GateHandler)
        self._server.origin = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"test-server-{host}")
        self._thread.start()

    def require(self, path: str, name: str, value: str) -> None:
        """Requests for ``path`` without ``name: value`` are answered 401."""
        with self.lock:
            self.required[path] = (name, value)

    def redirect(self, path: str, location: str, status: int = 302, headers: dict[str, str] | None = None) -> None:
        with self.lock:
            self.redirects[path] = _Redirect(location, status, dict(headers or {}))

    def all_seen(self) -> list[Seen]:
        """Every request but the checks after a download's last byte (``Seen.recheck``)."""
        with self.lock:
            return [s for s in self.seen if not s.recheck]

    def saw(self, secret: str) -> list[Seen]:
        """The requests that carried ``secret`` in any header's name or value."""
        return [s for s in self.all_seen() if any(secret in f"{k}: {v}" for k, v in s.headers.items())]


class Hub:
    """The hub (127.0.0.1) and its CDN (127.0.0.2). ``token``: what the hub asks
    for (None: public repositories)."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.api = Server("127.0.0.1")
        try:
            self.cdn = Server("127.0.0.2")
        except BaseException:
            self.api.close()
            raise

    @property
    def endpoint(self) -> str:
        return self.api.base

    def publish(self, repo: str, path: str, data: bytes, revision: str = "main", **options: Any) -> Resource:
        """``data`` as ``path`` of ``repo`` ("OWNER/REPO") at ``revision``; returns the
        CDN's resource (for its faults). The CDN keeps it under its digest, as LFS does."""
        sha = hashlib.sha256(data).hexdigest()
        blob = f"/repos/{sha[:2]}/{sha[2:4]}/{sha}"
        res = self.cdn.add(blob, data, **options)
        resolve = self.resolve_path(repo, path, revision)
        if self.token is not None:
            self.api.require(resolve, "Authorization", f"Bearer {self.token}")
        signed = self.cdn.url(blob) + "?X-Amz-Expires=3600&X-Amz-Signature=0123abcd&response-content-type=x"
        self.api.redirect(resolve, signed, headers={
            "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)), "X-Repo-Commit": "c0ffee" * 6 + "c0ff",
        })
        return res

    @staticmethod
    def resolve_path(repo: str, path: str, revision: str = "main") -> str:
        return f"/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"

    def resolves(self, repo: str, path: str, revision: str = "main") -> list[Seen]:
        return self.api.requests_for(self.resolve_path(repo, path, revision))

    def assert_cdn_never_saw_token(self) -> None:
        if self.token is not None:
            leaked = self.cdn.saw(self.token)
            assert not leaked, f"the CDN saw the hub token: {[(s.path, s.headers) for s in leaked]}"

    def close(self) -> None:
        self.api.close()
        self.cdn.close()
        self.assert_cdn_never_saw_token()


def loopback_alias_works() -> bool:
    """Whether 127.0.0.2 can be bound (Linux routes all of 127/8 to loopback)."""
    import socket

    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
        return True
    except OSError:
        return False


needs_second_host = pytest.mark.skipif(not loopback_alias_works(), reason="127.0.0.2 is not bindable here")


def state_files_holding(state_dir: str, secret: str) -> list[str]:
    """Every file under ``state_dir`` whose bytes contain ``secret``."""
    found = []
    needle = secret.encode()
    for root, _dirs, files in os.walk(state_dir):
        for name in files:
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as fh:
                    if needle in fh.read():
                        found.append(path)
            except FileNotFoundError:
                continue
    return found


def records_holding(records: list[logging.LogRecord], secret: str) -> list[str]:
    """Log records that show ``secret``: in the message or in any extra field."""
    out = []
    for record in records:
        text = record.getMessage() + " " + repr(vars(record))
        if secret in text:
            out.append(text)
    return out


def shown_nowhere(client: Any, secret: str, model_id: str) -> None:
    """``secret`` is in no answer of the API that lists jobs, models or settings."""
    for path in ("/models/downloads", f"/models/downloads/{model_id}", "/models", "/probe", "/metrics"):
        r = client.get(path)
        assert r.status_code in (200, 404), path
        assert secret not in r.get_data(as_text=True), path


def events_text(events: list[Any]) -> str:
    """The event hub's events as their SSE frames (the replay a client would get)."""
    return "".join(e.encode().decode() for e in events)

