"""Pause and resume: a paused download keeps its bytes, survives a restart as
paused, continues from where it stopped, and a cancel still removes everything."""

from __future__ import annotations

import json
import os
from typing import Any

from arw_models import ArwModels, signals

from .support.app import Service, Watch, post_download
from .support.helpers import (
    cancel,
    listing,
    models_dir,
    part,
    read,
    sidecar,
    write_partial,
)
from .support.origin import Origin, payload

KiB = 1024
MiB = 1024 * KiB


def pause(client: Any, model_id: str) -> Any:
    return client.post("/models/download/pause", json={"id": model_id})


def resume(client: Any, model_id: str) -> Any:
    return client.post("/models/download/resume", json={"id": model_id})


def test_pause_keeps_the_part_and_resume_continues_from_where_it_stopped(service: Service,
                                                                          origin: Origin) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/p.gguf", payload(2 * MiB, seed=120), stall_after=700 * KiB)
    paused_signals: list[dict[str, Any]] = []
    with signals.download_paused.connected_to(lambda sender, payload: paused_signals.append(payload), sender=app):
        post_download(client, "p", origin.url("/p.gguf"), sha256=res.sha256)
        assert res.stalled.wait(5)
        watch.until(lambda e: e.payload.get("id") == "p" and e.payload.get("downloaded") == 700 * KiB)
        r = pause(client, "p")
        assert r.status_code == 200 and r.json["status"] == "paused" and r.json["downloaded"] == 700 * KiB
    event = watch.status("p", "paused")
    assert event == {"id": "p", "status": "paused", "downloaded": 700 * KiB}
    assert paused_signals == [event]
    assert read(part(app, "p")) == res.data[: 700 * KiB]
    assert json.loads(read(sidecar(app, "p")))["paused"] is True
    [item] = client.get("/models/downloads").json["items"]
    assert (item["id"], item["status"], item["downloaded"]) == ("p", "paused", 700 * KiB)

    res.release.set()
    r = resume(client, "p")
    assert r.status_code == 202 and r.json["status"] == "resumed"
    assert r.headers["Location"].endswith("/models/downloads/p")
    done = watch.terminal("p")
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert origin.requests_for("/p.gguf")[-1].range == f"bytes={700 * KiB}-"
    assert read(os.path.join(models_dir(app), "p.gguf")) == res.data


def test_the_same_post_as_the_original_also_resumes(service: Service, origin: Origin) -> None:
    _, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/q.gguf", payload(MiB, seed=121), stall_after=300 * KiB)
    post_download(client, "q", origin.url("/q.gguf"))
    assert res.stalled.wait(5)
    watch.status("q", "downloading")
    assert pause(client, "q").status_code == 200
    res.release.set()
    again = post_download(client, "q", origin.url("/q.gguf"))
    assert again.status_code == 202 and again.json["status"] == "resumed"
    assert watch.status("q", "complete", "error")["status"] == "complete"


def test_a_paused_download_stays_paused_after_a_restart(make_app: Any, origin: Origin, tmp_path: Any) -> None:
    res = origin.add("/r.gguf", payload(MiB, seed=122), stall_after=200 * KiB)
    first = make_app(ARW_DL_IDLE_TIMEOUT_SECS=30)
    watch = Watch(first)
    client = first.test_client()
    post_download(client, "r", origin.url("/r.gguf"))
    assert res.stalled.wait(5)
    watch.status("r", "downloading")
    assert pause(client, "r").status_code == 200
    watch.close()
    first.extensions["arw_models"].shutdown()
    res.release.set()
    seen = len(origin.requests_for("/r.gguf"))

    second = make_app(ARW_DL_RESUME_ON_START=True)
    watch = Watch(second)  # starts it: a resumable .part would be resumed now
    client = second.test_client()
    item = client.get("/models/downloads/r").json
    assert item["status"] == "paused" and item["downloaded"] == 200 * KiB
    assert len(origin.requests_for("/r.gguf")) == seen  # nothing moved
    assert resume(client, "r").status_code == 202
    assert watch.status("r", "complete", "error")["status"] == "complete"
    watch.close()


