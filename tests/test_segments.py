"""Parallel ranges: how a file is split and how a free connection takes work, and
segmented downloads against the real local origin, with every way they must fall
back to one stream, a file that changes in the middle, and a cancel."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import signal
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from arw_models.engine import segments
from arw_models.engine.plan import Plan, Span
from arw_models.engine.single import LEAST_PIECE, PIECE, smallest_piece
from arw_models.service.manager import PROGRESS

from .support.app import Service, post_download
from .support.helpers import Writes, cancel, listing, models_dir, read, write_partial
from .support.origin import Origin, payload
from .support.servers import Gunicorn
from .support.sse import is_status, post_and_follow

KiB = 1024
MiB = 1024 * KiB
SEGMENTED = {"ARW_DL_SEGMENTS": 4, "ARW_DL_SEGMENT_MIN_MB": 1, "ARW_DL_CHUNK_BYTES": 64 * KiB,
             "ARW_DL_STREAM_KEEP_MB_S": 0}  # ranges at once, from the first answer
RANGE = re.compile(r"bytes=(\d+)-(\d+)$")


# -- the plan -------------------------------------------------------------------------------


def equal(total: int, have: int, count: int) -> Plan:
    """Ranges of one round: the smallest as large as the largest."""
    return Plan.rounds(total, have, count, total, total)


def test_a_file_is_split_into_ranges_of_about_the_same_size() -> None:
    plan = equal(1000, 0, 4)
    assert [(s.start, s.end, s.done) for s in plan.spans] == [(0, 250, 0), (250, 500, 0), (500, 750, 0),
                                                              (750, 1000, 0)]
    resumed = equal(1000, 100, 3)
    assert [(s.start, s.end, s.done) for s in resumed.spans] == [(0, 100, 100), (100, 400, 0), (400, 700, 0),
                                                                 (700, 1000, 0)]
    assert resumed.contiguous() == 100 and resumed.durable == 100 and resumed.segmented
    assert [(s.start, s.end) for s in equal(3, 0, 8).spans] == [(0, 1), (1, 2), (2, 3)]


def sizes(plan: Plan) -> list[int]:
    assert all(a.end == b.start for a, b in itertools.pairwise(plan.spans)) and plan.spans[-1].end == plan.total
    return [(s.end or 0) - s.start for s in plan.spans]


def test_the_rounds_of_ranges_shrink_towards_the_end_so_the_hash_follows_the_download() -> None:
    # 192 MiB on 8 connections, the last round of 2 MiB: 8 x 2 MiB last, 8 x 8 MiB before
    # them (four times larger), and what is left, 112 MiB, in 8 equal ranges first.
    assert sizes(Plan.rounds(192 * MiB, 0, 8, 2 * MiB, 64 * MiB)) == [14 * MiB] * 8 + [8 * MiB] * 8 + [2 * MiB] * 8
    # A large file: the first round in ranges of at most the largest, then the rounds
    # shrinking by four from the largest that fits (32 MiB) to the smallest.
    big = sizes(Plan.rounds(4096 * MiB, 0, 8, 2 * MiB, 64 * MiB))
    assert big[-24:] == [32 * MiB] * 8 + [8 * MiB] * 8 + [2 * MiB] * 8
    assert len(big) == 24 + 59 and max(big) <= 64 * MiB and sum(big) == 4096 * MiB
    # A round is only worth it when two of its size fit in what is left.
    assert sizes(Plan.rounds(31 * MiB, 0, 8, 2 * MiB, 64 * MiB)) == [31 * MiB * (n + 1) // 8 - 31 * MiB * n // 8
                                                                      for n in range(8)]
    assert sizes(Plan.rounds(32 * MiB, 0, 8, 2 * MiB, 64 * MiB)) == [2 * MiB] * 16
    # A slow answer (a far origin): one round, the smallest being the largest.
    assert sizes(Plan.rounds(192 * MiB, 0, 8, 64 * MiB, 64 * MiB)) == [24 * MiB] * 8
    # Bytes on disk stay one range, done; the rounds cover the rest.
    resumed = Plan.rounds(192 * MiB, 5 * MiB, 8, 2 * MiB, 64 * MiB)
    assert (resumed.spans[0].start, resumed.spans[0].end, resumed.spans[0].done) == (0, 5 * MiB, 5 * MiB)
    assert sizes(resumed)[1:] == sizes(Plan(187 * MiB, Plan.rounds(187 * MiB, 0, 8, 2 * MiB, 64 * MiB).spans))


def test_the_smallest_range_follows_the_latency_of_the_first_answer() -> None:
    def answer(secs: float | None) -> Any:
        return SimpleNamespace(elapsed=None if secs is None else timedelta(seconds=secs))

    assert smallest_piece(answer(None)) == LEAST_PIECE == 1 * MiB
    assert smallest_piece(answer(0.0001)) == 1 * MiB
    # 1 GiB per second of latency: 4 ms make a range of 4 ms at 1 GiB/s, to the byte.
    assert smallest_piece(answer(0.004)) == 4 * 1024 * 1024 * 1024 // 1000 == 4294967
    assert smallest_piece(answer(0.2)) == PIECE == 64 * MiB


def test_the_contiguous_prefix_stops_at_the_first_hole() -> None:
    plan = Plan(100, [Span(0, 40, 40), Span(40, 70, 10), Span(70, 100, 30)])
    assert plan.contiguous() == 50 and not plan.finished()
    plan.spans[1].done = 30
    assert plan.contiguous() == 100 and plan.finished()


def test_a_free_connection_takes_an_idle_range_then_half_of_the_largest() -> None:
    plan = Plan(1000, [Span(0, 500), Span(500, 1000)])
    first, second = plan.claim(10), plan.claim(10)
    assert (first.start, second.start) == (0, 500) and first.active and second.active
    first.done = 100  # 400 left
    second.done = 300  # 200 left
    stolen = plan.claim(10)
    assert stolen is not None and (stolen.start, stolen.end, stolen.active) == (300, 500, True)
    assert first.end == 300  # the largest range gave up its second half
    assert plan.claim(200) is None  # nothing left is worth splitting: no range of 400 or more
    assert sorted((s.start, s.end) for s in plan.spans) == [(0, 300), (300, 500), (500, 1000)]


def test_an_idle_range_goes_first_even_if_a_busy_one_is_larger() -> None:
    plan = Plan(1000, [Span(0, 900, active=True), Span(900, 1000)])
    span = plan.claim(10)
    assert span is not None and span.start == 900


def test_a_recorded_plan_is_taken_only_when_sound() -> None:
    plan = Plan.from_json(None, [[0, 40, 40], [40, None, 5]])  # the last range up to an unknown end
    assert plan is not None and plan.spans == [Span(0, 40, 40), Span(40, None, 5)] and plan.contiguous() == 45
    for ranges in ([[None, 40, 0]],  # no start
                   [[0, 40, None]],  # no count of the bytes done
                   [[0, 40, 41]],  # more done than the range holds
                   [[0, 40, -1]], [[0, 40, True]], [[0, 40]], [], None, [["0", 40, 0]]):
        assert Plan.from_json(100, ranges) is None, ranges


# -- through the service -----------------------------------------------------------------------


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ranged(origin: Origin, path: str) -> list[tuple[int, int]]:
    out = []
    for seen in origin.requests_for(path):
        match = RANGE.match(seen.range or "")
        if match:
            out.append((int(match.group(1)), int(match.group(2))))
    return out


def test_the_connections_shown_are_those_still_running(service: Service, origin: Origin,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranges left: the short one (a byte) ends at once, and its connection
    takes over none of the long one (no takeover of a tail under 4 MiB is worth it
    here: STEAL_GAIN_SECS made endless); the progress counts the connections still
    running: one for the second the long range takes, not two, and none once it
    has ended."""
    monkeypatch.setattr("arw_models.engine.plan.STEAL_GAIN_SECS", math.inf)
    data = payload(8 * MiB, seed=104)
    res = origin.add("/n.gguf", data, throttle=2 * MiB)
    app, client, watch = service(**SEGMENTED)
    write_partial(app, "n", data[: 6 * MiB], {"url": origin.url("/n.gguf"), "etag": res.etag, "total": len(data),
                                              "ranges": [[0, 4 * MiB, 4 * MiB - 1], [4 * MiB, 8 * MiB, 2 * MiB]]})
    post_download(client, "n", origin.url("/n.gguf"), sha256=res.sha256)
    done = watch.terminal("n", timeout=20)
    assert done["status"] == "complete", done
    assert read(os.path.join(models_dir(app), "n.gguf")) == data
    asked = sorted(s.range for s in origin.requests_for("/n.gguf"))
    assert asked == [f"bytes={4 * MiB - 1}-{4 * MiB - 1}", f"bytes={6 * MiB}-{8 * MiB - 1}"], asked
    counts = [p["segments"] for p in watch.payloads("n") if p["status"] == "downloading"]
    # (The last tick may come after the long range's connection has ended too: none.)
    assert counts and max(counts) <= 2 and counts[-1] in (0, 1) and counts.count(1) >= 2, str(counts)


