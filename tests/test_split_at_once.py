"""When a download is split into parallel ranges: for a file large enough (the first
answer's headers give its size, ranges and a validator), at once with
``ARW_DL_STREAM_KEEP_MB_S=0``, else once the first stream shows it is not fast
enough to stay one stream (:class:`~arw_models.engine.single.Probe`), from where it
stands; one stream otherwise. And two downloads at once hash on threads of their
own, under no shared lock."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from arw_models.engine import cpu, download, single, verify
from arw_models.service.manager import PROGRESS

from .support.app import TERMINAL, Service, post_download
from .support.helpers import models_dir, part, read, write_partial
from .support.origin import Origin, payload

KiB = 1024
MiB = 1024 * KiB
SPLIT = {"ARW_DL_SEGMENTS": 4, "ARW_DL_SEGMENT_MIN_MB": 1, "ARW_DL_CHUNK_BYTES": 64 * KiB,
         "ARW_DL_STREAM_KEEP_MB_S": 0}  # ranges at once, from the first answer


def start_of(seen: Any) -> int:
    return int(seen.range.split("=")[1].split("-")[0])


def test_a_large_file_is_split_at_once(service: Service, origin: Origin) -> None:
    """The first answer announces the size, serves ranges and has a validator: the
    other ranges are asked for before any of its body counts, so the file is split
    from byte 0 into equal ranges (a wait on the first stream would have moved them)."""
    app, client, watch = service(**SPLIT)
    res = origin.add("/a.gguf", payload(8 * MiB, seed=170), throttle=4 * MiB)
    post_download(client, "a", origin.url("/a.gguf"), sha256=res.sha256)
    assert watch.terminal("a", timeout=20)["status"] == "complete"
    assert read(os.path.join(models_dir(app), "a.gguf")) == res.data
    seen = origin.requests_for("/a.gguf")
    assert seen[0].range is None
    assert sorted(start_of(s) for s in seen[1:4]) == [2 * MiB, 4 * MiB, 6 * MiB]
    assert all(s.status == 206 for s in seen[1:])
    assert seen[0].sent < 4 * MiB  # the first answer served its own range only


@pytest.mark.parametrize("announce", ["no-ranges", "too-small"])
def test_a_file_that_cannot_gain_from_ranges_is_one_stream(service: Service, origin: Origin,
                                                          announce: str) -> None:
    app, client, watch = service(**SPLIT)
    size = 4 * MiB if announce == "no-ranges" else 512 * KiB
    res = origin.add("/o.gguf", payload(size, seed=171), throttle=8 * MiB,
                     accept_ranges=None if announce == "no-ranges" else "bytes")
    post_download(client, "o", origin.url("/o.gguf"), sha256=res.sha256)
    assert watch.terminal("o", timeout=20)["status"] == "complete"
    assert read(os.path.join(models_dir(app), "o.gguf")) == res.data
    assert [s.range for s in origin.requests_for("/o.gguf")] == [None]
    assert max((p.get("segments", 0) for p in watch.payloads("o")), default=0) <= 1


def test_the_small_rest_of_a_resumed_file_is_one_stream(service: Service, origin: Origin) -> None:
    """A large file of which less than ``ARW_DL_SEGMENT_MIN_MB`` is left to fetch:
    what is left is what counts, so the resume is one stream from where the bytes
    on disk end, however large the whole file."""
    app, client, watch = service(**SPLIT)
    data = payload(4 * MiB, seed=172)
    res = origin.add("/r.gguf", data, throttle=8 * MiB)
    url = origin.url("/r.gguf")
    have = 3 * MiB + 512 * KiB
    write_partial(app, "r", data[:have], {"url": url, "etag": res.etag, "total": len(data)})
    post_download(client, "r", url, sha256=res.sha256)
    assert watch.terminal("r", timeout=20)["status"] == "complete"
    assert read(os.path.join(models_dir(app), "r.gguf")) == data
    assert [s.range for s in origin.requests_for("/r.gguf")] == [f"bytes={have}-"]
    assert max((p.get("segments", 0) for p in watch.payloads("r")), default=0) <= 1


def test_a_206_shows_ranges_are_served_even_without_accept_ranges(service: Service, origin: Origin) -> None:
    """An origin that never sends ``Accept-Ranges`` but answers the resume's range
    with a 206 has just served one: the large rest is split into ranges at once."""
    app, client, watch = service(**SPLIT)
    data = payload(8 * MiB, seed=173)
    res = origin.add("/n.gguf", data, throttle=4 * MiB, accept_ranges=None)
    url = origin.url("/n.gguf")
    write_partial(app, "n", data[:MiB], {"url": url, "etag": res.etag, "total": len(data)})
    post_download(client, "n", url, sha256=res.sha256)
    assert watch.terminal("n", timeout=20)["status"] == "complete"
    assert read(os.path.join(models_dir(app), "n.gguf")) == data
    seen = origin.requests_for("/n.gguf")
    assert seen[0].range == f"bytes={MiB}-" and seen[0].status == 206
    assert len(seen) > 1 and all(s.range and s.status == 206 for s in seen[1:])  # the other ranges


class Meeting:
    """A hashlib stand-in whose hashers, on their first update, wait for the other
    download's to be in an update too: two downloads whose hashing took turns under
    one lock would never meet, and the wait would fail them."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=10)
        self.met = 0
        self._lock = threading.Lock()

    def sha256(self, data: bytes = b"") -> Any:
        meeting = self

        class Hasher:
            def __init__(self) -> None:
                self._h = hashlib.sha256(data)
                self._first = True

            def update(self, piece: Any) -> None:
                if self._first:
                    self._first = False
                    meeting.barrier.wait()  # both downloads are hashing at this moment
                    with meeting._lock:
                        meeting.met += 1
                self._h.update(piece)

            def hexdigest(self) -> str:
                return self._h.hexdigest()

            def copy(self) -> Any:
                return self._h.copy()

        return Hasher()


