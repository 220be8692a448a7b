"""The suite's fixtures; what they build on is in :mod:`tests.support`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from arw_models import create_app

from .support import debian, registry
from .support.app import FAST, LiveServer, Service, Watch
from .support.origin import Origin
from .support.servers import Gunicorn


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


@pytest.fixture
def servers() -> Iterator[Callable[[], Origin]]:
    """More local origins, to play mirrors, peers and buckets; all closed at the end."""
    started: list[Origin] = []

    def start() -> Origin:
        server = Origin()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


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
        shut_down(app)


SHUTDOWN_SECS = 30


def shut_down(app: Any) -> None:
    """Shuts the app down, failing if that takes past ``SHUTDOWN_SECS``: a job thread
    that never ends (waiting for something that never comes) must fail its test, not
    hang the run; pytest-timeout no longer times the teardown of a test that failed."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            app.extensions["arw_models"].shutdown()
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread
            errors.append(exc)

    ender = threading.Thread(target=run, name="arw-test-shutdown", daemon=True)
    ender.start()
    ender.join(SHUTDOWN_SECS)
    assert not ender.is_alive(), f"the service did not shut down within {SHUTDOWN_SECS}s: a thread of it never ends"
    if errors:
        raise errors[0]


@pytest.fixture
def app(make_app: Callable[..., Any]) -> Any:
    return make_app()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def watch(app: Any) -> Iterator[Watch]:
    w = Watch(app)
    yield w
    w.close()


@pytest.fixture
def live(app: Any) -> Iterator[LiveServer]:
    server = LiveServer(app)
    yield server
    server.close()


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


@pytest.fixture(scope="session")
def regs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[registry.Registries]:
    """Debian's docker-registry, twice (token and htpasswd), with the test models
    pushed: started once per test process, on the first test that asks."""
    binary = debian.binary("docker-registry", "docker-registry", "/usr/bin/docker-registry")
    debian.binary("openssl", "openssl")
    started = registry.start(binary, tmp_path_factory.mktemp("registries"))
    yield started
    started.close()


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