def test_a_large_file_comes_in_parallel_ranges_and_is_whole(service: Service, origin: Origin,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    writes = Writes()
    monkeypatch.setattr(segments, "os", writes)
    app, client, watch = service(**SEGMENTED)
    res = origin.add("/big.gguf", payload(8 * MiB, seed=100), throttle=4 * MiB)  # one connection: 2 s
    post_download(client, "big", origin.url("/big.gguf"), sha256=res.sha256)
    done = watch.terminal("big")
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert read(os.path.join(models_dir(app), "big.gguf")) == res.data
    assert listing(app) == ["big.gguf"]
    asked = ranged(origin, "/big.gguf")
    assert len(asked) >= 3  # the first answer serves one range, the others are asked for
    # How many connections are open, as the events say: never more than asked for.
    assert 1 < max(p.get("segments", 0) for p in watch.payloads("big")) <= SEGMENTED["ARW_DL_SEGMENTS"]
    # Every byte was written once: a half taken over by another connection (when one
    # is slower) is not written by its first owner, though that one asked for it.
    spans = sorted(writes.spans)
    assert sum(end - start for start, end in spans) == 8 * MiB
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


@pytest.mark.parametrize(("options", "why"), [
    ({"ignore_range": True, "throttle": 2 * MiB}, "ranges refused"),  # slow: it splits, and then learns
    ({"chunked": True}, "unknown size"),
], ids=["no-ranges", "unknown-size"])
def test_one_stream_when_ranges_cannot_be_used(service: Service, origin: Origin, options: dict[str, Any],
                                               why: str) -> None:
    app, client, watch = service(**SEGMENTED)
    res = origin.add("/one.gguf", payload(2 * MiB, seed=101), **options)
    post_download(client, "one", origin.url("/one.gguf"), sha256=res.sha256)
    assert watch.terminal("one")["status"] == "complete", why
    assert read(os.path.join(models_dir(app), "one.gguf")) == res.data
    # Falling back to one stream is not a failure to wait for.
    assert all(p["delay_ms"] == 0 for p in watch.payloads("one") if p["status"] == "retrying")
    if options.get("ignore_range"):
        assert [p["code"] for p in watch.payloads("one") if p["status"] == "retrying"] == ["resume-invalid"]
        assert origin.requests_for("/one.gguf")[-1].status == 200  # one stream from byte 0


def test_a_small_file_is_one_stream(service: Service, origin: Origin) -> None:
    _, client, watch = service(**dict(SEGMENTED, ARW_DL_SEGMENT_MIN_MB=8))
    res = origin.add("/small.gguf", payload(4 * MiB, seed=102))
    post_download(client, "small", origin.url("/small.gguf"), sha256=res.sha256)
    assert watch.terminal("small")["status"] == "complete"
    assert [s.range for s in origin.requests_for("/small.gguf")] == [None]


@pytest.mark.parametrize("ignore_if_range", [False, True], ids=["if-range-honoured", "if-range-ignored"])
def test_a_file_that_changes_mid_download_is_never_mixed(service: Service, origin: Origin,
                                                         ignore_if_range: bool) -> None:
    """The first range's connection drops, and the file changes at that moment: the
    range asked again is of the new version (a 200 when If-Range is honoured, a 206
    with another ETag when it is not). The download starts over; the old bytes that
    the other ranges fetched meanwhile are never installed beside new ones."""
    app, client, watch = service(**SEGMENTED)
    old, new = payload(8 * MiB, seed=103), payload(8 * MiB, seed=104)
    origin.add("/c.gguf", old, ignore_if_range=ignore_if_range, drop_after=512 * KiB,
               on_drop=lambda res: res.replace(new))
    post_download(client, "c", origin.url("/c.gguf"))
    done = watch.terminal("c", timeout=20)
    assert done["status"] == "complete", done
    assert read(os.path.join(models_dir(app), "c.gguf")) == new
    statuses = [s.status for s in origin.requests_for("/c.gguf")]
    assert (200 if not ignore_if_range else 206) in statuses[1:]  # the new version was seen on a range


def test_a_file_that_changed_is_never_mixed_with_a_digest_either(service: Service, origin: Origin) -> None:
    """With the old version's sha256 in the request, the new file cannot verify: an
    error, and nothing installed."""
    _, client, watch = service(**SEGMENTED)
    old, new = payload(8 * MiB, seed=106), payload(8 * MiB, seed=107)
    res = origin.add("/d.gguf", old, drop_after=512 * KiB, on_drop=lambda r: r.replace(new))
    post_download(client, "d", origin.url("/d.gguf"), sha256=sha256_of(old))
    done = watch.terminal("d", timeout=20)
    assert done["status"] == "error" and done["code"] == "checksum-mismatch"
    assert done["actual"] == res.sha256
    assert client.get("/models").json["items"] == []


def test_a_cancel_stops_every_connection_at_once(service: Service, origin: Origin) -> None:
    app, client, watch = service(**dict(SEGMENTED, ARW_DL_IDLE_TIMEOUT_SECS=30))
    res = origin.add("/s.gguf", payload(8 * MiB, seed=105), throttle=2 * MiB)
    post_download(client, "s", origin.url("/s.gguf"))
    watch.until(lambda e: e.payload.get("id") == "s" and e.payload.get("segments", 0) > 1)
    before = threading.active_count()
    assert cancel(client, "s").json == {"id": "s", "status": "canceled"}
    assert watch.terminal("s")["status"] == "canceled"
    assert watch.statuses("s").count("canceled") == 1
    assert listing(app) == []
    assert threading.active_count() < before  # the connections' threads are gone
    assert len(res.data) == 8 * MiB


def test_kill_9_during_a_segmented_download_resumes_every_range(
    gunicorns: Callable[..., Gunicorn], origin: Origin, tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    size, window, count = 8 * MiB, 256 * KiB, 4
    res = origin.add("/k.gguf", payload(size, seed=108), throttle=1 * MiB)
    url = origin.url("/k.gguf")
    body = {"id": "k", "url": url, "sha256": res.sha256}
    env = {"ARW_DL_SEGMENTS": str(count), "ARW_DL_SEGMENT_MIN_MB": "1", "ARW_DL_FSYNC_BYTES": str(window),
           "ARW_DL_RESUME_ON_START": "0"}
    first = gunicorns("first", state, **env)
    first.wait_ready()
    post_and_follow(first.url, body, lambda f: (
        f.event == PROGRESS
        and f.payload.get("downloaded", 0) >= 2 * MiB
        and f.payload.get("segments", 0) > 1
    ))
    os.killpg(first.proc.pid, signal.SIGKILL)  # no handler runs: every connection dies mid-write
    first.wait_exit(10)
    res.throttle = None
    sent_before = origin.bytes_sent("/k.gguf")
    asked_before = len(origin.requests_for("/k.gguf"))
    second = gunicorns("second", state, **env)
    second.wait_ready()

    recorded = json.loads((state / "models" / "k.part.json").read_text())["ranges"]
    assert len(recorded) > 1
    durable = sum(done for _, _, done in recorded)
    part_bytes = (state / "models" / "k.part").read_bytes()
    for start, _, done in recorded:  # what the ranges say is on disk is the file's bytes
        assert part_bytes[start:start + done] == res.data[start:start + done]
    [listed] = requests.get(second.url + "/models/downloads", timeout=5).json()["items"]
    assert (listed["status"], listed["downloaded"]) == ("resumable", durable)

    frames = post_and_follow(second.url, body, is_status("k", "complete", "error", "canceled"))
    assert frames[-1].payload["status"] == "complete" and frames[-1].payload["sha256"] == res.sha256
    assert (state / "models" / "k.gguf").read_bytes() == res.data
    # Counted on the requests of the second run only: the handlers of the killed
    # connections may still be writing into them for a moment.
    resent = sum(r.sent for r in origin.requests_for("/k.gguf")[asked_before:])
    # The unfinished parts, plus at most one fsync window per range that was written
    # but not yet recorded as durable when the process died.
    assert resent <= (size - min(sent_before, size)) + count * window + 64 * KiB, (resent, sent_before, durable)
    assert resent >= size - durable  # (a range cut short by a steal may have been sent a little more)
    assert all(r.range and r.status == 206 for r in origin.requests_for("/k.gguf")[asked_before:])


def test_a_segmented_download_paused_before_its_first_fsync_resumes_whole(service: Service,
                                                                           origin: Origin) -> None:
    """The .part is preallocated to the whole size at once: only the recorded ranges
    say which bytes are there, so they are on record from the start, and a pause
    records what every range wrote."""
    app, client, watch = service(**SEGMENTED)
    res = origin.add("/p.gguf", payload(8 * MiB, seed=110), throttle=2 * MiB)
    post_download(client, "p", origin.url("/p.gguf"))  # no sha256: nothing else would catch a hole
    split = watch.until(lambda e: e.payload.get("id") == "p" and e.payload.get("segments", 0) > 1).payload
    # The parallel ranges have written something of their own, still short of any fsync.
    watch.until(lambda e: e.payload.get("id") == "p" and e.payload.get("downloaded", 0) >= split["downloaded"]
                + 512 * KiB)
    r = client.post("/models/download/pause", json={"id": "p"})
    assert r.status_code == 200 and r.json["status"] == "paused"
    paused = r.json["downloaded"]
    assert 0 < paused < 8 * MiB
    recorded = json.loads(read(os.path.join(models_dir(app), "p.part.json")))["ranges"]
    assert len(recorded) > 1 and sum(done for _, _, done in recorded) == paused
    # What the parallel ranges wrote is on record too, not only the first stream's part.
    assert sum(done for start, _, done in recorded if start > 0) > 0
    res.throttle = None
    before = len(origin.requests_for("/p.gguf"))
    assert client.post("/models/download/resume", json={"id": "p"}).status_code == 202
    assert watch.status("p", "complete", "error")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "p.gguf")) == res.data
    again = origin.requests_for("/p.gguf")[before:]
    assert all(r.status == 206 for r in again)
    assert sum(r.sent for r in again) <= 8 * MiB - paused + len(again) * 512 * KiB  # (socket buffers)


def test_a_resume_splits_what_is_left_at_once(service: Service, origin: Origin) -> None:
    """6 MiB on disk of a single stream: the 6 MiB left are split into ranges at
    once, the first answer (from byte 6 MiB) serving the first of them."""
    app, client, watch = service(**SEGMENTED)
    data = payload(12 * MiB, seed=110)
    res = origin.add("/slow.gguf", data, throttle=2 * MiB)
    url = origin.url("/slow.gguf")
    write_partial(app, "slow", data[:6 * MiB], {"url": url, "etag": res.etag, "total": len(data)})
    post_download(client, "slow", url, sha256=res.sha256)
    assert watch.terminal("slow", timeout=20)["status"] == "complete"
    assert max(p.get("segments", 0) for p in watch.payloads("slow")) > 1
    assert read(os.path.join(models_dir(app), "slow.gguf")) == data
    starts = [int(s.range.split("=")[1].split("-")[0]) for s in origin.requests_for("/slow.gguf") if s.range]
    assert starts[0] == 6 * MiB  # the resume itself
    assert {6 * MiB + 6 * MiB * n // 4 for n in range(1, 4)} <= set(starts[1:])  # the others, split at once
