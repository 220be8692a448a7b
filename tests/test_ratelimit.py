"""Bandwidth limits: how the limit for all downloads is shared, how a bucket paces,
and a limited download through the real service (a change of the limit while it
runs takes effect)."""

from __future__ import annotations

import threading

from arw_models.ratelimit import MIN_READ, Bucket, shares


def test_the_limit_is_shared_equally_and_a_capped_download_leaves_the_rest_to_others() -> None:
    assert shares(None, {}) == {}
    assert shares(None, {"a": None, "b": 5.0}) == {"a": None, "b": 5.0}
    assert shares(90.0, {"a": None, "b": None, "c": None}) == {"a": 30.0, "b": 30.0, "c": 30.0}
    assert shares(90.0, {"a": None, "b": 10.0, "c": None}) == {"a": 40.0, "b": 10.0, "c": 40.0}
    assert shares(90.0, {"a": 100.0, "b": None}) == {"a": 45.0, "b": 45.0}
    assert shares(90.0, {"a": 10.0, "b": 20.0}) == {"a": 10.0, "b": 20.0}


def test_a_limited_bucket_reads_in_slices_and_an_unlimited_one_in_chunks() -> None:
    assert Bucket(None).read_size(1 << 20) == 1 << 20
    assert Bucket(1_000_000.0).read_size(1 << 20) == 100_000
    assert Bucket(1000.0).read_size(1 << 20) == MIN_READ


def test_a_bucket_lets_bytes_through_at_its_rate() -> None:
    now = [0.0]
    bucket = Bucket(1000.0, clock=lambda: now[0])
    never = threading.Event()
    waits: list[float] = []

    class Stop:
        def wait(self, secs: float) -> bool:
            waits.append(round(secs, 3))
            now[0] += secs
            return never.is_set()

    assert bucket.take(100, Stop())  # type: ignore[arg-type]
    assert waits == [0.1]  # 100 bytes at 1000/s
    waits.clear()
    now[0] += 0.05  # 50 bytes' worth saved up
    assert bucket.take(100, Stop())  # type: ignore[arg-type]
    assert waits == [0.05]
    bucket.set_rate(None)
    waits.clear()
    assert bucket.take(10**9, Stop())  # type: ignore[arg-type]
    assert waits == []


def test_a_stop_ends_the_wait() -> None:
    stop = threading.Event()
    stop.set()
    assert Bucket(1.0).take(10_000, stop) is False