@pytest.mark.parametrize("split", [False, True], ids=["one-stream", "ranges"])
def test_two_downloads_at_once_hash_at_the_same_time(service: Service, origin: Origin,
                                                     monkeypatch: pytest.MonkeyPatch, split: bool) -> None:
    meeting = Meeting()
    fake = SimpleNamespace(sha256=meeting.sha256)
    monkeypatch.setattr(download, "hashlib", fake)
    monkeypatch.setattr(verify, "hashlib", fake)
    settings = SPLIT if split else {"ARW_DL_SEGMENTS": 1}
    app, client, watch = service(ARW_MODELS_MAX_CONC=2, **settings)
    files = {name: origin.add(f"/{name}.gguf", payload(4 * MiB, seed=seed), throttle=16 * MiB)
             for name, seed in (("x", 172), ("y", 173))}
    for name, res in files.items():
        post_download(client, name, origin.url(f"/{name}.gguf"), sha256=res.sha256)
    ended: dict[str, dict[str, Any]] = {}

    def both_ended(event: Any) -> bool:
        if event.kind == PROGRESS and event.payload.get("status") in TERMINAL:
            ended[event.payload["id"]] = event.payload
        return len(ended) == len(files)

    watch.until(both_ended, timeout=20)
    for name, res in files.items():
        done = ended[name]
        assert done["status"] == "complete" and done["sha256"] == res.sha256, done
        assert read(os.path.join(models_dir(app), f"{name}.gguf")) == res.data
    assert meeting.met == 2


