"""Signals for a host app: the example of docs/embedding.rst runs as written against a real
download, and its receiver's line is seen; a completed download's payload says
where the file is."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

from arw_models import ArwModels, signals

from .conftest import Watch, post_download
from .origin import Origin, payload

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
