"""The bundled gunicorn configuration under real gunicorn processes: a remote bind is
refused without a token (or an explicit opt-in), loopback addresses are told apart,
and ``--preload`` serves a download.

Every subprocess writes its output to a file, is waited for by a bounded
connect-retry on ``/healthz`` (or by waiting for its exit), and is killed and
reaped in a ``finally``. Only 127.0.0.1 is ever connected to."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from .support.origin import payload
from .support.servers import CONF, Gunicorn, free_port
from .support.sse import SSEClient, is_status, read_frames_until

KiB = 1024


TOKEN = "adm1n-T0ken-zqv"


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
