"""Checkpoints: how much of a download survives a ``kill -9``, a pause and a
graceful stop.

A ``.part`` is fsynced and its progress recorded in the sidecar every
``ARW_DL_CHECKPOINT_SECS`` (or ``ARW_DL_FSYNC_BYTES``), so a kill costs at most
about two intervals of transfer (or 5% of the file, whichever is more); a pause
or a stop costs nothing. The kills run a real service (gunicorn) against an
origin paced per connection; the interval is a quarter of its default to keep
them short, and the bounds scale with it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from arw_models.engine import pipeline, segments
from arw_models.engine.plan import Plan
from arw_models.service.manager import PROGRESS
from arw_models.store import partfile

from .support.app import Service, post_download
from .support.helpers import part, read, sidecar, write_partial
from .support.origin import Origin, payload
from .support.servers import Gunicorn
from .support.sse import is_status, post_and_follow

KiB = 1024
MiB = 1024 * KiB
INTERVAL = 0.25  # ARW_DL_CHECKPOINT_SECS in these tests (default 1.0)


def loss_bound(size: int, rate: float) -> int:
    """What a kill may cost: two intervals of transfer (2 s at the default
    interval) or 5% of the file, whichever is more."""
    return int(max(2 * INTERVAL * rate, 0.05 * size))


def recorded(path: Path | str) -> Plan:
    side = json.loads(Path(path).read_text())
    plan = Plan.from_json(side["total"], side["ranges"])
    assert plan is not None, side
    return plan


@pytest.mark.parametrize("count, throttle", [(8, 1 * MiB), (1, 8 * MiB)], ids=["ranges", "stream"])
def test_kill_9_costs_at_most_two_checkpoint_intervals(
    gunicorns: Callable[..., Gunicorn], origin: Origin, tmp_path: Path, count: int, throttle: int,
) -> None:
    state, models = tmp_path / "state", tmp_path / "state" / "models"
    size = 16 * MiB
    res = origin.add("/k.gguf", payload(size, seed=301), throttle=throttle)  # per connection
    body = {"id": "k", "url": origin.url("/k.gguf"), "sha256": res.sha256}
    env = {"ARW_DL_SEGMENTS": str(count), "ARW_DL_SEGMENT_MIN_MB": "1", "ARW_DL_CHECKPOINT_SECS": str(INTERVAL),
           "ARW_DL_RESUME_ON_START": "0"}
    first = gunicorns("first", state, **env)
    first.wait_ready()
    frame = post_and_follow(first.url, body, lambda f: (
        f.event == PROGRESS
        and f.payload.get("downloaded", 0) >= size // 2
        and f.payload.get("segments", 0) >= min(count, 2)
    ))
    os.killpg(first.proc.pid, signal.SIGKILL)  # no handler runs: every connection dies mid-write
    first.wait_exit(10)
    at_kill = frame[-1].payload["downloaded"]
    bound = loss_bound(size, count * throttle)

    plan = recorded(models / "k.part.json")
    assert len(plan.spans) >= count
    on_disk = (models / "k.part").read_bytes()
    for span in plan.spans:  # what the ranges say is there is the file's bytes
        assert on_disk[span.start:span.position] == res.data[span.start:span.position]
    assert plan.durable >= at_kill - bound, (plan.durable, at_kill, bound)

    res.throttle = None
    asked_before = len(origin.requests_for("/k.gguf"))
    second = gunicorns("second", state, **env)
    second.wait_ready()
    frames = post_and_follow(second.url, body, is_status("k", "complete", "error", "canceled"))
    assert frames[-1].payload["status"] == "complete", frames[-1].payload
    assert (models / "k.gguf").read_bytes() == res.data
    # Counted on the second run's requests: a killed connection's handler may still be sending.
    again = sum(r.sent for r in origin.requests_for("/k.gguf")[asked_before:])
    assert again <= size - at_kill + bound, (again, at_kill, bound)


def assert_all_recorded(app: Any, model_id: str, data: bytes) -> Plan:
    """The sidecar records every byte written: each range's bytes up to its recorded
    position are the file's, and nothing was written past it (a preallocated
    ``.part`` is zeros there); a single stream's ``.part`` ends where its record does."""
    plan = recorded(sidecar(app, model_id))
    on_disk = read(part(app, model_id))
    if not plan.segmented:
        assert plan.durable == len(on_disk) and on_disk == data[:len(on_disk)], (plan.durable, len(on_disk))
        return plan
    for span in plan.spans:
        assert on_disk[span.start:span.position] == data[span.start:span.position]
        if span.remaining:
            ahead = min(64, span.remaining)
            assert on_disk[span.position:span.position + ahead] == bytes(ahead), f"unrecorded bytes at {span}"
    return plan


