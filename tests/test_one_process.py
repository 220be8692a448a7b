"""One process per state directory, under any command line: plain ``gunicorn -w 2``,
``--preload``, ``-w 4``, the bundled configuration with ``-w 2``, a second instance;
and a restart while the previous holder is still exiting, which waits for the lock.

Also the job table, which keeps only the last ``ARW_JOBS_KEEP`` finished jobs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from arw_models import ArwModels, StateLockError
from arw_models.store.lock import StateLock
from arw_models.store.storage import StateDir

from .support.app import Watch, post_download
from .support.helpers import cancel
from .support.origin import payload
from .support.servers import CONF, Gunicorn, free_port

KiB = 1024


def plain(*argv: str) -> Callable[[int], list[str]]:
    """A command line as people type it: no configuration file, so also an explicit
    bind (gunicorn's default is port 8000) and no control socket."""
    return lambda port: ["-b", f"127.0.0.1:{port}", "--no-control-socket", *argv]


@pytest.mark.parametrize("argv", [
    plain("-w", "2", "wsgi:app"),
    plain("--preload", "-w", "2", "wsgi:app"),
    plain("-w", "4", "-k", "gthread", "--threads", "4", "wsgi:app"),
    plain("-w", "2", "arw_models:create_app()"),
], ids=["w2", "preload-w2", "w4-gthread", "factory-w2"])
def test_several_workers_on_one_state_dir_stop_the_server_at_boot(
    gunicorns: Callable[..., Gunicorn], tmp_path: Path, argv: Callable[[int], list[str]],
) -> None:
    state = tmp_path / "state"
    port = free_port()
    # A long lock wait: a sibling worker is a conflict at once, not something to wait for.
    g = gunicorns("many-workers", state, argv=argv(port), ARW_LOCK_WAIT_SECS="30")
    started = time.monotonic()
    code = g.wait_exit(15)
    elapsed = time.monotonic() - started
    out = g.output()
    assert code != 0, out
    assert elapsed < 10, f"took {elapsed:.1f}s: the sibling worker waited for the lock\n{out}"
    assert str(state) in out and str(state / "arw-models.lock") in out, out
    assert "one process serves one state directory" in out, out
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    # Nothing holds the directory once the last worker is gone: a correct start takes it.
    lock = StateLock(StateDir(str(state)))
    lock.acquire(wait=10)
    lock.release()


def test_the_bundled_configuration_refuses_more_than_one_worker_before_binding(
    gunicorns: Callable[..., Gunicorn], tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    g = gunicorns("conf-w2", state, argv=["-c", CONF, "-w", "2", "wsgi:app"])
    code = g.wait_exit(10)
    out = g.output()
    assert code != 0 and "refusing to start 2 workers" in out, out
    assert str(state / "arw-models.lock") in out, out
    assert "Listening at" not in out  # refused before binding
    assert not (state / "arw-models.lock").exists()


class Holder:
    """The previous server, still on its way out: its worker (a child of its master)
    holds the state lock until :meth:`go`."""

    def __init__(self, state: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", (
                "import os, sys; from arw_models.store.lock import StateLock; from arw_models.store.storage import StateDir\n"
                "pid = os.fork()\n"
                "if pid:\n"
                "    os.waitpid(pid, 0); sys.exit(0)\n"
                f"lock = StateLock(StateDir({str(state)!r})); lock.acquire()\n"
                "print('held', os.getpid(), flush=True); sys.stdin.readline()\n"
            )],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        word, self.pid = self.proc.stdout.readline().split()
        assert word == "held"

    def go(self) -> None:
        if self.proc.returncode is None:
            self.proc.communicate("go\n", timeout=10)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Holder]:
    h = Holder(tmp_path / "state")
    try:
        yield h
    finally:
        h.go()


@pytest.mark.parametrize("argv", [
    ["-c", CONF, "wsgi:app"],
    ["--preload", "-c", CONF, "wsgi:app"],
], ids=["conf", "conf-preload"])
def test_a_start_while_the_previous_holder_is_exiting_waits_for_the_lock(
    gunicorns: Callable[..., Gunicorn], tmp_path: Path, argv: list[str], holder: Holder,
) -> None:
    state = tmp_path / "state"
    g = gunicorns("restart", state, argv=argv, ARW_LOCK_WAIT_SECS="20")
    deadline = time.monotonic() + 15
    while "waiting up to" not in g.output():  # the new worker saw the lock taken
        assert g.proc.poll() is None, g.output()
        assert time.monotonic() < deadline, g.output()
        try:
            g.proc.wait(0.05)
        except subprocess.TimeoutExpired:
            pass
    assert f"pid {holder.pid}" in g.output()
    holder.go()
    g.wait_ready()
    assert requests.get(g.url + "/probe", timeout=5).json()["state_dir"] == str(state)
    assert (state / "arw-models.lock").read_text().split()[1] not in (holder.pid, str(g.proc.pid))