def test_a_file_larger_than_a_piece_per_connection_comes_in_more_ranges_taken_in_order(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More ranges than connections, each fetched whole and handed out from the
    start of the file: the bytes hashed from 0 grow during the download instead of
    waiting for its end (see single.PIECE)."""
    monkeypatch.setattr(single, "PIECE", 1 * MiB)
    app, client, watch = service(**dict(SPLIT, ARW_DL_SEGMENTS=2))
    res = origin.add("/p.gguf", payload(6 * MiB, seed=174), throttle=8 * MiB)
    post_download(client, "p", origin.url("/p.gguf"), sha256=res.sha256)
    assert watch.terminal("p", timeout=20)["status"] == "complete"
    assert read(os.path.join(models_dir(app), "p.gguf")) == res.data
    ranged = [s for s in origin.requests_for("/p.gguf") if s.range]
    # Six ranges of 1 MiB on two connections: the first answer serves the first.
    # (A range that would end last may still be shared at the very end: off the grid.)
    assert {start_of(s) for s in ranged if start_of(s) % MiB == 0} == {n * MiB for n in range(1, 6)}
    assert max(p.get("segments", 0) for p in watch.payloads("p")) == 2


def test_the_last_rounds_of_ranges_are_smaller_so_the_hash_follows_to_the_end(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ranges in rounds that shrink towards the end (Plan.rounds): the first round
    in ranges of at most a piece, then four ranges of 256 KiB, then four of the
    smallest, 64 KiB, each asked for on its own. The hash of the bytes from 0 then
    has one small round left when the last byte lands, not most of the file."""
    monkeypatch.setattr(single, "PIECE", 1 * MiB)
    monkeypatch.setattr(single, "LEAST_PIECE", 64 * KiB)
    monkeypatch.setattr(single, "PIECE_PER_SEC", 0)  # whatever the latency of the first answer
    hashed_at_end: list[int] = []
    real_finish = verify.PrefixHasher.finish

    def finish(hasher: verify.PrefixHasher) -> Any:
        hashed_at_end.append(hasher.hashed)
        return real_finish(hasher)

    monkeypatch.setattr(verify.PrefixHasher, "finish", finish)
    app, client, watch = service(**SPLIT)
    res = origin.add("/r.gguf", payload(8 * MiB, seed=175), throttle=16 * MiB)
    post_download(client, "r", origin.url("/r.gguf"), sha256=res.sha256)
    assert watch.terminal("r", timeout=20)["status"] == "complete"
    assert read(os.path.join(models_dir(app), "r.gguf")) == res.data
    asked = sorted((start_of(s), s.range) for s in origin.requests_for("/r.gguf") if s.range)
    tail = 4 * 256 * KiB + 4 * 64 * KiB
    first_round = 8 * MiB - tail  # 6.75 MiB in seven ranges of at most 1 MiB
    starts = {start for start, _ in asked}
    assert {first_round + n * 256 * KiB for n in range(4)} <= starts
    assert {first_round + 4 * 256 * KiB + n * 64 * KiB for n in range(4)} <= starts
    assert {first_round * (n + 1) // 7 for n in range(6)} <= starts
    # The last round's ranges: what was left to hash when the last byte landed is
    # at most that round, not seven eighths of the file.
    assert hashed_at_end and hashed_at_end[0] >= 8 * MiB - 4 * 64 * KiB


# -- one stream, or ranges from where it stands ---------------------------------------------

MB_S = MiB  # bytes per second of one MiB/s


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cpu_of(idle_cpus: float, cpus: int = 2) -> Any:
    """A machine on which ``idle_cpus`` of its ``cpus`` were idle while the stream ran."""
    readings = iter([cpu.Reading(0, 0, cpus), cpu.Reading(int(100 * idle_cpus), 100 * cpus, cpus)])
    return lambda: next(readings)


def probe_of(reads: list[tuple[float, int]], keep: float, cpu: Any = None) -> tuple[single.Probe, list[bool]]:
    """A probe fed ``(seconds since the stream began, bytes so far)`` read by read,
    on a machine with all of its CPUs idle unless ``cpu`` says otherwise."""
    clock = Clock()
    probe = single.Probe(keep, clock=clock, cpu=cpu or cpu_of(2.0))
    said = []
    for secs, got in reads:
        clock.now = 100.0 + secs
        said.append(probe(got))
    return probe, said


def test_a_probe_splits_a_capped_stream_at_its_first_read_past_the_grace() -> None:
    """30 MiB/s on one connection, its first read 20 ms after the request (the
    origin's latency, not its pace): reads within PROBE_GRACE of the first say
    nothing; the first after it finds the average short of PROBE_EARLY and splits;
    no read after that is asked about."""
    grace, first = single.PROBE_GRACE, 0.020
    reads = [(first, 128 * KiB), (first + grace - 0.0001, 200 * KiB), (first + grace + 0.002, 256 * KiB)]
    probe, said = probe_of(reads + [(first + grace + 0.005, 300 * KiB)], keep=800 * MB_S)
    assert said == [False, False, True, False] and probe.split


def test_a_probe_counts_from_the_first_read_not_from_the_request() -> None:
    """A fast stream whose first byte came late (a busy machine, a distant origin):
    at 1 GiB/s from its first read on it is not split, however long the first took."""
    rate = 1024 * MB_S
    reads = [(0.050 + n * 64 * KiB / rate, n * 64 * KiB) for n in range(1, 200)]
    probe, said = probe_of(reads, keep=800 * MB_S)
    assert not any(said) and not probe.split


def test_a_probe_keeps_a_stream_that_holds_its_pace_to_the_end_of_the_window() -> None:
    """1 GiB/s from the start: past PROBE_TO, with a pace over ``keep`` from
    PROBE_FROM on, the stream stays one stream, and later reads, however slow,
    change nothing."""
    rate = 1024 * MB_S
    reads = [(n * 64 * KiB / rate + single.PROBE_GRACE, n * 64 * KiB) for n in range(1, 700)]
    probe, said = probe_of(reads + [(60.0, single.PROBE_TO + 64 * MiB)], keep=800 * MB_S)
    assert not any(said) and not probe.split
    assert reads[-1][1] > single.PROBE_TO


@pytest.mark.parametrize("keep, split", [(800 * MB_S, True), (400 * MB_S, False)])
def test_a_probe_judges_the_pace_from_probe_from_to_probe_to(keep: float, split: bool) -> None:
    """A stream whose first PROBE_FROM bytes came at once (a burst, or a cache)
    and the rest at 500 MiB/s: the average never falls short of PROBE_EARLY, and
    what decides is the pace over the window, against ``keep``: short of 800 MiB/s,
    enough for 400. It decides at the first read past PROBE_TO, not before."""
    start = single.PROBE_GRACE + 0.001
    reads = [(start, single.PROBE_FROM)]
    got = single.PROBE_FROM
    while got < single.PROBE_TO:
        got += 1 * MiB
        reads.append((start + (got - single.PROBE_FROM) / (500 * MB_S), got))
    probe, said = probe_of(reads, keep=keep)
    assert said == [False] * (len(reads) - 1) + [split] and probe.split == split


def test_a_probe_splits_a_stream_that_slows_after_a_burst() -> None:
    """4 MiB in 2 ms, then 30 MiB/s: fast on average at first, short of PROBE_EARLY
    a few milliseconds later: split then, before PROBE_TO."""
    grace = single.PROBE_GRACE
    reads = [(0.001, 64 * KiB), (0.003, 4 * MiB)]
    reads += [(0.003 + n * 0.004, 4 * MiB + n * 120 * KiB) for n in range(1, 20)]
    probe, said = probe_of(reads, keep=800 * MB_S)
    when = said.index(True)
    assert probe.split and 2 < when and not any(said[when + 1 :])
    secs, got = reads[when]
    assert got - 64 * KiB < single.PROBE_EARLY * (secs - 0.001 - grace) and got < single.PROBE_TO


def window_at(rate: float) -> list[tuple[float, int]]:
    """Reads of 1 MiB at ``rate`` from PROBE_FROM (come at once) to PROBE_TO."""
    start, got = single.PROBE_GRACE + 0.001, single.PROBE_FROM
    reads = [(0.0005, 64 * KiB), (start, got)]
    while got < single.PROBE_TO:
        got += 1 * MiB
        reads.append((start + (got - single.PROBE_FROM) / rate, got))
    return reads


def test_a_pace_to_keep_below_probe_early_holds_from_the_first_read() -> None:
    """ARW_DL_STREAM_KEEP_MB_S of 50: a steady 100 MiB/s from its first read on is
    not split early for falling short of PROBE_EARLY (200), and stays one stream
    past the window."""
    rate = 100 * MB_S
    reads = [(0.001 + n * MiB / rate, n * MiB) for n in range(1, 45)]
    probe, said = probe_of(reads, keep=50 * MB_S)
    assert not any(said) and not probe.split and "stays one stream" in probe.why


def test_the_early_pace_counts_from_the_end_of_the_first_read() -> None:
    """A first read of a whole socket buffer (1 MiB) says nothing of the pace: 1 MiB
    more in the 10 ms after it is 100 MiB/s, under PROBE_EARLY, so the stream is split."""
    probe, said = probe_of([(0.020, 1 * MiB), (0.030, 2 * MiB)], keep=800 * MB_S)
    assert said == [False, True] and probe.split and probe.why.startswith(f"{MiB} bytes in 10.0 ms"), probe.why


@pytest.mark.parametrize("idle_cpus, split", [(0.2, False), (0.74, False), (0.76, True), (1.5, True)])
def test_a_probe_keeps_a_stream_the_cpu_holds_back(idle_cpus: float, split: bool) -> None:
    """500 MiB/s, short of 800 to keep: split only if the machine had SPARE_CORES
    of CPU idle meanwhile; with less, the CPU is what sets the pace (two verified
    downloads at once on two cores), and ranges, which cost more of it per byte,
    would be slower: it stays one stream."""
    probe, said = probe_of(window_at(500 * MB_S), keep=800 * MB_S, cpu=cpu_of(idle_cpus))
    assert said[-1] == split and probe.split == split and not any(said[:-1])
    assert ("CPUs idle" in probe.why) == (not split), probe.why


def test_a_probe_that_cannot_tell_how_busy_the_machine_is_judges_by_the_pace() -> None:
    probe, said = probe_of(window_at(500 * MB_S), keep=800 * MB_S, cpu=lambda: None)
    assert said[-1] and probe.split


@pytest.fixture
def small_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe that judges from 1 to 2 MiB, with no average to hold before, on a
    machine whose CPUs it sees idle: what decides is ARW_DL_STREAM_KEEP_MB_S
    against the origin's pace."""
    monkeypatch.setattr(single, "PROBE_EARLY", 0)
    monkeypatch.setattr(single, "PROBE_FROM", 1 * MiB)
    monkeypatch.setattr(single, "PROBE_TO", 2 * MiB)
    machine(monkeypatch, idle=True)


def machine(monkeypatch: pytest.MonkeyPatch, idle: bool) -> None:
    """/proc/stat of a machine of one CPU, always idle or never, and no CPU quota."""
    count = itertools.count(1)

    def ticks() -> tuple[int, int, int]:
        n = 100 * next(count)
        return (n if idle else 0), n, 1

    monkeypatch.setattr(cpu, "cpu_ticks", ticks)
    monkeypatch.setattr(cpu, "cgroup_quota", lambda: None)


def fetched_whole(service: Service, origin: Origin, name: str, seed: int, keep: float | str,
                  throttle: int = 16 * MiB, size: int = 8 * MiB) -> Any:
    """``size`` bytes at ``throttle`` per connection, fetched with
    ARW_DL_STREAM_KEEP_MB_S ``keep``, complete and whole at ``<name>.gguf``; the
    events' watch."""
    app, client, watch = service(**dict(SPLIT, ARW_DL_STREAM_KEEP_MB_S=keep))
    res = origin.add(f"/{name}.gguf", payload(size, seed=seed), throttle=throttle)
    post_download(client, name, origin.url(f"/{name}.gguf"), sha256=res.sha256)
    assert watch.terminal(name, timeout=20)["status"] == "complete"
    assert read(os.path.join(models_dir(app), f"{name}.gguf")) == res.data
    return watch


def test_a_stream_short_of_the_pace_to_keep_is_split_where_it_stands(
        service: Service, origin: Origin, small_window: None) -> None:
    """The first answer is read as one stream until the probe decides (at 2 MiB);
    then the rest is split into ranges from there, the first answer serving the
    first of them: no byte before the split is asked for again, and the hash of
    the stream goes on over the ranges (the file is verified)."""
    watch = fetched_whole(service, origin, "p", 176, keep=100_000)
    seen = origin.requests_for("/p.gguf")
    assert seen[0].range is None and len(seen) > 1
    assert all(s.status == 206 for s in seen[1:])
    split = min(start_of(s) for s in seen[1:])
    assert 2 * MiB < split < 4 * MiB  # past the window, then a share of what was left
    assert seen[0].sent < 5 * MiB  # the first answer went on to the end of its range, not of the file
    assert max(p.get("segments", 0) for p in watch.payloads("p")) > 1


def test_a_stream_at_the_pace_to_keep_stays_one_stream(service: Service, origin: Origin,
                                                       small_window: None) -> None:
    watch = fetched_whole(service, origin, "k", 177, keep=1)
    assert [s.range for s in origin.requests_for("/k.gguf")] == [None]
    assert max((p.get("segments", 0) for p in watch.payloads("k")), default=0) <= 1


def test_a_drop_before_the_probe_decides_resumes_from_the_bytes_it_wrote(
        service: Service, origin: Origin, small_window: None) -> None:
    """The first answer drops at 1.5 MiB, inside the probe's window: the retry
    asks for the rest from there (nothing written is fetched again), the probe
    starts afresh on that answer, and the file is whole."""
    app, client, watch = service(**dict(SPLIT, ARW_DL_STREAM_KEEP_MB_S=1))
    res = origin.add("/r.gguf", payload(4 * MiB, seed=181), throttle=16 * MiB, drop_after=1536 * KiB)
    post_download(client, "r", origin.url("/r.gguf"), sha256=res.sha256)
    assert watch.terminal("r", timeout=20)["status"] == "complete"
    assert read(os.path.join(models_dir(app), "r.gguf")) == res.data
    seen = origin.requests_for("/r.gguf")
    assert [s.range for s in seen[:1]] == [None] and len(seen) == 2, [s.range for s in seen]
    assert seen[1].range is not None and start_of(seen[1]) >= 1 * MiB  # what came before the drop is kept


def test_a_cancel_before_the_probe_decides_ends_the_stream_at_once(
        service: Service, origin: Origin, small_window: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled while the probe still reads its window (an origin slow enough that
    the window takes seconds): the job ends ``canceled``, no range was asked for,
    and no ``.part`` is left."""
    monkeypatch.setattr(single, "PROBE_TO", 6 * MiB)
    app, client, watch = service(**dict(SPLIT, ARW_DL_STREAM_KEEP_MB_S=1))
    res = origin.add("/x.gguf", payload(8 * MiB, seed=182), throttle=1 * MiB)
    post_download(client, "x", origin.url("/x.gguf"), sha256=res.sha256)
    watch.until(lambda e: e.payload.get("id") == "x" and e.payload.get("downloaded", 0) >= 256 * KiB)
    assert os.path.exists(part(app, "x"))
    client.post("/models/download/cancel", json={"id": "x"})
    assert watch.terminal("x", timeout=5)["status"] == "canceled"
    assert [s.range for s in origin.requests_for("/x.gguf")] == [None]
    assert not os.path.exists(part(app, "x"))


def test_a_split_told_at_the_read_that_ends_the_body_splits_nothing(
        service: Service, origin: Origin, small_window: None) -> None:
    """A file that ends where the probe's window does (2 MiB): the probe says
    split at the read that brings its last byte, with nothing left to split; the
    file is complete from its one answer, as if it had stayed one stream."""
    fetched_whole(service, origin, "e", 180, keep=100_000, size=2 * MiB)
    assert [s.range for s in origin.requests_for("/e.gguf")] == [None]


def test_a_stream_short_of_the_pace_on_a_busy_machine_stays_one_stream(
        service: Service, origin: Origin, small_window: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The pace of the stream is short of the one to keep, but no CPU was idle
    meanwhile: ranges would be slower, so it stays one stream (the log says why)."""
    machine(monkeypatch, idle=False)
    caplog.set_level(logging.INFO, logger=single.__name__)
    fetched_whole(service, origin, "b", 179, keep=100_000)
    assert [s.range for s in origin.requests_for("/b.gguf")] == [None]
    said = [r.getMessage() for r in caplog.records if r.name == single.__name__]
    assert len(said) == 1 and "0.00 CPUs idle" in said[0] and "stays one stream" in said[0], said


def test_by_default_a_capped_origin_is_split_within_milliseconds(service: Service, origin: Origin) -> None:
    """The default probe (auto) against 8 MiB/s per connection, far below PROBE_EARLY:
    the split comes at the first read past PROBE_GRACE, a few KiB into the file."""
    fetched_whole(service, origin, "c", 178, keep="auto", throttle=8 * MiB)
    seen = origin.requests_for("/c.gguf")
    assert seen[0].range is None and len(seen) >= 4
    assert min(start_of(s) for s in seen[1:]) < 3 * MiB  # the rest, in 4 ranges or more


def test_the_speed_of_sha256_is_measured_once() -> None:
    verify.sha256_speed.cache_clear()
    speed = verify.sha256_speed()
    assert 10 * MB_S < speed < 100_000 * MB_S
    assert verify.sha256_speed() is speed
