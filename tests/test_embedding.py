"""Embedding in a host app: under a prefix, through the constructor or ``init_app``,
the host's own pages left alone; one extension object for two hosts; neither
``create_app`` nor importing ``wsgi`` starts a thread or takes the state lock."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from arw_models import ArwModels, StateLockError, create_app
from arw_models.service.manager import PROGRESS

from .support.app import FAST, LiveServer, Watch, assert_problem
from .support.origin import payload
from .support.servers import ROOT
from .support.sse import SSEClient

KiB = 1024


def host_app(tmp_path: Path, name: str = "host") -> Flask:
    """A host application with its own index page and its own 404 page."""
    host = Flask(name)
    host.config.update(FAST)
    host.config["ARW_STATE_DIR"] = str(tmp_path / name)

    @host.get("/")
    def index() -> str:
        return "host index"

    @host.errorhandler(404)
    def not_found(exc: Exception) -> tuple[str, int]:
        return "host 404", 404

    return host


def _constructor(host: Flask) -> None:
    ArwModels(host, url_prefix="/ai")


def _init_app(host: Flask) -> None:
    ext = ArwModels()
    ext.init_app(host, url_prefix="/ai")


def _init_app_with_the_prefix_of_the_constructor(host: Flask) -> None:
    ArwModels(url_prefix="/ai/").init_app(host)


@pytest.mark.parametrize("setup", [_constructor, _init_app, _init_app_with_the_prefix_of_the_constructor],
                         ids=["constructor", "init_app", "init_app-prefix-from-constructor"])
def test_embedded_under_a_prefix_leaves_the_host_alone(tmp_path: Path, origin: Any,
                                                       setup: Callable[[Flask], None]) -> None:
    host = host_app(tmp_path)
    setup(host)
    watch: Watch | None = None
    server: LiveServer | None = None
    try:
        client = host.test_client()
        # The host's own pages are untouched, its 404 page included.
        assert client.get("/").get_data(as_text=True) == "host index"
        for path in ("/nope", "/models", "/healthz", "/ai/nope"):
            r = client.get(path)
            assert r.status_code == 404 and r.get_data(as_text=True) == "host 404", path
        r = client.post("/")
        assert r.status_code == 405 and r.mimetype != "application/problem+json"

        assert client.get("/ai/healthz").json == {"ok": True}
        probe = client.get("/ai/probe").json
        assert probe["state_dir"] == str(tmp_path / "host")
        assert probe["models_dir"] == str(tmp_path / "host" / "models")
        assert client.get("/ai/models").json == {"items": []}
        assert client.get("/ai/models/downloads").json == {"items": []}
        # Inside the blueprint, errors are still problem documents.
        assert_problem(client.get("/ai/models/downloads/zzz"), 404, "unknown-download")
        assert_problem(client.post("/ai/models/download", data="x", content_type="text/plain"),
                       415, "unsupported-media-type")
        assert_problem(client.delete("/ai/models/zzz"), 404, "unknown-model")

        watch = Watch(host)
        res = origin.add("/e.gguf", payload(256 * KiB, seed=1))
        r = client.post("/ai/models/download", json={"id": "e", "url": origin.url("/e.gguf"), "sha256": res.sha256})
        assert r.status_code == 202, r.json
        assert r.headers["Location"] == "/ai/models/downloads/e"
        assert watch.terminal("e")["status"] == "complete"
        assert client.get(r.headers["Location"]).json["status"] == "complete"
        items = client.get("/ai/models").json["items"]
        assert [(m["id"], m["file"], m["sha256"], m["status"]) for m in items] == [
            ("e", "e.gguf", res.sha256, "available")]
        assert (tmp_path / "host" / "models" / "e.gguf").read_bytes() == res.data

        # The event stream, through a real socket, under the prefix.
        server = LiveServer(host)
        assert requests.get(server.url + "/", timeout=5).text == "host index"
        with SSEClient(server.url + "/ai/events", params={"replay": "50", "prefix": "Models."}) as sse:
            assert sse.next().event == "service.connected"
            done = sse.until(lambda f: f.event == PROGRESS and f.payload["status"] == "complete")
            assert done.payload["id"] == "e" and done.payload["sha256"] == res.sha256
            assert sse.next().payload == {"op": "add", "id": "e"}

        assert client.delete("/ai/models/e").json == {"id": "e", "status": "deleted"}
        assert client.get("/ai/models").json == {"items": []}
    finally:
        if watch is not None:
            watch.close()
        if server is not None:
            server.close()
        host.extensions["arw_models"].shutdown()


def test_one_extension_object_serves_two_hosts_each_with_its_own_state(tmp_path: Path) -> None:
    ext = ArwModels()
    one, two = host_app(tmp_path, "one"), host_app(tmp_path, "two")
    ext.init_app(one, url_prefix="/ai")
    ext.init_app(two, url_prefix="/models-api")
    try:
        assert one.test_client().get("/ai/probe").json["state_dir"] == str(tmp_path / "one")
        assert two.test_client().get("/models-api/probe").json["state_dir"] == str(tmp_path / "two")
        assert two.test_client().get("/ai/probe").get_data(as_text=True) == "host 404"
        with pytest.raises(RuntimeError):
            ext.init_app(one, url_prefix="/again")
    finally:
        one.extensions["arw_models"].shutdown()
        two.extensions["arw_models"].shutdown()


def test_create_app_and_init_app_start_no_thread_and_take_no_lock(tmp_path: Path) -> None:
    before = threading.active_count()
    app = create_app(dict(FAST, ARW_STATE_DIR=str(tmp_path / "state")))
    host = host_app(tmp_path, "state")  # the same state directory
    ArwModels(host, url_prefix="/ai")
    try:
        assert threading.active_count() == before
        assert not app.extensions["arw_models"].started
        assert not host.extensions["arw_models"].started
        # Nothing holds the directory: the host can take it, and hand it back.
        ArwModels.state(host)
        host.extensions["arw_models"].shutdown()
        # First use starts the service and takes the lock.
        assert app.test_client().get("/healthz").json == {"ok": True}
        assert app.extensions["arw_models"].started
        with pytest.raises(StateLockError):
            ArwModels.state(create_app(dict(FAST, ARW_STATE_DIR=str(tmp_path / "state"))))
    finally:
        app.extensions["arw_models"].shutdown()
        host.extensions["arw_models"].shutdown()


def test_importing_wsgi_starts_no_thread_and_takes_no_lock(tmp_path: Path) -> None:
    state = tmp_path / "state"
    code = (
        "import threading, wsgi\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert not wsgi.app.extensions['arw_models'].started\n"
        "print('ok')\n"
    )
    env = dict(os.environ, ARW_STATE_DIR=str(state))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert not (state / "arw-models.lock").exists()
