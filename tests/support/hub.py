"""Local stand-ins for the Hugging Face hub, its CDN and gated origins.

:class:`Server` is the test origin of :mod:`tests.support.origin` (ranges, ETag, drops,
stalls, every request recorded with its headers) on any loopback address, that can
also require a header of a path (401 without it) and answer a path with a redirect.

:class:`Hub` is two of them, as the real hub is: the hub itself on 127.0.0.1 checks
``Authorization: Bearer <token>`` on ``/OWNER/REPO/resolve/REVISION/PATH`` and
answers 302 (with ``X-Linked-Etag`` and ``X-Linked-Size``) to a signed url on its
CDN, a different host (127.0.0.2), which serves the bytes and must never see the
token: :meth:`Hub.close` fails the test if it did.

It also serves whole repositories (:meth:`Hub.commit`), as the hub's API does: which
commit a revision is at (``/api/models/OWNER/REPO/revision/REV``), a commit's files
(``/api/models/OWNER/REPO/tree/REV?recursive=true``, in pages of :attr:`Hub.page_size`
linked by ``Link: <...>; rel="next"``), and each file at
``/OWNER/REPO/resolve/<commit or branch>/PATH``: a small file from the hub itself (its
``oid`` the git blob id of its bytes), an LFS file (its ``lfs.oid`` the SHA-256 of its
bytes) by a redirect to the CDN. A gated repository answers 401 to all of these
without the token; a branch can be moved to another commit while a test runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

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


#: What an API handler answers: status, headers, body; None: not an API path.
ApiAnswer = tuple[int, dict[str, str], bytes]


class _GateHandler(_Handler):
    server: _Server

    def do_GET(self) -> None:
        gate: Server = self.server.origin  # type: ignore[assignment]
        path = self.path.split("?", 1)[0]
        if gate.api is not None:
            answer = gate.api(self.path, {k.lower(): v for k, v in self.headers.items()})
            if answer is not None:
                return self._answer(gate, *answer)
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

    def _answer(self, gate: Server, status: int, headers: dict[str, str], body: bytes) -> None:
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, status=status)
        with gate.lock:
            gate.seen.append(seen)
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(body)
            seen.sent = len(body)


class Server(Origin):
    """:class:`tests.support.origin.Origin` bound to ``host``, with gates and redirects."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.lock = threading.Lock()
        self.resources: dict[str, Resource] = {}
        self.seen: list[Seen] = []
        self.closing = threading.Event()
        self.required: dict[str, tuple[str, str]] = {}
        self.redirects: dict[str, _Redirect] = {}
        # Answers a request (its path with the query, its headers) before anything else does.
        self.api: Callable[[str, dict[str, str]], ApiAnswer | None] | None = None
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

    def forget(self, path: str) -> None:
        """``path`` is served no more (404)."""
        with self.lock:
            self.resources.pop(path, None)
            self.required.pop(path, None)
            self.redirects.pop(path, None)

    def all_seen(self) -> list[Seen]:
        """Every request but the checks after a download's last byte (``Seen.recheck``)."""
        with self.lock:
            return [s for s in self.seen if not s.recheck]

    def saw(self, secret: str) -> list[Seen]:
        """The requests that carried ``secret`` in any header's name or value."""
        return [s for s in self.all_seen() if any(secret in f"{k}: {v}" for k, v in s.headers.items())]


def git_blob_id(data: bytes) -> str:
    """What ``git hash-object`` says of ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class HubFile:
    """A file of a commit; ``lfs``: kept in LFS (then its ``oid`` is the blob id of
    its pointer file, as the hub lists it, and ``lfs.oid`` its SHA-256)."""

    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def oid(self) -> str:
        if not self.lfs:
            return git_blob_id(self.data)
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n"
        return git_blob_id(pointer.encode())

    def entry(self, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "oid": self.oid, "size": len(self.data), "path": path}
        if self.lfs:
            out["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": 134}
        return out


@dataclass
class HubRepo:
    """A repository: its commits (each a whole tree), its branches and tags, and
    ``extra`` raw entries a commit's listing shows as well (for listings no real hub sends)."""

    gated: bool = False
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    extra: dict[str, list[Any]] = field(default_factory=dict)


_API = re.compile(r"/api/(models|datasets|spaces)/([^/]+)/([^/]+)/(revision|tree)/(.+)")


