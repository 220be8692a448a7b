"""No crawl at the end of parallel ranges: a free connection takes over the range
that would end last, at the pace each connection has shown (all of it from one far
slower), through the plan alone; with a real origin where one connection is held to
a tenth of the others' pace, and a kill -9 right after such a takeover."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from arw_models.engine import segments
from arw_models.engine.plan import Plan, Span

from .support.app import Service, post_download
from .support.helpers import Writes, models_dir, read, write_partial
from .support.origin import Origin, payload
from .support.servers import Gunicorn
from .support.sse import is_status, post_and_follow

KiB = 1024
MiB = 1024 * KiB
SPLIT = {"ARW_DL_SEGMENTS": 4, "ARW_DL_SEGMENT_MIN_MB": 1, "ARW_DL_CHUNK_BYTES": 64 * KiB,
         "ARW_DL_STREAM_KEEP_MB_S": 0}  # ranges at once, from the first answer


def start_of(seen: Any) -> int:
    return int(seen.range.split("=")[1].split("-")[0])


def until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Waits for ``condition`` (a bounded poll of state another process or thread changes)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s")
        pause.wait(0.02)
    return found


# -- the plan -------------------------------------------------------------------------------


def busy(*spans: Span) -> Plan:
    for span in spans:
        span.active = True
    return Plan(sum((s.end or 0) - s.start for s in spans), list(spans))


def test_a_range_far_slower_than_a_free_connection_is_taken_over_whole_from_its_position() -> None:
    slow, fast = Span(0, 1000 * KiB, done=100 * KiB), Span(1000 * KiB, 2000 * KiB, done=900 * KiB)
    plan = busy(slow, fast)
    paces = {id(slow): 10.0 * KiB, id(fast): 100.0 * KiB}
    taken = plan.claim(4 * MiB, lambda s: paces.get(id(s)), rate=100.0 * KiB)
    assert taken is not None and (taken.start, taken.end) == (100 * KiB, 1000 * KiB)
    assert slow.end == 100 * KiB and slow.remaining == 0  # its connection has nothing left to fetch
    assert sorted(s.to_json() for s in plan.spans) == [[0, 100 * KiB, 100 * KiB], [100 * KiB, 1000 * KiB, 0],
                                                       [1000 * KiB, 2000 * KiB, 900 * KiB]]


def test_a_range_that_would_end_after_all_the_rest_goes_before_the_ranges_nobody_fetches() -> None:
    """A far slower connection with 1900 KiB left (190 s at 10 KiB/s), and 1000 KiB
    nobody fetches yet: the free connection takes the slow one's range over whole
    first; the next one (both at 100 KiB/s) halves that range, which would still
    end after the rest shared (19 s against 14.5); the one after takes the range
    nobody fetches, since the ranges it could split now end before the rest shared
    among three (9.5 s against 9.7)."""
    slow, waiting = Span(0, 2000 * KiB, done=100 * KiB), Span(2000 * KiB, 3000 * KiB)
    slow.active = True
    plan = Plan(3000 * KiB, [slow, waiting])
    paces = {id(slow): 10.0 * KiB}
    first = plan.claim(64 * KiB, lambda s: paces.get(id(s)), rate=100.0 * KiB)
    assert first is not None and (first.start, first.end) == (100 * KiB, 2000 * KiB) and not waiting.active
    paces[id(first)] = 100.0 * KiB
    second = plan.claim(64 * KiB, lambda s: paces.get(id(s)), rate=100.0 * KiB)
    assert second is not None and (second.start, second.end, first.end) == (1050 * KiB, 2000 * KiB, 1050 * KiB)
    paces[id(second)] = 100.0 * KiB
    third = plan.claim(64 * KiB, lambda s: paces.get(id(s)), rate=100.0 * KiB)
    assert third is waiting and waiting.active


def test_a_stalled_range_goes_before_the_ranges_nobody_fetches() -> None:
    """A connection that has brought nothing since it began (a pace of 0) would
    never end its range: the free connection takes all of it at once, not after
    the ranges nobody fetches yet."""
    stalled, moving, waiting = Span(0, 1000, done=100), Span(1000, 2000, done=500), Span(2000, 3000)
    stalled.active = moving.active = True
    plan = Plan(3000, [stalled, moving, waiting])
    taken = plan.claim(10, lambda s: 0.0 if s is stalled else 100.0, rate=100.0)
    assert taken is not None and (taken.start, taken.end, stalled.end) == (100, 1000, 100) and not waiting.active


def test_ranges_nobody_fetches_come_first_while_no_range_would_end_after_them() -> None:
    """Two connections alike, one with 300 bytes left, and 1000 bytes nobody
    fetches yet: shared, the rest takes 6.5 s, more than that range's 3 s; the
    free connection takes the range nobody fetches, and splits nothing."""
    going, waiting = Span(0, 1000, done=700), Span(1000, 2000)
    going.active = True
    plan = Plan(2000, [going, waiting])
    taken = plan.claim(10, lambda s: 100.0, rate=100.0)
    assert taken is waiting and going.end == 1000 and len(plan.spans) == 2


def test_ranges_nobody_fetches_come_first_while_no_pace_is_known() -> None:
    going, waiting = Span(0, 1000, done=10), Span(1000, 1100)
    going.active = True
    plan = Plan(1100, [going, waiting])
    assert plan.claim(10) is waiting and going.end == 1000


def test_a_range_whose_connection_has_brought_nothing_is_taken_over_whole() -> None:
    """A connection that has shown a pace of nothing at all (stalled since it
    began) would never end its range: that one is taken over, all of it."""
    stalled, moving = Span(0, 1000, done=100), Span(1000, 2000, done=100)
    plan = busy(stalled, moving)
    taken = plan.claim(10, lambda s: 0.0 if s is stalled else 100.0, rate=100.0)
    assert taken is not None and (taken.start, taken.end, stalled.end) == (100, 1000, 100)


def test_the_range_taken_from_is_the_one_that_would_end_last() -> None:
    """A crawling range (a byte a second) with 10 bytes left ends in 10 s; one of
    2000 bytes at 50 bytes a second, in 40 s: that one is shared, not the crawl."""
    crawl, long = Span(0, 1000, done=990), Span(1000, 3000)
    plan = busy(crawl, long)
    taken = plan.claim(10, lambda s: 1.0 if s is crawl else 50.0, rate=100.0)
    assert taken is not None and (taken.start, taken.end, long.end) == (1666, 3000, 1666)
    assert crawl.end == 1000


def test_a_range_as_fast_as_the_free_connection_is_halved() -> None:
    one = Span(0, 1000, done=200)
    plan = busy(one)
    taken = plan.claim(100, lambda s: 50.0, rate=50.0)
    assert taken is not None and (taken.start, taken.end, one.end) == (600, 1000, 600)


def test_a_slower_range_keeps_what_it_fetches_in_the_time_the_taker_needs_for_the_rest() -> None:
    one = Span(0, 1100, done=0)
    plan = busy(one)
    taken = plan.claim(100, lambda s: 30.0, rate=80.0)  # less than four times slower
    assert taken is not None and one.end == 300 and taken.start == 300  # 300/30 = 800/80 seconds


def test_a_range_four_times_slower_is_shared_and_a_slower_one_is_taken_over_whole() -> None:
    """Four times slower is the edge: such a range keeps the part it fetches in the
    time the free connection needs for the rest; more than four times slower, its
    connection gives up all of it."""
    shared = busy(Span(0, 1000 * KiB))
    taken = shared.claim(4 * MiB, lambda s: 100.0 * KiB, rate=400.0 * KiB)
    assert taken is not None and (taken.start, taken.end) == (200 * KiB, 1000 * KiB)  # 2 s for each
    whole = busy(Span(0, 1000 * KiB))
    taken = whole.claim(4 * MiB, lambda s: 100.0 * KiB, rate=450.0 * KiB)
    assert taken is not None and (taken.start, taken.end) == (0, 1000 * KiB)


def test_a_small_tail_is_taken_only_when_that_ends_the_download_sooner() -> None:
    # 1 MiB at 1 MiB/s: half of it taken by a connection as fast saves half a second.
    worth = busy(Span(0, MiB))
    assert worth.claim(4 * MiB, lambda s: float(MiB), rate=float(MiB)) is not None
    # 1 MiB at 1 GiB/s: a new request for half of it saves nothing worth one.
    idle = busy(Span(0, MiB))
    assert idle.claim(4 * MiB, lambda s: float(1024 * MiB), rate=float(1024 * MiB)) is None
    assert idle.spans == [Span(0, MiB)]
    # 900 KiB at 10 MiB/s: half of it taken ends it 0.045 s sooner, less than STEAL_GAIN_SECS.
    short = busy(Span(0, 900 * KiB))
    assert short.claim(4 * MiB, lambda s: 10.0 * MiB, rate=10.0 * MiB) is None


def test_a_far_slower_tail_too_small_to_save_time_is_left_to_its_connection() -> None:
    """Even from a connection four times slower, a tail smaller than ``least`` is
    not taken when that would end the download less than STEAL_GAIN_SECS sooner:
    a new request costs about that much."""
    share, mine = 64 * KiB, 6400.0 * KiB  # 0.01 s for the free connection
    theirs = share / 0.045  # 0.045 s for its own: 0.035 s saved
    assert theirs * 4 < mine
    tail = busy(Span(0, share))
    assert tail.claim(MiB, lambda s: theirs, rate=mine) is None
    assert tail.spans == [Span(0, share)]


def test_a_tail_under_64_kib_is_never_taken_one_of_64_kib_is() -> None:
    """Below 64 KiB a new request is not worth it, however slow the connection
    that has the range; from 64 KiB, a far slower one loses it."""
    for size, taken_over in ((64 * KiB - 1, False), (64 * KiB, True)):
        tail = busy(Span(0, size))
        taken = tail.claim(4 * MiB, lambda s: 1.0, rate=float(MiB))  # a byte a second against a MiB
        assert (taken is not None) == taken_over, size
        assert taken is None or (taken.start, taken.end) == (0, size)


def test_with_no_pace_known_but_the_free_connections_a_range_is_halved() -> None:
    """No range has shown a pace yet: the free connection takes half of the one
    that has the most left, whatever its own pace."""
    one, other = Span(0, 1000), Span(1000, 1600)
    plan = busy(one, other)
    taken = plan.claim(10, lambda s: None, rate=100.0)
    assert taken is not None and (taken.start, taken.end, one.end) == (500, 1000, 500)


def test_no_range_is_split_among_the_bytes_its_connection_is_writing() -> None:
    one = Span(0, 1000, done=100)
    one.writing = 300
    plan = busy(one)
    taken = plan.claim(10, lambda s: 1.0, rate=1000.0)  # far slower: all that is not being written
    assert taken is not None and (taken.start, one.end) == (400, 400)
    one.done, one.writing = 400, 0  # the write lands: nothing of it overlaps the range taken
    assert one.remaining == 0 and sum(s.remaining or 0 for s in plan.spans) == 600


def test_a_range_whose_pace_is_not_known_yet_goes_at_the_others() -> None:
    """A connection that has just begun is not taken for a stalled one: its range
    is halved, not taken over whole."""
    new, old = Span(0, 1000), Span(1000, 2000, done=100)
    plan = busy(new, old)
    taken = plan.claim(10, lambda s: 100.0 if s is old else None, rate=100.0)
    assert taken is not None and (taken.start, taken.end, new.end) == (500, 1000, 500)


def test_before_any_pace_is_known_for_it_a_range_goes_at_the_median_of_the_ranges_being_fetched() -> None:
    """With no connection's pace to go by (none has finished a range yet), a range
    just begun is taken to go at the median pace of the ranges with bytes left (one
    whose last byte is written does not count): the free connection takes the share
    that makes both end together at those paces."""
    new = Span(0, 1200)
    slow, fast = Span(1200, 1300, done=90), Span(1300, 1400, done=90)  # little left: not the victims
    done = Span(1400, 1500, done=100)  # written to its end, its connection not yet free
    plan = busy(new, slow, fast, done)
    paces = {id(slow): 100.0, id(fast): 400.0, id(done): 50.0}
    taken = plan.claim(10, lambda s: paces.get(id(s)), rate=200.0)
    # At 400 against 200 bytes/s: 800 bytes for its own connection, 400 for the free one.
    assert taken is not None and (taken.start, taken.end, new.end) == (800, 1200, 800)


# -- through the service ------------------------------------------------------------------------


def test_a_connection_at_a_tenth_of_the_pace_is_taken_over_and_no_byte_is_written_twice(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes = Writes()
    monkeypatch.setattr(segments, "os", writes)
    app, client, watch = service(**SPLIT)
    size = 8 * MiB
    # Four ranges of 2 MiB at 4 MiB/s each, but the one from 2 MiB at 0.4 MiB/s.
    res = origin.add("/t.gguf", payload(size, seed=160), throttle=4 * MiB, slow_from={2 * MiB: 0.4 * MiB})
    post_download(client, "t", origin.url("/t.gguf"), sha256=res.sha256)
    done = watch.terminal("t", timeout=20)
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert read(os.path.join(models_dir(app), "t.gguf")) == res.data
    ranged = [s for s in origin.requests_for("/t.gguf") if s.range]
    slow = next(s for s in ranged if start_of(s) == 2 * MiB)
    # Cut off once the others were done (at a tenth of their pace it had about a
    # tenth of its range), not left half of it to crawl through.
    assert slow.sent < MiB
    # Taken over from where the slow connection had got to, inside its range.
    assert any(2 * MiB < start_of(s) < 4 * MiB for s in ranged)
    # Every byte of the .part written once: the writes tile the file exactly.
    spans = sorted(writes.spans)
    assert sum(end - start for start, end in spans) == size
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


@pytest.mark.parametrize(("stall_after", "connections"), [(256 * KiB, 4), (1, 4), (256 * KiB, 2)],
                         ids=["inside-its-range", "after-its-first-byte", "two-connections"])
def test_a_stalled_range_is_taken_over_and_its_connection_cut_off_at_once(
    service: Service, origin: Origin, stall_after: int, connections: int,
) -> None:
    """A connection that stalls inside its range is not waited for: its range is
    taken over whole, and its read is ended then, long before the idle timeout,
    so the download completes as soon as the others have fetched the rest."""
    app, client, watch = service(**dict(SPLIT, ARW_DL_SEGMENTS=connections), ARW_DL_IDLE_TIMEOUT_SECS=60)
    size = 8 * MiB
    # The first answer (the range from 0) stalls; the others flow. With two
    # connections, the takeover is the last range anyone claims.
    res = origin.add("/h.gguf", payload(size, seed=162), throttle=8 * MiB, stall_after=stall_after, stalls=1)
    post_download(client, "h", origin.url("/h.gguf"), sha256=res.sha256)
    done = watch.terminal("h", timeout=15)
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert read(os.path.join(models_dir(app), "h.gguf")) == res.data
    assert res.stalled.is_set()
    assert "retrying" not in watch.statuses("h")  # no timeout, no retry: the range was taken over


def test_a_resumed_range_is_paced_by_what_it_fetches_now_not_by_what_it_had(
    service: Service, origin: Origin,
) -> None:
    """A range resumed with 11 MiB already on disk, now at a crawl: its pace is that
    of the bytes it fetches in this run, so it is taken over as soon as a connection
    is free, not left to crawl for seconds while its earlier bytes flatter it."""
    app, client, watch = service(**SPLIT)
    size = 16 * MiB
    data = payload(size, seed=163)
    res = origin.add("/p.gguf", data, throttle=4 * MiB, slow_from={15 * MiB: 0.05 * MiB})
    url = origin.url("/p.gguf")
    write_partial(app, "p", data[:15 * MiB], {"url": url, "etag": res.etag, "total": size,
                                              "ranges": [[0, 4 * MiB, 0], [4 * MiB, 16 * MiB, 11 * MiB]]})
    post_download(client, "p", url, sha256=res.sha256)
    done = watch.terminal("p", timeout=30)
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert read(os.path.join(models_dir(app), "p.gguf")) == data
    slow = next(s for s in origin.requests_for("/p.gguf") if s.range and start_of(s) == 15 * MiB)
    # At its pace its last MiB would take 20 s: it is cut off once the others are
    # done with the rest (about a second), not when its pace over all 12 MiB drops.
    assert slow.sent < 256 * KiB, slow.sent


def test_a_range_whose_pace_is_not_known_yet_goes_at_the_pace_the_connections_showed_on_their_last_ranges(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No range has fetched long enough for its own pace to count (here: none
    will), but a connection that has finished a range has shown one: the range
    left is taken to go at it, so a free connection shares it when that ends the
    download sooner, though each half is under the least size worth halving blindly."""
    monkeypatch.setattr(segments, "RATE_SECS", 60.0)
    app, client, watch = service(**dict(SPLIT, ARW_DL_SEGMENTS=2))
    size = 5 * MiB
    data = payload(size, seed=164)
    res = origin.add("/q.gguf", data, throttle=4 * MiB)
    url = origin.url("/q.gguf")
    # Two ranges left: 1 MiB (a quarter of a second) and 3 MiB, both under 2 x 4 MiB.
    write_partial(app, "q", data[:MiB], {"url": url, "etag": res.etag, "total": size,
                                         "ranges": [[0, MiB, MiB], [MiB, 2 * MiB, 0], [2 * MiB, size, 0]]})
    post_download(client, "q", url, sha256=res.sha256)
    done = watch.terminal("q", timeout=20)
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert read(os.path.join(models_dir(app), "q.gguf")) == data
    starts = sorted(start_of(s) for s in origin.requests_for("/q.gguf") if s.range)
    # The connection free after its quarter second took about half of what the other had left.
    assert starts[:2] == [MiB, 2 * MiB] and len(starts) >= 3 and 3 * MiB < starts[2] < size - MiB // 4, starts


