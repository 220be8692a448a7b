"""Bandwidth limits: how the limit for all downloads is shared, how a bucket paces,
and a limited download through the real service (a change of the limit while it
runs takes effect)."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import pytest

from arw_models.engine.ratelimit import MIN_READ, Bucket, shares

from .support.app import Service, post_download
from .support.origin import Origin, payload


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


# -- through the service ------------------------------------------------------------------------

KiB = 1024
MiB = 1024 * KiB


def _elapsed(watch: Any, model_id: str) -> float:
    """Seconds from the origin's answer to the end, as the events' times say."""
    times = {e.payload["status"]: e.time for e in watch.events if e.payload.get("id") == model_id and "status" in e.payload}
    return (_when(times["complete"]) - _when(times["started"])).total_seconds()


def _when(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_limited_download_keeps_to_the_limit(service: Service, origin: Origin) -> None:
    _app, client, watch = service(ARW_DL_RATE_LIMIT=8 * MiB, ARW_DL_CHUNK_BYTES=MiB)
    res = origin.add("/l.gguf", payload(20 * MiB, seed=130))
    post_download(client, "l", origin.url("/l.gguf"), sha256=res.sha256)
    assert watch.terminal("l", timeout=15)["status"] == "complete"
    assert 2.0 <= _elapsed(watch, "l") <= 3.5  # 20 MiB at 8 MiB/s: 2.5 s
    assert client.get("/probe").json["settings"]["rate_limit"] == 8 * MiB


def test_a_change_of_the_limit_takes_effect_on_a_running_download(service: Service, origin: Origin) -> None:
    _app, client, watch = service(ARW_DL_RATE_LIMIT=MiB)
    res = origin.add("/c.gguf", payload(8 * MiB, seed=131))
    post_download(client, "c", origin.url("/c.gguf"), sha256=res.sha256)
    watch.until(lambda e: e.payload.get("id") == "c" and e.payload.get("downloaded", 0) >= MiB // 2)
    r = client.put("/settings/rate-limit", json={"bytes_per_sec": None})
    assert r.status_code == 200 and r.json == {"bytes_per_sec": None}
    lifted = watch.hub.last_id
    done = watch.terminal("c", timeout=10)
    assert done["status"] == "complete"
    # At 1 MiB/s the rest would take 6 s or more; lifted, it comes at once.
    after = [e for e in watch.events if e.id is not None and e.id > lifted and e.payload.get("id") == "c"]
    assert (_when(after[-1].time) - _when(after[0].time)).total_seconds() < 2.0


def test_a_change_of_the_limit_does_not_wait_for_the_next_tick(service: Service, origin: Origin) -> None:
    """The ticker shares the limit out again each interval; a change is shared out
    at once, as the PUT returns, whatever the interval (a minute here)."""
    _app, client, watch = service(ARW_DL_RATE_LIMIT=MiB, ARW_DL_PROGRESS_INTERVAL_MS=60_000)
    res = origin.add("/i.gguf", payload(4 * MiB, seed=133))
    post_download(client, "i", origin.url("/i.gguf"), sha256=res.sha256)
    watch.status("i", "started")
    lifted = time.monotonic()
    assert client.put("/settings/rate-limit", json={"bytes_per_sec": None}).status_code == 200
    assert watch.terminal("i", timeout=10)["status"] == "complete"
    # At 1 MiB/s until the next tick, the rest would take three seconds or more.
    assert time.monotonic() - lifted < 2.0


def test_a_download_can_have_its_own_limit(service: Service, origin: Origin) -> None:
    _app, client, watch = service()
    res = origin.add("/o.gguf", payload(2 * MiB, seed=132))
    r = post_download(client, "o", origin.url("/o.gguf"), rate_limit=2 * MiB)
    assert r.status_code == 202
    assert watch.terminal("o")["status"] == "complete"
    assert 0.7 <= _elapsed(watch, "o") <= 2.5  # 2 MiB at 2 MiB/s
    assert len(res.data) == 2 * MiB


def test_a_download_asked_again_with_a_higher_limit_speeds_up_at_once(service: Service, origin: Origin) -> None:
    # Progress events (and the ticker that also shares the limits out) a minute
    # apart: only the POST itself can carry the new limit to the running download.
    _app, client, watch = service(ARW_DL_PROGRESS_INTERVAL_MS=60_000)
    res = origin.add("/h.gguf", payload(2 * MiB, seed=134))
    assert post_download(client, "h", origin.url("/h.gguf"), rate_limit=128 * KiB).status_code == 202
    watch.status("h", "started")  # 2 MiB at 128 KiB/s: 16 s
    again = post_download(client, "h", origin.url("/h.gguf"), rate_limit=64 * MiB)
    assert again.status_code == 202 and again.json["status"] == "started"
    done = watch.terminal("h", timeout=4)
    assert done["status"] == "complete" and done["bytes"] == len(res.data)


@pytest.mark.parametrize("value", ["fast", 0, -1, 1.5, 0.0, True, [1], 1e13])
def test_a_limit_must_be_a_whole_positive_number_or_null(client: Any, value: Any) -> None:
    r = client.put("/settings/rate-limit", json={"bytes_per_sec": value})
    assert r.status_code == 400 and r.json["code"] == "invalid-rate-limit"
    r = client.post("/models/download", json={"id": "m", "url": "http://127.0.0.1:9/m", "rate_limit": value})
    assert r.status_code == 400 and r.json["code"] == "invalid-rate-limit"
    assert client.put("/settings/rate-limit", json={}).json["code"] == "invalid-rate-limit"


def test_the_connections_of_a_download_share_its_limit(service: Service, origin: Origin) -> None:
    _app, client, watch = service(ARW_DL_RATE_LIMIT=8 * MiB, ARW_DL_SEGMENTS=4, ARW_DL_SEGMENT_MIN_MB=1,
                                 ARW_DL_CHUNK_BYTES=256 * KiB)
    res = origin.add("/s.gguf", payload(16 * MiB, seed=133))
    post_download(client, "s", origin.url("/s.gguf"), sha256=res.sha256)
    assert watch.terminal("s", timeout=15)["status"] == "complete"
    assert max(p.get("segments", 0) for p in watch.payloads("s")) > 1
    assert 1.5 <= _elapsed(watch, "s") <= 3.0  # 16 MiB at 8 MiB/s for all four connections: 2 s


def test_a_whole_number_written_as_a_float_is_a_limit(client: Any) -> None:
    r = client.put("/settings/rate-limit", json={"bytes_per_sec": 5e6})
    assert r.status_code == 200 and r.json == {"bytes_per_sec": 5_000_000}
