"""What the answer to a resume (or to the same POST again) says: ``resumed`` only
when bytes on disk will be continued, with how many are ``kept``; ``started`` with
how many are ``discarded``; ``provisional`` while the origin has not yet shown
whether it serves ranges (its answer may still make the download start over)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from arw_models import ArwModels

from .support.app import Service, Watch, post_download
from .support.helpers import cancel, models_dir, part, read, sidecar, write_partial
from .support.mute import mute_origin
from .support.origin import Origin, Resource, payload

KiB = 1024
MiB = 1024 * KiB


def again(client: Any, how: str, model_id: str, url: str) -> Any:
    if how == "resume":
        return client.post("/models/download/resume", json={"id": model_id})
    return post_download(client, model_id, url)


def paused_at(client: Any, watch: Watch, res: Resource, model_id: str, url: str, at: int) -> None:
    """Starts (or goes on with) the download until the origin stalls at ``at``, then pauses it."""
    watch.until(lambda e: e.payload.get("id") == model_id and e.payload.get("downloaded") == at)
    r = client.post("/models/download/pause", json={"id": model_id})
    assert r.status_code == 200 and r.json["status"] == "paused", r.json


@pytest.mark.parametrize("how", ["resume", "post"])
def test_a_paused_download_from_an_origin_that_serves_ranges_is_resumed_with_its_bytes(
        service: Service, origin: Origin, how: str) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/a.gguf", payload(2 * MiB, seed=701), stall_after=768 * KiB)
    url = origin.url("/a.gguf")
    post_download(client, "a", url)
    paused_at(client, watch, res, "a", url, 768 * KiB)
    assert json.loads(read(sidecar(app, "a")))["accept_ranges"] is True
    res.release.set()
    r = again(client, how, "a", url)
    assert r.status_code == 202
    assert {k: r.json[k] for k in ("status", "downloaded", "kept", "discarded", "provisional")} == {
        "status": "resumed", "downloaded": 768 * KiB, "kept": 768 * KiB, "discarded": 0, "provisional": False}
    assert watch.terminal("a")["status"] == "complete"
    assert origin.requests_for("/a.gguf")[-1].range == f"bytes={768 * KiB}-"


def test_an_origin_that_ignores_ranges_is_first_provisional_then_known_to_start_over(
        service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    # Like Python's http.server: no Accept-Ranges, and a Range is answered with the whole file.
    res = origin.add("/n.gguf", payload(2 * MiB, seed=702), stall_after=512 * KiB, stalls=2,
                     ignore_range=True, accept_ranges=None)
    url = origin.url("/n.gguf")
    post_download(client, "n", url)
    paused_at(client, watch, res, "n", url, 512 * KiB)
    assert json.loads(read(sidecar(app, "n"))).get("accept_ranges") is None  # not known yet
    r = again(client, "resume", "n", url)
    assert (r.json["status"], r.json["kept"], r.json["discarded"], r.json["provisional"]) == (
        "resumed", 512 * KiB, 0, True)
    # The origin sends the whole file again: the job starts over, and stalls at the same byte.
    assert watch.status("n", "started", "resumed")["status"] == "started"
    # Asked again meanwhile, the answer says what the origin did, no longer the forecast.
    r = again(client, "post", "n", url)
    assert (r.json["status"], r.json["kept"], r.json["discarded"], r.json["provisional"]) == (
        "started", 0, 0, False)
    paused_at(client, watch, res, "n", url, 512 * KiB)
    assert json.loads(read(sidecar(app, "n")))["accept_ranges"] is False
    r = again(client, "post", "n", url)
    assert {k: r.json[k] for k in ("status", "downloaded", "kept", "discarded", "provisional")} == {
        "status": "started", "downloaded": 0, "kept": 0, "discarded": 512 * KiB, "provisional": False}
    res.release.set()
    assert watch.terminal("n")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "n.gguf")) == res.data


def test_a_206_shows_the_origin_serves_ranges_without_accept_ranges(service: Service, origin: Origin) -> None:
    """An origin that never says Accept-Ranges but answers a resume with a 206 has
    shown it serves ranges: the next resume is said to keep the bytes, not
    provisionally."""
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    data = payload(2 * MiB, seed=706)
    res = origin.add("/q.gguf", data, stall_after=256 * KiB, accept_ranges=None)
    url = origin.url("/q.gguf")
    write_partial(app, "q", data[: 512 * KiB], {"url": url, "etag": res.etag, "total": len(data)})
    post_download(client, "q", url)
    paused_at(client, watch, res, "q", url, 768 * KiB)
    assert origin.requests_for("/q.gguf")[0].status == 206
    assert json.loads(read(sidecar(app, "q")))["accept_ranges"] is True
    res.release.set()
    r = again(client, "resume", "q", url)
    assert (r.json["status"], r.json["kept"], r.json["provisional"]) == ("resumed", 768 * KiB, False)
    assert watch.terminal("q")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "q.gguf")) == data


def test_bytes_the_continuation_rule_will_not_keep_are_said_to_be_discarded(service: Service,
                                                                             origin: Origin) -> None:
    app, client, watch = service()
    res = origin.add("/new.gguf", payload(256 * KiB, seed=703))
    # Bytes of another url, and no sha256 to vouch for them: they go.
    write_partial(app, "o", b"x" * 5000, {"url": origin.url("/old.gguf"), "etag": '"v1"', "total": 9000,
                                          "accept_ranges": True})
    r = post_download(client, "o", origin.url("/new.gguf"))
    assert {k: r.json[k] for k in ("status", "downloaded", "kept", "discarded", "provisional")} == {
        "status": "started", "downloaded": 0, "kept": 0, "discarded": 5000, "provisional": False}
    assert watch.terminal("o")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "new.gguf")) == res.data


def test_a_download_in_ranges_keeps_its_recorded_durable_bytes(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    data = payload(2000, seed=704)
    res = origin.add("/r.gguf", data)
    # Preallocated to the whole size; the ranges record 400 + 300 bytes fsynced.
    disk = data[:400] + bytes(600) + data[1000:1300] + bytes(700)
    write_partial(app, "r", disk, {"url": origin.url("/r.gguf"), "etag": res.etag, "total": 2000,
                                   "last_modified": res.last_modified, "ranges": [[0, 1000, 400], [1000, 2000, 300]],
                                   "paused": True})
    r = client.post("/models/download/resume", json={"id": "r"})
    assert {k: r.json[k] for k in ("status", "downloaded", "kept", "discarded", "provisional")} == {
        "status": "resumed", "downloaded": 700, "kept": 700, "discarded": 0, "provisional": False}
    assert watch.terminal("r")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "r.gguf")) == data
    assert not os.path.exists(part(app, "r"))


def test_nothing_on_disk_is_a_start_with_nothing_discarded(service: Service, origin: Origin) -> None:
    _, client, watch = service()
    origin.add("/f.gguf", payload(KiB, seed=705))
    r = post_download(client, "f", origin.url("/f.gguf"))
    assert {k: r.json[k] for k in ("status", "downloaded", "kept", "discarded", "provisional")} == {
        "status": "started", "downloaded": 0, "kept": 0, "discarded": 0, "provisional": False}
    assert watch.terminal("f")["status"] == "complete"


def test_a_whole_file_sent_because_it_changed_still_shows_an_origin_that_serves_ranges(
        service: Service, origin: Origin) -> None:
    """A 200 to a ``Range`` whose ``If-Range`` no longer matches says the file changed,
    not that ranges are refused: its ``Accept-Ranges: bytes`` is believed, and the
    next pause is resumed."""
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/c.gguf", payload(2 * MiB, seed=706), stall_after=512 * KiB, stalls=2)
    url = origin.url("/c.gguf")
    post_download(client, "c", url)
    paused_at(client, watch, res, "c", url, 512 * KiB)
    res.replace(payload(2 * MiB, seed=707))
    assert again(client, "resume", "c", url).status_code == 202
    assert watch.status("c", "started", "resumed")["status"] == "started"  # the whole new file
    assert origin.requests_for("/c.gguf")[-1].status == 200
    paused_at(client, watch, res, "c", url, 512 * KiB)
    assert json.loads(read(sidecar(app, "c")))["accept_ranges"] is True
    r = again(client, "post", "c", url)
    assert (r.json["status"], r.json["kept"], r.json["provisional"]) == ("resumed", 512 * KiB, False)
    res.release.set()
    assert watch.terminal("c")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "c.gguf")) == res.data


def test_an_origin_that_says_accept_ranges_none_is_known_at_once_to_start_over(
        service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/none.gguf", payload(2 * MiB, seed=708), stall_after=512 * KiB,
                     ignore_range=True, accept_ranges="none")
    url = origin.url("/none.gguf")
    post_download(client, "none", url)
    paused_at(client, watch, res, "none", url, 512 * KiB)
    assert json.loads(read(sidecar(app, "none")))["accept_ranges"] is False
    r = again(client, "resume", "none", url)
    assert {k: r.json[k] for k in ("status", "downloaded", "kept", "discarded", "provisional")} == {
        "status": "started", "downloaded": 0, "kept": 0, "discarded": 512 * KiB, "provisional": False}
    res.release.set()
    assert watch.terminal("none")["status"] == "complete"


def test_a_repeated_post_before_the_origin_answered_is_a_start_from_no_offset(service: Service) -> None:
    """Nothing on disk, and the origin has accepted the request but not answered:
    the same POST again says the download started, and shows no offset to resume from."""
    _, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    with mute_origin() as mute:
        url = mute.url
        post_download(client, "mute", url)
        with mute.asked():
            r = post_download(client, "mute", url)
            assert r.status_code == 202
            assert (r.json["status"], r.json["kept"], r.json["discarded"]) == ("started", 0, 0)
            assert "offset" not in r.json and "offset" not in client.get("/models/downloads/mute").json
            assert cancel(client, "mute").status_code == 200
            assert watch.terminal("mute")["status"] == "canceled"


def test_what_an_origin_showed_of_ranges_is_kept_across_a_shutdown(make_app: Any, origin: Origin) -> None:
    """The origin answered a resume with the whole file; the service then shuts down
    in the middle of it. The next run knows that origin does not serve ranges: a
    POST says the bytes on disk will be fetched again, not kept."""
    res = origin.add("/s.gguf", payload(2 * MiB, seed=708), stall_after=512 * KiB, stalls=2,
                     ignore_range=True, accept_ranges=None)
    url = origin.url("/s.gguf")
    first = make_app(ARW_DL_IDLE_TIMEOUT_SECS=30)
    client, watch = first.test_client(), Watch(first)
    try:
        post_download(client, "s", url)
        paused_at(client, watch, res, "s", url, 512 * KiB)
        assert again(client, "resume", "s", url).status_code == 202
        assert watch.status("s", "started", "resumed")["status"] == "started"  # the whole file again
        watch.until(lambda e: e.payload.get("id") == "s" and e.payload.get("downloaded") == 512 * KiB)
    finally:
        watch.close()
    first.extensions["arw_models"].shutdown()
    res.release.set()
    assert json.loads(read(sidecar(first, "s")))["accept_ranges"] is False

    second = make_app(ARW_DL_RESUME_ON_START=False)
    r = post_download(second.test_client(), "s", url)
    assert (r.json["status"], r.json["kept"], r.json["discarded"], r.json["provisional"]) == (
        "started", 0, 512 * KiB, False)
    assert ArwModels.state(second).manager.wait("s", 10)


def test_a_repeated_post_while_a_resume_waits_to_retry_still_says_resumed(service: Service, origin: Origin) -> None:
    """A resume whose origin refused its first request (a 503) waits to try again,
    not yet answered: the same POST meanwhile says it resumes, with the bytes it
    keeps, as the first answer did, not that it starts over."""
    app, client, watch = service(ARW_DL_RETRY_BACKOFF_MS=20_000, ARW_DL_RETRY_BACKOFF_MAX_MS=20_000)
    res = origin.add("/r.gguf", payload(100 * KiB, seed=150), statuses=[(503, {})])
    write_partial(app, "r", res.data[: 40 * KiB], {"id": "r", "url": origin.url("/r.gguf"),
                                                     "total": len(res.data), "etag": res.etag})
    first = post_download(client, "r", origin.url("/r.gguf"))
    assert (first.json["status"], first.json["kept"]) == ("resumed", 40 * KiB)
    assert watch.status("r", "retrying")["code"]
    r = post_download(client, "r", origin.url("/r.gguf"))
    assert r.status_code == 202
    assert (r.json["status"], r.json["kept"], r.json["discarded"]) == ("resumed", 40 * KiB, 0)
    assert cancel(client, "r").status_code == 200
    assert watch.terminal("r")["status"] == "canceled"