def test_a_slow_connection_takes_no_share_of_a_range_that_goes_at_the_faster_pace(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Of two connections, one has shown 4 MiB/s and the other, now free, an
    eightieth of it; the range left has no pace of its own yet (here: none will) and
    goes at the median of theirs, the faster one of two: a share taken by the slow
    connection would only end the download later, so it takes none."""
    monkeypatch.setattr(segments, "RATE_SECS", 60.0)
    app, client, watch = service(**dict(SPLIT, ARW_DL_SEGMENTS=2))
    fast, slow, rest = 2 * MiB, 2 * MiB + 64 * KiB, 8 * MiB + 64 * KiB
    data = payload(rest, seed=165)
    # 1 MiB at 4 MiB/s (a quarter of a second), 64 KiB at 0.05 MiB/s (1.3 s), then 6 MiB at 4 MiB/s.
    res = origin.add("/s.gguf", data, throttle=4 * MiB, slow_from={fast: 0.05 * MiB})
    url = origin.url("/s.gguf")
    write_partial(app, "s", data[:MiB], {"url": url, "etag": res.etag, "total": rest,
                                         "ranges": [[0, MiB, MiB], [MiB, fast, 0], [fast, slow, 0], [slow, rest, 0]]})
    post_download(client, "s", url, sha256=res.sha256)
    done = watch.terminal("s", timeout=20)
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert read(os.path.join(models_dir(app), "s.gguf")) == data
    assert sorted(start_of(s) for s in origin.requests_for("/s.gguf") if s.range) == [MiB, fast, slow]


def test_a_connection_is_paced_by_its_last_range_not_by_a_faster_one_before(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection fetched its first range at 4 MiB/s, then crawled through a
    second one long enough to show its pace (an eightieth of that): once free, it is
    as slow as it was last, and takes no share of the range still going at 4 MiB/s
    (it would only end the download later), as if it were still as fast as at first.
    (A range that would end after all the rest is otherwise split before the ranges
    nobody fetches are taken, which here would keep the connection from the crawl.)"""
    monkeypatch.setattr("arw_models.engine.plan.LATE", math.inf)
    app, client, watch = service(**dict(SPLIT, ARW_DL_SEGMENTS=2))
    fast, long, crawl, size = MiB, 2 * MiB, 8 * MiB, 8 * MiB + 64 * KiB
    data = payload(size, seed=166)
    # 1 MiB at 4 MiB/s (a quarter of a second), 6 MiB at 4 MiB/s (1.5 s), 64 KiB at 0.05 MiB/s (1 s).
    res = origin.add("/c.gguf", data, throttle=4 * MiB, slow_from={crawl: 0.05 * MiB})
    url = origin.url("/c.gguf")
    write_partial(app, "c", data[:fast], {"url": url, "etag": res.etag, "total": size,
                                          "ranges": [[0, fast, fast], [fast, long, 0], [long, crawl, 0],
                                                     [crawl, size, 0]]})
    post_download(client, "c", url, sha256=res.sha256)
    done = watch.terminal("c", timeout=20)
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert read(os.path.join(models_dir(app), "c.gguf")) == data
    # The connection that took the crawl after the first MiB asked for no share of the long range.
    assert sorted(start_of(s) for s in origin.requests_for("/c.gguf") if s.range) == [fast, long, crawl]


def test_a_kill_9_right_after_a_takeover_resumes_from_the_ranges_on_record(
    gunicorns: Callable[..., Gunicorn], origin: Origin, tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    size = 8 * MiB
    res = origin.add("/k.gguf", payload(size, seed=161), throttle=2 * MiB, slow_from={2 * MiB: 0.2 * MiB})
    body = {"id": "k", "url": origin.url("/k.gguf")}  # no sha256: only the ranges say what is there
    env = {**{k: str(v) for k, v in SPLIT.items()}, "ARW_DL_CHECKPOINT_SECS": "0.05",
           "ARW_DL_RESUME_ON_START": "0"}
    first = gunicorns("first", state, **env)
    first.wait_ready()
    sidecar = state / "models" / "k.part.json"

    def taken_over() -> list[list[int]] | None:
        """The ranges on record once they show the slow range split where it was taken over."""
        try:
            ranges = json.loads(sidecar.read_text())["ranges"]
        except (OSError, ValueError, KeyError):
            return None
        return ranges if any(2 * MiB < start < 4 * MiB for start, _, _ in ranges) else None

    with_sse = threading.Thread(target=post_and_follow, args=(first.url, body, lambda f: True), daemon=True)
    with_sse.start()
    recorded = until(taken_over, timeout=20)
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.wait_exit(10)
    with_sse.join(10)
    recorded = json.loads(sidecar.read_text())["ranges"]  # the last record before the kill
    plan = Plan.from_json(size, recorded)
    assert plan is not None
    ordered = sorted(plan.spans, key=lambda s: (s.start, s.end))
    # The split range is two ranges: they tile the file, none overlaps another.
    assert ordered[0].start == 0 and ordered[-1].end == size
    assert all(a.end == b.start for a, b in itertools.pairwise(ordered))
    assert any(2 * MiB < s.start < 4 * MiB for s in ordered)
    durable = plan.durable
    res.throttle, res.slow_from = None, {}
    asked_before = len(origin.requests_for("/k.gguf"))
    second = gunicorns("second", state, **env)
    second.wait_ready()
    frames = post_and_follow(second.url, body, is_status("k", "complete", "error", "canceled"))
    assert frames[-1].payload["status"] == "complete"
    assert (state / "models" / "k.gguf").read_bytes() == res.data
    again = origin.requests_for("/k.gguf")[asked_before:]
    assert again and all(s.range and s.status == 206 for s in again)
    # What was on record is not fetched again (a range cut short may send a little more).
    assert sum(s.sent for s in again) < size - durable + len(again) * 512 * KiB