def test_a_holder_that_stays_is_refused_after_the_wait(tmp_path: Path, holder: Holder) -> None:
    dirs = StateDir(str(tmp_path / "state"))
    started = time.monotonic()
    with pytest.raises(StateLockError) as refused:
        StateLock(dirs).acquire(wait=0.3)
    assert time.monotonic() - started >= 0.3
    assert dirs.lock_path in str(refused.value) and f"pid {holder.pid}" in str(refused.value)


def test_the_same_process_is_refused_without_waiting(tmp_path: Path) -> None:
    dirs = StateDir(str(tmp_path / "state"))
    first = StateLock(dirs)
    first.acquire()
    try:
        started = time.monotonic()
        with pytest.raises(StateLockError):
            StateLock(dirs).acquire(wait=30)
        assert time.monotonic() - started < 5
    finally:
        first.release()


def test_claim_takes_the_lock_without_starting_and_shutdown_gives_it_back(make_app: Callable[..., Any]) -> None:
    app, other = make_app(), make_app()
    ArwModels.claim(app)
    assert not app.extensions["arw_models"].started
    with pytest.raises(StateLockError):
        ArwModels.claim(other)
    assert app.test_client().get("/healthz").json == {"ok": True}  # the claim is the start's lock
    app.extensions["arw_models"].shutdown()
    ArwModels.claim(other)
    other.extensions["arw_models"].shutdown()


# -- the job table ------------------------------------------------------------------------


def test_only_the_last_finished_jobs_are_kept(service: Any, origin: Any) -> None:
    app, client, watch = service(ARW_JOBS_KEEP=3)
    manager = ArwModels.state(app).manager
    for n in range(5):
        assert post_download(client, f"m{n}", origin.url(f"/missing-{n}")).status_code == 202
        assert watch.terminal(f"m{n}")["code"] == "http-status"
        assert manager.wait(f"m{n}", 5)
    assert [client.get(f"/models/downloads/m{n}").status_code for n in range(5)] == [404, 404, 200, 200, 200]
    assert client.get("/models/downloads/m4").json["status"] == "error"
    # A new job of a kept id counts as the newest: after one more, m2 stays and m3 goes.
    for n in (2, 5):
        assert post_download(client, f"m{n}", origin.url(f"/missing-{n}")).status_code == 202
        watch.terminal(f"m{n}")
        assert manager.wait(f"m{n}", 5)
    assert [client.get(f"/models/downloads/m{n}").status_code for n in range(2, 6)] == [200, 404, 200, 200]


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_stays_flat_under_many_distinct_ids(make_app: Callable[..., Any], origin: Any) -> None:
    # One slot, held by a stalled download: every other job waits as queued and is
    # canceled there, so 20,000 jobs cost no network and each one ends.
    app = make_app(ARW_MODELS_MAX_CONC=1, ARW_JOBS_KEEP=1000, ARW_EVENTS_REPLAY=256, ARW_DL_IDLE_TIMEOUT_SECS=60)
    client = app.test_client()
    res = origin.add("/hold.gguf", payload(256 * KiB, seed=3), stall_after=KiB)
    watch = Watch(app, prefixes=("Test.",))  # reads nothing: its queue must not hold 40,000 events
    try:
        assert post_download(client, "hold", origin.url("/hold.gguf")).status_code == 202
        assert res.stalled.wait(10)
        url = origin.url("/never")
        manager = ArwModels.state(app).manager  # straight to the manager: 40,000 HTTP requests would be slow
        baseline = 0
        for n in range(20_000):
            if n == 1_000:
                baseline = _rss_kib()
            assert manager.submit(f"id-{n}", url, None, "local")[1]["status"] == "queued"
            assert manager.cancel(f"id-{n}")["status"] == "canceled"
        growth = _rss_kib() - baseline
        assert growth < 5 * 1024, f"RSS grew by {growth} KiB after the first 1,000 jobs"
        assert client.get("/models/downloads/id-0").status_code == 404
        assert client.get("/models/downloads/id-19999").json["status"] == "canceled"
    finally:
        res.release.set()
        cancel(client, "hold")
        watch.close()