def test_cancel_of_a_paused_download_removes_its_files(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/c.gguf", payload(MiB, seed=123), stall_after=100 * KiB)
    post_download(client, "c", origin.url("/c.gguf"))
    assert res.stalled.wait(5)
    watch.status("c", "downloading")
    assert pause(client, "c").status_code == 200
    assert watch.status("c", "paused")["downloaded"] == os.path.getsize(part(app, "c")) == 100 * KiB
    res.release.set()
    assert cancel(client, "c").json == {"id": "c", "status": "canceled"}
    assert watch.terminal("c")["status"] == "canceled"
    assert listing(app) == []
    assert client.get("/models/downloads").json["items"] == []


def test_a_queued_download_can_be_paused_and_resumed(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_MODELS_MAX_CONC=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    hold = origin.add("/hold.gguf", payload(MiB, seed=124), stall_after=KiB)
    wait = origin.add("/wait.gguf", payload(100 * KiB, seed=125))
    post_download(client, "hold", origin.url("/hold.gguf"))
    assert hold.stalled.wait(5)
    assert post_download(client, "wait", origin.url("/wait.gguf")).json["status"] == "queued"
    r = pause(client, "wait")
    assert r.status_code == 200 and r.json["status"] == "paused"
    # Nothing on disk, not a byte, yet a resume will continue it.
    assert (r.json["resumable"], r.json["downloaded"]) == (True, 0)
    assert watch.status("wait", "paused")["downloaded"] == 0
    assert origin.requests_for("/wait.gguf") == []
    hold.release.set()
    assert cancel(client, "hold").status_code == 200
    assert resume(client, "wait").status_code == 202
    assert watch.status("wait", "complete", "error")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "wait.gguf")) == wait.data


