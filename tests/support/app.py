"""The app under test, for the fixtures of ``conftest.py`` and the test modules:
the fast settings, :class:`Watch` (wait on the app's events, never on a clock),
:class:`LiveServer` (the app on a real socket) and :func:`post_download`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from werkzeug.serving import make_server

from arw_models import ArwModels
from arw_models.service.events import Event, Subscription

TERMINAL = ("complete", "error", "canceled")

FAST = {
    "TESTING": True,
    "ARW_DL_RETRY_BACKOFF_MS": 1,
    "ARW_DL_RETRY_BACKOFF_MAX_MS": 20,
    "ARW_DL_PROGRESS_INTERVAL_MS": 10,
    "ARW_DL_IDLE_TIMEOUT_SECS": 5,
    "ARW_DL_CONNECT_TIMEOUT_SECS": 2,
    "ARW_MODELS_DISK_RESERVE_MB": 0,
    "ARW_DL_RESUME_ON_START": False,
    "ARW_DL_CHUNK_BYTES": 64 * 1024,
}


class Watch:
    """Reads the app's events straight from the hub, for waiting without sleeps."""

    def __init__(self, app: Any, prefixes: tuple[str, ...] = ()) -> None:
        self.hub = ArwModels.state(app).hub
        self.sub: Subscription
        self.sub, _ = self.hub.subscribe(prefixes, queue_size=1_000_000)
        self.events: list[Event] = []
        self._read = 0

    def until(self, predicate: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        deadline = time.monotonic() + timeout
        while True:
            while self._read < len(self.events):
                event = self.events[self._read]
                self._read += 1
                if predicate(event):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no such event within {timeout}s; saw {self.payloads()}")
            items = self.sub.get(timeout=remaining)
            if items is None:
                raise AssertionError("the hub closed")
            self.events.extend(items)

    def status(self, model_id: str, *statuses: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.until(
            lambda e: e.kind == "Models.DownloadProgress" and e.payload.get("id") == model_id and e.payload.get("status") in statuses, timeout
        ).payload

    def terminal(self, model_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.status(model_id, *TERMINAL, timeout=timeout)

    def payloads(self, model_id: str | None = None, kind: str = "Models.DownloadProgress") -> list[dict[str, Any]]:
        return [e.payload for e in self.events
                if e.kind == kind and (model_id is None or e.payload.get("id") == model_id)]

    def statuses(self, model_id: str) -> list[str]:
        return [p["status"] for p in self.payloads(model_id)]

    def close(self) -> None:
        self.hub.unsubscribe(self.sub)


class LiveServer:
    """The app under a real threaded WSGI server, for tests that need a socket."""

    def __init__(self, app: Any, port: int = 0) -> None:
        self.app = app
        # A port of its own (0) unless told: a restarted service takes its predecessor's.
        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="test-live-server")
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        # Ending the service first ends the event streams, so no handler lingers.
        self.app.extensions["arw_models"].shutdown()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def retrying(watch: Watch, model_id: str) -> list[dict[str, Any]]:
    """The ``retrying`` events the watch has seen for ``model_id``."""
    return [p for p in watch.payloads(model_id) if p["status"] == "retrying"]


def assert_problem(r: Any, status: int, code: str) -> dict[str, Any]:
    """A test client's answer is a problem document of this status and code; returns it."""
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.mimetype == "application/problem+json"
    body: dict[str, Any] = r.json
    assert body["status"] == status and body["code"] == code
    assert body["title"] and body["detail"] and body["type"]
    return body


def post_download(client: Any, model_id: str, url: str, **extra: Any) -> Any:
    return client.post("/models/download", json={"id": model_id, "url": url, **extra})


Service = Callable[..., tuple[Any, Any, Watch]]
