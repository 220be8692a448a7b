"""Failures inside a download fetched in parallel ranges (and at the edges of the
single stream): a range that drops, a range refused, statuses at the edges of
'retry', a stop right after the answer, a crash before the first fsync."""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from arw_models import ArwModels
from arw_models.config import DEFAULTS, Settings
from arw_models.engine import verify
from arw_models.engine.http import new_session
from arw_models.engine.plan import Plan, Span
from arw_models.engine.segments import FileChanged, Segments
from arw_models.engine.sources import Source
from arw_models.engine.transfer import Transfer
from arw_models.errors import TransferError
from arw_models.service.manager import PROGRESS
from arw_models.store.storage import StateDir

from .support.app import Service, post_download
from .support.helpers import listing, models_dir, part, read, write_partial
from .support.origin import Origin, payload
from .support.servers import Gunicorn
from .support.sse import is_status, post_and_follow

KiB = 1024
MiB = 1024 * KiB
# Large enough to be split into ranges at once.
SPLIT = {"ARW_DL_SEGMENTS": 4, "ARW_DL_SEGMENT_MIN_MB": 1, "ARW_DL_CHUNK_BYTES": 64 * KiB}


def test_ranges_that_drop_are_fetched_again_on_their_own(service: Service, origin: Origin) -> None:
    app, client, watch = service(**SPLIT)
    res = origin.add("/d.gguf", payload(8 * MiB, seed=140), throttle=4 * MiB, range_drop_after=256 * KiB,
                     range_drops=3)
    post_download(client, "d", origin.url("/d.gguf"), sha256=res.sha256)
    done = watch.terminal("d", timeout=20)
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert read(os.path.join(models_dir(app), "d.gguf")) == res.data
    ranged = [s for s in origin.requests_for("/d.gguf") if s.range]
    assert len(ranged) >= 3 + 3  # the dropped ones, asked again from where they stopped
    assert "error" not in watch.statuses("d")


def test_a_range_without_length_that_ends_early_is_fetched_again(service: Service, origin: Origin) -> None:
    """Without Content-Length, the end of a range's connection is the end of its
    body as far as the client library knows: a range cut short reads as a clean end,
    which must be retried rather than read again for ever."""
    app, client, watch = service(**SPLIT)
    res = origin.add("/l.gguf", payload(4 * MiB, seed=145), throttle=2 * MiB, range_length=False,
                     range_drop_after=128 * KiB, range_drops=2)
    post_download(client, "l", origin.url("/l.gguf"), sha256=res.sha256)
    done = watch.terminal("l", timeout=10)
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert read(os.path.join(models_dir(app), "l.gguf")) == res.data
    ranged = [s for s in origin.requests_for("/l.gguf") if s.range]
    assert len(ranged) >= 2 + 2 and all(s.status == 206 for s in ranged)  # the cut ones, asked again


def test_a_range_that_fails_before_its_first_byte_has_every_retry(service: Service, origin: Origin) -> None:
    """The first answer to a range's first request is a 503: that is its first
    failure, and with one retry allowed, the range is asked again on its own (the
    download does not fail, nor retry as a whole)."""
    app, client, watch = service(**SPLIT, ARW_DL_RETRIES=1)
    res = origin.add("/f.gguf", payload(4 * MiB, seed=146), throttle=2 * MiB, range_statuses=[(503, {})])
    post_download(client, "f", origin.url("/f.gguf"), sha256=res.sha256)
    done = watch.terminal("f", timeout=10)
    assert done["status"] == "complete" and read(os.path.join(models_dir(app), "f.gguf")) == res.data
    seen = origin.requests_for("/f.gguf")
    assert seen[0].range is None and seen[1].range and seen[1].status == 503
    assert [s.status for s in seen[2:]] == [206] * (len(seen) - 2)  # that range asked again, and the others
    assert "retrying" not in watch.statuses("f")


