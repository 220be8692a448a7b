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