@pytest.mark.parametrize("segments", [4, 1], ids=["ranges", "stream"])
@pytest.mark.parametrize("stop", ["pause", "shutdown"])
def test_a_pause_or_a_graceful_stop_records_every_byte_written(service: Service, origin: Origin,
                                                               segments: int, stop: str) -> None:
    # Intervals and windows far longer than the test: only the stop itself can record the bytes.
    app, client, watch = service(ARW_DL_SEGMENTS=segments, ARW_DL_SEGMENT_MIN_MB=1, ARW_DL_CHECKPOINT_SECS=3600,
                                 ARW_DL_FSYNC_BYTES=1 << 40)
    size = 8 * MiB
    res = origin.add("/s.gguf", payload(size, seed=302), throttle=2 * MiB)
    post_download(client, "s", origin.url("/s.gguf"))
    watch.until(lambda e: e.payload.get("id") == "s" and e.payload.get("downloaded", 0) >= MiB
                and e.payload.get("segments", 0) >= min(segments, 2))
    if stop == "pause":
        r = client.post("/models/download/pause", json={"id": "s"})
        assert r.status_code == 200 and r.json["status"] == "paused", r.json
    else:
        app.extensions["arw_models"].shutdown()  # as SIGTERM does: waits for the transfer to stop
    plan = assert_all_recorded(app, "s", res.data)
    assert MiB <= plan.durable < size


