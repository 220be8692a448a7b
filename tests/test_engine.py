"""The engine's shape: the status machine, the continuation rule and the plan, and
what they mean through the real service (a re-signed url, a job taken over)."""

from __future__ import annotations

import hashlib
import itertools
import os
from typing import Any

import pytest

from arw_models.engine.plan import Plan, Span, continuation, same_object
from arw_models.service.jobs import MOVES, TERMINAL, DownloadJob, Status
from arw_models.service.speed import Speed
from arw_models.store.sidecar import Sidecar

from .support.app import Service, Watch, post_download
from .support.helpers import listing, models_dir, read, write_partial
from .support.origin import Origin, payload

KiB = 1024
MiB = 1024 * KiB


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

# -- the status machine ----------------------------------------------------------------

ALLOWED = {
    Status.QUEUED: {"started", "resumed", "retrying", "verifying", "error", "canceled", "paused", "interrupted"},
    Status.STARTED: {"started", "resumed", "downloading", "retrying", "verifying", "error", "canceled", "paused",
                     "interrupted"},
    Status.RESUMED: {"started", "resumed", "downloading", "retrying", "verifying", "error", "canceled", "paused",
                     "interrupted"},
    Status.DOWNLOADING: {"started", "resumed", "downloading", "retrying", "verifying", "error", "canceled",
                         "paused", "interrupted"},
    Status.RETRYING: {"started", "resumed", "retrying", "verifying", "error", "canceled", "paused", "interrupted"},
    Status.VERIFYING: {"complete", "retrying", "error", "canceled", "paused", "interrupted"},
    Status.COMPLETE: set(),
    Status.ERROR: set(),
    Status.CANCELED: set(),
    Status.PAUSED: set(),
    Status.INTERRUPTED: set(),
}


def job_in(status: Status, published: list[dict[str, Any]]) -> DownloadJob:
    """A job brought to ``status`` by allowed moves."""
    job = DownloadJob("m", "http://o/m", None, "local", published.append)
    path = {
        Status.QUEUED: [],
        Status.STARTED: [Status.STARTED],
        Status.RESUMED: [Status.RESUMED],
        Status.DOWNLOADING: [Status.STARTED, Status.DOWNLOADING],
        Status.RETRYING: [Status.RETRYING],
        Status.VERIFYING: [Status.STARTED, Status.VERIFYING],
        Status.COMPLETE: [Status.STARTED, Status.VERIFYING, Status.COMPLETE],
        Status.ERROR: [Status.ERROR],
        Status.CANCELED: [Status.CANCELED],
        Status.PAUSED: [Status.PAUSED],
        Status.INTERRUPTED: [Status.INTERRUPTED],
    }[status]
    for step in path:
        assert job.transition(step) is not None
    assert job.status is status
    published.clear()
    return job


def test_the_table_of_moves_is_the_one_the_service_keeps() -> None:
    assert {k: {s.value for s in v} for k, v in MOVES.items()} == {k: v for k, v in ALLOWED.items()}
    assert all(not MOVES[s] for s in TERMINAL)


def test_a_status_prints_as_its_wire_value() -> None:
    """A host that logs or formats a job's status gets the word its events carry."""
    assert [str(s) for s in (Status.QUEUED, Status.COMPLETE)] == ["queued", "complete"]
    assert f"{Status.PAUSED}" == "paused"


@pytest.mark.parametrize(("start", "to"), list(itertools.product(Status, Status)),
                         ids=lambda s: s.value)
def test_each_move_is_made_or_refused_as_the_table_says(start: Status, to: Status) -> None:
    published: list[dict[str, Any]] = []
    job = job_in(start, published)
    moved = job.transition(to, progress=1)
    if to.value in ALLOWED[start]:
        assert moved == {"id": "m", "status": to.value, "progress": 1}
        assert job.status is to
        if to in TERMINAL:
            assert published == []  # told when the job is over
            assert job.close() == moved and published == [moved] and job.done.is_set()
        else:
            assert published == [moved]
    else:
        assert moved is None and job.status is start and published == []


def test_a_terminal_event_is_told_once_and_nothing_moves_after_it() -> None:
    published: list[dict[str, Any]] = []
    job = job_in(Status.STARTED, published)
    assert job.transition(Status.CANCELED) is not None
    assert job.transition(Status.ERROR) is None and job.transition(Status.COMPLETE) is None
    assert job.close() == {"id": "m", "status": "canceled"}
    assert job.close() is None
    assert published == [{"id": "m", "status": "canceled"}]
    assert job.stop("cancel") is False  # nothing left to stop


