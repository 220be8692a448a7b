"""The command line against a real service: the app under a real threaded WSGI
server, a real local origin, and the CLI either in-process (``main(argv)``, its
output captured) or as a subprocess where a signal or a terminal is the point."""

from __future__ import annotations

import fcntl
import io
import itertools
import json
import os
import pty
import re
import select
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from arw_models import ArwModels
from arw_models.client.cli import main
from arw_models.client.display import Progress

from .support.app import LiveServer, Watch
from .support.helpers import listing, models_dir, part
from .support.origin import Origin, payload
from .support.servers import free_port

KiB = 1024
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI reads these; a developer's shell must not point the tests elsewhere.
    for key in ("ARW_SERVER", "ARW_ADMIN_TOKEN", "ARW_PORT"):
        monkeypatch.delenv(key, raising=False)


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Runs ``arw-models --server <live> ARGV`` in-process: (exit code, stdout, stderr)."""

    def run(*argv: str, server: str | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--server", server or live.url, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def get(live: LiveServer, path: str) -> Any:
    return requests.get(live.url + path, timeout=5).json()


def test_a_download_completes_and_installs_the_file(live: LiveServer, origin: Origin, cli: Cli) -> None:
    res = origin.add("/tiny.gguf", payload(300 * KiB, seed=1))
    code, out, err = cli("download", "tiny", origin.url("/tiny.gguf"), "--sha256", res.sha256.upper())
    assert code == 0, err
    assert (Path(models_dir(live.app)) / "tiny.gguf").read_bytes() == res.data
    [model] = get(live, "/models")["items"]
    assert (model["id"], model["sha256"], model["status"]) == ("tiny", res.sha256, "available")
    assert out.splitlines()[-1] == f"tiny: complete: tiny.gguf (300.0 KiB, sha256 {res.sha256[:12]})"
    assert out.count("complete") == 1
    # Not a terminal: plain lines only, no carriage returns or escape sequences.
    assert not re.search(r"[\r\x1b]", out)

    # Asked again: already installed, nothing fetched, still a success.
    before = len(origin.requests_for("/tiny.gguf"))
    code, out, _ = cli("download", "tiny", origin.url("/tiny.gguf"))
    assert code == 0 and "already installed" in out
    assert len(origin.requests_for("/tiny.gguf")) == before


def test_a_wrong_sha256_fails_with_its_code_and_installs_nothing(live: LiveServer, origin: Origin, cli: Cli) -> None:
    res = origin.add("/bad.gguf", payload(200 * KiB, seed=2))
    code, _, err = cli("download", "bad", origin.url("/bad.gguf"), "--sha256", "0" * 64)
    assert code == 1
    assert f"bad: checksum-mismatch: checksum mismatch (expected {'0' * 64}, got {res.sha256})" in err
    assert get(live, "/models")["items"] == []
    assert listing(live.app) == []


def test_refused_input_prints_the_problem_code_and_detail(live: LiveServer, cli: Cli) -> None:
    code, out, err = cli("download", "x", "file:///etc/passwd")
    assert code == 1 and out == ""
    assert err == "arw-models: invalid-url: url must use http or https\n"
    code, out, err = cli("--json", "download", "../x", "http://127.0.0.1:9/x")
    assert code == 1
    doc = json.loads(out)
    assert (doc["status"], doc["code"]) == (400, "invalid-id")
    assert err.startswith("arw-models: invalid-id: ")


def test_download_json_is_one_object_per_line_as_events_arrive(live: LiveServer, origin: Origin, cli: Cli) -> None:
    res = origin.add("/j.gguf", payload(512 * KiB, seed=3), throttle=2048 * KiB)
    # Options after the command work too.
    code, out, _ = cli("download", "j", origin.url("/j.gguf"), "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["id"] == "j" and lines[0]["status"] in ("queued", "started")  # the POST's answer
    statuses = [line["status"] for line in lines[1:]]
    assert statuses[0] == "started" and statuses[-1] == "complete"
    assert "downloading" in statuses
    downloaded = [line["downloaded"] for line in lines if line["status"] == "downloading"]
    assert downloaded == sorted(downloaded)
    assert all(line["total"] == len(res.data) for line in lines if line["status"] == "downloading")
    assert lines[-1]["sha256"] == res.sha256 and lines[-1]["bytes"] == len(res.data)


def test_list_and_rm(live: LiveServer, origin: Origin, cli: Cli) -> None:
    code, out, _ = cli("list")
    assert (code, out) == (0, "no models installed\n")
    res = origin.add("/listed.gguf", payload(1536 * KiB, seed=4))
    assert cli("download", "listed", origin.url("/listed.gguf"))[0] == 0

    code, out, _ = cli("list")
    header, row = out.splitlines()
    assert header.split() == ["ID", "FILE", "SIZE", "SHA256", "STATUS", "PATH"]
    assert row.split() == ["listed", "listed.gguf", "1.5", "MiB", res.sha256[:12], "available",
                           os.path.join(models_dir(live.app), "listed.gguf")]
    code, out, _ = cli("list", "--json")
    assert [m["id"] for m in json.loads(out)["items"]] == ["listed"]

    code, out, _ = cli("rm", "listed")
    assert (code, out) == (0, "listed: removed\n")
    assert listing(live.app) == [] and get(live, "/models")["items"] == []
    code, _, err = cli("rm", "listed")
    assert code == 1 and err.startswith("arw-models: unknown-model: ")


def test_jobs_pause_resume_and_cancel_do_what_they_say(live: LiveServer, origin: Origin, cli: Cli) -> None:
    res = origin.add("/slow.gguf", payload(1024 * KiB, seed=5), stall_after=256 * KiB, stalls=2)
    watch = Watch(live.app)
    try:
        requests.post(live.url + "/models/download", json={"id": "slow", "url": origin.url("/slow.gguf")},
                      timeout=5).raise_for_status()
        assert res.stalled.wait(5)
        watch.until(lambda e: e.payload.get("id") == "slow" and e.payload.get("downloaded") == 256 * KiB)
        code, out, _ = cli("jobs")
        header, row = out.splitlines()
        assert header.split() == ["ID", "STATUS", "PROGRESS", "DOWNLOADED"]
        assert row.split() == ["slow", "downloading", "25%", "256.0", "KiB", "/", "1.0", "MiB"]

        code, out, _ = cli("pause", "slow")
        assert (code, out) == (0, "slow: paused at 256.0 KiB\n")
        assert get(live, "/models/downloads/slow")["status"] == "paused"
        assert os.path.getsize(part(live.app, "slow")) == 256 * KiB
        code, out, _ = cli("jobs", "--json")
        assert [(j["id"], j["status"]) for j in json.loads(out)["items"]] == [("slow", "paused")]

        res.stalled.clear()
        code, out, _ = cli("resume", "slow")
        assert (code, out) == (0, "slow: resumed\n")
        assert res.stalled.wait(5)  # the second stall: it continued from 256 KiB
        assert origin.requests_for("/slow.gguf")[-1].range == f"bytes={256 * KiB}-"

        code, out, _ = cli("cancel", "slow")
        assert (code, out) == (0, "slow: canceled\n")
        watch.status("slow", "canceled")
        assert listing(live.app) == []
        code, _, err = cli("pause", "slow")
        assert code == 1 and err.startswith("arw-models: no-active-download: ")
    finally:
        watch.close()


def test_the_token_comes_from_the_environment(make_app: Callable[..., Any], origin: Origin,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    server = LiveServer(make_app(ARW_ADMIN_TOKEN="s3cret"))
    try:
        origin.add("/t.gguf", payload(64 * KiB, seed=6))
        argv = ["--server", server.url, "download", "t", origin.url("/t.gguf")]
        assert main(argv) == 1
        assert "arw-models: missing-token: " in capsys.readouterr().err
        monkeypatch.setenv("ARW_ADMIN_TOKEN", "s3cret")
        assert main(argv) == 0
        assert "t: complete" in capsys.readouterr().out
    finally:
        server.close()


def test_the_server_comes_from_arw_server_else_arw_port(live: LiveServer, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ARW_SERVER", live.url.removeprefix("http://"))  # a scheme is optional
    assert main(["list"]) == 0
    monkeypatch.delenv("ARW_SERVER")
    monkeypatch.setenv("ARW_PORT", str(live.server.server_port))
    assert main(["list"]) == 0
    assert capsys.readouterr().out == "no models installed\n" * 2


def test_no_service_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    for argv in (["list"], ["download", "m", "http://127.0.0.1:9/m"], ["events"], ["pause", "m"]):
        assert main(["--server", nowhere, *argv]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.count("\n") == 1 and err.startswith(f"arw-models: no arw-models service answers at {nowhere}")


@responses.activate
def test_download_sends_what_it_was_given_and_the_token(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ARW_ADMIN_TOKEN", " tok ")
    frames = ('event: service.connected\ndata: {"payload": {"last_event_id": 7}}\n\n'
              'id: 8\nevent: Models.DownloadProgress\ndata: {"payload": {"id": "other", "status": "error"}}\n\n'
              'id: 9\nevent: Models.DownloadProgress\ndata: {"payload": {"id": "m", "status": "complete"}}\n\n')
    responses.get("http://svc/events", body=frames, content_type="text/event-stream")
    responses.post("http://svc/models/download", json={"id": "m", "status": "queued"}, status=202)
    assert main(["--server", "http://svc/", "download", "m", "https://o/m.gguf", "--rate-limit", "1000",
                 "--provider", "hf", "--sha256", "a" * 64]) == 0
    stream, post = (call.request for call in responses.calls)
    assert stream.params == {"prefix": "Models."}
    assert json.loads(post.body) == {"id": "m", "url": "https://o/m.gguf", "sha256": "a" * 64,
                                     "provider": "hf", "rate_limit": 1000}
    assert post.headers["Authorization"] == stream.headers["Authorization"] == "Bearer tok"
    assert "m: complete" in capsys.readouterr().out  # the other job's error is not this one's


@responses.activate
def test_download_sends_gated_headers_and_never_prints_them(capsys: pytest.CaptureFixture[str]) -> None:
    frames = ('event: service.connected\ndata: {"payload": {"last_event_id": 7}}\n\n'
              'id: 9\nevent: Models.DownloadProgress\ndata: {"payload": {"id": "m", "status": "complete"}}\n\n')
    responses.get("http://svc/events", body=frames, content_type="text/event-stream")
    responses.post("http://svc/models/download", json={"id": "m", "status": "queued"}, status=202)
    assert main(["--server", "http://svc/", "download", "m", "hf://o/r/m.gguf@v1", "-H", "Authorization: Bearer s3cret",
                 "--header", "X-Team:  blue "]) == 0
    post = responses.calls[1].request
    assert json.loads(post.body) == {"id": "m", "url": "hf://o/r/m.gguf@v1",
                                     "headers": {"Authorization": "Bearer s3cret", "X-Team": "blue"}}
    out, err = capsys.readouterr()
    assert "s3cret" not in out + err


def test_a_malformed_header_is_refused_without_quoting_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--server", "http://svc/", "download", "m", "https://o/m.gguf", "-H", "Bearer-s3cret"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "NAME: VALUE" in err and "s3cret" not in err


# Subprocesses: Ctrl-C, a terminal, and streams that break.

def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ARW_")}


# `python -m arw_models.client.cli ARGV`, with Ctrl-C as at a terminal even when the tests
# themselves run where SIGINT is ignored (a shell's background job), which a child
# would inherit.
RUN_CLI = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           "sys.argv[0] = 'arw-models'; runpy.run_module('arw_models.client.cli', run_name='__main__', alter_sys=True)")


class Proc:
    """The CLI as a subprocess; its output read with deadlines, never left running."""

    def __init__(self, argv: list[str], **popen: Any) -> None:
        popen.setdefault("stdin", subprocess.DEVNULL)
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        self.proc = subprocess.Popen([sys.executable, "-c", RUN_CLI, *argv], cwd=ROOT, env=cli_env(),
                                     start_new_session=True, **popen)
        self.out = b""

    def read_until(self, fd: int, done: Callable[[bytes], bool], timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while not done(self.out):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not seen within {timeout}s; got {self.out!r}")
            if select.select([fd], [], [], left)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # a pty whose other side has closed
                    chunk = b""
                if not chunk:
                    break
                self.out += chunk
        return self.out

    def finish(self, timeout: float = 10.0) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, (self.out + (out or b"")).decode(), (err or b"").decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(*argv: str, **popen: Any) -> Proc:
        started.append(Proc(list(argv), **popen))
        return started[-1]

    yield start
    for p in started:
        p.close()


def test_ctrl_c_with_on_interrupt_pause_leaves_a_paused_job(live: LiveServer, origin: Origin,
                                                            procs: Callable[..., Proc]) -> None:
    res = origin.add("/ctrl-c.gguf", payload(1024 * KiB, seed=7), stall_after=384 * KiB)
    watch = Watch(live.app)
    try:
        p = procs("--server", live.url, "download", "c", origin.url("/ctrl-c.gguf"), "--on-interrupt", "pause")
        assert res.stalled.wait(10)
        watch.until(lambda e: e.payload.get("id") == "c" and e.payload.get("downloaded") == 384 * KiB)
        p.proc.send_signal(signal.SIGINT)
        code, out, err = p.finish()
    finally:
        watch.close()
    assert code == 130, err
    assert "Traceback" not in err
    assert out.splitlines()[-1] == "c: paused at 384.0 KiB; `arw-models resume c` continues it"
    assert get(live, "/models/downloads/c")["status"] == "paused"
    assert os.path.getsize(part(live.app, "c")) == 384 * KiB


def test_ctrl_c_without_a_terminal_leaves_the_download_running(live: LiveServer, origin: Origin,
                                                               procs: Callable[..., Proc]) -> None:
    res = origin.add("/detach.gguf", payload(512 * KiB, seed=8), stall_after=128 * KiB)
    watch = Watch(live.app)
    try:
        p = procs("--json", "--server", live.url, "download", "d", origin.url("/detach.gguf"))
        assert res.stalled.wait(10)
        p.proc.send_signal(signal.SIGINT)
        code, out, _ = p.finish()
        assert code == 130
        assert json.loads(out.splitlines()[-1]) == {"id": "d", "status": "detached"}
        assert get(live, "/models/downloads/d")["status"] in ("started", "downloading")
        res.release.set()
        assert watch.terminal("d")["status"] == "complete"
    finally:
        watch.close()


def test_on_a_terminal_a_progress_bar_is_redrawn_in_place(live: LiveServer, origin: Origin,
                                                         procs: Callable[..., Proc]) -> None:
    res = origin.add("/bar.gguf", payload(768 * KiB, seed=9), throttle=1024 * KiB)
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        p = procs("--server", live.url, "download", "bar", origin.url("/bar.gguf"),
                  stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        slave = -1
        text = p.read_until(master, lambda b: b"complete: bar.gguf" in b and b.endswith(b"\n")).decode()
        assert p.proc.wait(10) == 0
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    redraws = text.split("\r")
    bars = [line for line in redraws if re.match(r"bar +\d+% \|[█░#-]+\| ", line)]
    percents = [int(re.match(r"bar +(\d+)%", line).group(1)) for line in bars]  # type: ignore[union-attr]
    assert len(bars) >= 3 and percents == sorted(percents) and percents[-1] == 100
    assert any(0 < pc < 100 for pc in percents)  # seen while it ran, not only at the end
    assert re.search(r"[KM]iB/s  ETA \d+s", text)
    assert all(len(line.split("\x1b[K")[0]) < 100 for line in bars)  # fits the terminal's width
    assert f"bar: complete: bar.gguf (768.0 KiB, sha256 {res.sha256[:12]})" in text


def test_events_prints_one_json_object_per_line_for_the_prefixes_asked(live: LiveServer,
                                                                       procs: Callable[..., Proc]) -> None:
    p = procs("--server", live.url, "events", "--json", "--prefix", "Models.", "--prefix", "Test.")
    assert p.proc.stdout is not None
    fd = p.proc.stdout.fileno()
    first = json.loads(p.read_until(fd, lambda b: b"\n" in b).split(b"\n")[0])
    assert first["kind"] == "service.connected" and first["event_id"] is None
    hub = ArwModels.state(live.app).hub
    hub.publish("Other.Thing", {"n": 1})
    published = [hub.publish("Models.Changed", {"op": "add", "id": "e"}), hub.publish("Test.Done", {"n": 2})]
    p.read_until(fd, lambda b: b"Test.Done" in b)
    p.proc.send_signal(signal.SIGINT)
    code, out, err = p.finish()
    assert code == 0 and "Traceback" not in err
    lines = [json.loads(line) for line in out.splitlines()[1:]]
    assert [(e["event_id"], e["kind"], e["payload"]) for e in lines] == [
        (e.id, e.kind, e.payload) for e in published]


class CuttingProxy:
    """A TCP forwarder to the service that can cut every open connection and turn
    new ones away, as a restarted proxy or a flaky network would."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.generation = 0
        self.refusing = threading.Event()
        self.closing = threading.Event()
        self.open = 0
        self.cond = threading.Condition()
        # When each connection came and whether it was turned away; the first bytes
        # of each request let through (its request line and headers).
        self.attempts: list[tuple[float, bool]] = []
        self.heads: list[bytes] = []
        proxy = self

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with proxy.cond:
                    proxy.attempts.append((time.monotonic(), proxy.refusing.is_set()))
                    proxy.cond.notify_all()
                    if proxy.refusing.is_set():
                        return
                    generation = proxy.generation
                    proxy.open += 1
                try:
                    with socket.create_connection(proxy.target, timeout=5) as up:
                        pair = {self.request: up, up: self.request}
                        first = True
                        while generation == proxy.generation and not proxy.closing.is_set():
                            for s in select.select(list(pair), [], [], 0.05)[0]:
                                data = s.recv(65536)
                                if not data:
                                    return
                                if s is self.request and first:
                                    first = False
                                    with proxy.cond:
                                        proxy.heads.append(data)
                                pair[s].sendall(data)
                finally:
                    with proxy.cond:
                        proxy.open -= 1
                        proxy.cond.notify_all()

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Pipe)
        self.server.daemon_threads = False
        self.server.block_on_close = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="test-proxy")
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def cut(self) -> None:
        """Drops every open connection (returns once they are closed) and refuses new ones."""
        with self.cond:
            self.refusing.set()
            self.generation += 1
            assert self.cond.wait_for(lambda: self.open == 0, timeout=5)

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_download_survives_a_dropped_event_stream(make_app: Callable[..., Any], origin: Origin,
                                                  procs: Callable[..., Proc]) -> None:
    live = LiveServer(make_app(ARW_EVENTS_RETRY_MS=50))
    proxy = CuttingProxy(live.server.server_port)
    watch = Watch(live.app)
    try:
        res = origin.add("/drop.gguf", payload(512 * KiB, seed=10), stall_after=128 * KiB)
        p = procs("--json", "--server", proxy.url, "download", "r", origin.url("/drop.gguf"))
        assert res.stalled.wait(10)
        proxy.cut()
        # The rest of the job happens while the CLI has no stream...
        res.release.set()
        assert watch.terminal("r")["status"] == "complete"
        proxy.refusing.clear()
        # ...and reaches it through the replay its reconnect asks for.
        code, out, err = p.finish(timeout=15)
        assert code == 0, err
        last = json.loads(out.splitlines()[-1])
        assert (last["status"], last["sha256"]) == ("complete", res.sha256)
    finally:
        watch.close()
        proxy.close()
        live.close()


