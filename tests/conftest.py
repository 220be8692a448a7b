from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from arw_models import ArwModels, create_app
from arw_models.service.events import Event, Subscription

from .origin import Origin
from .servers import Gunicorn

TERMINAL = ("complete", "error", "canceled")


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    for thread in threading.enumerate():
        if thread not in before:
            thread.join(max(0.0, deadline - time.monotonic()))
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not left, f"threads left running: {left}"


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


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


@pytest.fixture
def make_app(tmp_path: Any) -> Iterator[Callable[..., Any]]:
    apps = []

    def make(**config: Any) -> Any:
        settings = dict(FAST, ARW_STATE_DIR=str(tmp_path / "state"))
        settings.update(config)
        app = create_app(settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["arw_models"].shutdown()


@pytest.fixture
def app(make_app: Callable[..., Any]) -> Any:
    return make_app()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


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


@pytest.fixture
def watch(app: Any) -> Iterator[Watch]:
    w = Watch(app)
    yield w
    w.close()


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


@pytest.fixture
def live(app: Any) -> Iterator[LiveServer]:
    server = LiveServer(app)
    yield server
    server.close()


def post_download(client: Any, model_id: str, url: str, **extra: Any) -> Any:
    return client.post("/models/download", json={"id": model_id, "url": url, **extra})


Service = Callable[..., tuple[Any, Any, Watch]]


@pytest.fixture
def service(make_app: Callable[..., Any]) -> Iterator[Service]:
    """make_app(**config) plus a test client and a started watch."""
    watches: list[Watch] = []

    def make(**config: Any) -> tuple[Any, Any, Watch]:
        app = make_app(**config)
        watch = Watch(app)
        watches.append(watch)
        return app, app.test_client(), watch

    yield make
    for watch in watches:
        watch.close()


@pytest.fixture
def gunicorns(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def start(name: str, state_dir: Path, argv: list[str] | None = None, **env: str) -> Gunicorn:
        g = Gunicorn(tmp_path, name, state_dir, argv, env)
        started.append(g)
        return g

    try:
        yield start
    finally:
        for g in started:
            g.close()
