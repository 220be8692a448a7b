"""A ``kill -9`` of the service in the middle of a model of many files.

A real gunicorn fetches a hub repository (the hub stand-in, tests/support/hub.py)
whose large files come slowly from its CDN; once the small files are done and the
large ones are well under way, the whole process group is killed (no handler
runs). A second gunicorn on the same state directory resumes the model at start
(``ARW_DL_RESUME_ON_START``) from its plan: it does not resolve the repository
again, does not fetch the finished files again, fetches the large ones from where
their ranges were recorded (at most what tests/test_checkpoints.py allows a kill
to cost), and installs the model whole and correct.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from arw_models.engine.plan import Plan

from .support.hub import Hub, needs_second_host
from .support.origin import Resource, payload
from .support.servers import Gunicorn
from .support.sse import Frame, SSEClient, is_status, post_and_follow, read_frames_until

pytestmark = needs_second_host  # the hub's CDN is on 127.0.0.2

KiB = 1024
MiB = 1024 * KiB
INTERVAL = 0.25  # ARW_DL_CHECKPOINT_SECS here, as in tests/test_checkpoints.py
THROTTLE = 1 * MiB  # each CDN connection of a large file, until the kill
SEGMENTS = 2
TOKEN = "hf_KiLlToKeN0123456789abcdefghijXYZ"
REPO = "acme-ai/Slow-Coder"
SMALL = {"config.safetensors": payload(96 * KiB, seed=41), "tokenizer/tok.bin": payload(64 * KiB, seed=42)}
LARGE = {"model-00001-of-00002.safetensors": payload(4 * MiB, seed=43),
         "model-00002-of-00002.safetensors": payload(4 * MiB, seed=44)}
FILES = {**SMALL, **LARGE, "README.md": b"# slow\n"}
ENV = {"ARW_DL_SEGMENTS": str(SEGMENTS), "ARW_DL_SEGMENT_MIN_MB": "1", "ARW_DL_CHECKPOINT_SECS": str(INTERVAL),
       "ARW_HF_TOKEN": TOKEN}


@pytest.fixture
def hub() -> Iterator[Hub]:
    server = Hub(token=TOKEN)
    yield server
    server.close()


def blob_path(data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    return f"/repos/{sha[:2]}/{sha[2:4]}/{sha}"


def loss_bound(size: int) -> int:
    """What a kill may cost one file: two checkpoint intervals of its transfer, or
    5% of it, whichever is more (tests/test_checkpoints.py)."""
    return int(max(2 * INTERVAL * SEGMENTS * THROTTLE, 0.05 * size))


def files_of(frame: Frame) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in frame.payload.get("files") or []}


def well_under_way(frame: Frame) -> bool:
    """The small files done, each large one past half its bytes."""
    if not is_status("slow", "downloading")(frame):
        return False
    files = files_of(frame)
    return (all(files.get(p, {}).get("status") == "complete" for p in FILES if p not in LARGE)
            and all(files.get(p, {}).get("downloaded", 0) >= len(d) // 2 for p, d in LARGE.items()))


def recorded(path: Path) -> Plan:
    side = json.loads(path.read_text())
    plan = Plan.from_json(side["total"], side["ranges"])
    assert plan is not None, side
    return plan


def test_kill_9_mid_model_resumes_at_start_without_refetching_what_was_done(
        gunicorns: Callable[..., Gunicorn], hub: Hub, tmp_path: Path) -> None:
    commit = hub.commit(REPO, FILES)
    slow: list[Resource] = [hub.cdn.add(blob_path(d), d, throttle=THROTTLE) for d in LARGE.values()]
    state = tmp_path / "state"
    first = gunicorns("first", state, ARW_HF_ENDPOINT=hub.endpoint, **ENV)
    first.wait_ready()
    frames = post_and_follow(first.url, {"id": "slow", "url": f"hf://{REPO}"}, well_under_way)
    os.killpg(first.proc.pid, signal.SIGKILL)  # no handler runs: every connection dies mid-write
    first.wait_exit(10)
    at_kill = {p: f["downloaded"] for p, f in files_of(frames[-1]).items()}

    # What the kill left: the plan, the finished files marked done, the others' recorded ranges.
    staging = state / "partial" / "slow"
    plan = json.loads((staging / "plan.json").read_text())
    assert plan["fileset"]["revision"] == commit
    assert set(plan["done"]) == set(FILES) - set(LARGE)
    ids = {f["path"]: f"f{i:04d}" for i, f in enumerate(plan["fileset"]["files"])}
    durable, kept = {}, {}
    for path, data in LARGE.items():
        ranges = recorded(staging / f"{ids[path]}.part.json")
        on_disk = (staging / f"{ids[path]}.part").read_bytes()
        for span in ranges.spans:  # what the ranges say is there is the file's bytes
            assert on_disk[span.start:span.position] == data[span.start:span.position], path
        assert ranges.durable >= at_kill[path] - loss_bound(len(data)), (path, ranges.durable, at_kill[path])
        durable[path] = ranges.durable
        kept[path] = [(span.start, span.position) for span in ranges.spans if span.done]

    for res in slow:
        res.throttle = None
    seen_before, hub_before = len(hub.cdn.all_seen()), len(hub.api.all_seen())
    trees_before = len(hub.api_requests(REPO, "tree"))
    second = gunicorns("second", state, ARW_HF_ENDPOINT=hub.endpoint, ARW_DL_RESUME_ON_START="1", **ENV)
    second.wait_ready()
    with SSEClient(second.url + "/events", params={"prefix": "Models."}) as sse:
        assert sse.next().event == "service.connected"
        # Subscribed first: an end after this answer is in the stream.
        job = requests.get(second.url + "/models/downloads/slow", timeout=5).json()
        if job.get("status") not in ("complete", "error", "canceled"):
            job = read_frames_until(sse, is_status("slow", "complete", "error", "canceled"))[-1].payload
    assert job["status"] == "complete", (job, second.output())

    # Not resolved again; the finished files not fetched again; the others from their ranges.
    assert len(hub.api_requests(REPO, "tree")) == trees_before
    after = hub.cdn.all_seen()[seen_before:]
    for path, data in SMALL.items():
        assert not [s for s in after if s.path.startswith(blob_path(data))], path
    assert not [s for s in hub.api.all_seen()[hub_before:] if s.path.endswith("/README.md")]
    for path, data in LARGE.items():
        asked = [s for s in after if s.path.startswith(blob_path(data))]
        assert asked and all(s.range for s in asked), (path, [(s.range, s.status) for s in asked])
        again = sum(s.sent for s in asked)
        assert again <= len(data) - at_kill[path] + loss_bound(len(data)), (path, again, at_kill[path])
        # No request asks for a byte the kill left durable. (What the origin sent can
        # be more than was missing: a range taken over from a slower connection cuts
        # that one's read off, and what it had in flight is dropped.)
        for s in asked:
            start, _, end = s.range.split("=")[1].partition("-")
            first, last = int(start), int(end) if end else len(data) - 1
            assert not [k for k in kept[path] if first < k[1] and k[0] <= last], (path, s.range, kept[path])

    # Installed whole and correct, the staging folder gone.
    [model] = requests.get(second.url + "/models", timeout=5).json()["items"]
    assert (model["id"], model["revision"], model["bytes"]) == ("slow", commit, sum(len(d) for d in FILES.values()))
    folder = state / "models" / "slow"
    for path, data in FILES.items():
        assert (folder / path).read_bytes() == data, path
    assert not staging.exists()