def test_a_stop_before_the_install_wins_and_one_after_it_finds_the_job_over() -> None:
    published: list[dict[str, Any]] = []
    installed: list[int] = []
    stopped = job_in(Status.VERIFYING, published)
    assert stopped.stop("cancel") is True
    assert stopped.finish(lambda: installed.append(1) or {}) is None
    assert installed == [] and stopped.status is Status.VERIFYING
    done = job_in(Status.VERIFYING, published)
    assert done.finish(lambda: {"file": "m.gguf"}) == {"id": "m", "status": "complete", "file": "m.gguf"}
    assert done.stop("cancel") is False and not done.stop_event.is_set()


def test_the_first_reason_to_stop_is_kept() -> None:
    job = job_in(Status.STARTED, [])
    job.stop("cancel")
    job.stop("shutdown")
    assert job.stop_reason == "cancel" and job.stop_event.is_set()


def test_a_stop_can_forbid_a_move() -> None:
    job = job_in(Status.STARTED, [])
    job.stop("cancel")
    assert job.transition(Status.RETRYING, unless_stopped=True) is None
    assert job.status is Status.STARTED


def test_progress_is_told_only_for_new_bytes_with_speed_and_eta() -> None:
    published: list[dict[str, Any]] = []
    job = job_in(Status.QUEUED, published)
    job.clock = lambda: 0.0
    assert job.tick(0.0) is None  # before the origin answered, the counters mean nothing
    job.began(0, 1000)
    assert published == [{"id": "m", "status": "started", "total": 1000}]
    assert job.tick(1.0) is None  # no byte yet
    job.downloaded = 100
    job.segments = 1
    fields = job.tick(2.0)
    # 100 bytes since the start at 0.0: 50 bytes/s, 900 to go.
    assert fields == {"downloaded": 100, "total": 1000, "progress": 10, "speed": 50, "eta_s": 18.0, "segments": 1}
    assert job.tick(3.0) is None  # nothing new
    job.downloaded = 400
    fields = job.tick(4.0)
    # Over the last 3 s only (the window): 400 bytes since the sample at 1.0.
    assert fields is not None and fields["speed"] == 133 and fields["eta_s"] == 4.5
    job.downloaded = 700
    fields = job.tick(5.0)  # 600 bytes in the last 3 s: 200/s, 300 to go; eta to a tenth
    assert fields is not None and fields["eta_s"] == 1.5
    job.downloaded = 950
    fields = job.tick(6.0)  # 850 bytes in 3 s: 50 to go in 0.176... s, told to a tenth
    assert fields is not None and fields["speed"] == 283 and fields["eta_s"] == 0.2


def test_eta_below_a_byte_a_second_and_once_every_byte_is_in() -> None:
    job = job_in(Status.QUEUED, [])
    job.clock = lambda: 0.0
    job.began(0, 10)
    job.downloaded = 2
    fields = job.tick(4.0)  # 2 bytes in 4 s: half a byte a second, 8 to go
    assert fields is not None and fields["speed"] == 0 and fields["eta_s"] == 16.0
    job.downloaded = 10
    fields = job.tick(8.0)  # 8 bytes in the last 4 s, none to go: nothing left to wait for
    assert fields is not None and fields["speed"] == 2 and fields["eta_s"] == 0.0


def test_the_speed_of_a_new_attempt_counts_from_where_it_began() -> None:
    """A retry resumes at the bytes the last attempt left: its speed is of its own
    bytes since it began, not averaged with the earlier attempt and the wait between."""
    job = job_in(Status.QUEUED, [])
    now = [0.0]
    job.clock = lambda: now[0]
    job.began(0, 1000)
    job.downloaded = 500
    fields = job.tick(1.0)
    assert fields is not None and fields["speed"] == 500
    job.transition(Status.RETRYING, quiet=True)
    now[0] = 10.0
    job.began(500, 1000)  # the retry, answered from byte 500
    job.downloaded = 600
    fields = job.tick(11.0)
    assert fields is not None and fields["speed"] == 100 and fields["eta_s"] == 4.0