def test_a_range_that_fails_past_its_retries_fails_the_attempt(service: Service, origin: Origin) -> None:
    """A range whose first request and its one retry (ARW_DL_RETRIES=1) both fail
    ends the attempt: the download is tried again as a whole, from where its ranges
    got to. One range of 1 MiB is left: one connection, which nothing splits."""
    data = payload(6 * MiB, seed=147)
    res = origin.add("/g.gguf", data, statuses=[(503, {}), (503, {})])
    app, client, watch = service(**SPLIT, ARW_DL_RETRIES=1)
    write_partial(app, "g", data[: 5 * MiB], {"url": origin.url("/g.gguf"), "etag": res.etag, "total": len(data),
                                              "ranges": [[0, 4 * MiB, 4 * MiB], [4 * MiB, 6 * MiB, MiB]]})
    post_download(client, "g", origin.url("/g.gguf"), sha256=res.sha256)
    done = watch.terminal("g")
    assert done["status"] == "complete", done
    assert read(os.path.join(models_dir(app), "g.gguf")) == data
    left = f"bytes={5 * MiB}-{6 * MiB - 1}"
    assert [(s.status, s.range) for s in origin.requests_for("/g.gguf")] == [(503, left), (503, left), (206, left)]
    assert [p["code"] for p in watch.payloads("g") if p["status"] == "retrying"] == ["http-status"]


@pytest.mark.parametrize(("fails", "retried"), [(1, False), (2, True)], ids=["within-its-retries", "past-them"])
def test_each_range_of_a_connection_has_retries_of_its_own(service: Service, origin: Origin, fails: int,
                                                           retried: bool) -> None:
    """One connection fetches two ranges in turn; the first fails once and is then
    fetched whole. The second range's failures are counted from none: with one
    retry allowed, one failure of it is retried on its own, and a second ends the
    attempt (the download is then tried again as a whole)."""
    data = payload(4 * MiB, seed=149)
    res = origin.add("/c.gguf", data, range_statuses_from={MiB: [(503, {})], 2 * MiB: [(503, {})] * fails})
    app, client, watch = service(**dict(SPLIT, ARW_DL_SEGMENTS=1), ARW_DL_RETRIES=1)
    write_partial(app, "c", data[:MiB], {"url": origin.url("/c.gguf"), "etag": res.etag, "total": len(data),
                                         "ranges": [[0, 2 * MiB, MiB], [2 * MiB, 4 * MiB, 0]]})
    post_download(client, "c", origin.url("/c.gguf"), sha256=res.sha256)
    done = watch.terminal("c")
    assert done["status"] == "complete" and read(os.path.join(models_dir(app), "c.gguf")) == data
    first, second = f"bytes={MiB}-{2 * MiB - 1}", f"bytes={2 * MiB}-{4 * MiB - 1}"
    assert [(s.status, s.range) for s in origin.requests_for("/c.gguf")] == [
        (503, first), (206, first), *[(503, second)] * fails, (206, second)]
    assert [p["code"] for p in watch.payloads("c") if p["status"] == "retrying"] == ["http-status"] * retried


def run_two_ranges(origin: Origin, tmp_path: Path, statuses: dict[int, int], **config: Any) -> BaseException:
    """Two ranges of 1 MiB fetched by two connections of :class:`Segments` straight
    from the origin, whose answers to the range from each key of ``statuses`` is that
    status (206: the bytes, of another version than the one recorded). The 404 is
    taken up first, and the other answer once that range has failed: what the
    ranges end with (they must end within ten seconds)."""
    data = payload(2 * MiB, seed=150)
    origin.add("/v.gguf", data, range_statuses_from={at: [(code, {})] for at, code in statuses.items() if code != 206})
    url = origin.url("/v.gguf")
    answered, failed = threading.Event(), threading.Event()

    class Job(Transfer):
        def interrupt(self) -> None:  # a range failed: the other connections are woken
            failed.set()
            super().interrupt()

    def check(response: Any, total: int | None) -> None:
        if response.status_code == 404:
            assert answered.wait(10)
        else:
            answered.set()
            assert failed.wait(10)

    plan = Plan(len(data), [Span(0, MiB), Span(MiB, 2 * MiB)])
    settings = Settings.from_config(dict(DEFAULTS, ARW_STATE_DIR=str(tmp_path), ARW_DL_SEGMENTS=2, **config))
    ended: list[BaseException] = []
    with open(tmp_path / "v.part", "w+b") as fh:
        hasher = verify.PrefixHasher(fh.fileno(), plan.contiguous)
        ranges = Segments(Job("v", url, None, "url"), settings, plan, fh, session=lambda: new_session("test"),
                          recorded={"etag": '"before"'}, validator=None, hasher=hasher, durable=lambda done: None,
                          source=Source(url, "origin"), check=check)

        def run() -> None:
            try:
                ranges.run()
            except BaseException as exc:  # noqa: BLE001 - what the test looks at
                ended.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(10)
        hasher.abandon()
    assert not thread.is_alive(), "the ranges did not end"
    [outcome] = ended
    return outcome


