"""Slots, retry timers and progress: a job that waits to retry gives its slot away,
and progress is published from the counters once an interval, bursts and stalls
alike; a queue runs one job at a time in order, and a queued job that is canceled
never reaches the origin."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from arw_models import ArwModels, signals
from arw_models.service.jobs import Status
from arw_models.service.slots import Slots

from .support.app import Service, post_download
from .support.helpers import (
    cancel,
    listing,
    models_dir,
    read,
)
from .support.origin import Origin, payload

KiB = 1024
MiB = 1024 * KiB


def test_jobs_waiting_to_retry_give_their_slots_to_a_queued_one(service: Service, origin: Origin) -> None:
    _, client, watch = service(ARW_MODELS_MAX_CONC=2, ARW_DL_RETRIES=50, ARW_DL_RETRY_BACKOFF_MS=200,
                                 ARW_DL_RETRY_BACKOFF_MAX_MS=400)
    good = origin.add("/good.gguf", payload(256 * KiB, seed=80))
    for name in ("dead1", "dead2"):
        # An origin that keeps answering 503 (a refused connection would end the job soon).
        origin.add(f"/{name}.gguf", payload(KiB), statuses=[(503, {})] * 100)
        assert post_download(client, name, origin.url(f"/{name}.gguf")).status_code == 202
    assert post_download(client, "good", origin.url("/good.gguf"), sha256=good.sha256).status_code == 202
    done = watch.terminal("good", timeout=10)
    assert done["status"] == "complete"
    # Meanwhile the dead ones kept waiting to retry, and are still doing so.
    for name in ("dead1", "dead2"):
        assert "retrying" in watch.statuses(name)
        assert client.get(f"/models/downloads/{name}").json["status"] == "retrying"
        assert cancel(client, name).json == {"id": name, "status": "canceled"}
        assert watch.terminal(name)["status"] == "canceled"


def test_a_cancel_of_a_job_waiting_to_retry_ends_it_at_once(service: Service, origin: Origin) -> None:
    _, client, watch = service(ARW_DL_RETRY_BACKOFF_MS=30_000, ARW_DL_RETRY_BACKOFF_MAX_MS=30_000)
    origin.add("/d.gguf", payload(KiB), statuses=[(503, {})])
    post_download(client, "d", origin.url("/d.gguf"))
    retrying = watch.status("d", "retrying")
    assert retrying["code"] == "http-status" and retrying["attempt"] == 1 and retrying["delay_ms"] >= 15_000
    t0 = time.monotonic()
    assert cancel(client, "d").json == {"id": "d", "status": "canceled"}
    assert time.monotonic() - t0 < 2
    assert watch.terminal("d")["status"] == "canceled"
    assert watch.statuses("d") == ["retrying", "canceled"]


def test_a_burst_then_a_stall_shows_the_burst_within_an_interval(service: Service, origin: Origin) -> None:
    _, client, watch = service(ARW_DL_PROGRESS_INTERVAL_MS=100, ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/burst.gguf", payload(4 * MiB, seed=81), stall_after=MiB)
    post_download(client, "b", origin.url("/burst.gguf"))
    assert res.stalled.wait(5)
    # The stall has begun: no more bytes come, yet the burst is told.
    shown = watch.until(lambda e: e.payload.get("id") == "b" and e.payload.get("downloaded") == MiB, timeout=3)
    assert shown.payload["status"] == "downloading"
    assert shown.payload["total"] == 4 * MiB and shown.payload["progress"] == 25
    assert shown.payload["segments"] == 1 and shown.payload["speed"] > 0 and shown.payload["eta_s"] > 0
    mark = watch.hub.last_id
    res.release.set()
    assert watch.terminal("b")["status"] == "complete"
    progress = [e.payload for e in watch.events
                if e.id is not None and e.id > mark and e.payload.get("status") == "downloading"]
    assert all(p["downloaded"] > MiB for p in progress)  # nothing is told twice


def test_progress_events_are_spaced_by_the_interval(service: Service, origin: Origin) -> None:
    _, client, watch = service(ARW_DL_PROGRESS_INTERVAL_MS=200, ARW_DL_CHUNK_BYTES=16 * KiB)
    origin.add("/slow.gguf", payload(2 * MiB, seed=82), throttle=2 * MiB)  # about a second, 128 chunks
    post_download(client, "s", origin.url("/slow.gguf"))
    assert watch.terminal("s")["status"] == "complete"
    progress = [p for p in watch.payloads("s") if p["status"] == "downloading"]
    # One each 200 ms (not one per chunk): about five, with slack for a loaded machine.
    assert 2 <= len(progress) <= 9, [p["downloaded"] for p in progress]
    counts = [p["downloaded"] for p in progress]
    assert counts == sorted(set(counts))


def test_retry_events_count_attempts_and_the_job_counts_retries(service: Service, origin: Origin) -> None:
    _, client, watch = service()
    res = origin.add("/r.gguf", payload(100 * KiB, seed=83), statuses=[(503, {}), (503, {}), (503, {})])
    post_download(client, "r", origin.url("/r.gguf"), sha256=res.sha256)
    assert watch.terminal("r")["status"] == "complete"
    attempts = [p["attempt"] for p in watch.payloads("r") if p["status"] == "retrying"]
    assert attempts == [1, 2, 3]
    assert client.get("/models/downloads/r").json["retries"] == 3


def _statuses(watch: Any, model_id: str) -> list[str]:
    return [s for s in watch.statuses(model_id) if s != "downloading"]


def test_a_job_that_waited_to_retry_resumes_where_it_was(service: Service, origin: Origin) -> None:
    _, client, watch = service()
    res = origin.add("/w.gguf", payload(MiB, seed=84), drop_after=300 * KiB)
    post_download(client, "w", origin.url("/w.gguf"), sha256=res.sha256)
    assert watch.terminal("w")["status"] == "complete"
    assert _statuses(watch, "w") == ["started", "retrying", "resumed", "complete"]
    resumed = next(p for p in watch.payloads("w") if p["status"] == "resumed")
    assert resumed["offset"] == 300 * KiB
    assert origin.bytes_sent("/w.gguf") == MiB


def test_progress_goes_on_when_a_retry_is_taken_by_another_slot_before_the_first_lets_go(
        service: Service, origin: Origin) -> None:
    """A retry timer may fire, and a free slot take the job, while the slot whose
    attempt failed is still on its way out (here: held in a host's receiver of the
    retrying signal). The ticker must keep publishing the new attempt's progress."""
    app, client, watch = service(ARW_MODELS_MAX_CONC=2)
    data = payload(1024 * 1024, seed=41)
    origin.add("/r.gguf", data, drop_after=256 * 1024, throttle=1024 * 1024)
    resumed = threading.Event()

    def hold_the_failed_slot(sender: Any, payload: dict[str, Any]) -> None:
        if payload["id"] == "r":
            resumed.wait(10)  # the second slot has the job and its answer before this one returns

    def on_started(sender: Any, payload: dict[str, Any]) -> None:
        if payload["id"] == "r" and payload["status"] == "resumed":
            resumed.set()

    with signals.download_retrying.connected_to(hold_the_failed_slot, sender=app), \
            signals.download_started.connected_to(on_started, sender=app):
        post_download(client, "r", origin.url("/r.gguf"))
        assert watch.terminal("r")["status"] == "complete"
    after = watch.statuses("r")[watch.statuses("r").index("resumed"):]
    # About 0.75 s of bytes after the resume, at most 10 ms between two progress events.
    assert after.count("downloading") >= 3, after


