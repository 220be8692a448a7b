"""Edge cases where a download manager silently goes wrong: ranges that do not
continue the file, origins that shrink or change under a kept ETag, limits at their
boundary, durability of the final rename, and cancels that race the worker."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import responses

from arw_models import ArwModels, signals
from arw_models.errors import ArwError
from arw_models.service.events import EventHub
from arw_models.service.jobs import DownloadJob

from .support.app import Service, Watch, post_download
from .support.helpers import cancel, models_dir, part, read, sidecar, write_partial
from .support.origin import Origin, payload

KiB = 1024
MiB = 1024 * KiB


# -- verification ---------------------------------------------------------------------


def test_a_checksum_that_differs_only_in_its_last_digit_is_refused(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    res = origin.add("/near.gguf", payload(1000, seed=40))
    near = res.sha256[:-1] + ("0" if res.sha256[-1] != "0" else "1")
    post_download(client, "near", origin.url("/near.gguf"), sha256=near)
    err = watch.terminal("near")
    assert err["status"] == "error" and err["code"] == "checksum-mismatch"
    assert err["expected"] == near and err["actual"] == res.sha256
    assert os.listdir(models_dir(app)) == []


# -- Content-Range checks ---------------------------------------------------------------


def test_a_206_whose_total_differs_from_the_sidecar_is_not_glued(service: Service, origin: Origin) -> None:
    """An origin that changed its file but kept the ETag
    answers the Range with a different total; the old bytes must not be glued on."""
    app, client, watch = service()
    old, new = payload(MiB, seed=41), payload(MiB + 4096, seed=42)
    origin.add("/t.gguf", new, etag='"kept"')
    have = 300_000
    write_partial(app, "t", old[:have], {"url": origin.url("/t.gguf"), "etag": '"kept"', "total": len(old)})
    post_download(client, "t", origin.url("/t.gguf"))  # no sha256: only the total check protects
    done = watch.terminal("t")
    assert done["status"] == "complete" and done["bytes"] == len(new)
    assert read(os.path.join(models_dir(app), "t.gguf")) == new
    seen = origin.requests_for("/t.gguf")
    assert [(s.range, s.status) for s in seen] == [(f"bytes={have}-", 206), (None, 200)]
    assert [p["code"] for p in watch.payloads("t") if p["status"] == "retrying"] == ["resume-invalid"]


GOOD_URL = "https://example.invalid/m.gguf"
DATA = bytes(range(250)) * 4  # 1000 bytes, of which a .part holds the first 400


@pytest.mark.parametrize(
    ("answers", "retries", "ranges"),
    [
        # bytes 400-499/1000 does not continue the .part to the end: it is dropped, and
        # the download starts again from 0.
        ([(206, DATA[400:500], "bytes 400-499/1000"), (200, DATA, None)],
         [("resume-invalid", 0)], ["bytes=400-", None, "bytes=0-0"]),
        # A 206 without Content-Range cannot be checked: start again, do not crash.
        ([(206, DATA[400:], None), (200, DATA, None)], [("resume-invalid", 0)], ["bytes=400-", None, "bytes=0-0"]),
        # A body shorter than its Content-Range: keep what came, ask for the rest.
        ([(206, DATA[400:500], "bytes 400-999/1000"), (206, DATA[500:], "bytes 500-999/1000")],
         [("size-mismatch", 500)], ["bytes=400-", "bytes=500-", "bytes=0-0"]),
    ],
    ids=["stops-short", "no-content-range", "short-body"],  # the last request: is the file still that version?
)
@responses.activate
def test_a_206_that_does_not_continue_the_part_is_mended(
    make_app: Callable[..., Any], answers: list[tuple[int, bytes, str | None]],
    retries: list[tuple[str, int]], ranges: list[str | None],
) -> None:
    app = make_app()
    write_partial(app, "m", DATA[:400], {"url": GOOD_URL, "etag": '"v1"', "total": len(DATA)})
    for status, body, content_range in answers:
        headers = {"ETag": '"v1"'} | ({"Content-Range": content_range} if content_range else {})
        responses.get(GOOD_URL, status=status, body=body, headers=headers)
    watch = Watch(app)
    try:
        post_download(app.test_client(), "m", GOOD_URL)
        assert watch.terminal("m")["status"] == "complete"
        seen = [(p["code"], p["downloaded"]) for p in watch.payloads("m") if p["status"] == "retrying"]
        assert seen == retries
        assert [c.request.headers.get("Range") for c in responses.calls] == ranges
        assert read(os.path.join(models_dir(app), "m.gguf")) == DATA
    finally:
        watch.close()


def test_416_from_an_origin_whose_file_shrank_is_not_taken_as_whole(service: Service, origin: Origin) -> None:
    """The .part is as long as the sidecar's total, but the
    origin's 416 says its file is shorter now; that is not a finished download."""
    app, client, watch = service()
    old, new = payload(500_000, seed=43), payload(300_000, seed=44)
    origin.add("/s.gguf", new, etag='"kept"')
    write_partial(app, "s", old, {"url": origin.url("/s.gguf"), "etag": '"kept"', "total": len(old)})
    post_download(client, "s", origin.url("/s.gguf"))
    done = watch.terminal("s")
    assert done["status"] == "complete" and done["bytes"] == len(new)
    assert read(os.path.join(models_dir(app), "s.gguf")) == new
    assert [(s.range, s.status) for s in origin.requests_for("/s.gguf")] == [(f"bytes={len(old)}-", 416),
                                                                             (None, 200)]


