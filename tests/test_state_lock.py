"""One service per state directory: a second app on the same directory is refused until
the first stops, and a second gunicorn exits naming the directory and the holder."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from arw_models import ArwModels, StateLockError

from .support.servers import Gunicorn


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
