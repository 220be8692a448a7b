"""Restarts: an interrupted download resumes by itself on start (or is listed and waits
for its POST when ``ARW_DL_RESUME_ON_START`` is off), and stale partial files are
swept at start while fresh ones, and one still being written, are kept."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from arw_models import ArwModels

from .support.app import Watch, post_download
from .support.helpers import (
    cancel,
    listing,
    models_dir,
    part,
    read,
    sidecar,
    write_partial,
)
from .support.origin import Origin, Resource, payload

MiB = 1024 * 1024
KiB = 1024


class StartWatch(Watch):
    """A :class:`Watch` that also sees what the service published while it started
    (a resume on start may run before anyone could subscribe)."""

    def __init__(self, app: Any) -> None:
        self.hub = ArwModels.state(app).hub
        # The backlog and the live subscription are taken under one lock: no gap.
        self.sub, backlog = self.hub.subscribe((), replay=1_000_000, queue_size=1_000_000)
        self.events = list(backlog)
        self._read = 0


def interrupted_download(make_app: Callable[..., Any], origin: Origin) -> tuple[Resource, int]:
    """A first service that downloads part of a file and is then shut down."""
    app = make_app(ARW_DL_PROGRESS_INTERVAL_MS=0, ARW_DL_IDLE_TIMEOUT_SECS=30)
    watch = Watch(app)
    cut = 192 * KiB + 3
    res = origin.add("/restart.gguf", payload(MiB, seed=36), stall_after=cut)
    post_download(app.test_client(), "rs", origin.url("/restart.gguf"), sha256=res.sha256)
    assert res.stalled.wait(5)
    watch.until(lambda e: e.payload.get("id") == "rs" and e.payload.get("downloaded") == cut)
    watch.close()
    app.extensions["arw_models"].shutdown()  # releases the state directory
    res.release.set()
    assert read(part(app, "rs")) == res.data[:cut]
    with open(sidecar(app, "rs")) as fh:
        side = json.load(fh)
    assert side["url"] == origin.url("/restart.gguf") and side["total"] == len(res.data)
    assert side["etag"] == res.etag and side["sha256"] == res.sha256
    return res, cut


def test_restart_resumes_by_itself(make_app: Callable[..., Any], origin: Origin) -> None:
    res, cut = interrupted_download(make_app, origin)
    app = make_app(ARW_DL_RESUME_ON_START=True)
    watch = StartWatch(app)  # starting the service resumes the download
    done = watch.terminal("rs")
    watch.close()
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    seen = origin.requests_for("/restart.gguf")
    assert len(seen) == 2
    assert seen[1].range == f"bytes={cut}-" and seen[1].headers["if-range"] == res.etag and seen[1].status == 206
    resumed = next(p for p in watch.payloads("rs") if p["status"] == "resumed")
    assert resumed["offset"] == cut
    assert read(os.path.join(models_dir(app), "restart.gguf")) == res.data
    assert listing(app) == ["restart.gguf"]


def test_restart_without_resume_on_start_lists_and_waits_for_the_post(
    make_app: Callable[..., Any], origin: Origin
) -> None:
    res, cut = interrupted_download(make_app, origin)
    app = make_app(ARW_DL_RESUME_ON_START=False)
    client = app.test_client()
    watch = StartWatch(app)
    listed = client.get("/models/downloads").json["items"]
    assert len(listed) == 1
    item = listed[0]
    assert (item["id"], item["status"], item["resumable"], item["downloaded"], item["total"]) == (
        "rs", "resumable", True, cut, len(res.data))
    assert item["progress"] == cut * 100 // len(res.data)
    assert client.get("/models/downloads/rs").json["status"] == "resumable"
    assert len(origin.requests_for("/restart.gguf")) == 1  # nothing was fetched by itself
    assert watch.payloads("rs") == []

    r = post_download(client, "rs", origin.url("/restart.gguf"), sha256=res.sha256)
    assert r.status_code == 202 and r.json["status"] == "resumed"
    assert watch.terminal("rs")["status"] == "complete"
    watch.close()
    assert origin.requests_for("/restart.gguf")[-1].range == f"bytes={cut}-"
    assert read(os.path.join(models_dir(app), "restart.gguf")) == res.data


def test_stale_partials_are_swept_at_start_and_fresh_ones_listed(make_app: Callable[..., Any]) -> None:
    app = make_app(ARW_DL_STALE_PART_HOURS=1)
    # Files left by an earlier run, before this service starts.
    write_partial(app, "old", b"o" * 100, {"url": "http://127.0.0.1:9/old.gguf", "total": 1000})
    write_partial(app, "fresh", b"f" * 200, {"url": "http://127.0.0.1:9/fresh.gguf", "total": 1000})
    write_partial(app, "orphan", b"x" * 10, None)  # a .part whose sidecar was lost
    two_hours_ago = time.time() - 2 * 3600
    for path in (part(app, "old"), sidecar(app, "old"), part(app, "orphan")):
        os.utime(path, (two_hours_ago, two_hours_ago))
    client = app.test_client()
    listed = client.get("/models/downloads").json["items"]  # the first request starts the service
    assert [(i["id"], i["status"], i["downloaded"]) for i in listed] == [("fresh", "resumable", 200)]
    assert listing(app) == ["fresh.part", "fresh.part.json"]
    assert client.get("/models/downloads/old").status_code == 404


def test_a_part_still_being_written_is_not_swept_because_its_sidecar_is_old(make_app: Callable[..., Any]) -> None:
    """The sidecar is written once, the .part keeps growing; the
    newer of the two dates the download."""
    app = make_app(ARW_DL_STALE_PART_HOURS=1)
    write_partial(app, "busy", b"b" * 100, {"url": "http://127.0.0.1:9/busy.gguf", "total": 1000})
    two_hours_ago = time.time() - 2 * 3600
    os.utime(sidecar(app, "busy"), (two_hours_ago, two_hours_ago))
    client = app.test_client()
    listed = client.get("/models/downloads").json["items"]
    assert [(i["id"], i["status"], i["downloaded"]) for i in listed] == [("busy", "resumable", 100)]
    assert sorted(os.listdir(models_dir(app))) == ["busy.part", "busy.part.json"]


def test_a_part_with_every_byte_is_listed_at_100_percent(make_app: Callable[..., Any]) -> None:
    """The process stopped between the last byte and the install: all of it is there."""
    app = make_app()
    write_partial(app, "w", b"w" * 1000, {"url": "http://127.0.0.1:9/w.gguf", "etag": '"w1"', "total": 1000})
    listed = app.test_client().get("/models/downloads").json["items"]
    assert [(i["id"], i["downloaded"], i["total"], i["progress"]) for i in listed] == [("w", 1000, 1000, 100)]


def test_partial_downloads_are_listed_from_what_their_files_say(make_app: Callable[..., Any]) -> None:
    """Files an earlier run left, listed from their ``.part`` and sidecar: the bytes on
    disk and the percent of the total (capped at 100 when the ``.part`` holds more);
    a sidecar whose ``.part`` is gone is resumable from byte 0. A ``.part`` whose
    sidecar was lost says nothing of what it was asked with: asked for by its id it
    shows its bytes, not resumable; the listing of downloads to resume leaves it out,
    and a resume of it is a 404, as is an id with no files at all."""
    app = make_app()
    url = "http://127.0.0.1:9/m.gguf"
    write_partial(app, "lost", b"l" * 300, None)
    write_partial(app, "kept", b"k" * 906, {"url": url, "provider": "acme", "sha256": "c" * 64, "total": 1200})
    write_partial(app, "over", b"o" * 300, {"url": url, "total": 200})
    write_partial(app, "bare", b"", {"url": url, "total": 50})
    os.remove(part(app, "bare"))
    client = app.test_client()
    common = {"status": "resumable", "resumable": True, "url": url, "provider": "local", "sha256": None}
    expected = {
        "kept": {**common, "id": "kept", "downloaded": 906, "provider": "acme", "sha256": "c" * 64, "total": 1200,
                 "progress": 75},
        "over": {**common, "id": "over", "downloaded": 300, "total": 200, "progress": 100},
        "bare": {**common, "id": "bare", "downloaded": 0, "total": 50, "progress": 0},
    }
    assert {i["id"]: i for i in client.get("/models/downloads").json["items"]} == expected
    for model_id, item in expected.items():
        assert client.get(f"/models/downloads/{model_id}").json == item
    assert client.get("/models/downloads/lost").json == {
        "id": "lost", "status": "resumable", "resumable": False, "downloaded": 300}
    for model_id in ("lost", "never"):
        r = client.post("/models/download/resume", json={"id": model_id})
        assert r.status_code == 404 and r.json["code"] == "no-active-download"
    assert client.get("/models/downloads/never").status_code == 404


def test_a_cancel_of_what_an_earlier_run_left_removes_it_and_answers_as_canceled(
        make_app: Callable[..., Any]) -> None:
    """No job of this run holds the id: a cancel removes the ``.part`` and sidecar an
    earlier run left (or a lone ``.part``), and the id answers as a canceled download
    of what the sidecar said it was asked with; a cancel of an id with no files is a 404."""
    app = make_app()
    url = "http://127.0.0.1:9/left.gguf"
    write_partial(app, "left", b"l" * 100, {"url": url, "provider": "acme", "sha256": "d" * 64, "total": 1000})
    write_partial(app, "lone", b"x" * 10, None)
    client = app.test_client()
    watch = Watch(app)
    try:
        for model_id in ("left", "lone"):
            assert cancel(client, model_id).json == {"id": model_id, "status": "canceled"}
            assert watch.terminal(model_id)["status"] == "canceled"
    finally:
        watch.close()
    assert listing(app) == []
    left = client.get("/models/downloads/left").json
    assert (left["status"], left["url"], left["provider"], left["sha256"], left["downloaded"]) == (
        "canceled", url, "acme", "d" * 64, 0)
    lone = client.get("/models/downloads/lone").json
    assert (lone["status"], lone["url"], lone["provider"], lone["sha256"]) == ("canceled", "", "local", None)
    r = cancel(client, "never")
    assert r.status_code == 404 and r.json["code"] == "no-active-download"
