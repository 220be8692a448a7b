"""Deployment: embedding in a host app, signals, access control, url redaction,
and the process-level behaviour under real gunicorn processes (the state-directory
lock, SIGTERM and resume, the refusal of a remote bind, ``--preload``).

Every subprocess writes its output to a file, is waited for by a bounded
connect-retry on ``/healthz`` (or by waiting for its exit), and is killed and
reaped in a ``finally``. Only 127.0.0.1 is ever connected to.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from arw_models import ArwModels, StateLockError, create_app, signals
from arw_models.service.manager import CHANGED, PROGRESS

from .support.app import FAST, LiveServer, Watch, post_download
from .support.origin import payload
from .support.servers import CONF, ROOT, Gunicorn, free_port
from .support.sse import SSEClient, is_status, post_and_follow, read_frames_until

KiB = 1024
MiB = 1024 * KiB
TOKEN = "adm1n-T0ken-zqv"

ALL_SIGNALS = (
    signals.download_queued,
    signals.download_started,
    signals.download_progress,
    signals.download_retrying,
    signals.download_completed,
    signals.download_failed,
    signals.download_canceled,
    signals.models_changed,
)


def assert_problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.mimetype == "application/problem+json"
    body: dict[str, Any] = r.json
    assert body["status"] == status and body["code"] == code
    assert body["title"] and body["detail"] and body["type"]
    return body


# -- embedding ------------------------------------------------------------------


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


# -- signals ----------------------------------------------------------------------


def test_signals_carry_the_app_and_the_event_payload(make_app: Callable[..., Any], origin: Any,
                                                     tmp_path: Path) -> None:
    app = make_app()
    other = make_app(ARW_STATE_DIR=str(tmp_path / "other"))
    received: list[tuple[str, Any, dict[str, Any]]] = []
    lock = threading.Lock()
    connected: list[tuple[Any, Callable[..., None]]] = []

    def recorder(name: str) -> Callable[..., None]:
        def receive(sender: Any, payload: dict[str, Any], **extra: Any) -> None:
            assert not extra
            with lock:
                received.append((name, sender, payload))

        return receive

    for sig in ALL_SIGNALS:
        if sig is signals.download_completed:
            # The decorator form from the documentation.
            @sig.connect_via(app)
            def on_completed(sender: Any, payload: dict[str, Any]) -> None:
                with lock:
                    received.append(("download-completed", sender, payload))

            connected.append((sig, on_completed))
        else:
            fn = recorder(sig.name)
            sig.connect(fn, sender=app, weak=False)
            connected.append((sig, fn))
    watch = Watch(app)
    watch_other = Watch(other)
    try:
        client = app.test_client()
        manager = ArwModels.state(app).manager
        good = origin.add("/ok.gguf", payload(256 * KiB, seed=2))
        bad = origin.add("/bad.gguf", payload(128 * KiB, seed=3))
        origin.add("/slow.gguf", payload(4 * MiB, seed=4), throttle=2 * MiB)

        assert post_download(client, "ok", origin.url("/ok.gguf"), sha256=good.sha256).status_code == 202
        assert watch.terminal("ok")["status"] == "complete"
        assert post_download(client, "bad", origin.url("/bad.gguf"), sha256="0" * 64).status_code == 202
        assert watch.terminal("bad")["code"] == "checksum-mismatch"
        assert post_download(client, "slow", origin.url("/slow.gguf")).status_code == 202
        watch.status("slow", "downloading")
        assert client.post("/models/download/cancel", json={"id": "slow"}).json == {"id": "slow",
                                                                                    "status": "canceled"}
        assert watch.terminal("slow")["status"] == "canceled"
        # A signal is sent right after its event is published; a job is done
        # only after its last one, so once all are done every signal has been sent.
        for model_id in ("ok", "bad", "slow"):
            assert manager.wait(model_id, timeout=5)

        # Another app's downloads reach receivers connected to this app: no.
        other_client = other.test_client()
        assert post_download(other_client, "o", origin.url("/ok.gguf")).status_code == 202
        assert watch_other.terminal("o")["status"] == "complete"
        assert ArwModels.state(other).manager.wait("o", timeout=5)

        with lock:
            got = list(received)
        assert got, "no signal was received"
        assert all(sender is app for _, sender, _ in got)
        by_name: dict[str, list[dict[str, Any]]] = {}
        for name, _, p in got:
            by_name.setdefault(name, []).append(p)

        # Per job, the signals are the events, in order, each through its own signal.
        for model_id in ("ok", "bad", "slow"):
            events = [e for e in watch.events if e.kind == PROGRESS and e.payload["id"] == model_id]
            expected = [(signals.BY_STATUS[e.payload["status"]].name, e.payload) for e in events]
            sent = [(name, p) for name, _, p in got if p.get("id") == model_id and "op" not in p]
            assert sent == expected, model_id
        changes = [e.payload for e in watch.events if e.kind == CHANGED]
        assert by_name["models-changed"] == changes == [{"op": "add", "id": "ok"}]

        assert [p["id"] for p in by_name["download-started"]] == ["ok", "bad", "slow"]
        assert all(p["status"] == "started" for p in by_name["download-started"])
        (completed,) = by_name["download-completed"]
        assert completed == watch.payloads("ok")[-1]
        assert completed["sha256"] == good.sha256 and completed["file"] == "ok.gguf"
        (failed,) = by_name["download-failed"]
        assert failed["id"] == "bad" and failed["code"] == "checksum-mismatch"
        assert failed["expected"] == "0" * 64 and failed["actual"] == bad.sha256
        (canceled,) = by_name["download-canceled"]
        assert canceled == {"id": "slow", "status": "canceled", "downloaded": canceled["downloaded"]}
        assert any(p["id"] == "slow" for p in by_name["download-progress"])
        assert all(p["status"] == "downloading" for p in by_name["download-progress"])
        assert not any(p.get("id") == "o" for _, _, p in got)
    finally:
        for sig, fn in connected:
            sig.disconnect(fn)
        watch.close()
        watch_other.close()
    assert not any(sig.receivers for sig in ALL_SIGNALS)


def test_a_receiver_that_raises_breaks_neither_the_download_nor_other_receivers(
    app: Any, client: Any, origin: Any, watch: Any, caplog: Any,
) -> None:
    caplog.set_level(logging.ERROR, logger="arw_models")
    seen: list[list[str]] = [[] for _ in range(4)]
    lock = threading.Condition()

    def broken(sender: Any, payload: dict[str, Any]) -> None:
        raise RuntimeError("a bug in a receiver")

    def good(n: int) -> Callable[..., None]:
        def receive(sender: Any, payload: dict[str, Any]) -> None:
            with lock:
                seen[n].append(payload.get("status") or payload["op"])
                lock.notify_all()

        return receive

    receivers = [good(n) for n in range(4)]
    wired = (signals.download_started, signals.download_completed, signals.models_changed)
    for sig in wired:
        sig.connect(broken, sender=app)
        for fn in receivers:
            sig.connect(fn, sender=app)
    try:
        res = origin.add("/r.gguf", payload(256 * KiB, seed=5))
        assert post_download(client, "r", origin.url("/r.gguf"), sha256=res.sha256).status_code == 202
        assert watch.terminal("r")["status"] == "complete"
        assert ArwModels.state(app).manager.wait("r", timeout=5)
        assert [m["id"] for m in client.get("/models").json["items"]] == ["r"]
        with lock:  # the signals of the end follow it, in the job's thread
            assert lock.wait_for(lambda: all(len(s) == 3 for s in seen), timeout=5), seen
        for n in range(4):
            assert seen[n] == ["started", "complete", "add"], (n, seen[n])
        assert any("a receiver of" in r.getMessage() for r in caplog.records)
    finally:
        for sig in wired:
            sig.disconnect(broken)
            for fn in receivers:
                sig.disconnect(fn)


# -- access control -------------------------------------------------------------


def test_the_admin_token_guards_writes_and_events_only(make_app: Callable[..., Any], origin: Any) -> None:
    app = make_app(ARW_ADMIN_TOKEN=TOKEN)
    client = app.test_client()
    watch = Watch(app)
    server: LiveServer | None = None
    res = origin.add("/t.gguf", payload(128 * KiB, seed=6))
    stalled = origin.add("/stall.gguf", payload(1 * MiB, seed=7), stall_after=256 * KiB)
    body = {"id": "t", "url": origin.url("/t.gguf"), "sha256": res.sha256}
    guarded: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/models/download", body),
        ("POST", "/models/download/cancel", {"id": "t"}),
        ("DELETE", "/models/t", None),
        ("GET", "/events", None),
    ]
    try:
        for method, path, json_body in guarded:
            for headers, code in [
                ({}, "missing-token"),
                ({"Authorization": "Basic dXNlcjpwdw=="}, "missing-token"),
                ({"Authorization": "Bearer wrong"}, "invalid-token"),
                ({"Authorization": f"Bearer {TOKEN}x"}, "invalid-token"),
                ({"X-ARW-Admin": "wrong"}, "invalid-token"),
                ({"X-ARW-Admin": ""}, "invalid-token"),
            ]:
                r = client.open(path, method=method, json=json_body, headers=headers)
                assert_problem(r, 401, code)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert TOKEN not in r.get_data(as_text=True)
        # Nothing was started by the refused requests.
        assert client.get("/models/downloads").json == {"items": []}

        # Reads stay open.
        assert client.get("/healthz").json == {"ok": True}
        assert client.get("/models").json == {"items": []}
        assert client.get("/models/downloads").json == {"items": []}
        assert_problem(client.get("/models/downloads/t"), 404, "unknown-download")
        probe = client.get("/probe")
        assert probe.status_code == 200 and probe.json["settings"]["auth"] == "token"
        assert TOKEN not in probe.get_data(as_text=True)

        # Accepted with either header.
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        admin = {"X-ARW-Admin": TOKEN}
        r = client.post("/models/download", json=body, headers=bearer)
        assert r.status_code == 202, r.json
        assert watch.terminal("t")["status"] == "complete"
        r = client.post("/models/download", json={"id": "s", "url": origin.url("/stall.gguf")}, headers=admin)
        assert r.status_code == 202, r.json
        assert stalled.stalled.wait(5)
        r = client.post("/models/download/cancel", json={"id": "s"}, headers={"Authorization": f"bearer {TOKEN}"})
        assert r.json == {"id": "s", "status": "canceled"}
        assert_problem(client.post("/models/download/cancel", json={"id": "s"}, headers=admin),
                       404, "no-active-download")
        assert client.delete("/models/t", headers=admin).json == {"id": "t", "status": "deleted"}

        server = LiveServer(app)
        r = requests.get(server.url + "/events", timeout=5)
        assert r.status_code == 401 and r.headers["Content-Type"] == "application/problem+json"
        assert r.json()["code"] == "missing-token" and r.headers["WWW-Authenticate"].startswith("Bearer")
        for headers in (bearer, admin):
            with SSEClient(server.url + "/events", headers=headers, params={"replay": "1000"}) as sse:
                assert sse.response.status_code == 200
                first = sse.next()
                assert first.event == "service.connected" and TOKEN not in first.data
                ends = sse.until(lambda f: f.event == CHANGED and f.payload["op"] == "remove")
                assert ends.payload == {"op": "remove", "id": "t"}

        # The token is in no event, and the probe still does not show it.
        assert watch.events
        for event in watch.events:
            assert TOKEN not in event.encode().decode("utf-8")
        assert TOKEN not in requests.get(server.url + "/probe", timeout=5).text
    finally:
        stalled.release.set()
        watch.close()
        if server is not None:
            server.close()


# -- url redaction ----------------------------------------------------------------


SECRETS = ("secret", "user:", "abcXYZ", "token=")


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} shows in {where}: {text}"


def assert_no_secret_in_logs(caplog: Any) -> int:
    """The service's own log records (urllib3's debug log is not ours); returns their number."""
    records = [r for r in caplog.records if r.name.startswith("arw_models")]
    for record in records:
        assert_no_secret(record.getMessage(), f"the log record {record.name}")
    return len(records)


def test_credentials_in_the_url_are_shown_nowhere(app: Any, client: Any, origin: Any, watch: Any,
                                                  caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="arw_models")
    res = origin.add("/m.gguf", payload(512 * KiB, seed=8), stall_after=128 * KiB)
    host, port = origin.base.removeprefix("http://").split(":")
    url = f"http://user:secret@{host}:{port}/m.gguf?token=abcXYZ"
    try:
        r = post_download(client, "m", url, sha256=res.sha256)
        assert r.status_code == 202
        assert_no_secret(r.get_data(as_text=True), "the 202 answer")
        assert_no_secret(r.headers["Location"], "the Location header")
        assert r.json["url"].startswith("http://") and "/m.gguf" in r.json["url"]
        assert res.stalled.wait(5)
        listing = client.get("/models/downloads")
        assert [j["id"] for j in listing.json["items"]] == ["m"]
        assert_no_secret(listing.get_data(as_text=True), "the job listing")
        assert_no_secret(client.get("/models/downloads/m").get_data(as_text=True), "the job")
        # The same POST again answers with the running job, redacted too.
        again = post_download(client, "m", url, sha256=res.sha256)
        assert again.status_code == 202
        assert_no_secret(again.get_data(as_text=True), "the repeated 202 answer")
        conflict = post_download(client, "m", url + "&other=1")
        assert conflict.status_code == 409
        assert_no_secret(conflict.get_data(as_text=True), "the 409 answer")
        res.release.set()
        assert watch.terminal("m")["status"] == "complete"
        models = client.get("/models")
        assert [m["id"] for m in models.json["items"]] == ["m"]
        assert_no_secret(models.get_data(as_text=True), "GET /models")
        assert_no_secret(client.get("/models/downloads/m").get_data(as_text=True), "the finished job")
        assert_no_secret(client.get("/probe").get_data(as_text=True), "the probe")
        for event in watch.events:
            assert_no_secret(event.encode().decode("utf-8"), f"the event {event!r}")
        # The transfer itself did use the full url.
        seen = origin.requests_for("/m.gguf")
        assert seen and seen[0].path == "/m.gguf?token=abcXYZ"
        assert seen[0].headers.get("authorization", "").startswith("Basic ")
        assert_no_secret_in_logs(caplog)
    finally:
        res.release.set()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_credentials_in_the_url_are_not_in_network_error_messages(make_app: Callable[..., Any], caplog: Any) -> None:
    # urllib3 quotes the request target (path and query) in its exception text,
    # which ends up in the retrying and error events and in the log.
    caplog.set_level(logging.DEBUG, logger="arw_models")
    app = make_app(ARW_DL_RETRIES=1)
    watch = Watch(app)
    try:
        url = f"http://user:secret@127.0.0.1:{closed_port()}/m.gguf?token=abcXYZ"
        r = post_download(app.test_client(), "m", url)
        assert r.status_code == 202
        assert watch.terminal("m")["code"] == "connection-refused"
        assert "retrying" in watch.statuses("m")
        assert_no_secret(app.test_client().get("/models/downloads/m").get_data(as_text=True), "the failed job")
        for event in watch.events:
            assert_no_secret(event.encode().decode("utf-8"), f"the event {event!r}")
        assert assert_no_secret_in_logs(caplog) >= 2  # the retry and the failure
    finally:
        watch.close()


# -- the state-directory lock ---------------------------------------------------------


def test_a_second_app_on_the_same_state_dir_is_refused_until_the_first_stops(
    make_app: Callable[..., Any], tmp_path: Path,
) -> None:
    first, second = make_app(), make_app()
    ArwModels.state(first)
    with pytest.raises(StateLockError) as refused:
        ArwModels.state(second)
    message = str(refused.value)
    assert str(tmp_path / "state") in message and f"pid {os.getpid()}" in message
    with pytest.raises(StateLockError):
        second.extensions["arw_models"].start()
    assert not second.extensions["arw_models"].started
    busy = second.test_client().get("/models")  # a host app's second worker, say
    assert busy.status_code == 503 and busy.json["code"] == "state-dir-in-use"
    assert str(tmp_path / "state") in busy.json["detail"] and "Traceback" not in busy.get_data(as_text=True)
    first.extensions["arw_models"].shutdown()
    state = ArwModels.state(second)
    assert state.started
    assert second.test_client().get("/probe").json["state_dir"] == str(tmp_path / "state")


# -- gunicorn processes ---------------------------------------------------------------


def test_a_second_gunicorn_on_the_same_state_dir_exits_naming_dir_and_holder(
    gunicorns: Callable[..., Gunicorn], tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    first = gunicorns("first", state)
    first.wait_ready()
    holder = (state / "arw-models.lock").read_text().strip()
    assert re.fullmatch(r"pid \d+ on .+", holder), holder
    holder_pid = holder.split()[1]
    assert holder_pid != str(first.proc.pid)  # the worker holds it, not the master

    second = gunicorns("second", state)
    started = time.monotonic()
    code = second.wait_exit(10)
    assert code != 0
    assert time.monotonic() - started < 10
    out = second.output()
    assert str(state) in out and f"pid {holder_pid}" in out, out
    with pytest.raises(requests.ConnectionError):
        requests.get(second.url + "/healthz", timeout=2)
    # The first one is undisturbed.
    assert requests.get(first.url + "/probe", timeout=5).json()["state_dir"] == str(state)
    assert first.proc.poll() is None
    # No gunicorn control socket: its "worker add" would halt the server (the new
    # worker cannot take the lock), and instances would share and unlink its path.
    assert not list(tmp_path.glob("*.ctl"))
    assert "Control socket listening" not in first.output() + out


def test_sigterm_during_a_download_keeps_the_part_and_a_restart_resumes_it(
    gunicorns: Callable[..., Gunicorn], origin: Any, tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    res = origin.add("/big.gguf", payload(4 * MiB, seed=9), throttle=1 * MiB)
    url = origin.url("/big.gguf")
    first = gunicorns("first", state)
    first.wait_ready()
    with SSEClient(first.url + "/events") as sse:
        assert sse.next().event == "service.connected"
        r = requests.post(first.url + "/models/download", json={"id": "big", "url": url, "sha256": res.sha256},
                          timeout=5)
        assert r.status_code == 202, r.text
        read_frames_until(sse, lambda f: is_status("big", "downloading")(f) and f.payload["downloaded"] >= 64 * KiB)
        sent = time.monotonic()
        os.kill(first.proc.pid, signal.SIGTERM)
        with pytest.raises(EOFError):  # the stream ends: neither a hang (a timeout) nor a broken chunk
            read_frames_until(sse, lambda f: False)
    assert first.wait_exit(10) == 0
    assert time.monotonic() - sent < 5, first.output()
    assert "Traceback" not in first.output()

    part, sidecar = state / "models" / "big.part", state / "models" / "big.part.json"
    assert part.exists() and sidecar.exists()
    kept = part.stat().st_size
    assert 64 * KiB <= kept < len(res.data)
    assert part.read_bytes() == res.data[:kept]
    assert json.loads(sidecar.read_text())["url"] == url
    assert not (state / "models" / "big.gguf").exists()

    res.throttle = None
    before = len(origin.requests_for("/big.gguf"))
    second = gunicorns("second", state)  # ARW_DL_RESUME_ON_START is on by default
    second.wait_ready()
    with SSEClient(second.url + "/events", params={"replay": "4096", "prefix": "Models."}) as sse:
        frames = read_frames_until(sse, is_status("big", "complete", "error", "canceled"))
    statuses = [f.payload for f in frames if is_status("big", "resumed", "complete")(f)]
    assert statuses[0] == {"id": "big", "status": "resumed", "offset": kept, "total": len(res.data)}
    assert statuses[-1]["status"] == "complete" and statuses[-1]["sha256"] == res.sha256
    resumed = origin.requests_for("/big.gguf")[before:]
    assert resumed and resumed[0].range == f"bytes={kept}-" and resumed[0].status == 206
    models = requests.get(second.url + "/models", timeout=5).json()["items"]
    assert [(m["id"], m["sha256"], m["bytes"]) for m in models] == [("big", res.sha256, len(res.data))]
    assert (state / "models" / "big.gguf").read_bytes() == res.data
    assert not part.exists() and not sidecar.exists()


def test_kill_9_during_a_download_keeps_a_resumable_part_and_the_same_post_resumes_it(
    gunicorns: Callable[..., Gunicorn], origin: Any, tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    res = origin.add("/k.gguf", payload(4 * MiB, seed=11), throttle=1 * MiB)
    url = origin.url("/k.gguf")
    body = {"id": "k", "url": url, "sha256": res.sha256}
    first = gunicorns("first", state)
    first.wait_ready()
    post_and_follow(first.url, body, lambda f: (
        is_status("k", "downloading")(f)
        and f.payload["downloaded"] >= 128 * KiB
    ))
    os.killpg(first.proc.pid, signal.SIGKILL)  # no handler runs: master and worker die mid-write
    first.wait_exit(10)
    res.throttle = None
    before = len(origin.requests_for("/k.gguf"))
    second = gunicorns("second", state, ARW_DL_RESUME_ON_START="0")
    second.wait_ready()  # it holds the state lock: the killed worker is gone, its last write landed

    models = state / "models"
    part, sidecar = models / "k.part", models / "k.part.json"
    kept = part.stat().st_size
    assert 128 * KiB <= kept < len(res.data)
    assert part.read_bytes() == res.data[:kept]  # what is on disk is a true prefix
    assert json.loads(sidecar.read_text())["total"] == len(res.data)
    assert not (models / "k.gguf").exists()
    assert requests.get(second.url + "/models", timeout=5).json()["items"] == []
    listed = requests.get(second.url + "/models/downloads", timeout=5).json()["items"]
    assert [(i["id"], i["status"], i["downloaded"], i["total"]) for i in listed] == [
        ("k", "resumable", kept, len(res.data))]
    assert origin.requests_for("/k.gguf")[before:] == []  # nothing moves until it is asked for
    frames = post_and_follow(second.url, body, is_status("k", "complete", "error", "canceled"))
    payloads = [f.payload for f in frames if f.event == PROGRESS]
    assert payloads[0]["status"] == "resumed" and payloads[0]["offset"] == kept
    assert payloads[-1]["status"] == "complete" and payloads[-1]["sha256"] == res.sha256
    resumed = origin.requests_for("/k.gguf")[before:]
    assert [(r.range, r.status) for r in resumed] == [(f"bytes={kept}-", 206)]
    assert (models / "k.gguf").read_bytes() == res.data
    assert not part.exists() and not sidecar.exists()


@pytest.mark.parametrize("address", ["0.0.0.0", "[::]"])
def test_a_remote_bind_without_a_token_is_refused(gunicorns: Callable[..., Gunicorn], tmp_path: Path,
                                                  address: str) -> None:
    g = gunicorns("remote", tmp_path / "state",
                  argv=["-c", CONF, "-b", f"{address}:{free_port()}", "wsgi:app"])
    code = g.wait_exit(10)
    out = g.output()
    assert code != 0, out
    assert "ARW_ADMIN_TOKEN" in out
    assert "Listening at" not in out
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1:8090", True), ("127.1.2.3:1", True), ("localhost:8090", True), ("[::1]:8090", True),
    ("unix:/tmp/arw.sock", True), ("127.0.0.1", True),
    ("0.0.0.0:8090", False), ("[::]:8090", False), ("10.0.0.1:80", False), ("example.org:80", False),
    ("0.0.0.0", False),
])
def test_loopback_detection(address: str, loopback: bool) -> None:
    from arw_models.server import gunicorn_conf

    assert gunicorn_conf._is_loopback(address) is loopback


def test_on_starting_allows_a_remote_bind_with_a_token_or_an_explicit_opt_in(monkeypatch: Any, capsys: Any) -> None:
    from types import SimpleNamespace

    from arw_models.server import gunicorn_conf

    server = SimpleNamespace(cfg=SimpleNamespace(bind=["127.0.0.1:1", "0.0.0.0:2"], workers=1))
    monkeypatch.delenv("ARW_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("ARW_ALLOW_REMOTE", raising=False)
    with pytest.raises(SystemExit) as refused:
        gunicorn_conf.on_starting(server)
    assert refused.value.code not in (0, None)
    assert "ARW_ADMIN_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("ARW_ALLOW_REMOTE", "1")
    gunicorn_conf.on_starting(server)
    monkeypatch.delenv("ARW_ALLOW_REMOTE")
    monkeypatch.setenv("ARW_ADMIN_TOKEN", " \t ")  # blank: the app would run without a token
    with pytest.raises(SystemExit):
        gunicorn_conf.on_starting(server)
    monkeypatch.setenv("ARW_ADMIN_TOKEN", TOKEN)
    gunicorn_conf.on_starting(server)
    gunicorn_conf.on_starting(SimpleNamespace(cfg=SimpleNamespace(bind=["127.0.0.1:1"], workers=1)))


def test_a_blank_token_is_no_token_and_a_padded_one_is_trimmed(make_app: Any, tmp_path: Path) -> None:
    blank = make_app(ARW_ADMIN_TOKEN=" \t ").test_client()
    assert blank.get("/probe").json["settings"]["auth"] == "none"
    padded = make_app(ARW_ADMIN_TOKEN=f" {TOKEN}\n", ARW_STATE_DIR=str(tmp_path / "other")).test_client()
    cancel = {"id": "nothing"}
    assert padded.post("/models/download/cancel", json=cancel).status_code == 401
    r = padded.post("/models/download/cancel", json=cancel, headers={"X-ARW-Admin": TOKEN})
    assert r.status_code == 404 and r.json["code"] == "no-active-download"


def test_preload_serves_a_download(gunicorns: Callable[..., Gunicorn], origin: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    res = origin.add("/p.gguf", payload(512 * KiB, seed=10))
    g = gunicorns("preload", state, argv=["--preload", "-c", CONF, "wsgi:app"])
    g.wait_ready()
    # The worker took the lock, not the master that imported the app.
    holder = (state / "arw-models.lock").read_text().split()
    assert holder[0] == "pid" and holder[1] != str(g.proc.pid)
    with SSEClient(g.url + "/events") as sse:
        assert sse.next().event == "service.connected"
        r = requests.post(g.url + "/models/download",
                          json={"id": "p", "url": origin.url("/p.gguf"), "sha256": res.sha256}, timeout=5)
        assert r.status_code == 202, r.text
        assert r.headers["Location"] == "/models/downloads/p"
        done = read_frames_until(sse, is_status("p", "complete", "error", "canceled"))[-1]
    assert done.payload["status"] == "complete" and done.payload["sha256"] == res.sha256
    models = requests.get(g.url + "/models", timeout=5).json()["items"]
    assert [(m["id"], m["file"]) for m in models] == [("p", "p.gguf")]
    assert (state / "models" / "p.gguf").read_bytes() == res.data


# -- many short event streams ---------------------------------------------------------


def test_many_short_event_streams_leave_no_subscriber(make_app: Callable[..., Any], monkeypatch: Any) -> None:
    # A closed stream keeps its slot until it notices its client left: make room for all.
    app = make_app(ARW_EVENTS_MAX_STREAMS=256)
    live = LiveServer(app)
    try:
        _many_short_streams(app, live, monkeypatch)
    finally:
        live.close()


def _many_short_streams(app: Any, live: LiveServer, monkeypatch: Any) -> None:
    hub = ArwModels.state(app).hub
    released = threading.Condition()
    unsubscribe = hub.unsubscribe

    def counting_unsubscribe(sub: Any) -> None:
        unsubscribe(sub)
        with released:
            released.notify_all()

    monkeypatch.setattr(hub, "unsubscribe", counting_unsubscribe)
    for _ in range(200):
        with SSEClient(live.url + "/events") as sse:
            assert sse.next().event == "service.connected"
    # A stream notices its closed client at its next write: one event reaches them all.
    hub.publish("Test.Ping", {})
    with released:
        assert released.wait_for(lambda: hub.subscriber_count == 0, timeout=5), hub.subscriber_count
    assert requests.get(live.url + "/probe", timeout=5).json()["subscribers"] == 0
