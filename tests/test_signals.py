"""Signals for a host app: the example of docs/embedding.rst runs as written against a real
download, and its receiver's line is seen; a completed download's payload says
where the file is. Every signal carries the app and the event's payload, and a
receiver that raises breaks neither the download nor the other receivers."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from arw_models import ArwModels, signals
from arw_models.service.manager import CHANGED, PROGRESS

from .support.app import Watch, post_download
from .support.origin import Origin, payload

EMBEDDING = Path(__file__).resolve().parent.parent / "docs" / "embedding.rst"


def documented_example(section: str) -> str:
    """The first literal block (after a line ending in ``::``) of a section of docs/embedding.rst."""
    text = EMBEDDING.read_text(encoding="utf-8")
    start = text.index(f"\n{section}\n{'=' * len(section)}\n")
    lines = text[start:].splitlines()
    begin = next(i for i, line in enumerate(lines) if line.endswith("::")) + 1
    block: list[str] = []
    for line in lines[begin:]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip() + "\n"


# Runs after the page's block, in the same module: a real download through the
# host app, until its last signal has been sent.
HARNESS = textwrap.dedent("""
    import sys
    from arw_models import ArwModels
    app.config.update(ARW_STATE_DIR=sys.argv[1], ARW_DL_RESUME_ON_START=False)
    answer = app.test_client().post("/ai/models/download", json={"id": "m", "url": sys.argv[2]})
    assert answer.status_code == 202, answer.get_data()
    state = ArwModels.state(app)
    assert state.observer.wait_for("m", "complete", timeout=10)
    state.shutdown()  # waits for the transfer thread, which sends the signal after the event
""")


def test_the_documented_example_runs_and_its_receiver_is_heard(tmp_path: Path, origin: Origin) -> None:
    example = documented_example("Inside your own Flask app")
    assert "@signals.download_completed.connect_via(app)" in example
    origin.add("/m.gguf", payload(10_000, seed=1))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ARW_")}
    state = tmp_path / "state"
    done = subprocess.run([sys.executable, "-c", example + HARNESS, str(state), origin.url("/m.gguf")],
                          check=False, env=environ, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    installed = os.path.join(state, "models", "m.gguf")
    # Flask's default handler: "[time] INFO in <module>: message", on stderr.
    assert re.search(rf"INFO in .*: model m ready at {re.escape(installed)}$", done.stderr, re.MULTILINE), done.stderr


def test_a_completed_download_says_where_its_file_is(make_app: Any, origin: Origin) -> None:
    app = make_app()
    got: list[dict[str, Any]] = []
    called = threading.Event()

    def receive(sender: Any, payload: dict[str, Any]) -> None:
        got.append(payload)
        called.set()

    data = origin.add("/dir/model.gguf", payload(5_000, seed=2))
    signals.download_completed.connect(receive, sender=app)
    watch = Watch(app)
    try:
        post_download(app.test_client(), "m", origin.url("/dir/model.gguf"), sha256=data.sha256)
        event = watch.terminal("m")
        assert called.wait(10)
    finally:
        watch.close()
        signals.download_completed.disconnect(receive, sender=app)
    (done,) = got
    assert done["file"] == "model.gguf"
    assert done["path"] == os.path.join(app.config["ARW_STATE_DIR"], "models", "model.gguf")
    assert os.path.isabs(done["path"])
    with open(done["path"], "rb") as fh:
        assert fh.read() == data.data
    assert event["path"] == done["path"]  # the event carries it too


KiB = 1024
MiB = 1024 * KiB


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


def test_receivers_that_call_back_into_the_service_do_not_deadlock(service: Any, origin: Origin) -> None:
    """Receivers run with no lock of the service held (docs/design.rst, "Concurrency"):
    ``download_queued``, ``download_paused`` and ``download_completed`` receivers list
    the jobs (the last one starts another download too), in their own thread and in
    another one they wait for."""
    app, client, watch = service(ARW_MODELS_MAX_CONC=1)
    manager = ArwModels.state(app).manager
    first = origin.add("/a.gguf", payload(256 * 1024, seed=3), stall_after=64 * 1024)
    second = origin.add("/b.gguf", payload(4_000, seed=4))
    third = origin.add("/c.gguf", payload(4_000, seed=5))
    heard: dict[str, list[str]] = {"queued": [], "paused": [], "complete": []}
    helpers: list[threading.Thread] = []

    def call_back(status: str, action: Any) -> None:
        action()  # in the receiver's own thread
        done = threading.Event()

        def other() -> None:  # in a thread the receiver waits for: it needs our locks free
            action()
            done.set()

        helper = threading.Thread(target=other)
        helpers.append(helper)
        helper.start()
        heard[status].append("returned" if done.wait(3) else "blocked")

    def on_queued(sender: Any, payload: dict[str, Any]) -> None:
        call_back("queued", manager.jobs)

    def on_paused(sender: Any, payload: dict[str, Any]) -> None:
        call_back("paused", manager.jobs)

    def on_completed(sender: Any, payload: dict[str, Any]) -> None:
        if payload["id"] == "a":
            call_back("complete", lambda: (manager.jobs(),
                                           manager.submit("c", origin.url("/c.gguf"), third.sha256, "local")))

    signals.download_queued.connect(on_queued, sender=app)
    signals.download_paused.connect(on_paused, sender=app)
    signals.download_completed.connect(on_completed, sender=app)
    try:
        post_download(client, "a", origin.url("/a.gguf"), sha256=first.sha256)
        assert first.stalled.wait(5)
        post_download(client, "b", origin.url("/b.gguf"), sha256=second.sha256)
        watch.status("b", "queued")
        assert client.post("/models/download/pause", json={"id": "b"}).status_code == 200
        first.release.set()
        assert watch.status("c", "complete")["sha256"] == third.sha256
    finally:
        first.release.set()
        signals.download_queued.disconnect(on_queued, sender=app)
        signals.download_paused.disconnect(on_paused, sender=app)
        signals.download_completed.disconnect(on_completed, sender=app)
        for helper in helpers:
            helper.join(10)
    # "b" was queued, and "c" (submitted while "a" still held the only slot) too.
    assert heard == {"queued": ["returned", "returned"], "paused": ["returned"], "complete": ["returned"]}