def test_a_window_shorter_than_the_ticks_still_gives_the_last_intervals_rate() -> None:
    """The speed keeps at least two samples: however short its window, the rate is
    that of the last interval, never nothing."""
    speed = Speed(window=0.0)
    speed.restart(0.0, 0)
    speed.sample(1.0, 100)
    speed.sample(2.0, 300)
    assert speed.rate(2.0, 300) == 200.0
    assert Speed().rate(5.0, 100) == 0.0  # no sample yet: no rate


def test_progress_is_the_whole_percent_done_and_never_above_100() -> None:
    """The percent a client shows is rounded down (75.5% done is 75, not 76) and is
    capped at 100 even if the byte counter runs past the origin's total."""
    job = job_in(Status.STARTED, [])
    job.total, job.downloaded = 200, 151
    assert job.progress_fields() == {"downloaded": 151, "total": 200, "progress": 75}
    job.downloaded = 250
    assert job.progress_fields() == {"downloaded": 250, "total": 200, "progress": 100}


def test_progress_stops_once_the_job_verifies() -> None:
    job = job_in(Status.STARTED, [])
    job.began(0, None)
    job.downloaded = 10
    job.transition(Status.VERIFYING, quiet=True)
    assert job.tick(1.0) is None


# -- the continuation rule ------------------------------------------------------------------

URL = "https://cdn.example/o/m.gguf?sig=1&exp=9"
SIGNED_AGAIN = "https://cdn.example/o/m.gguf?sig=2&exp=10"
SHA = "a" * 64


@pytest.mark.parametrize(("sidecar", "size", "url", "sha256", "offset", "validator"), [
    (None, None, URL, None, 0, None),
    ({"url": URL, "etag": '"e"'}, 0, URL, None, 0, None),
    (None, 100, URL, SHA, 0, None),  # bytes of unknown origin
    ({"url": URL, "etag": '"e"', "total": 1000}, 100, URL, None, 100, '"e"'),
    ({"url": URL, "last_modified": "Wed, 25 Nov 2026 10:00:00 GMT"}, 100, URL, None, 100,
     "Wed, 25 Nov 2026 10:00:00 GMT"),
    ({"url": URL, "etag": 'W/"e"'}, 100, URL, None, 0, None),  # a weak ETag identifies nothing
    ({"url": URL}, 100, URL, None, 0, None),  # nothing would catch a changed file
    ({"url": URL}, 100, URL, SHA, 100, None),  # the digest will
    ({"url": URL, "etag": '"e"'}, 100, SIGNED_AGAIN, None, 100, '"e"'),  # re-signed, same strong ETag
    ({"url": URL, "last_modified": "x"}, 100, SIGNED_AGAIN, None, 0, None),  # a date is not enough
    ({"url": URL, "etag": '"e"'}, 100, "https://other.example/m.gguf", None, 0, None),
    ({"url": URL, "etag": '"e"'}, 100, "https://other.example/m.gguf", SHA, 100, '"e"'),
    ({"url": URL, "etag": '"e"', "total": 50}, 100, URL, SHA, 0, None),  # more on disk than the file has
    ({"url": URL, "etag": '"e"', "total": 100}, 100, URL, None, 100, '"e"'),  # all of it: nothing left to fetch
    ({"url": URL, "etag": '"e"'}, 1, URL, None, 1, '"e"'),  # one byte is kept too
], ids=["nothing", "empty-part", "no-sidecar", "same-url-etag", "same-url-date", "weak-etag", "no-validator",
        "digest", "re-signed", "re-signed-date-only", "other-url", "other-url-digest", "too-long", "whole",
        "one-byte"])
def test_the_continuation_rule(sidecar: Any, size: int | None, url: str, sha256: str | None, offset: int,
                               validator: str | None) -> None:
    decision = continuation(Sidecar.from_json(sidecar), size, url, sha256)
    assert (decision.offset, decision.validator) == (offset, validator), decision.reason
    assert decision.resumes is (offset > 0) and decision.reason


def test_same_object_ignores_the_query_only() -> None:
    assert same_object(URL, SIGNED_AGAIN)
    assert same_object("HTTPS://CDN.example/o/m.gguf", "https://cdn.example/o/m.gguf")
    assert not same_object(URL, "https://cdn.example/o/other.gguf?sig=1")
    assert not same_object(URL, "http://cdn.example/o/m.gguf?sig=1")
    assert not same_object(URL, "https://cdn.example:444/o/m.gguf?sig=1")
    # A url that cannot be parsed (a bracketed host left open) is no url of the same object.
    assert not same_object("https://[::1/o/m.gguf", "https://[::1/o/m.gguf")


