"""A stand-in for the service's HTTP API, on a real local socket, answering with the
agreed shapes of many-file models (a dry run's file list, jobs and events with
``files``, installed models with ``files``) that the service of this branch may
not serve yet: for tests of the clients (the command line, the web page), never of
the service.

It serves what a test gives it: ``models`` and ``jobs`` for the listings, the
answer to a POST (``post_answers``, by id; else 202 queued), and events: the test
``push``es them, or lists in ``on_post`` those to send when a POST for an id
arrives (after its answer is built, so a client that subscribed first sees them
all). ``/events`` speaks SSE as the service does (``service.connected`` first,
``id:`` lines, ``Last-Event-ID``/``after``); ``/`` and ``/web/*`` are the real page.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import arw_models.server.web

WEB = Path(arw_models.server.web.__file__).parent
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}


class StandIn:
    def __init__(self) -> None:
        self.models: list[dict[str, Any]] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.post_answers: dict[str, tuple[int, Any]] = {}
        self.on_post: dict[str, list[dict[str, Any]]] = {}
        self.posts: list[dict[str, Any]] = []
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self._changed = threading.Condition()
        self._closing = False
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                standin._get(self)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                standin._post(self, body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = False  # joined by close(): none is left behind
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="test-standin")
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def push(self, payload: dict[str, Any], kind: str = "Models.DownloadProgress") -> int:
        with self._changed:
            number = len(self.events) + 1
            self.events.append((number, kind, payload))
            self._changed.notify_all()
        return number

    def close(self) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self.server.shutdown()
        self.server.server_close()  # joins the request threads, event streams included
        self.thread.join(5)

    # -- requests ---------------------------------------------------------------------

    def _get(self, h: http.server.BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        path = unquote(url.path)
        if path == "/events":
            self._stream(h, parse_qs(url.query))
        elif path == "/probe":
            self._json(h, 200, {"version": "standin", "last_event_id": len(self.events),
                                "settings": {"auth": "none", "events_retry_ms": 500}})
        elif path == "/models":
            self._json(h, 200, {"items": self.models})
        elif path == "/models/downloads":
            self._json(h, 200, {"items": list(self.jobs.values())})
        elif path.startswith("/models/downloads/"):
            job = self.jobs.get(path.removeprefix("/models/downloads/"))
            if job is None:
                self._json(h, 404, {"status": 404, "code": "unknown-download", "title": "Not found",
                                    "detail": "no such download"})
            else:
                self._json(h, 200, job)
        elif path in ("/", "/web/app.js", "/web/app.css"):
            file = WEB / ("index.html" if path == "/" else path.removeprefix("/web/"))
            data = file.read_bytes()
            h.send_response(200)
            h.send_header("Content-Type", TYPES[file.suffix])
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        else:
            self._json(h, 404, {"status": 404, "code": "not-found", "title": "Not found", "detail": path})

    def _post(self, h: http.server.BaseHTTPRequestHandler, body: Any) -> None:
        self.posts.append(body)
        if urlsplit(h.path).path != "/models/download":
            self._json(h, 404, {"status": 404, "code": "not-found", "title": "Not found", "detail": h.path})
            return
        status, answer = self.post_answers.get(body.get("id"), (202, {"id": body.get("id"), "status": "queued"}))
        self._json(h, status, answer)
        for payload in self.on_post.get(body.get("id"), []):
            self.push(payload)

    @staticmethod
    def _json(h: http.server.BaseHTTPRequestHandler, status: int, doc: Any) -> None:
        data = json.dumps(doc).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/problem+json" if status >= 400 else "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _stream(self, h: http.server.BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        last = h.headers.get("Last-Event-ID") or (query.get("after") or [None])[0]
        prefixes = query.get("prefix") or [""]
        with self._changed:
            cursor = int(last) if last and last.isdigit() else len(self.events)
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        try:
            self._frame(h, None, "service.connected", {"version": "standin", "last_event_id": cursor})
            while True:
                with self._changed:
                    self._changed.wait_for(lambda seen=cursor: self._closing or len(self.events) > seen)
                    if self._closing:
                        return
                    fresh = self.events[cursor:]
                    cursor = len(self.events)
                for number, kind, payload in fresh:
                    if any(kind.startswith(p) for p in prefixes):
                        self._frame(h, number, kind, payload)
        except OSError:
            return  # the client left

    @staticmethod
    def _frame(h: http.server.BaseHTTPRequestHandler, number: int | None, kind: str, payload: Any) -> None:
        head = f"id: {number}\n" if number is not None else ""
        data = json.dumps({"kind": kind, "payload": payload})
        h.wfile.write(f"{head}event: {kind}\ndata: {data}\n\n".encode())
        h.wfile.flush()


@contextmanager
def standin() -> Iterator[StandIn]:
    server = StandIn()
    try:
        yield server
    finally:
        server.close()