def test_events_reconnects_with_the_last_id_after_the_retry_and_shows_each_event_once(
        make_app: Callable[..., Any], procs: Callable[..., Proc]) -> None:
    retry_ms = 200
    live = LiveServer(make_app(ARW_EVENTS_RETRY_MS=retry_ms))
    proxy = CuttingProxy(live.server.server_port)
    try:
        hub = ArwModels.state(live.app).hub
        p = procs("--server", proxy.url, "events", "--json", "--prefix", "Test.")
        assert p.proc.stdout is not None
        fd = p.proc.stdout.fileno()
        p.read_until(fd, lambda b: b"service.connected" in b and b.endswith(b"\n"))
        before = [hub.publish("Test.Before", {"n": n}) for n in range(3)]
        p.read_until(fd, lambda b: b.count(b"Test.Before") == 3 and b.endswith(b"\n"))
        proxy.cut()
        # Published while the stream is down: the reconnect must ask for them.
        away = [hub.publish("Test.Away", {"n": n}) for n in range(3)]
        with proxy.cond:
            assert proxy.cond.wait_for(lambda: sum(refused for _, refused in proxy.attempts) >= 3, timeout=10)
            proxy.refusing.clear()
        after = hub.publish("Test.After", {"n": 0})
        p.read_until(fd, lambda b: b"Test.After" in b and b.endswith(b"\n"))
        p.proc.send_signal(signal.SIGINT)
        code, out, err = p.finish()
    finally:
        proxy.close()
        live.close()
    assert code == 0 and "Traceback" not in err
    shown = [json.loads(line) for line in out.splitlines()[1:]]
    # Every event once, in order: no gap, no duplicate.
    assert [(e["event_id"], e["kind"]) for e in shown] == [(e.id, e.kind) for e in (*before, *away, after)]
    # The reconnect named the last event seen...
    (head,) = [h for h in proxy.heads[1:] if b"GET /events" in h]
    assert re.search(rb"(?im)^Last-Event-ID: %d\r$" % before[-1].id, head), head
    # ...and waited the pause the service asked for (its retry:) between tries.
    tries = [at for at, _ in proxy.attempts[1:]]
    assert all(b - a >= retry_ms / 1000 * 0.9 for a, b in itertools.pairwise(tries)), tries


class Terminal(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def test_the_bar_fits_a_narrow_terminal_and_leaves_no_thread_behind() -> None:
    threads = set(threading.enumerate())
    out = Terminal()
    progress = Progress(out, "a-rather-long-model-id", terminal=True, width=lambda: 40)
    progress.update({"status": "started", "total": 4 * KiB * KiB})
    for done in (KiB * KiB, 3 * KiB * KiB):
        progress.update({"status": "downloading", "downloaded": done, "total": 4 * KiB * KiB,
                         "speed": 2 * KiB * KiB, "eta_s": 1.5, "segments": 4})
    progress.update({"status": "complete", "bytes": 4 * KiB * KiB})
    progress.end("done")
    assert set(threading.enumerate()) == threads  # no monitor thread
    text = out.getvalue()
    assert text.endswith("\ndone\n") and "\x1b" not in text
    redraws = text.removesuffix("\ndone\n").split("\r")[1:]
    assert len(redraws) >= 4 and all(len(line) < 40 for line in redraws), redraws
    assert [int(m.group(1)) for line in redraws if (m := re.match(r"a-rather-long-model-id +(\d+)%", line))][:4] \
        == [0, 25, 75, 100]
