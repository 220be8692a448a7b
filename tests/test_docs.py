"""The README's example runs as written: its shell commands (the lines of its "One
download" section that start with ``$``) are run for real, in a temporary
directory: the origin it describes (Python's ``http.server`` on a loopback port),
the service as ``make run`` starts it (the Makefile's own gunicorn command line),
the event stream with curl, the POST with curl, the listing. Only the ports are
changed, to free ones, so that nothing here collides with a service already running.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support.servers import ROOT, Gunicorn, free_port

README = ROOT / "README.rst"
ORIGIN_PORT, SERVICE_PORT = "8000", "8090"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{title}\n{'=' * len(title)}\n")
    following = re.search(r"\n[^\n]+\n=+\n", text[start + len(title) + 2:])
    return text[start:start + len(title) + 2 + following.start()] if following else text[start:]


def commands() -> list[str]:
    """The ``$`` lines of the README's example, in order."""
    return [line.strip()[2:] for line in section("One download").splitlines() if line.strip().startswith("$ ")]


def make_run_argv() -> list[str]:
    """What ``make run`` runs after ``gunicorn``, read from the Makefile's recipe."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\nrun:"):]
    found = re.search(r"\$\(BIN\)/gunicorn ([^\n]+)", recipe)
    assert found, "the Makefile's run target starts gunicorn"
    return shlex.split(found.group(1))


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """A bounded connect-retry; fails at once if the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port} after {timeout}s"
            try:
                proc.wait(0.05)  # the pause between two connects also notices an exit
            except subprocess.TimeoutExpired:
                pass


class Lines:
    """The stdout of a process, line by line, read on a thread of its own."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream: object) -> None:
        with stream:  # type: ignore[attr-defined]
            for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
                self.queue.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.queue.put(None)

    def until(self, wanted: re.Pattern[str], timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"the stream ended before {wanted.pattern}"
            if wanted.search(line):
                return line


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started in a session of their own, killed (with their children) at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(10)


def test_the_readme_example_downloads_a_file(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    steps = commands()
    assert any(s == "make run" for s in steps) and any("http.server" in s for s in steps)
    assert any(s.startswith("curl -N ") for s in steps) and any("-X POST" in s for s in steps)
    origin_port, service = free_port(), None
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ARW_", "GUNICORN"))}
    events: Lines | None = None
    readers: list[Lines] = []
    posted: dict[str, object] = {}
    listed = ""
    try:
        for step in steps:
            if step == "make run":
                service = Gunicorn(tmp_path, "service", tmp_path / "state", argv=make_run_argv())
                service.wait_ready()
                continue
            assert service is not None or "curl" not in step, f"{step!r} comes before the service"
            command = re.sub(rf"\b{ORIGIN_PORT}\b", str(origin_port), step)
            if service is not None:
                command = re.sub(rf"\b{SERVICE_PORT}\b", str(service.port), command)
            if "http.server" in step or step.startswith("curl -N "):
                stream = step.startswith("curl -N ")
                proc = subprocess.Popen(["bash", "-c", "exec " + command], cwd=tmp_path, env=environ,
                                        stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE if stream else subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
                processes.append(proc)
                if not stream:
                    wait_listening(origin_port, proc)
                else:
                    events = Lines(proc)
                    readers.append(events)
                    events.until(re.compile(r"^event: service\.connected$"))  # subscribed before the POST
                continue
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=environ, capture_output=True,
                                  text=True, timeout=10, check=False)
            assert done.returncode == 0, (step, done.stderr)
            if "-X POST" in step:
                posted = json.loads(done.stdout)
                assert events is not None, "the README watches the events before it posts"
                events.until(re.compile(r'"kind":"Models\.DownloadProgress".*"status":"complete"'))
            elif "/models" in step:
                listed = done.stdout
    finally:
        if service is not None:
            service.close()
        for proc in processes:
            os.killpg(proc.pid, signal.SIGKILL)
        for reader in readers:
            reader.thread.join(10)  # the killed curl's stdout ends, and so does its reader

    assert posted["status"] == "started" and posted["id"] == "tiny", posted
    models = json.loads(listed)["items"]
    assert [(m["id"], m["status"], m["file"]) for m in models] == [("tiny", "available", "tiny.gguf")]
    installed = tmp_path / "state" / "models" / "tiny.gguf"
    assert os.path.realpath(models[0]["path"]) == os.path.realpath(installed)
    assert installed.read_bytes() == (tmp_path / "origin" / "tiny.gguf").read_bytes()


def test_the_readme_is_short_and_says_how_to_run_and_test() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    assert "make run" in text and "make test" in text and "docs/" in text