# -- failures keep or drop the .part ----------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_network_failure_that_ends_the_job_keeps_the_part(service: Service) -> None:
    app, client, watch = service(ARW_DL_RETRIES=1)
    url = f"http://127.0.0.1:{closed_port()}/m.gguf"
    write_partial(app, "m", b"p" * 1000, {"url": url, "etag": '"v1"', "total": 5000})
    post_download(client, "m", url)
    err = watch.terminal("m")
    assert err["status"] == "error" and err["code"] == "connection-refused"
    assert read(part(app, "m")) == b"p" * 1000
    assert os.path.exists(sidecar(app, "m"))
    listed = client.get("/models/downloads").json["items"]
    assert [(i["id"], i["downloaded"], i.get("resumable")) for i in listed] == [("m", 1000, True)]


def test_a_200_that_fails_before_its_first_byte_leaves_no_old_bytes_under_the_new_validator(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a 200 (a new version) has been accepted, the sidecar
    names the new ETag; the old version's bytes must be gone by then, or a later resume
    glues them to the new file."""
    app, client, watch = service()
    old, new = payload(MiB, seed=45), payload(MiB, seed=46)
    res = origin.add("/v.gguf", old)
    old_etag = res.etag
    res.replace(new)
    have = 200_000
    url = origin.url("/v.gguf")
    write_partial(app, "v", old[:have], {"url": url, "etag": old_etag, "total": len(old)})

    def refuse(path: str, append: bool) -> Any:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(ArwModels.state(app).manager, "open_part", refuse)
    post_download(client, "v", url)
    assert watch.terminal("v")["code"] == "disk-error"
    monkeypatch.undo()
    post_download(client, "v", url)  # no sha256: only the validator protects
    assert watch.terminal("v")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "v.gguf")) == new


# -- limits -----------------------------------------------------------------------------


def test_unannounced_body_one_byte_over_the_cap_is_refused(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_MODELS_MAX_MB=0.5)
    origin.add("/edge.bin", payload(MiB // 2 + 1, seed=47), chunked=True)
    post_download(client, "edge", origin.url("/edge.bin"))
    err = watch.terminal("edge")
    assert err["status"] == "error" and err["code"] == "size-limit"
    assert os.listdir(models_dir(app)) == []


def test_disk_check_keeps_the_reserve(service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    app, client, watch = service(ARW_MODELS_DISK_RESERVE_MB=1)
    res = origin.add("/r.gguf", payload(100_000, seed=48))
    monkeypatch.setattr(ArwModels.state(app).manager, "disk_free", lambda path: len(res.data) + 1000)
    post_download(client, "r", origin.url("/r.gguf"))
    err = watch.terminal("r")
    assert err["code"] == "disk-insufficient" and err["needed"] == len(res.data) + MiB
    assert origin.requests_for("/r.gguf")[0].status == 200
    assert os.listdir(models_dir(app)) == []


# -- stale partial files ------------------------------------------------------------------


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


# -- durability ---------------------------------------------------------------------------


def test_part_is_fsynced_before_the_rename_and_the_directory_after(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client, watch = service()
    res = origin.add("/d.gguf", payload(1000, seed=49))
    log: list[tuple[str, Any]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        log.append(("fsync", (st.st_dev, st.st_ino)))
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        if str(src).endswith(".part"):
            st = os.stat(src)
            log.append(("replace", (st.st_dev, st.st_ino)))
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    post_download(client, "d", origin.url("/d.gguf"))
    assert watch.terminal("d")["status"] == "complete"
    monkeypatch.undo()
    assert read(os.path.join(models_dir(app), "d.gguf")) == res.data
    renames = [i for i, (op, _) in enumerate(log) if op == "replace"]
    assert len(renames) == 1
    at, file_id = renames[0], log[renames[0]][1]
    assert ("fsync", file_id) in log[:at], "the .part was not fsynced before its rename"
    st = os.stat(models_dir(app))
    assert ("fsync", (st.st_dev, st.st_ino)) in log[at:], "models/ was not fsynced after the rename"


def test_a_failed_rename_leaves_a_resumable_part(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until the file has its final name, the
    .part keeps its sidecar (a crash at that point must leave a resumable download)."""
    app, client, watch = service()
    res = origin.add("/f.gguf", payload(1000, seed=50))
    real_replace = os.replace

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        if str(src).endswith(".part"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    post_download(client, "f", origin.url("/f.gguf"), sha256=res.sha256)
    assert watch.terminal("f")["status"] == "error"
    monkeypatch.undo()
    assert read(part(app, "f")) == res.data
    assert os.path.exists(sidecar(app, "f"))
    assert client.get("/models").json["items"] == []


# -- cancel -------------------------------------------------------------------------------


def test_cancel_during_a_long_retry_after_is_prompt(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_RETRY_BACKOFF_MAX_MS=30_000)
    origin.add("/wait.gguf", payload(1000, seed=51), statuses=[(503, {"Retry-After": "30"})])
    post_download(client, "wait", origin.url("/wait.gguf"))
    assert watch.status("wait", "retrying")["delay_ms"] == 30_000
    t0 = time.monotonic()
    r = cancel(client, "wait")
    event = watch.status("wait", "canceled", "error", "complete", timeout=5)
    assert r.json == {"id": "wait", "status": "canceled"} and event["status"] == "canceled"
    assert time.monotonic() - t0 < 2
    assert len(origin.requests_for("/wait.gguf")) == 1
    assert os.listdir(models_dir(app)) == []


def test_cancel_while_waiting_for_response_headers_is_prompt(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The origin accepted the request
    and never answers; only shutting the socket down ends the wait before the 30 s idle
    timeout."""
    _, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    handed = threading.Event()
    real_attach = DownloadJob.attach_socket

    def attach_socket(self: Any, sock: socket.socket) -> Any:
        result = real_attach(self, sock)
        handed.set()
        return result

    monkeypatch.setattr(DownloadJob, "attach_socket", attach_socket)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(5)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/mute.gguf"
        post_download(client, "mute", url)
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(5)
            assert conn.recv(65536).startswith(b"GET /mute.gguf")  # the request is sent
            # The job holds the socket it waits on (with hand_over_noop this times out:
            # then nothing could wake the worker either).
            assert handed.wait(2)
            t0 = time.monotonic()
            r = cancel(client, "mute")
            event = watch.status("mute", "canceled", "error", "complete", timeout=5)
            elapsed = time.monotonic() - t0
            assert r.json == {"id": "mute", "status": "canceled"} and event["status"] == "canceled"
            assert elapsed < 2, elapsed
            assert "retrying" not in watch.statuses("mute")


def test_cancel_is_seen_between_chunks_even_if_the_socket_keeps_delivering(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the socket shutdown disabled, only the stop
    event checked between chunks keeps the worker from reading the rest of the body."""
    app, client, watch = service(ARW_DL_PROGRESS_INTERVAL_MS=0)
    monkeypatch.setattr(DownloadJob, "wake", staticmethod(lambda sock: None))
    monkeypatch.setattr(DownloadJob, "attach_response", lambda self, response: None)
    origin.add("/t.gguf", payload(4 * MiB, seed=52), throttle=4 * MiB)
    post_download(client, "t", origin.url("/t.gguf"))
    watch.status("t", "downloading")
    mark = watch.hub.last_id
    r = cancel(client, "t")
    assert r.json == {"id": "t", "status": "canceled"}
    assert watch.terminal("t")["status"] == "canceled"
    after = [e.payload for e in watch.events
             if e.id is not None and e.id > mark and e.payload.get("status") == "downloading"]
    # At most the chunk in flight when the cancel came; never the rest of the file.
    assert len(after) <= 1, [p["downloaded"] for p in after]
    assert os.listdir(models_dir(app)) == []


# -- the event hub ------------------------------------------------------------------------


def test_after_the_id_just_before_the_ring_is_no_gap() -> None:
    hub = EventHub(replay=3)
    ids = [hub.publish("k", {"n": n}).id for n in range(6)]
    _, backlog = hub.subscribe(after=ids[2])
    assert [(e.kind, e.id) for e in backlog] == [("k", ids[3]), ("k", ids[4]), ("k", ids[5])]
    hub.close()


def test_after_the_id_before_this_process_counts_the_missed_events() -> None:
    """``after == first_id - 1`` means "from this process's
    first event"; what fell out of the ring can be counted."""
    hub = EventHub(replay=3)
    for n in range(6):
        hub.publish("k", {"n": n})
    _, backlog = hub.subscribe(after=hub.first_id - 1)
    assert backlog[0].kind == "bus.gap" and backlog[0].payload == {"missed": 3}
    assert [e.payload["n"] for e in backlog[1:]] == [3, 4, 5]
    hub.close()


def test_replay_after_an_id_honours_the_prefix_filter() -> None:
    hub = EventHub(replay=100)
    first = hub.publish("Models.X", {"n": -1}).id
    for n in range(3):
        hub.publish("Models.X", {"n": n})
        hub.publish("Other.Y", {"n": n})
    _, backlog = hub.subscribe(prefixes=("Models.",), after=first)
    assert [(e.kind, e.payload["n"]) for e in backlog] == [("Models.X", 0), ("Models.X", 1), ("Models.X", 2)]
    hub.close()


def test_subscribing_to_a_closed_hub_ends_at_once() -> None:
    hub = EventHub()
    hub.publish("k", {})
    hub.close()
    sub, _ = hub.subscribe()
    assert sub.get(timeout=0) is None
    assert hub.subscriber_count == 0


def _job(app: Any, model_id: str) -> Any:
    job = ArwModels.state(app).manager.find(model_id)
    assert job is not None
    return job


def test_a_cancel_that_lands_after_the_last_byte_still_wins(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel that arrives once the body is
    whole, before the file is installed, must still cancel (the model is not installed)."""
    app, client, watch = service()
    origin.add("/late.gguf", payload(1000, seed=53))
    manager = ArwModels.state(app).manager
    points: list[str] = []

    def checkpoint(point: str, job: Any) -> None:
        points.append(point)
        if point == "transferred":  # the body is on disk; verification comes next
            job.stop("cancel")

    monkeypatch.setattr(manager, "checkpoint", checkpoint)
    post_download(client, "late", origin.url("/late.gguf"))
    assert watch.terminal("late")["status"] == "canceled"
    assert points == ["answered", "transferred"]
    assert client.get("/models").json["items"] == []
    assert os.listdir(models_dir(app)) == []


def test_a_cancel_that_lands_with_a_busy_answer_publishes_no_retrying(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 503 arrives as the job is
    canceled; the job ends canceled without announcing a retry it will never make."""
    app, client, watch = service()
    origin.add("/b.gguf", payload(1000, seed=54), statuses=[(503, {"Retry-After": "0"})])

    def checkpoint(point: str, job: Any) -> None:
        if point == "failed":
            job.stop("cancel")  # the cancel lands once the 503 is read, before the retry is decided

    monkeypatch.setattr(ArwModels.state(app).manager, "checkpoint", checkpoint)
    post_download(client, "b", origin.url("/b.gguf"))
    assert watch.terminal("b")["status"] == "canceled"
    assert watch.statuses("b") == ["canceled"]
    assert len(origin.requests_for("/b.gguf")) == 1


def test_credentials_in_a_redirect_target_are_not_in_the_error(service: Service, origin: Origin) -> None:
    """``requests`` quotes the whole redirect target
    (userinfo included) when it has no adapter for its scheme."""
    _, client, watch = service()
    target = "ftp://user:secret@127.0.0.1/m.gguf?token=abcXYZ"
    origin.add("/r.gguf", payload(10), statuses=[(302, {"Location": target})])
    post_download(client, "r", origin.url("/r.gguf"))
    err = watch.terminal("r")
    assert err["status"] == "error" and err["code"] == "invalid-redirect"
    assert "ftp://***@127.0.0.1/m.gguf?***" in err["error"]
    texts = [e.encode().decode() for e in watch.events] + [client.get("/models/downloads/r").get_data(as_text=True)]
    for text in texts:
        assert "secret" not in text and "abcXYZ" not in text, text


def test_an_event_published_while_subscribing_is_neither_lost_nor_doubled() -> None:
    """The backlog and the live registration must be one
    step under the hub lock. If the registration happens outside the lock, a publisher
    can run in between; this test makes that interleaving happen (deterministically)."""
    hub = EventHub(replay=100)
    first = hub.publish("k", {"n": 0}).id
    hub.publish("k", {"n": 1})

    class Interleaving(set):  # type: ignore[type-arg]
        def add(self, sub: Any) -> None:
            if not hub._lock.locked():  # a publisher could run here: let one run
                hub.publish("k", {"n": "window"})
            super().add(sub)

    hub._subs = Interleaving()
    sub, backlog = hub.subscribe(after=first)
    hub.publish("k", {"n": 2})
    live = sub.get(timeout=0) or []
    ids = [e.id for e in backlog + live]
    assert ids == list(range(first + 1, hub.last_id + 1))
    hub.close()


def test_a_shutdown_after_a_cancel_does_not_turn_it_into_an_interruption(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first reason to stop wins; a cancel
    followed by a shutdown (SIGTERM while the cancel is waited for) still removes the
    .part and publishes canceled. The socket shutdown is disabled so that both stops
    land while the worker is blocked; the origin's release then wakes it."""
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/c.gguf", payload(MiB, seed=55), stall_after=64 * KiB)
    post_download(client, "c", origin.url("/c.gguf"))
    assert res.stalled.wait(5)
    monkeypatch.setattr(DownloadJob, "wake", staticmethod(lambda sock: None))
    monkeypatch.setattr(DownloadJob, "attach_response", lambda self, response: None)
    job = _job(app, "c")
    job.stop("cancel")
    job.stop("shutdown")
    res.release.set()  # the origin ends the response: the worker sees its stop
    assert watch.terminal("c")["status"] == "canceled"
    assert job.done.wait(5)
    assert os.listdir(models_dir(app)) == []


def test_a_cancel_between_verification_and_install_wins(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is verified and about to be renamed when the cancel lands: the model is
    not installed, and the cancel's answer is true."""
    app, client, watch = service()
    origin.add("/v.gguf", payload(1000, seed=56))

    def checkpoint(point: str, job: Any) -> None:
        if point == "verified":
            job.stop("cancel")  # after the last check of the transfer, before the install

    monkeypatch.setattr(ArwModels.state(app).manager, "checkpoint", checkpoint)
    post_download(client, "v", origin.url("/v.gguf"))
    assert watch.terminal("v")["status"] == "canceled"
    assert client.get("/models").json["items"] == []
    assert os.listdir(models_dir(app)) == []
    assert [e.payload for e in watch.events if e.kind == "Models.Changed"] == []


def test_a_cancel_after_the_install_says_there_is_nothing_to_cancel(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model is installed but its job has not ended yet: the cancel must not answer
    ``canceled`` for a model that stays."""
    app, client, watch = service()
    res = origin.add("/i.gguf", payload(1000, seed=57))
    manager = ArwModels.state(app).manager
    answers: list[Any] = []

    def checkpoint(point: str, job: Any) -> None:
        if point == "installed":  # after the install, before the job ends
            try:
                answers.append(manager.cancel(job.id, wait=0))
            except ArwError as exc:
                answers.append(exc)

    monkeypatch.setattr(manager, "checkpoint", checkpoint)
    post_download(client, "i", origin.url("/i.gguf"), sha256=res.sha256)
    assert watch.terminal("i")["status"] == "complete"
    assert _job(app, "i").done.wait(5)
    [answer] = answers
    assert getattr(answer, "code", None) == "no-active-download", answer
    assert watch.statuses("i").count("canceled") == 0
    assert [m["id"] for m in client.get("/models").json["items"]] == ["i"]


def test_a_post_made_on_a_jobs_terminal_signal_finds_the_job_over(service: Service, origin: Origin) -> None:
    """A receiver of the terminal signal (or a client that acts on the terminal event)
    posts again at once: the job is over by then, so the POST answers 200 for the
    installed model, or starts a new job, and never races the ending one."""
    app, client, watch = service()
    good = origin.add("/ok.gguf", payload(1000, seed=58))
    origin.add("/gone.gguf", payload(10), statuses=[(404, {}), (404, {})])
    answers: dict[str, Any] = {}

    def post_again(sender: Any, payload: dict[str, Any]) -> None:  # runs in the ending job's thread
        if payload["id"] in answers:
            return
        url = origin.url("/ok.gguf" if payload["id"] == "ok" else "/gone.gguf")
        answers[payload["id"]] = app.test_client().post("/models/download", json={"id": payload["id"], "url": url})

    with signals.download_completed.connected_to(post_again, sender=app), \
            signals.download_failed.connected_to(post_again, sender=app):
        post_download(client, "ok", origin.url("/ok.gguf"), sha256=good.sha256)
        assert watch.terminal("ok")["status"] == "complete"
        post_download(client, "gone", origin.url("/gone.gguf"))
        assert watch.terminal("gone")["status"] == "error"
        assert watch.terminal("gone")["status"] == "error"  # the job the receiver started
        for model_id in ("ok", "gone"):
            assert _job(app, model_id).done.wait(5)
    assert answers["ok"].status_code == 200 and answers["ok"].json["sha256"] == good.sha256
    assert answers["gone"].status_code == 202 and answers["gone"].json["status"] == "started"
    assert [s for s in watch.statuses("ok") if s != "downloading"] == ["started", "complete"]
    assert watch.statuses("gone") == ["error", "error"]
    assert len(origin.requests_for("/gone.gguf")) == 2




def test_a_post_in_the_moment_after_the_install_gets_the_installed_model(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model is installed and its job not yet over: the same POST answers 200 with
    the model (not a 409, not a second download)."""
    app, client, watch = service()
    res = origin.add("/w.gguf", payload(1000, seed=59))
    manager = ArwModels.state(app).manager
    answers: list[Any] = []

    def checkpoint(point: str, job: Any) -> None:
        if point == "installed":
            answers.append(manager.submit(job.id, job.url, None, "local"))

    monkeypatch.setattr(manager, "checkpoint", checkpoint)
    post_download(client, "w", origin.url("/w.gguf"), sha256=res.sha256)
    assert watch.terminal("w")["status"] == "complete"
    [(status, model)] = answers
    assert status == 200 and model["sha256"] == res.sha256 and model["file"] == "w.gguf"
    assert len(origin.requests_for("/w.gguf")) == 1