def test_a_plan_round_trips_through_its_record_and_refuses_nonsense() -> None:
    plan = Plan.single(1000, 300)
    assert plan.to_json() == [[0, 1000, 300]] and plan.durable == 300
    assert plan.spans[0].position == 300 and plan.spans[0].remaining == 700
    again = Plan.from_json(1000, plan.to_json())
    assert again == plan
    assert Plan.single(None).spans == [Span(0, None, 0)] and Plan.single(None).spans[0].remaining is None
    # A stream of unknown size is recorded with no end, and read back as it was.
    assert Plan.from_json(None, Plan.single(None, 5).to_json()) == Plan.single(None, 5)
    for bad in (None, [], [[0, 10]], [[0, 10, 11]], [[-1, 10, 0]], [[None, 10, 0]], [[0, 10, None]], [[0, 10, True]],
                "x"):
        assert Plan.from_json(10, bad) is None, bad


# -- through the service ----------------------------------------------------------------------


def test_a_re_signed_url_of_the_same_object_continues_the_part(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    res = origin.add("/o/m.gguf", payload(MiB, seed=70))
    have = 300 * KiB
    write_partial(app, "m", res.data[:have], {"url": origin.url("/o/m.gguf?sig=old"), "etag": res.etag,
                                              "total": len(res.data)})
    r = post_download(client, "m", origin.url("/o/m.gguf?sig=new"))
    assert r.status_code == 202 and r.json["status"] == "resumed"
    assert watch.terminal("m")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "m.gguf")) == res.data
    assert origin.bytes_sent("/o/m.gguf") == len(res.data) - have  # nothing fetched twice
    [seen] = origin.requests_for("/o/m.gguf")
    assert seen.range == f"bytes={have}-" and seen.headers["if-range"] == res.etag
    assert watch.statuses("m")[0] == "resumed"


def test_a_re_signed_url_whose_object_changed_starts_over(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    old = payload(MiB, seed=71)
    res = origin.add("/o/c.gguf", old)
    old_etag = res.etag
    res.replace(payload(MiB, seed=72))
    write_partial(app, "c", old[:300 * KiB], {"url": origin.url("/o/c.gguf?sig=old"), "etag": old_etag,
                                             "total": len(old)})
    post_download(client, "c", origin.url("/o/c.gguf?sig=new"))
    assert watch.terminal("c")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "c.gguf")) == res.data


def test_a_post_that_differs_takes_over_the_download_resumed_at_start(make_app: Any, origin: Origin) -> None:
    """After a restart the service resumes a .part with what the earlier run asked for;
    the file changed meanwhile, and a POST with the new digest takes the job over
    instead of waiting for the old one to fail its checksum."""
    old, new = payload(2 * MiB, seed=73), payload(2 * MiB, seed=74)
    res = origin.add("/t.gguf", old, stall_after=0)
    old_etag = res.etag
    res.replace(new)  # same url, new version: the automatic resume is answered in full and stalls
    url = origin.url("/t.gguf")
    app = make_app(ARW_DL_RESUME_ON_START=True, ARW_DL_IDLE_TIMEOUT_SECS=30)
    write_partial(app, "t", old[:MiB], {"url": url, "etag": old_etag, "total": len(old),
                                        "sha256": sha256_of(old)})
    watch = Watch(app)  # starts the service: it resumes "t" on its own
    client = app.test_client()
    assert res.stalled.wait(5)
    r = post_download(client, "t", url, sha256=sha256_of(new))
    assert r.status_code == 202, r.json
    res.release.set()
    done = watch.until(lambda e: e.payload.get("id") == "t" and e.payload.get("status") in ("complete", "error"))
    assert done.payload["status"] == "complete" and done.payload["sha256"] == sha256_of(new)
    assert read(os.path.join(models_dir(app), "t.gguf")) == new
    # The old job left quietly: no error, no cancel.
    assert [s for s in watch.statuses("t") if s in ("error", "canceled")] == []
    assert origin.bytes_sent("/t.gguf") <= len(new) + 256 * KiB
    assert listing(app) == ["t.gguf"]
    watch.close()