def test_cancel_of_a_queued_job_never_reaches_the_origin(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_MODELS_MAX_CONC=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    first = origin.add("/first.gguf", payload(MiB, seed=7), stall_after=64 * KiB)
    origin.add("/second.gguf", payload(1000, seed=8))
    post_download(client, "first", origin.url("/first.gguf"), sha256=first.sha256)
    assert first.stalled.wait(5)
    r = post_download(client, "second", origin.url("/second.gguf"))
    assert r.status_code == 202 and r.json["status"] == "queued"
    watch.status("second", "queued")
    c = cancel(client, "second")
    assert c.status_code == 200 and c.json == {"id": "second", "status": "canceled"}
    watch.status("second", "canceled")
    assert client.get("/models/downloads/second").json["status"] == "canceled"
    assert [i["id"] for i in client.get("/models/downloads").json["items"]] == ["first"]

    first.release.set()  # the origin ends that response early; the worker resumes it
    assert watch.terminal("first")["status"] == "complete"
    assert origin.requests_for("/second.gguf") == []
    assert watch.statuses("second") == ["queued", "canceled"]
    assert listing(app) == ["first.gguf"]


def test_a_queue_of_three_runs_one_at_a_time_in_order(service: Service, origin: Origin) -> None:
    # A retry waits (0.5-1 s) long enough for both small queued jobs to run meanwhile.
    app, client, watch = service(ARW_MODELS_MAX_CONC=1, ARW_DL_RETRY_BACKOFF_MS=1000,
                                 ARW_DL_RETRY_BACKOFF_MAX_MS=1000)
    a = origin.add("/q/a.gguf", payload(512 * KiB, seed=11), stall_after=64 * KiB)
    b = origin.add("/q/b.gguf", payload(300 * KiB, seed=12))
    c = origin.add("/q/c.gguf", payload(200 * KiB, seed=13))
    assert post_download(client, "a", origin.url("/q/a.gguf"), sha256=a.sha256).json["status"] == "started"
    assert a.stalled.wait(5)
    assert post_download(client, "b", origin.url("/q/b.gguf"), sha256=b.sha256).json["status"] == "queued"
    assert post_download(client, "c", origin.url("/q/c.gguf"), sha256=c.sha256).json["status"] == "queued"
    listed = client.get("/models/downloads").json["items"]
    assert [(i["id"], i["status"]) for i in listed][1:] == [("b", "queued"), ("c", "queued")]
    a.release.set()  # a's connection ends short: it waits to retry, and gives its slot away
    watch.until(lambda e: len({p["id"] for p in watch.payloads() if p["status"] == "complete"}) == 3)

    # The origin saw one transfer at a time: a, then b and c in their order while a
    # waited to retry (its slot given away), then a again.
    paths = [s.path for s in origin.seen]
    order = [p for i, p in enumerate(paths) if i == 0 or paths[i - 1] != p]
    assert order == ["/q/a.gguf", "/q/b.gguf", "/q/c.gguf", "/q/a.gguf"]
    assert origin.requests_for("/q/a.gguf")[1].range == f"bytes={64 * KiB}-"
    # And the events never show two transfers at once.
    running: set[str] = set()
    for p in watch.payloads():
        if p["status"] in ("complete", "error", "canceled", "retrying"):
            running.discard(p["id"])
        elif p["status"] != "queued":
            running.add(p["id"])
            assert len(running) <= 1, (p, running)
    assert watch.statuses("b")[0] == "queued" and watch.statuses("c")[0] == "queued"
    for model_id, res in (("a", a), ("b", b), ("c", c)):
        assert read(os.path.join(models_dir(app), f"{model_id}.gguf")) == res.data
    assert sorted(m["id"] for m in client.get("/models").json["items"]) == ["a", "b", "c"]


def test_a_retry_due_sooner_than_the_progress_interval_runs_when_it_is_due(service: Service,
                                                                         origin: Origin) -> None:
    """The ticker sleeps until the next retry is due, not a whole interval: here a
    retry due in 50 to 100 ms, and progress once every 3 s."""
    _, client, watch = service(ARW_DL_PROGRESS_INTERVAL_MS=3000, ARW_DL_RETRY_BACKOFF_MS=100,
                               ARW_DL_RETRY_BACKOFF_MAX_MS=100)
    res = origin.add("/soon.gguf", payload(100 * KiB, seed=86), statuses=[(503, {})])
    post_download(client, "soon", origin.url("/soon.gguf"), sha256=res.sha256)
    watch.status("soon", "retrying")
    t0 = time.monotonic()
    assert watch.terminal("soon")["status"] == "complete"
    assert time.monotonic() - t0 < 1.5


def test_shutdown_returns_once_every_slot_has_ended_and_its_job_reads_interrupted(
        service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/down.gguf", payload(MiB, seed=87), stall_after=256 * KiB)
    post_download(client, "down", origin.url("/down.gguf"))
    assert res.stalled.wait(5)
    watch.status("down", "downloading")
    manager = ArwModels.state(app).manager
    manager.shutdown()
    slots = [t for t in threading.enumerate() if t.name.startswith("arw-download-") and t.is_alive()]
    job = manager.find("down")
    assert slots == [] and job is not None and job.done.is_set()
    assert job.status is Status.INTERRUPTED
    res.release.set()
    assert listing(app) == ["down.part", "down.part.json"]  # kept for the next start


class _Held:
    """A job for the slots alone: it runs until released; it has no progress."""

    def __init__(self, released: bool = False) -> None:
        self.release = threading.Event()
        if released:
            self.release.set()

    def tick(self, now: float) -> None:
        return None


def test_a_slot_whose_thread_ended_leaves_the_limit_as_it_was() -> None:
    """A slot's thread ends once the queue is empty; the jobs queued after that
    still get at most ``ARW_MODELS_MAX_CONC`` threads, however many ended before
    (a slot counted off twice would let two downloads run where one may)."""
    lock, started = threading.RLock(), threading.Semaphore(0)

    def run(job: Any) -> None:
        started.release()
        job.release.wait(5)

    slots = Slots(1, 60.0, lock, run, time.monotonic)
    later: list[_Held] = []
    try:
        with lock:
            slots.enqueue(_Held(released=True))
        assert started.acquire(timeout=5)
        with lock:
            ended = list(slots._threads)
        for thread in ended:  # the slot's thread ends with its queue
            thread.join(5)
            assert not thread.is_alive()
        later += [_Held(), _Held()]
        with lock:
            for job in later:
                slots.enqueue(job)
            threads = [t for t in slots._threads if t.is_alive()]
        assert len(threads) == 1, threads
        assert started.acquire(timeout=5)
    finally:
        for job in later:
            job.release.set()
        slots.close()
