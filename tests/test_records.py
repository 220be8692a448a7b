"""What a job, its sidecar and the listings record, through the edges where a
wrong number would go unnoticed: names across resumes, validators across ranges,
offsets, a zero-byte file, a service that is shutting down, the jitter of retries."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from arw_models import ArwModels
from arw_models.engine import backoff_delay
from arw_models.store import sidecar as sidecar_store
from arw_models.store.sidecar import Sidecar
from arw_models.store.storage import StateDir

from .support.app import Service, post_download
from .support.helpers import listing, models_dir, part, read, sidecar, write_partial
from .support.origin import Origin, payload

KiB = 1024
MiB = 1024 * KiB


def test_a_resumed_download_keeps_the_name_its_origin_gave(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    res = origin.add("/dl", payload(MiB, seed=90), content_disposition='attachment; filename="named.gguf"',
                     drop_after=300 * KiB)
    post_download(client, "n", origin.url("/dl?id=7"), sha256=res.sha256)
    assert watch.terminal("n")["file"] == "named.gguf"
    assert listing(app) == ["named.gguf"]


def test_a_resume_after_a_restart_keeps_the_name_in_the_sidecar(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    res = origin.add("/dl2", payload(MiB, seed=91))
    have = 200 * KiB
    write_partial(app, "r", res.data[:have], {"url": origin.url("/dl2"), "etag": res.etag, "total": len(res.data),
                                              "filename": "from-before.gguf"})
    post_download(client, "r", origin.url("/dl2"))
    assert watch.terminal("r")["file"] == "from-before.gguf"


def test_ranges_without_validators_keep_the_recorded_one_for_the_next_resume(
    service: Service, origin: Origin,
) -> None:
    """The origin's 206s carry no ETag: the bytes on disk are still those of the
    version recorded when they began, so every later resume asks with that ETag."""
    _app, client, watch = service()
    res = origin.add("/v.gguf", payload(MiB, seed=92), drop_after=256 * KiB, drops=3, range_validators=False)
    post_download(client, "v", origin.url("/v.gguf"), sha256=res.sha256)
    assert watch.terminal("v")["status"] == "complete"
    seen = origin.requests_for("/v.gguf")
    assert [s.status for s in seen] == [200, 206, 206, 206]
    assert all(s.headers.get("if-range") == res.etag for s in seen[1:])
    assert origin.bytes_sent("/v.gguf") == len(res.data)


def test_the_job_records_its_offset_and_its_file(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/o.gguf", payload(MiB, seed=93), stall_after=100 * KiB)
    have = 300 * KiB
    write_partial(app, "o", res.data[:have], {"url": origin.url("/o.gguf"), "etag": res.etag, "total": len(res.data)})
    post_download(client, "o", origin.url("/o.gguf"))
    assert watch.status("o", "resumed")["offset"] == have
    snap = client.get("/models/downloads/o").json
    assert snap["offset"] == have and snap["status"] in ("resumed", "downloading")
    res.release.set()  # the stalled answer ends short: one more resume finishes it
    assert watch.terminal("o")["status"] == "complete"
    assert ArwModels.state(app).manager.wait("o", 5)
    done = client.get("/models/downloads/o").json
    assert done["status"] == "complete" and done["file"] == "o.gguf" and done["downloaded"] == len(res.data)
    assert "resumable" not in done


def test_a_short_body_that_uses_up_the_retries_keeps_its_part(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_RETRIES=2)
    res = origin.add("/s.gguf", payload(MiB, seed=94), drop_after=0, drops=100)
    post_download(client, "s", origin.url("/s.gguf"))
    err = watch.terminal("s")
    assert err["code"] == "size-mismatch"
    assert [p["attempt"] for p in watch.payloads("s") if p["status"] == "retrying"] == [1, 2]
    assert os.path.exists(part(app, "s")) and os.path.exists(sidecar(app, "s"))  # a later POST may resume
    assert client.get("/models/downloads/s").json["resumable"] is True
    assert len(res.data) == MiB


def test_a_zero_byte_file_is_downloaded_and_verified(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    origin.add("/empty.bin", b"")
    empty = hashlib.sha256(b"").hexdigest()
    post_download(client, "e", origin.url("/empty.bin"), sha256=empty)
    done = watch.terminal("e")
    assert done["status"] == "complete" and done["bytes"] == 0 and done["sha256"] == empty
    assert read(os.path.join(models_dir(app), "empty.bin")) == b""
    assert client.get("/models/downloads/e").json["total"] == 0


def test_a_download_of_no_announced_size_says_its_size_once_complete(service: Service, origin: Origin) -> None:
    """The origin never said how big the file is (a chunked body): once it is
    installed, the job says its total and 100 percent, as any complete download."""
    _, client, watch = service()
    res = origin.add("/c.gguf", payload(100 * KiB, seed=96), chunked=True)
    post_download(client, "c", origin.url("/c.gguf"), sha256=res.sha256)
    assert watch.terminal("c")["status"] == "complete"
    job = client.get("/models/downloads/c").json
    assert (job["downloaded"], job["total"], job["progress"]) == (len(res.data), len(res.data), 100)


def test_a_resumable_listing_shows_its_percent(service: Service, origin: Origin) -> None:
    app, client, _watch = service()
    write_partial(app, "p", b"x" * 250, {"url": origin.url("/p.gguf"), "etag": '"e"', "total": 1000})
    [item] = client.get("/models/downloads").json["items"]
    assert (item["id"], item["status"], item["downloaded"], item["total"], item["progress"]) == (
        "p", "resumable", 250, 1000, 25)


def test_a_post_during_shutdown_is_refused(service: Service, origin: Origin) -> None:
    app, client, _watch = service()
    ArwModels.state(app).manager.shutdown()
    r = post_download(client, "late", origin.url("/late.gguf"))
    assert r.status_code == 503 and r.json["code"] == "shutting-down"


def test_only_the_last_finished_jobs_stay_answerable(service: Service, origin: Origin) -> None:
    """``ARW_JOBS_KEEP`` bounds the job table: once more downloads have ended than it
    keeps, the one that ended longest ago is no longer answered (a download fetched
    again counts from its new end), so the table does not grow with every id ever
    asked for. The models stay installed."""
    app, client, watch = service(ARW_JOBS_KEEP=2)
    for name, seed in (("first", 93), ("second", 94), ("first", 0), ("third", 95)):
        if seed:
            origin.add(f"/{name}.gguf", payload(KiB, seed=seed))
        r = post_download(client, name, origin.url(f"/{name}.gguf"), force=not seed)
        assert r.status_code == 202, r.json
        assert watch.terminal(name)["status"] == "complete"
        assert client.get(f"/models/downloads/{name}").json["status"] == "complete"
    assert len(origin.requests_for("/first.gguf")) == 2  # fetched again, a new job
    assert client.get("/models/downloads/second").status_code == 404
    assert ArwModels.state(app).manager.find("second") is None
    for name in ("first", "third"):
        assert client.get(f"/models/downloads/{name}").json["status"] == "complete"
    assert sorted(m["id"] for m in client.get("/models").json["items"]) == ["first", "second", "third"]


def test_the_backoff_is_jittered_between_half_and_all_of_its_ceiling() -> None:
    asked: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        asked.append((low, high))
        return low

    assert backoff_delay(1, 0.5, 30.0, uniform) == 0.25
    assert backoff_delay(4, 0.5, 30.0, uniform) == 2.0
    assert backoff_delay(20, 0.5, 30.0, uniform) == 15.0
    assert asked == [(0.25, 0.5), (2.0, 4.0), (15.0, 30.0)]


def test_a_gap_is_told_once(make_app: Any) -> None:
    hub = ArwModels.state(make_app()).hub
    sub, _ = hub.subscribe(queue_size=2)
    for n in range(5):
        hub.publish("Test.Event", {"n": n})
    first = sub.get(timeout=0)
    assert first is not None and first[0].kind == "bus.gap" and first[0].payload == {"missed": 3}
    hub.publish("Test.Event", {"n": 5})
    second = sub.get(timeout=0)
    assert second is not None and [e.kind for e in second] == ["Test.Event"]
    hub.unsubscribe(sub)


def test_a_sidecar_record_reads_what_it_knows_and_keeps_what_it_does_not() -> None:
    """A malformed field reads as absent; an unknown one is written back as it was read."""
    data = {"url": "https://example.com/m.gguf", "etag": 5, "total": "100", "rate_limit": 0, "paused": 1,
            "headers": {"Authorization": "Bearer x", "bad": 3}, "accept_ranges": "yes", "ranges": [[0, None, 10]],
            "from_a_later_version": {"kept": True}}
    record = Sidecar.from_json(data)
    assert record is not None
    assert (record.url, record.etag, record.total, record.rate_limit, record.paused, record.accept_ranges) == (
        "https://example.com/m.gguf", None, None, None, True, None)
    assert record.headers == {"Authorization": "Bearer x"}
    assert record.to_json() == {"url": "https://example.com/m.gguf", "paused": True, "ranges": [[0, None, 10]],
                                "headers": {"Authorization": "Bearer x"}, "from_a_later_version": {"kept": True}}
    assert Sidecar.from_json(Sidecar.from_json(record.to_json()).to_json()) == record  # type: ignore[union-attr]
    assert Sidecar.from_json(["not", "an", "object"]) is None


def test_a_sidecar_keeps_every_sound_field_across_a_write_and_a_read(tmp_path: Any) -> None:
    """What a resume trusts (a zero total, the validators, a rate, ranges the origin refused) must read back as
    written; a count that is negative, a bool or not a whole number reads as absent."""
    data = {"id": "m", "url": "https://example.com/m.gguf", "etag": '"v1"', "last_modified": "Mon, 01 Jan 2024",
            "filename": "m.gguf", "sha256": "a" * 64, "provider": "hf", "created_at": "2024-01-01T00:00:00Z",
            "published_sha256": "b" * 64, "total": 0, "rate_limit": 1024, "ranges": [[0, None, 0]],
            "accept_ranges": False, "headers": {"Authorization": "Bearer x"}, "paused": True}
    state = StateDir(str(tmp_path))
    os.makedirs(os.path.dirname(state.sidecar_path("m")), exist_ok=True)
    sidecar_store.write(state, "m", Sidecar.of(data))
    record = sidecar_store.read(state, "m")
    assert record is not None and record.to_json() == data
    assert Sidecar.of(data) == record and Sidecar.of({}) == Sidecar()
    for bad in (-1, True, 1.5, "7"):
        assert Sidecar.of({"total": bad, "rate_limit": bad}).to_json() == {}, bad