class Hub:
    """The hub (127.0.0.1) and its CDN (127.0.0.2). ``token``: what the hub asks
    for (None: public repositories; a gated repository needs one)."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.repos: dict[str, HubRepo] = {}
        self.page_size = 1000  # the tree API's entries per page
        self.next_base: str | None = None  # where a Link: rel=next points (None: the hub itself)
        # Called with the repository and the entries already shown, before a tree page
        # is answered: a test moves a branch there.
        self.on_page: Callable[[str, int], None] | None = None
        self._ids = itertools.count(1)
        self._repos_lock = threading.Lock()
        self.api = Server("127.0.0.1")
        self.api.api = self._answer_api
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

    def commit(self, repo: str, files: Mapping[str, bytes], branch: str | None = "main", *, gated: bool = False,
               lfs_from: int = 1024, lfs: Mapping[str, bool] | None = None) -> str:
        """A new commit of ``repo`` ("OWNER/REPO", "datasets/OWNER/REPO") holding
        ``files`` (its whole tree), ``branch`` moved to it; returns its id. A file of
        ``lfs_from`` bytes or more is in LFS, unless ``lfs`` says otherwise of it."""
        tree = {path: HubFile(data, (lfs or {}).get(path, len(data) >= lfs_from)) for path, data in files.items()}
        listed = "".join(f"{path}\0{f.oid}\n" for path, f in sorted(tree.items()))
        sha = hashlib.sha1(f"{repo}\n{next(self._ids)}\n{listed}".encode()).hexdigest()
        with self._repos_lock:
            held = self.repos.setdefault(repo, HubRepo())
            held.gated = held.gated or gated
            held.commits[sha] = tree
        if held.gated and self.token is None:
            raise ValueError("a gated repository needs a hub with a token")
        self._serve(repo, sha, sha)
        if branch is not None:
            self.move(repo, branch, sha)
        return sha

    def move(self, repo: str, ref: str, sha: str) -> None:
        """Branch or tag ``ref`` of ``repo`` is at commit ``sha`` from now on."""
        with self._repos_lock:
            held = self.repos[repo]
            before = held.refs.get(ref)
            held.refs[ref] = sha
            gone = set(held.commits[before]) - set(held.commits[sha]) if before else set()
        for path in gone:
            self.api.forget(self.resolve_path(repo, path, ref))
        self._serve(repo, ref, sha)

    def _serve(self, repo: str, revision: str, sha: str) -> None:
        """``/resolve/<revision>/PATH`` for every file of commit ``sha``."""
        held = self.repos[repo]
        for path, f in held.commits[sha].items():
            resolve = self.resolve_path(repo, path, revision)
            self.api.forget(resolve)
            if held.gated:
                assert self.token is not None
                self.api.require(resolve, "Authorization", f"Bearer {self.token}")
            if not f.lfs:  # the hub serves a small file itself
                self.api.add(resolve, f.data, etag=f'"{f.oid}"', headers={"X-Repo-Commit": sha})
                continue
            blob = f"/repos/{f.sha256[:2]}/{f.sha256[2:4]}/{f.sha256}"
            self.cdn.add(blob, f.data)
            signed = self.cdn.url(blob) + "?X-Amz-Expires=3600&X-Amz-Signature=0123abcd"
            self.api.redirect(resolve, signed, headers={
                "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data)), "X-Repo-Commit": sha})

    def files_at(self, repo: str, revision: str) -> dict[str, HubFile]:
        with self._repos_lock:
            held = self.repos[repo]
            return dict(held.commits[held.refs.get(revision, revision)])

    def api_requests(self, repo: str, what: str) -> list[Seen]:
        """The API requests of ``what`` ("revision", "tree") about ``repo``."""
        kind, repo_id = repo.split("/", 1) if repo.count("/") == 2 else ("models", repo)
        prefix = f"/api/{kind}/{repo_id}/{what}/"
        with self.api.lock:
            return [s for s in self.api.seen if s.path.startswith(prefix)]

    def _answer_api(self, raw: str, headers: dict[str, str]) -> ApiAnswer | None:
        parts = urlsplit(raw)
        match = _API.fullmatch(parts.path)
        if match is None:
            return None
        kind, owner, name, what, rest = match.groups()
        repo = f"{owner}/{name}" if kind == "models" else f"{kind}/{owner}/{name}"
        with self._repos_lock:
            held = self.repos.get(repo)
            if held is None:
                return _error(404, "RepoNotFound", f"Repository Not Found for url: {raw}")
            if held.gated and headers.get("authorization") != f"Bearer {self.token}":
                return _error(401, "GatedRepo", f"Access to model {repo} is restricted.")
            revision = unquote(rest) if what == "revision" else unquote(rest.split("/", 1)[0])
            sha = held.refs.get(revision, revision if revision in held.commits else None)
            if sha is None:
                return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            if what == "revision":
                return 200, {}, json.dumps({"id": f"{owner}/{name}", "sha": sha}).encode()
            entries = _tree(held.commits[sha]) + held.extra.get(sha, [])
        query = parse_qs(parts.query)
        if query.get("recursive", ["false"])[0].lower() != "true":
            entries = [e for e in entries if "/" not in str(e.get("path"))]
        cursor = int(query.get("cursor", ["0"])[0])
        if self.on_page is not None:
            self.on_page(repo, cursor)
        end = cursor + self.page_size
        links = {}
        if end < len(entries):
            following = f"{self.next_base or self.api.base}{parts.path}?recursive=true&expand=false&cursor={end}"
            links["Link"] = f'<{following}>; rel="next"'
        return 200, links, json.dumps(entries[cursor:end]).encode()

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


def _tree(files: Mapping[str, HubFile]) -> list[Any]:
    """The hub's recursive listing of ``files``: each folder, then each file, by path."""
    folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    entries = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
               for d in folders]
    entries += [f.entry(path) for path, f in files.items()]
    return sorted(entries, key=lambda e: e["path"])


def _error(status: int, code: str, message: str) -> ApiAnswer:
    return status, {"X-Error-Code": code, "X-Error-Message": message}, json.dumps({"error": message}).encode()


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