def test_a_range_of_a_changed_file_outweighs_another_refused_before_it(origin: Origin, tmp_path: Path) -> None:
    """One range is refused (a 404, which alone fails the download); the answer to
    the other, taken up just after, is of another version of the file. The ranges
    end with the change, which explains the refusal: the download then starts over
    rather than failing."""
    assert isinstance(run_two_ranges(origin, tmp_path, {0: 404, MiB: 206}), FileChanged)


def test_a_range_that_fails_ends_the_others_at_once_not_after_their_backoff(origin: Origin, tmp_path: Path) -> None:
    """One range is refused; the other's answer, taken up just after, is a 503,
    which alone would be retried after a backoff (20 s here). The download has
    failed already: that range is not retried, and the ranges end at once."""
    outcome = run_two_ranges(origin, tmp_path, {0: 404, MiB: 503}, ARW_DL_RETRY_BACKOFF_MS=20000)
    assert isinstance(outcome, TransferError) and outcome.context["http_status"] == 404


def test_the_ranges_end_only_once_the_record_under_way_is_made(origin: Origin, tmp_path: Path) -> None:
    """A range is refused while the ranges fetched so far are being recorded: the
    ranges end only once that record is made, so what the download does next (go
    on as one stream, start over, keep what was written) is never overwritten by a
    late record of the ranges, nor its descriptor fsynced after it is closed."""
    data = payload(2 * MiB, seed=151)
    # The range from 0 stalls after 256 KiB (enough for a record); the one from 1 MiB is a 404.
    origin.add("/w.gguf", data, stall_after=256 * KiB, range_statuses_from={MiB: [(404, {})]})
    url = origin.url("/w.gguf")
    recording, ended = threading.Event(), threading.Event()
    late: list[bool] = []

    def durable(plan: Plan) -> None:
        if not recording.is_set():  # the first record, made while both ranges run
            recording.set()
            late.append(ended.wait(0.5))  # bounded: the ranges must not end meanwhile

    def check(response: Any, total: int | None) -> None:
        if response.status_code == 404:  # taken up once the record is under way
            assert recording.wait(10)

    plan = Plan(len(data), [Span(0, MiB), Span(MiB, 2 * MiB)])
    settings = Settings.from_config(dict(DEFAULTS, ARW_STATE_DIR=str(tmp_path), ARW_DL_SEGMENTS=2,
                                         ARW_DL_CHUNK_BYTES=64 * KiB, ARW_DL_FSYNC_BYTES=64 * KiB))
    outcome: list[BaseException] = []
    with open(tmp_path / "w.part", "w+b") as fh:
        hasher = verify.PrefixHasher(fh.fileno(), plan.contiguous)
        ranges = Segments(Transfer("w", url, None, "url"), settings, plan, fh, session=lambda: new_session("test"),
                          recorded={}, validator=None, hasher=hasher, durable=durable, source=Source(url, "origin"),
                          check=check)

        def run() -> None:
            try:
                ranges.run()
            except BaseException as exc:  # noqa: BLE001 - what the test looks at
                outcome.append(exc)
            ended.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(10)
        hasher.abandon()
    assert not thread.is_alive(), "the ranges did not end"
    [error] = outcome
    assert isinstance(error, TransferError) and error.context["http_status"] == 404
    assert late == [False]  # the record was made before the ranges ended