def test_ranges_are_fsynced_once_per_fsync_bytes_not_per_write(service: Service, origin: Origin,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """In ranges, the bytes written since the last fsync make one due at
    ARW_DL_FSYNC_BYTES (2 MiB here; the interval, a minute, never comes): about four
    for 8 MiB and the last one, not one for every chunk written."""
    data = payload(8 * MiB, seed=302)
    res = origin.add("/y.gguf", data, throttle=8 * MiB)
    app, client, watch = service(ARW_DL_SEGMENTS=2, ARW_DL_SEGMENT_MIN_MB=1, ARW_DL_CHUNK_BYTES=64 * KiB,
                                 ARW_DL_FSYNC_BYTES=2 * MiB, ARW_DL_CHECKPOINT_SECS=60)
    # Two ranges on record, with a first chunk of the first one: a resume in ranges.
    write_partial(app, "y", data[: 64 * KiB], {"url": origin.url("/y.gguf"), "etag": res.etag, "total": len(data),
                                                "ranges": [[0, 4 * MiB, 64 * KiB], [4 * MiB, 8 * MiB, 0]]})
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    post_download(client, "y", origin.url("/y.gguf"), sha256=res.sha256)
    done = watch.terminal("y", timeout=20)
    assert done["status"] == "complete", done
    of_part = [path for path in synced if path.endswith("/y.part")]
    assert 3 <= len(of_part) <= 6, len(of_part)


@pytest.mark.parametrize("engine, settings", [
    (segments, {"ARW_DL_SEGMENTS": 2, "ARW_DL_SEGMENT_MIN_MB": 1, "ARW_DL_STREAM_KEEP_MB_S": 0}),
    (pipeline, {"ARW_DL_SEGMENTS": 1, "ARW_DL_DIRECT_IO": "off"}),
], ids=["ranges", "stream-through-the-cache"])
def test_the_writeback_of_what_was_written_starts_between_fsyncs(service: Service, origin: Origin,
                                                                 monkeypatch: pytest.MonkeyPatch, engine: Any,
                                                                 settings: dict[str, Any]) -> None:
    """Every WRITEBACK_BYTES written (1 MiB here), the writeback of the ``.part``
    is started without waiting for it, so that the last fsync, which the download
    waits for, finds little left to write; no fsync comes of it (the bytes are due
    at 64 MiB, the interval in a minute)."""
    data = payload(8 * MiB, seed=304)
    res = origin.add("/wb.gguf", data, throttle=8 * MiB)
    _, client, watch = service(ARW_DL_CHUNK_BYTES=64 * KiB, ARW_DL_FSYNC_BYTES=64 * MiB,
                               ARW_DL_CHECKPOINT_SECS=60, **settings)
    monkeypatch.setattr(engine, "WRITEBACK_BYTES", 1 * MiB)
    calls: list[str] = []
    real_fsync, real_writeback = os.fsync, engine.start_writeback

    def fsync(fd: int) -> None:
        calls.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def start_writeback(fd: int) -> None:
        calls.append("writeback " + os.readlink(f"/proc/self/fd/{fd}"))
        real_writeback(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(engine, "start_writeback", start_writeback)
    post_download(client, "wb", origin.url("/wb.gguf"), sha256=res.sha256)
    done = watch.terminal("wb", timeout=20)
    assert done["status"] == "complete", done
    of_part = [call.split(" ")[0] for call in calls if call.endswith("/wb.part")]
    assert of_part.count("fsync") == 1 and of_part[-1] == "fsync", of_part  # only the last record's
    assert 4 <= of_part.count("writeback") <= 8, of_part


def test_start_writeback_leaves_the_errors_to_the_fsync(tmp_path: Path) -> None:
    """On Linux the call exists (elsewhere it is a no-op); on a descriptor that
    cannot take it, it raises nothing: the fsync that follows reports the error."""
    assert partfile._sync_file_range is not None or not sys.platform.startswith("linux")
    with open(tmp_path / "f", "wb") as fh:
        fh.write(b"x" * MiB)
        fh.flush()
        partfile.start_writeback(fh.fileno())
        read_end, write_end = os.pipe()
        try:
            partfile.start_writeback(read_end)  # ESPIPE, not raised
        finally:
            os.close(read_end)
            os.close(write_end)
        os.fsync(fh.fileno())
    assert (tmp_path / "f").read_bytes() == b"x" * MiB


@pytest.mark.parametrize("written", [256 * KiB, 0], ids=["some-bytes", "none-yet"])
def test_ranges_that_write_nothing_are_not_fsynced_again(service: Service, origin: Origin,
                                                         monkeypatch: pytest.MonkeyPatch, written: int) -> None:
    """Every connection stalls: once what they wrote is on the disk, the
    checkpoints that follow find nothing new and make no fsync, however often
    they come; before their first byte, there is nothing to make durable at all."""
    stalls: queue.SimpleQueue[Any] = queue.SimpleQueue()
    res = origin.add("/z.gguf", payload(8 * MiB, seed=303), stall_after=written, stalls=2, on_stall=stalls)
    app, client, watch = service(ARW_DL_SEGMENTS=2, ARW_DL_SEGMENT_MIN_MB=1, ARW_DL_CHUNK_BYTES=64 * KiB,
                                 ARW_DL_CHECKPOINT_SECS=0.02, ARW_DL_IDLE_TIMEOUT_SECS=60, ARW_DL_STREAM_KEEP_MB_S=0)
    synced = threading.Condition()
    count = [0]
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/z.part"):
            with synced:
                count[0] += 1
                synced.notify_all()

    monkeypatch.setattr(os, "fsync", fsync)
    post_download(client, "z", origin.url("/z.gguf"), sha256=res.sha256)

    def recorded() -> int:
        try:
            plan = Plan.from_json(8 * MiB, json.loads(read(sidecar(app, "z")))["ranges"])
        except (OSError, ValueError, KeyError):
            return 0
        return plan.durable if plan is not None else 0

    try:
        stalls.get(timeout=10)
        stalls.get(timeout=10)  # both connections wait for bytes that do not come
        # What they wrote is made durable, and recorded after its fsync (a bounded
        # poll of the sidecar the checkpoint thread writes).
        deadline, pause = time.monotonic() + 10, threading.Event()
        while recorded() < 2 * written:
            assert time.monotonic() < deadline, recorded()
            pause.wait(0.02)
        with synced:
            after = count[0]
            assert after > 0 if written else after == 0
            # Twenty-five checkpoint intervals with nothing written: no fsync.
            assert not synced.wait_for(lambda: count[0] > after, timeout=0.5), count[0] - after
    finally:
        client.post("/models/download/cancel", json={"id": "z"})
        res.release.set()
    assert watch.terminal("z")["status"] == "canceled"


def test_kill_9_during_a_download_keeps_a_resumable_part_and_the_same_post_resumes_it(
    gunicorns: Callable[..., Gunicorn], origin: Any, tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    res = origin.add("/k.gguf", payload(4 * MiB, seed=11), throttle=1 * MiB)
    url = origin.url("/k.gguf")
    body = {"id": "k", "url": url, "sha256": res.sha256}
    first = gunicorns("first", state)
    first.wait_ready()
    post_and_follow(first.url, body, lambda f: (
        is_status("k", "downloading")(f)
        and f.payload["downloaded"] >= 128 * KiB
    ))
    os.killpg(first.proc.pid, signal.SIGKILL)  # no handler runs: master and worker die mid-write
    first.wait_exit(10)
    res.throttle = None
    before = len(origin.requests_for("/k.gguf"))
    second = gunicorns("second", state, ARW_DL_RESUME_ON_START="0")
    second.wait_ready()  # it holds the state lock: the killed worker is gone, its last write landed

    models = state / "models"
    part, sidecar = models / "k.part", models / "k.part.json"
    kept = part.stat().st_size
    assert 128 * KiB <= kept < len(res.data)
    assert part.read_bytes() == res.data[:kept]  # what is on disk is a true prefix
    assert json.loads(sidecar.read_text())["total"] == len(res.data)
    assert not (models / "k.gguf").exists()
    assert requests.get(second.url + "/models", timeout=5).json()["items"] == []
    listed = requests.get(second.url + "/models/downloads", timeout=5).json()["items"]
    assert [(i["id"], i["status"], i["downloaded"], i["total"]) for i in listed] == [
        ("k", "resumable", kept, len(res.data))]
    assert origin.requests_for("/k.gguf")[before:] == []  # nothing moves until it is asked for
    frames = post_and_follow(second.url, body, is_status("k", "complete", "error", "canceled"))
    payloads = [f.payload for f in frames if f.event == PROGRESS]
    assert payloads[0]["status"] == "resumed" and payloads[0]["offset"] == kept
    assert payloads[-1]["status"] == "complete" and payloads[-1]["sha256"] == res.sha256
    resumed = origin.requests_for("/k.gguf")[before:]
    assert [(r.range, r.status) for r in resumed] == [(f"bytes={kept}-", 206)]
    assert (models / "k.gguf").read_bytes() == res.data
    assert not part.exists() and not sidecar.exists()
