"""A stop (SIGTERM) ends transfers promptly under any command line, not only under
the bundled gunicorn configuration, and leaves each ``.part`` resumable.

Real gunicorn processes started as people type them (no ``-c``), a paced local
origin, and a second process that resumes what the first left. Every process is
killed and reaped by the ``gunicorns`` fixture.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from arw_models.service.manager import PROGRESS

from .support.origin import payload
from .support.servers import Gunicorn, plain
from .support.sse import SSEClient, is_status, read_frames_until

KiB = 1024
MiB = 1024 * KiB


def wait_for_bytes(g: Gunicorn, model_id: str, at_least: int, timeout: float = 10.0) -> None:
    """Asks the service (one request after another, no pause) until the job has
    written ``at_least`` bytes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = requests.get(f"{g.url}/models/downloads/{model_id}", timeout=5)
        if r.status_code == 200 and r.json().get("downloaded", 0) >= at_least:
            return
        assert g.proc.poll() is None, g.output()
    raise AssertionError(f"{model_id} did not reach {at_least} bytes in {timeout}s:\n{g.output()}")


@pytest.mark.parametrize("worker", [
    ("-k", "gthread", "--threads", "8"),
    ("-k", "sync"),
], ids=["gthread", "sync"])
def test_sigterm_under_a_plain_command_line_stops_the_transfer_and_keeps_it_resumable(
    gunicorns: Callable[..., Gunicorn], origin: Any, tmp_path: Path, worker: tuple[str, ...],
) -> None:
    state = tmp_path / "state"
    # 8 s of transfer at this pace: a stop that waits for it cannot pass.
    res = origin.add("/big.gguf", payload(8 * MiB, seed=31), throttle=1 * MiB)
    url = origin.url("/big.gguf")
    first = plain(gunicorns, "first", state, *worker, "wsgi:app")
    first.wait_ready()
    stream = None
    if "gthread" in worker:
        # An open page's stream: the stop must not wait for it either.
        stream = SSEClient(first.url + "/events")
        assert stream.next().event == "service.connected"
    try:
        r = requests.post(first.url + "/models/download", json={"id": "big", "url": url, "sha256": res.sha256},
                          timeout=5)
        assert r.status_code == 202, r.text
        wait_for_bytes(first, "big", 128 * KiB)
        sent = time.monotonic()
        os.kill(first.proc.pid, signal.SIGTERM)
        first.wait_exit(10)
        elapsed = time.monotonic() - sent
    finally:
        if stream is not None:
            stream.close()
    # About 2 s on an idle machine; the bound leaves room for a loaded one (a whole
    # suite on two cores) and stays far below the 8 s the transfer would run on.
    assert elapsed < 5, f"the stop took {elapsed:.1f}s:\n{first.output()}"
    assert "Traceback" not in first.output(), first.output()
    # The origin was not read to the end: the transfer stopped with the process.
    assert origin.bytes_sent("/big.gguf") < len(res.data)

    part, sidecar = state / "models" / "big.part", state / "models" / "big.part.json"
    assert part.exists() and sidecar.exists()
    kept = part.stat().st_size
    assert 128 * KiB <= kept < len(res.data)
    assert part.read_bytes() == res.data[:kept]
    assert json.loads(sidecar.read_text())["url"] == url

    res.throttle = None
    before = len(origin.requests_for("/big.gguf"))
    second = gunicorns("second", state)  # the bundled configuration resumes at boot
    second.wait_ready()
    with SSEClient(second.url + "/events", params={"replay": "4096", "prefix": "Models."}) as sse:
        done = sse.until(lambda f: f.event == PROGRESS and f.payload["id"] == "big"
                         and f.payload["status"] in ("complete", "error", "canceled"))
    assert done.payload["status"] == "complete" and done.payload["sha256"] == res.sha256
    resumed = origin.requests_for("/big.gguf")[before:]
    assert resumed and resumed[0].range == f"bytes={kept}-" and resumed[0].status == 206
    assert (state / "models" / "big.gguf").read_bytes() == res.data


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