def test_a_resume_of_a_queued_download_answers_as_the_same_post_would(service: Service, origin: Origin) -> None:
    """A resume asked for while the download still waits for a slot (it has written
    nothing, so no sidecar says what it was asked with) answers with the queued job,
    not a 404, and starts no second one."""
    app, client, watch = service(ARW_MODELS_MAX_CONC=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    hold = origin.add("/hold.gguf", payload(MiB, seed=128), stall_after=KiB)
    wait = origin.add("/wait.gguf", payload(100 * KiB, seed=129))
    post_download(client, "hold", origin.url("/hold.gguf"))
    assert hold.stalled.wait(5)
    assert post_download(client, "wait", origin.url("/wait.gguf"), sha256=wait.sha256).json["status"] == "queued"
    r = resume(client, "wait")
    assert r.status_code == 202, r.json
    assert (r.json["status"], r.json["url"], r.json["sha256"]) == ("queued", origin.url("/wait.gguf"), wait.sha256)
    hold.release.set()
    assert watch.terminal("wait")["status"] == "complete"
    assert watch.statuses("wait").count("queued") == 1
    assert ArwModels.state(app).manager.wait("hold", 10)
    assert len(origin.requests_for("/wait.gguf")) == 1


def test_pause_and_resume_of_nothing_are_404(service: Service) -> None:
    app, client, _ = service()
    for r in (pause(client, "none"), resume(client, "none")):
        assert r.status_code == 404 and r.json["code"] == "no-active-download"
    assert pause(client, "../x").json["code"] == "invalid-id"
    assert ArwModels.state(app).manager.find("none") is None


def test_a_canceled_paused_download_is_answered_as_canceled(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/cp.gguf", payload(MiB, seed=126), stall_after=100 * KiB)
    post_download(client, "cp", origin.url("/cp.gguf"))
    assert res.stalled.wait(5)
    watch.status("cp", "downloading")
    assert pause(client, "cp").status_code == 200
    res.release.set()
    assert cancel(client, "cp").json == {"id": "cp", "status": "canceled"}
    watch.status("cp", "canceled")
    # As a canceled running job is answered: the job, canceled, with nothing on disk.
    item = client.get("/models/downloads/cp").json
    assert (item["status"], item["downloaded"], item.get("resumable")) == ("canceled", 0, None)
    assert item["url"] == origin.url("/cp.gguf")
    assert client.get("/models/downloads").json["items"] == []
    assert listing(app) == []
    # Once: a later download's end shows that no second one came meanwhile.
    origin.add("/after.gguf", payload(KiB, seed=127))
    post_download(client, "after", origin.url("/after.gguf"))
    watch.status("after", "complete")
    assert watch.statuses("cp").count("canceled") == 1
    assert cancel(client, "cp").status_code == 404


def test_a_paused_download_asked_for_again_is_no_longer_paused_for_a_restart(make_app: Any, origin: Origin) -> None:
    """Asked for again while every slot is busy, it waits in the queue without having
    written a byte; a restart then resumes it, as any download that was asked for."""
    p = origin.add("/p.gguf", payload(MiB, seed=123), stall_after=200 * KiB)
    busy = origin.add("/busy.gguf", payload(MiB, seed=124), stall_after=100 * KiB)
    first = make_app(ARW_MODELS_MAX_CONC=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    watch = Watch(first)
    client = first.test_client()
    try:
        post_download(client, "p", origin.url("/p.gguf"))
        assert p.stalled.wait(5)
        watch.status("p", "downloading")
        assert pause(client, "p").status_code == 200
        post_download(client, "busy", origin.url("/busy.gguf"))
        assert busy.stalled.wait(5)
        assert post_download(client, "p", origin.url("/p.gguf")).json["status"] == "queued"
    finally:
        watch.close()
    first.extensions["arw_models"].shutdown()
    p.release.set()
    busy.release.set()

    second = make_app(ARW_DL_RESUME_ON_START=True)
    watch = Watch(second)  # starts it: what was asked for and not paused resumes now
    try:
        assert second.test_client().get("/models/downloads/p").json["status"] != "paused"
        assert watch.terminal("p")["status"] == "complete"
        assert ArwModels.state(second).manager.wait("busy", 10)
    finally:
        watch.close()
    assert read(os.path.join(models_dir(second), "p.gguf")) == p.data


def test_a_queued_download_paused_reports_the_bytes_an_earlier_run_left(service: Service, origin: Origin) -> None:
    """A download that waits for a slot, with a ``.part`` an earlier run left: paused
    there, it reports those bytes as its own (what a resume will continue from), not
    the nothing this run has fetched."""
    app, client, watch = service(ARW_MODELS_MAX_CONC=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    hold = origin.add("/hold.gguf", payload(MiB, seed=131), stall_after=KiB)
    wait = origin.add("/wait.gguf", payload(100 * KiB, seed=132))
    write_partial(app, "wait", wait.data[: 40 * KiB], {"id": "wait", "url": origin.url("/wait.gguf"),
                                                         "total": len(wait.data), "etag": wait.etag})
    post_download(client, "hold", origin.url("/hold.gguf"))
    assert hold.stalled.wait(5)
    assert post_download(client, "wait", origin.url("/wait.gguf")).json["status"] == "queued"
    r = pause(client, "wait")
    assert r.status_code == 200 and r.json["status"] == "paused", r.json
    assert watch.status("wait", "paused")["downloaded"] == 40 * KiB
    hold.release.set()
    assert cancel(client, "hold").status_code == 200


def test_a_download_paused_while_it_waits_to_retry_reports_the_bytes_left(service: Service, origin: Origin) -> None:
    """Its ``.part`` cut short by hand before its bytes were hashed, a download waits
    to fetch them again; paused then, it reports the bytes still on disk (what a
    resume continues from), not those it had before."""
    data = payload(256 * KiB, seed=138)
    res = origin.add("/v.gguf", data)
    app, client, watch = service(ARW_DL_RETRY_BACKOFF_MS=20_000, ARW_DL_RETRY_BACKOFF_MAX_MS=20_000)
    write_partial(app, "v", data[:100_000], {"url": origin.url("/v.gguf"), "etag": res.etag, "total": len(data)})
    cut: list[str] = []

    def checkpoint(point: str, job: Any) -> None:
        if point == "answered" and not cut:  # in the job's thread, the first answer only
            os.truncate(part(app, "v"), 40_000)
            cut.append(point)

    ArwModels.state(app).manager.checkpoint = checkpoint
    post_download(client, "v", origin.url("/v.gguf"), sha256=res.sha256)
    assert watch.status("v", "retrying")["downloaded"] == 100_000
    r = pause(client, "v")
    assert (r.status_code, r.json["status"], r.json["downloaded"]) == (200, "paused", 40_000)
    assert watch.status("v", "paused")["downloaded"] == 40_000
    assert os.path.getsize(part(app, "v")) == 40_000


def test_a_download_paused_in_the_queue_resumes_what_it_was_asked_for(service: Service, origin: Origin) -> None:
    """A download paused while it waits for a slot, over the ``.part`` an earlier
    request of another url left, resumes the url it was asked for, not the earlier
    one; the bytes its answer said it would throw away are not counted as its own."""
    app, client, watch = service(ARW_MODELS_MAX_CONC=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    hold = origin.add("/hold.gguf", payload(MiB, seed=133), stall_after=KiB)
    old = origin.add("/old.gguf", payload(100 * KiB, seed=134))
    new = origin.add("/new.gguf", payload(100 * KiB, seed=135))
    write_partial(app, "wait", old.data[: 40 * KiB], {"id": "wait", "url": origin.url("/old.gguf"),
                                                        "total": len(old.data), "etag": old.etag})
    post_download(client, "hold", origin.url("/hold.gguf"))
    assert hold.stalled.wait(5)
    r = post_download(client, "wait", origin.url("/new.gguf"), rate_limit=50 * MiB)
    assert (r.json["status"], r.json["kept"], r.json["discarded"]) == ("queued", 0, 40 * KiB)
    r = pause(client, "wait")
    assert (r.json["status"], r.json["downloaded"]) == ("paused", 0)
    assert watch.status("wait", "paused")["downloaded"] == 0
    recorded = json.loads(read(sidecar(app, "wait")))  # what a restart, too, resumes
    assert (recorded["url"], recorded["rate_limit"]) == (origin.url("/new.gguf"), 50 * MiB)
    hold.release.set()
    assert cancel(client, "hold").status_code == 200
    r = resume(client, "wait")
    assert (r.status_code, r.json["url"]) == (202, origin.url("/new.gguf"))
    assert watch.terminal("wait")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "new.gguf")) == new.data
    assert origin.requests_for("/old.gguf") == []


def test_a_download_paused_in_the_queue_keeps_its_sha256_for_the_resume(service: Service, origin: Origin) -> None:
    """Asked again with a sha256 over the ``.part`` an earlier request without one
    left, and paused before it starts: the resume keeps those bytes and verifies the
    whole file with the sha256 it was asked for, and sends none of the earlier
    request's headers (a token of its own, say)."""
    app, client, watch = service(ARW_MODELS_MAX_CONC=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    hold = origin.add("/hold.gguf", payload(MiB, seed=136), stall_after=KiB)
    res = origin.add("/w.gguf", payload(100 * KiB, seed=137))
    write_partial(app, "w", res.data[: 40 * KiB], {"id": "w", "url": origin.url("/w.gguf"), "total": len(res.data),
                                                     "etag": res.etag, "headers": {"X-Token": "earlier"}})
    post_download(client, "hold", origin.url("/hold.gguf"))
    assert hold.stalled.wait(5)
    r = post_download(client, "w", origin.url("/w.gguf"), sha256=res.sha256)
    assert (r.json["status"], r.json["kept"]) == ("queued", 40 * KiB)
    assert pause(client, "w").json["downloaded"] == 40 * KiB
    hold.release.set()
    assert cancel(client, "hold").status_code == 200
    r = resume(client, "w")
    assert (r.status_code, r.json["status"], r.json["sha256"]) == (202, "resumed", res.sha256)
    done = watch.terminal("w")
    assert (done["status"], done["sha256_source"]) == ("complete", "request")
    [fetch] = origin.requests_for("/w.gguf")
    assert (fetch.range, fetch.headers.get("x-token")) == (f"bytes={40 * KiB}-", None)


def test_a_request_that_takes_over_a_resumed_download_paused_at_once_resumes_itself(make_app: Any,
                                                                                     origin: Origin) -> None:
    """A POST of another url takes over the download the service resumed at start,
    and is paused while that one still lets go of the ``.part``: the pause waits for
    it, so that what is left on disk says what the POST asked for, and the resume
    fetches that url, not the earlier one."""
    old = origin.add("/old.gguf", payload(MiB, seed=139), stall_after=300 * KiB)
    new = origin.add("/new.gguf", payload(100 * KiB, seed=140))
    first = make_app()
    write_partial(first, "m", old.data[: 100 * KiB], {"id": "m", "url": origin.url("/old.gguf"),
                                                        "total": len(old.data), "etag": old.etag})
    second = make_app(ARW_STATE_DIR=first.config["ARW_STATE_DIR"], ARW_DL_RESUME_ON_START=True,
                      ARW_MODELS_MAX_CONC=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    watch = Watch(second)  # starts it: the .part left behind resumes
    client = second.test_client()
    try:
        assert old.stalled.wait(5)
        r = post_download(client, "m", origin.url("/new.gguf"))
        assert r.status_code == 202, r.json
        r = pause(client, "m")
        assert (r.status_code, r.json["status"], r.json["url"]) == (200, "paused", origin.url("/new.gguf"))
        old.release.set()
        r = resume(client, "m")
        assert (r.status_code, r.json["url"]) == (202, origin.url("/new.gguf"))
        assert watch.terminal("m")["status"] == "complete"
    finally:
        watch.close()
    assert read(os.path.join(models_dir(second), "new.gguf")) == new.data
    assert len(origin.requests_for("/old.gguf")) == 1  # the resume at start only


def test_a_pause_keeps_the_bytes_of_an_origin_without_validators(service: Service, origin: Origin) -> None:
    """Bytes from an origin that sends neither ETag nor Last-Modified cannot be
    continued by the same request, yet a pause keeps them: asked again with the
    file's sha256, which will verify the whole of it, the download continues them."""
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/n.gguf", payload(MiB, seed=141), etag="", last_modified=None, stall_after=200 * KiB)
    post_download(client, "n", origin.url("/n.gguf"))
    assert res.stalled.wait(5)
    watch.until(lambda e: e.payload.get("id") == "n" and e.payload.get("downloaded") == 200 * KiB)
    assert pause(client, "n").json["downloaded"] == 200 * KiB
    assert os.path.getsize(part(app, "n")) == 200 * KiB
    res.release.set()
    r = post_download(client, "n", origin.url("/n.gguf"), sha256=res.sha256)
    assert (r.status_code, r.json["status"], r.json["kept"]) == (202, "resumed", 200 * KiB)
    assert watch.terminal("n")["status"] == "complete"
    assert origin.requests_for("/n.gguf")[-1].range == f"bytes={200 * KiB}-"
    assert read(os.path.join(models_dir(app), "n.gguf")) == res.data


def test_a_paused_download_whose_part_was_removed_lists_no_bytes(service: Service, origin: Origin) -> None:
    """The listing of a paused download tells the bytes on disk, not those the job
    once counted: its ``.part`` removed by hand, it still lists as paused (a resume
    starts it again), with nothing downloaded."""
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/gone.gguf", payload(MiB, seed=142), stall_after=300 * KiB)
    post_download(client, "gone", origin.url("/gone.gguf"))
    assert res.stalled.wait(5)
    watch.until(lambda e: e.payload.get("id") == "gone" and e.payload.get("downloaded") == 300 * KiB)
    assert pause(client, "gone").json["downloaded"] == 300 * KiB
    res.release.set()
    os.remove(part(app, "gone"))
    item = client.get("/models/downloads/gone").json
    assert (item["status"], item["resumable"], item["downloaded"]) == ("paused", True, 0)


def test_a_pause_while_the_kept_bytes_are_hashed_ends_the_hash_there(service: Service, origin: Origin,
                                                                    monkeypatch: Any) -> None:
    """A resume hashes the bytes it keeps before it fetches the rest: a pause that
    comes meanwhile must not wait for a large ``.part`` to be read to its end, and
    leaves it as it was."""
    from arw_models.engine import download

    app, client, watch = service()
    manager = ArwModels.state(app).manager
    res = origin.add("/h.gguf", payload(512 * KiB, seed=133))
    kept = res.data[: 256 * KiB]
    write_partial(app, "h", kept, {"id": "h", "url": origin.url("/h.gguf"), "total": len(res.data),
                                   "etag": res.etag})
    monkeypatch.setattr(download, "HASH_READ", 64 * KiB)
    reads: list[int] = []
    real_read_part = download.read_part

    class Paused:
        """The .part, paused after its first read (as a user would, while it is read)."""

        def __init__(self, path: str) -> None:
            self.fh = real_read_part(path)

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def readinto(self, view: Any) -> int:
            n = self.fh.readinto(view)
            reads.append(n)
            if len(reads) == 1:
                manager.pause("h", wait=0)
            return n

    monkeypatch.setattr(download, "read_part", Paused)
    post_download(client, "h", origin.url("/h.gguf"))
    event = watch.status("h", "paused")
    assert event["downloaded"] == len(kept)
    assert reads == [64 * KiB]  # the other 192 KiB were not read
    assert read(part(app, "h")) == kept  # and none of the body that followed was written
