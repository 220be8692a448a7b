"""Real gunicorn processes for tests: one master and its workers in their own process
group, output in a file, waited for by a bounded connect-retry, killed in ``close()``.
Only 127.0.0.1 is ever connected to."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

KiB = 1024
ROOT = Path(__file__).resolve().parents[2]
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
CONF = "python:arw_models.gunicorn_conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: a connection to it is refused."""
    return free_port()


class Gunicorn:
    """One gunicorn (master and worker in their own process group), output in a file."""

    def __init__(self, tmp_path: Path, name: str, state_dir: Path, argv: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"{name}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("ARW_", "GUNICORN"))}
        environ.update(
            ARW_STATE_DIR=str(state_dir),
            ARW_PORT=str(self.port),
            ARW_THREADS="4",
            ARW_MODELS_DISK_RESERVE_MB="0",
            ARW_DL_PROGRESS_INTERVAL_MS="20",
            ARW_DL_RETRY_BACKOFF_MS="1",
            ARW_DL_RETRY_BACKOFF_MAX_MS="20",
            ARW_DL_IDLE_TIMEOUT_SECS="5",
            ARW_DL_CHUNK_BYTES=str(64 * KiB),
            # Where gunicorn puts its control socket, should it open one.
            XDG_RUNTIME_DIR=str(tmp_path),
        )
        environ.update(env or {})
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        try:
            self.proc = subprocess.Popen(
                [GUNICORN, *(argv if argv is not None else ["-c", CONF, "wsgi:app"])],
                cwd=ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: close() kills the master and its worker
            )
        except BaseException:
            self._log.close()
            raise

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15.0) -> None:
        """A bounded connect-retry on /healthz; fails at once if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):  # not listening, or its worker still booting
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not answer within {timeout}s:\n{self.output()}")
            try:
                self.proc.wait(0.05)  # the pause between two connects also notices an exit
            except subprocess.TimeoutExpired:
                pass

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"gunicorn still runs after {timeout}s:\n{self.output()}") from None

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the master and any worker it left
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)
        self._log.close()


def plain(start: Callable[..., Gunicorn], name: str, state_dir: Path, *argv: str, **env: str) -> Gunicorn:
    """gunicorn as people type it, without the bundled configuration: ``argv`` (worker
    class, threads, the app) after an explicit loopback bind and no control socket.
    ARW_THREADS is left unset, as it would be on such a command line."""
    port = free_port()
    env.setdefault("ARW_THREADS", "")
    g = start(name, state_dir, argv=["-b", f"127.0.0.1:{port}", "--no-control-socket", *argv], **env)
    g.port, g.url = port, f"http://127.0.0.1:{port}"
    return g