def test_a_retried_attempt_hashes_on_from_where_the_last_one_got(
        service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attempt that failed had hashed the 5 MiB from byte 0 on disk: the next
    one goes on from there and reads back only the last MiB it fetched, not the
    whole file a second time."""
    data = payload(6 * MiB, seed=148)
    res = origin.add("/h.gguf", data, statuses=[(503, {}), (503, {})])
    app, client, watch = service(**SPLIT, ARW_DL_RETRIES=1)
    write_partial(app, "h", data[: 5 * MiB], {"url": origin.url("/h.gguf"), "etag": res.etag, "total": len(data),
                                              "ranges": [[0, 4 * MiB, 4 * MiB], [4 * MiB, 6 * MiB, MiB]]})
    finished: list[tuple[int, int]] = []
    real_finish = verify.PrefixHasher.finish

    def finish(hasher: verify.PrefixHasher) -> Any:
        done = real_finish(hasher)
        finished.append((hasher.hashed, hasher.read_back))
        return done

    monkeypatch.setattr(verify.PrefixHasher, "finish", finish)
    post_download(client, "h", origin.url("/h.gguf"), sha256=res.sha256)
    done = watch.terminal("h")
    assert done["status"] == "complete" and done["sha256"] == res.sha256, done
    assert [p["code"] for p in watch.payloads("h") if p["status"] == "retrying"] == ["http-status"]
    assert finished == [(6 * MiB, MiB)]


HALF = 512 * KiB


def ranges_with_a_hole(service: Service, origin: Origin, model_id: str, seed: int) -> tuple[Any, ...]:
    """A download of 2 MiB in two ranges, resumed with 512 KiB of each on disk (a
    hole after the first 512 KiB), from an origin that now answers ranges with the
    whole file: the app, client, watch, the file's bytes and the origin's resource."""
    data = payload(2 * MiB, seed=seed)
    res = origin.add(f"/{model_id}.gguf", data, ignore_range=True)
    app, client, watch = service(**SPLIT)
    disk = data[:HALF] + bytes(HALF) + data[MiB : MiB + HALF] + bytes(HALF)
    write_partial(app, model_id, disk, {"url": origin.url(f"/{model_id}.gguf"), "etag": res.etag, "total": len(data),
                                        "ranges": [[0, MiB, HALF], [MiB, 2 * MiB, HALF]]})
    return app, client, watch, data, res


def test_ranges_refused_keep_the_bytes_up_to_the_first_hole_and_say_so(service: Service, origin: Origin) -> None:
    """Resumed ranges, with a hole after the first 512 KiB, answered with the whole
    file: one stream from now on keeps only the bytes before the hole, and the
    retry says that many are kept (not the 1 MiB the ranges held in all)."""
    app, client, watch, data, res = ranges_with_a_hole(service, origin, "k", seed=149)
    on_disk: list[int] = []

    def checkpoint(point: str, job: Any) -> None:
        if point == "failed" and not on_disk:  # the .part as the one stream will find it
            on_disk.append(os.path.getsize(os.path.join(models_dir(app), "k.part")))

    ArwModels.state(app).manager.checkpoint = checkpoint
    post_download(client, "k", origin.url("/k.gguf"), sha256=res.sha256)
    done = watch.terminal("k")
    assert done["status"] == "complete", done
    assert read(os.path.join(models_dir(app), "k.gguf")) == data
    retries = [p for p in watch.payloads("k") if p["status"] == "retrying"]
    assert [(p["code"], p["downloaded"]) for p in retries][:1] == [("resume-invalid", HALF)]
    assert on_disk == [HALF]  # cut at the hole, not left at the ranges' full size


def test_ranges_refused_then_a_failed_record_leave_no_range_over_bytes_cut_off(
        service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges answered with the whole file cut the ``.part`` at its first hole; should
    the record after the cut fail (a full disk, or a crash there), the record left
    must not say a range past the hole is done: a resume from an origin that serves
    ranges again would take the zeros the file regrows with for the file's bytes.
    No digest here, so nothing else would catch them."""
    app, client, watch, data, res = ranges_with_a_hole(service, origin, "c", seed=150)
    cut = threading.Event()
    real_ftruncate, real_write = os.ftruncate, StateDir.write_sidecar

    def ftruncate(fd: int, length: int) -> None:
        real_ftruncate(fd, length)
        if length == HALF:
            cut.set()

    def write_sidecar(state: StateDir, model_id: str, data: dict[str, Any]) -> None:
        if cut.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(state, model_id, data)

    monkeypatch.setattr(os, "ftruncate", ftruncate)
    monkeypatch.setattr(StateDir, "write_sidecar", write_sidecar)
    post_download(client, "c", origin.url("/c.gguf"))
    failed = watch.terminal("c")
    assert (failed["status"], failed["code"]) == ("error", "disk-full"), failed
    monkeypatch.setattr(StateDir, "write_sidecar", real_write)
    res.ignore_range = False  # the origin serves ranges again
    post_download(client, "c", origin.url("/c.gguf"))
    done = watch.until(lambda e: e.payload.get("id") == "c" and e.payload.get("status") == "complete").payload
    assert done["bytes"] == len(data), done
    assert read(os.path.join(models_dir(app), "c.gguf")) == data


def test_a_range_refused_ends_the_download_with_that_status(service: Service, origin: Origin) -> None:
    _app, client, watch = service(**SPLIT)
    res = origin.add("/r.gguf", payload(8 * MiB, seed=141), throttle=4 * MiB, range_status=403)
    post_download(client, "r", origin.url("/r.gguf"), sha256=res.sha256)
    done = watch.terminal("r", timeout=20)
    assert done["status"] == "error" and done["code"] == "http-status" and done["http_status"] == 403
    assert client.get("/models").json["items"] == []


@pytest.mark.parametrize("fallocate", [True, False], ids=["fallocate", "no-fallocate"])
def test_a_split_part_is_preallocated_to_the_whole_size(service: Service, origin: Origin,
                                                         monkeypatch: pytest.MonkeyPatch, fallocate: bool) -> None:
    """The .part of ranges has the file's size from the start: its blocks reserved
    where the file system can, else a sparse file of that size (no error)."""
    if not fallocate:
        def unsupported(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")

        monkeypatch.setattr(os, "posix_fallocate", unsupported)
    app, client, watch = service(**dict(SPLIT, ARW_DL_IDLE_TIMEOUT_SECS=30))
    res = origin.add("/p.gguf", payload(8 * MiB, seed=142), throttle=2 * MiB)
    post_download(client, "p", origin.url("/p.gguf"))
    watch.until(lambda e: e.payload.get("id") == "p" and e.payload.get("segments", 0) > 1)
    assert os.path.getsize(part(app, "p")) == len(res.data)  # a full disk would have shown at once
    recorded = json.loads(read(part(app, "p") + ".json"))["ranges"]
    assert len(recorded) > 1  # on record before the file grew
    client.post("/models/download/cancel", json={"id": "p"})
    assert watch.terminal("p")["status"] == "canceled"


def test_short_writes_of_a_range_go_on_where_they_stopped(service: Service, origin: Origin,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A write may take fewer bytes than it was given (a disk filling up): the rest
    of each chunk is written after them, not over them nor left out."""
    app, client, watch = service(**SPLIT)
    res = origin.add("/w.gguf", payload(4 * MiB, seed=146), throttle=4 * MiB)
    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: real_pwrite(fd, bytes(data[:10_000]), at))
    post_download(client, "w", origin.url("/w.gguf"), sha256=res.sha256)
    done = watch.terminal("w", timeout=20)
    assert done["status"] == "complete", done
    assert read(os.path.join(models_dir(app), "w.gguf")) == res.data
    assert max(p.get("segments", 0) for p in watch.payloads("w")) > 1  # written by the ranges


def test_a_range_that_cannot_be_written_ends_the_download_as_disk_error(service: Service, origin: Origin,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails (an I/O error of the disk) ends the download with its
    cause; nothing is counted as fetched that is not on the disk."""
    _app, client, watch = service(**SPLIT)
    res = origin.add("/e.gguf", payload(4 * MiB, seed=147), throttle=4 * MiB)

    def failing(fd: int, data: Any, at: int) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwrite", failing)
    post_download(client, "e", origin.url("/e.gguf"), sha256=res.sha256)
    done = watch.terminal("e", timeout=20)
    assert (done["status"], done["code"]) == ("error", "disk-error"), done
    assert "Input/output error" in done["error"], done
    assert client.get("/models").json["items"] == []


def test_an_fsync_of_the_ranges_that_fails_ends_the_download_as_disk_error(service: Service, origin: Origin,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The ranges are recorded as fetched only once the disk holds them: an fsync
    of the .part that fails ends the download as a disk error, nothing installed."""
    app, client, watch = service(**SPLIT)
    res = origin.add("/s.gguf", payload(4 * MiB, seed=148), throttle=4 * MiB)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/s.part"):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    post_download(client, "s", origin.url("/s.gguf"), sha256=res.sha256)
    done = watch.terminal("s", timeout=20)
    assert (done["status"], done["code"]) == ("error", "disk-error"), done
    assert client.get("/models").json["items"] == []
    assert not os.path.exists(os.path.join(models_dir(app), "s.gguf"))


@pytest.mark.parametrize("ignore_if_range", [False, True], ids=["if-range-honoured", "if-range-ignored"])
def test_a_file_that_changes_while_its_ranges_run_is_fetched_again_whole(
    service: Service, origin: Origin, ignore_if_range: bool,
) -> None:
    """The ranges run when the file changes (the first answer's connection drops
    at that moment, inside its range): the range asked again is of the new version.
    The download starts over and installs the new file, never a mix."""
    app, client, watch = service(**SPLIT)
    old, new = payload(8 * MiB, seed=143), payload(8 * MiB, seed=144)
    origin.add("/c.gguf", old, throttle=4 * MiB, drop_after=1 * MiB, ignore_if_range=ignore_if_range,
               on_drop=lambda r: (r.replace(new), setattr(r, "throttle", None)))
    post_download(client, "c", origin.url("/c.gguf"))
    done = watch.terminal("c", timeout=20)
    assert done["status"] == "complete", done
    assert read(os.path.join(models_dir(app), "c.gguf")) == new
    codes = [p["code"] for p in watch.payloads("c") if p["status"] == "retrying"]
    assert "resume-invalid" in codes


@pytest.mark.parametrize(("status", "retried"), [
    (407, False), (408, True), (409, False), (428, False), (429, True), (430, False),
    (499, False), (500, True), (599, True), (600, False),
])
def test_which_statuses_are_retried(service: Service, origin: Origin, status: int, retried: bool) -> None:
    _app, client, watch = service()
    res = origin.add("/s.gguf", payload(10 * KiB, seed=145), statuses=[(status, {})])
    post_download(client, "s", origin.url("/s.gguf"), sha256=res.sha256)
    done = watch.terminal("s")
    if retried:
        assert done["status"] == "complete" and "retrying" in watch.statuses("s")
    else:
        assert done["status"] == "error" and done["http_status"] == status


@pytest.mark.parametrize(("status", "retried"), [(407, False), (408, True), (429, True), (499, False), (500, True),
                                               (599, True), (600, False)])
def test_which_statuses_of_a_range_are_retried(service: Service, origin: Origin, status: int,
                                               retried: bool) -> None:
    app, client, watch = service(**SPLIT)
    res = origin.add("/t.gguf", payload(8 * MiB, seed=146), throttle=4 * MiB, range_statuses=[(status, {})] * 2)
    post_download(client, "t", origin.url("/t.gguf"), sha256=res.sha256)
    done = watch.terminal("t", timeout=20)
    if retried:
        assert done["status"] == "complete" and read(os.path.join(models_dir(app), "t.gguf")) == res.data
    else:
        assert done["status"] == "error" and done["http_status"] == status


def test_a_stop_right_after_the_answer_publishes_no_start(service: Service, origin: Origin,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    app, client, watch = service()
    origin.add("/a.gguf", payload(100 * KiB, seed=147))

    def checkpoint(point: str, job: Any) -> None:
        if point == "answered":
            job.stop("cancel")

    monkeypatch.setattr(ArwModels.state(app).manager, "checkpoint", checkpoint)
    post_download(client, "a", origin.url("/a.gguf"))
    assert watch.terminal("a")["status"] == "canceled"
    assert watch.statuses("a") == ["canceled"]
    assert listing(app) == []


def test_kill_9_before_the_first_fsync_of_a_split_download_resumes_right(
    gunicorns: Callable[..., Gunicorn], origin: Origin, tmp_path: Path,
) -> None:
    """No range has been fsynced yet (the window is 64 MiB), and no sha256 would
    catch a hole: only the ranges on record say what the preallocated .part holds."""
    state = tmp_path / "state"
    res = origin.add("/k.gguf", payload(8 * MiB, seed=148), throttle=2 * MiB)
    body = {"id": "k", "url": origin.url("/k.gguf")}
    env = {"ARW_DL_SEGMENTS": "4", "ARW_DL_SEGMENT_MIN_MB": "1", "ARW_DL_RESUME_ON_START": "0"}
    first = gunicorns("first", state, **env)
    first.wait_ready()
    post_and_follow(first.url, body, lambda f: f.event == PROGRESS and f.payload.get("segments", 0) > 1)
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.wait_exit(10)
    res.throttle = None
    second = gunicorns("second", state, **env)
    second.wait_ready()
    frames = post_and_follow(second.url, body, is_status("k", "complete", "error", "canceled"))
    assert frames[-1].payload["status"] == "complete"
    assert (state / "models" / "k.gguf").read_bytes() == res.data


def test_a_file_without_a_validator_is_never_split(service: Service, origin: Origin) -> None:
    """Ranges fetched apart must be shown to come from one version: without an ETag
    or a Last-Modified nothing could show it, so the file comes as one stream."""
    _app, client, watch = service(**SPLIT)
    res = origin.add("/n.gguf", payload(4 * MiB, seed=149), throttle=4 * MiB, last_modified=None)
    res.etag = None
    post_download(client, "n", origin.url("/n.gguf"), sha256=res.sha256)
    assert watch.terminal("n", timeout=20)["status"] == "complete"
    assert [s.range for s in origin.requests_for("/n.gguf")] == [None]
    assert max(p.get("segments", 0) for p in watch.payloads("n")) == 1
