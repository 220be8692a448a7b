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

from arw_models import signals

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
