"""A disk that fills up, for real: a small tmpfs as the state directory's file
system, filled by another file while a download runs.

The download ends as ``disk-full`` whatever write met the full disk (the ``.part``
or its sidecar), keeps its ``.part`` and the last whole sidecar, and continues
from there once space is free; a ``.part`` preallocated for parallel ranges
already holds its blocks, so a little free space is enough to go on.

The disk as the service checks it (a file system that reports full, or loses what
was written; the space free before a transfer, counting what running downloads
still need and the reserve): nothing is installed short, and a ``.part`` that can be
resumed is kept.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from arw_models import ArwModels
from arw_models.engine.plan import Plan

from .support.app import Service, post_download
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mounts tmpfs file systems of a given size (as root); unmounted at the end.
    Ask for it before the app's fixtures, so that it is torn down after them."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "arw-test", str(where)],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "--lazy", str(where)], check=True)


def fill(disk: Path) -> Path:
    """A file that takes every free byte of ``disk``; called again, it takes what
    was freed since (a temporary file of the service that went away)."""
    path = disk / "filler"
    with open(path, "ab", buffering=0) as fh:
        for block in (bytes(MiB), bytes(4 * KiB)):
            while True:
                try:
                    fh.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return path


def free(filler: Path, size: int | None) -> None:
    """Gives back ``size`` bytes of the filler (None: all of it)."""
    if size is None:
        filler.unlink()
    else:
        os.truncate(filler, filler.stat().st_size - size)


def recorded(path: str) -> Plan:
    side = json.loads(read(path))
    plan = Plan.from_json(side["total"], side["ranges"])
    assert plan is not None, side
    return plan


@pytest.mark.parametrize("segments, freed", [(4, MiB), (1, None)], ids=["ranges", "stream"])
def test_a_disk_that_fills_during_a_download_ends_it_as_disk_full_and_a_resume_continues(
    small_disk: Callable[[int], Path], service: Service, origin: Origin, segments: int, freed: int | None,
) -> None:
    disk = small_disk(16 * MiB)
    # Checkpoints often: the sidecar is written many times while the disk fills.
    app, client, watch = service(ARW_STATE_DIR=str(disk / "state"), ARW_DL_SEGMENTS=segments,
                                 ARW_DL_SEGMENT_MIN_MB=1, ARW_DL_CHECKPOINT_SECS=0.02)
    size = 8 * MiB
    res = origin.add("/f.gguf", payload(size, seed=311), throttle=1 * MiB)
    post_download(client, "f", origin.url("/f.gguf"), sha256=res.sha256)
    watch.until(lambda e: e.payload.get("id") == "f" and e.payload.get("downloaded", 0) >= MiB
                and e.payload.get("segments", 0) >= min(segments, 2))
    filler = fill(disk)
    # Kept full until the download ends: each event tops the filler up.
    err = watch.until(lambda e: fill(disk) is None or (e.payload.get("id") == "f" and e.payload.get("status") in (
        "complete", "error", "canceled"))).payload
    assert (err["status"], err["code"]) == ("error", "disk-full"), err
    # The .part and the last whole sidecar stay; no temporary file is left beside them.
    assert listing(app) == ["f.part", "f.part.json"]
    plan = recorded(sidecar(app, "f"))
    on_disk = read(part(app, "f"))
    for span in plan.spans:
        assert on_disk[span.start:span.position] == res.data[span.start:span.position]
    assert MiB // 2 <= plan.durable < size - MiB
    [item] = client.get("/models/downloads").json["items"]
    # What a resume keeps: the recorded ranges, or a single stream's whole .part.
    assert (item["code"], item["resumable"]) == ("disk-full", True)
    assert item["downloaded"] == (plan.durable if segments > 1 else len(on_disk))

    # Ranges need only a little space to go on (their .part holds the whole file);
    # a single stream, all it has still to fetch.
    free(filler, freed)
    res.throttle = None
    before = len(origin.requests_for("/f.gguf"))
    post_download(client, "f", origin.url("/f.gguf"), sha256=res.sha256)
    done = watch.terminal("f")
    assert done["status"] == "complete", done
    assert read(os.path.join(app.config["ARW_STATE_DIR"], "models", "f.gguf")) == res.data
    again = origin.requests_for("/f.gguf")[before:]
    assert all(r.status == 206 for r in again)
    assert sum(r.sent for r in again) <= size - plan.durable


def test_a_preallocated_part_counts_as_space_already_taken(
    small_disk: Callable[[int], Path], service: Service, origin: Origin,
) -> None:
    """An interrupted segmented download on a nearly full disk: 256 KiB free, 6 MiB
    still to fetch into the 8 MiB its ``.part`` already holds."""
    disk = small_disk(12 * MiB)
    app, client, watch = service(ARW_STATE_DIR=str(disk / "state"), ARW_DL_SEGMENTS=2, ARW_DL_SEGMENT_MIN_MB=1)
    size = 8 * MiB
    res = origin.add("/p.gguf", payload(size, seed=312))
    models = Path(app.config["ARW_STATE_DIR"]) / "models"
    models.mkdir(parents=True, exist_ok=True)
    with open(models / "p.part", "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, size)
        for start in (0, 4 * MiB):
            fh.seek(start)
            fh.write(res.data[start:start + MiB])
    ranges = [[0, 4 * MiB, MiB], [4 * MiB, size, MiB]]
    (models / "p.part.json").write_text(json.dumps({"url": origin.url("/p.gguf"), "etag": res.etag, "total": size,
                                                    "ranges": ranges}))
    free(fill(disk), 256 * KiB)
    post_download(client, "p", origin.url("/p.gguf"), sha256=res.sha256)
    done = watch.terminal("p")
    assert done["status"] == "complete", done
    assert read(str(models / "p.gguf")) == res.data
    assert sum(r.sent for r in origin.requests_for("/p.gguf")) == size - 2 * MiB


class FillingDisk:
    """Wraps a ``.part`` file; writes fail with ENOSPC once ``room`` bytes are used."""

    def __init__(self, fh: Any, budget: list[int]) -> None:
        self.fh, self.budget = fh, budget

    def write(self, buf: Any) -> int:
        if self.budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n: int = self.fh.write(memoryview(buf)[: self.budget[0]])  # a short write first
        self.budget[0] -= n
        return n

    def fileno(self) -> int:
        return int(self.fh.fileno())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def test_disk_full_keeps_the_part_and_a_later_post_resumes(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client, watch = service()
    res = origin.add("/full.gguf", payload(MiB, seed=28))
    room = 200_000
    budget = [room]
    manager = ArwModels.state(app).manager
    real_open = manager.open_part
    monkeypatch.setattr(manager, "open_part", lambda path, append: FillingDisk(real_open(path, append), budget))
    url = origin.url("/full.gguf")
    post_download(client, "full", url, sha256=res.sha256)
    err = watch.terminal("full")
    assert err["status"] == "error" and err["code"] == "disk-full"
    assert "retrying" not in watch.statuses("full")  # a full disk is not retried
    assert read(part(app, "full")) == res.data[:room]
    assert os.path.exists(sidecar(app, "full"))
    assert client.get("/healthz").status_code == 200
    assert client.get("/models/downloads/full").json["code"] == "disk-full"

    monkeypatch.undo()  # space was freed
    again = post_download(client, "full", url, sha256=res.sha256)
    assert again.status_code == 202 and again.json["status"] == "resumed"
    done = watch.terminal("full")
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    seen = origin.requests_for("/full.gguf")
    assert len(seen) == 2 and seen[1].range == f"bytes={room}-" and seen[1].status == 206
    assert read(os.path.join(models_dir(app), "full.gguf")) == res.data
    assert listing(app) == ["full.gguf"]


class LosingDisk(FillingDisk):
    """A ``.part`` file on a disk that loses writes silently once ``room`` bytes are
    used: each write says it wrote everything (a failing network file system)."""

    def write(self, buf: Any) -> int:
        kept = max(0, min(len(buf), self.budget[0]))
        if kept:
            self.fh.write(memoryview(buf)[:kept])
            self.budget[0] -= kept
        return len(buf)


def test_a_part_shorter_than_what_was_written_is_not_installed(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No sha256 to catch it: only the size of the ``.part`` against the file's
    tells that bytes were lost; its bytes are of no use for a resume either."""
    app, client, watch = service()
    origin.add("/lost.gguf", payload(MiB, seed=30))
    manager = ArwModels.state(app).manager
    real_open = manager.open_part
    monkeypatch.setattr(manager, "open_part", lambda path, append: LosingDisk(real_open(path, append), [300_000]))
    post_download(client, "lost", origin.url("/lost.gguf"))
    err = watch.terminal("lost")
    assert err["status"] == "error" and err["code"] == "size-mismatch"
    assert client.get("/models").json["items"] == [] and listing(app) == []


def test_disk_insufficient_before_a_fresh_transfer_leaves_nothing(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client, watch = service()
    res = origin.add("/big.gguf", payload(MiB, seed=29))
    monkeypatch.setattr(ArwModels.state(app).manager, "disk_free", lambda path: 1000)
    post_download(client, "big", origin.url("/big.gguf"))
    err = watch.terminal("big")
    assert err["status"] == "error" and err["code"] == "disk-insufficient"
    assert err["free"] == 1000 and err["needed"] == len(res.data)
    assert "started" not in watch.statuses("big")
    assert listing(app) == []  # neither a .part nor a stray sidecar
    assert client.get("/models/downloads").json["items"] == []


def test_disk_insufficient_keeps_a_resumable_part(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client, watch = service()
    res = origin.add("/r.gguf", payload(MiB, seed=30))
    have = 100_000
    side = {"url": origin.url("/r.gguf"), "etag": res.etag, "total": len(res.data)}
    write_partial(app, "r", res.data[:have], side)
    monkeypatch.setattr(ArwModels.state(app).manager, "disk_free", lambda path: 1000)
    post_download(client, "r", origin.url("/r.gguf"), sha256=res.sha256)
    err = watch.terminal("r")
    # What the .part holds (its blocks, a little more than its bytes) is not asked for again.
    held = os.stat(part(app, "r")).st_blocks * 512
    assert err["code"] == "disk-insufficient" and err["needed"] == len(res.data) - max(have, held)
    assert read(part(app, "r")) == res.data[:have]
    assert os.path.exists(sidecar(app, "r"))

    monkeypatch.undo()
    post_download(client, "r", origin.url("/r.gguf"), sha256=res.sha256)
    assert watch.terminal("r")["status"] == "complete"
    assert origin.requests_for("/r.gguf")[-1].range == f"bytes={have}-"
    assert read(os.path.join(models_dir(app), "r.gguf")) == res.data


def test_disk_check_counts_what_running_downloads_still_need(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    one = origin.add("/one.gguf", payload(MiB, seed=31), stall_after=64 * KiB)
    two = origin.add("/two.gguf", payload(MiB, seed=32))
    # Room for either file alone, not for both.
    monkeypatch.setattr(ArwModels.state(app).manager, "disk_free", lambda path: len(one.data) + len(two.data) // 2)
    post_download(client, "one", origin.url("/one.gguf"))
    watch.status("one", "started")  # its size is known from here on
    assert one.stalled.wait(5)
    watch.until(lambda e: e.payload.get("id") == "one" and e.payload.get("downloaded") == 64 * KiB)
    post_download(client, "two", origin.url("/two.gguf"))
    refused = watch.terminal("two")
    assert refused["code"] == "disk-insufficient"
    # All of its own bytes, and what the other still needs: its bytes not yet fetched.
    assert refused["needed"] == len(two.data) + len(one.data) - 64 * KiB
    assert refused["free"] == len(one.data) + len(two.data) // 2
    assert cancel(client, "one").status_code == 200
    one.release.set()
    assert watch.terminal("one")["status"] == "canceled"
    assert listing(app) == []


def test_a_download_that_has_all_its_bytes_asks_nothing_more_of_the_disk(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One download has every byte on disk and is being checked before its install:
    it needs no more room, so another that exactly fits the free space starts."""
    app, client, watch = service()
    one = origin.add("/one.gguf", payload(64 * KiB, seed=33))
    two = origin.add("/two.gguf", payload(100 * KiB, seed=34))
    manager = ArwModels.state(app).manager
    monkeypatch.setattr(manager, "disk_free", lambda path: len(two.data))
    held, release = threading.Event(), threading.Event()

    def checkpoint(point: str, job: Any) -> None:
        if point == "transferred" and job.id == "one":
            held.set()
            release.wait(10)

    monkeypatch.setattr(manager, "checkpoint", checkpoint)
    post_download(client, "one", origin.url("/one.gguf"), sha256=one.sha256)
    assert held.wait(5)
    post_download(client, "two", origin.url("/two.gguf"), sha256=two.sha256)
    assert watch.terminal("two")["status"] == "complete"
    release.set()
    assert watch.terminal("one")["status"] == "complete"


def test_disk_check_keeps_the_reserve(service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    app, client, watch = service(ARW_MODELS_DISK_RESERVE_MB=1)
    res = origin.add("/r.gguf", payload(100_000, seed=48))
    monkeypatch.setattr(ArwModels.state(app).manager, "disk_free", lambda path: len(res.data) + 1000)
    post_download(client, "r", origin.url("/r.gguf"))
    err = watch.terminal("r")
    assert err["code"] == "disk-insufficient" and err["needed"] == len(res.data) + MiB
    assert origin.requests_for("/r.gguf")[0].status == 200
    assert os.listdir(models_dir(app)) == []


def test_a_preallocation_that_finds_the_disk_full_ends_as_disk_full_at_byte_0_and_keeps_the_part(
    small_disk: Callable[[int], Path], service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resumed ranges whose ``.part`` cannot grow to the whole file: the disk is
    full before any byte of this attempt is written, and the error says so. The
    service's own check is told there is room, as a file system that reports more
    than it has would."""
    disk = small_disk(4 * MiB)
    app, client, watch = service(ARW_STATE_DIR=str(disk / "state"), ARW_DL_SEGMENTS=2, ARW_DL_SEGMENT_MIN_MB=1)
    monkeypatch.setattr(ArwModels.state(app).manager, "disk_free", lambda path: 1 << 40)
    size = 8 * MiB
    res = origin.add("/pre.gguf", payload(size, seed=313))
    ranges = [[0, 4 * MiB, MiB], [4 * MiB, size, 0]]
    write_partial(app, "pre", res.data[:MiB], {"url": origin.url("/pre.gguf"), "etag": res.etag, "total": size,
                                                "ranges": ranges})
    post_download(client, "pre", origin.url("/pre.gguf"), sha256=res.sha256)
    err = watch.terminal("pre")
    assert (err["status"], err["code"]) == ("error", "disk-full"), err
    assert "at byte 0" in err["error"], err
    assert listing(app) == ["pre.part", "pre.part.json"]
    assert read(part(app, "pre"))[:MiB] == res.data[:MiB]


def preallocated_resume(app: Any, res: Any, url: str) -> None:
    """A ``.part`` preallocated to the whole file, with its first MiB of two ranges done."""
    size = len(res.data)
    models = Path(app.config["ARW_STATE_DIR"]) / "models"
    models.mkdir(parents=True, exist_ok=True)
    with open(models / "q.part", "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, size)
        fh.write(res.data[:MiB])
    (models / "q.part.json").write_text(json.dumps({"url": url, "etag": res.etag, "total": size,
                                                    "ranges": [[0, size // 2, MiB], [size // 2, size, 0]]}))


@pytest.mark.parametrize("limit_mb, free", [(None, 0), (5, 1 << 40)], ids=["no-room-needed", "over-the-limit"])
def test_a_resume_in_ranges_is_held_to_the_budget(service: Service, origin: Origin, limit_mb: int | None,
                                                  free: int) -> None:
    """Resumed in ranges, a download asks the budget as a fresh one does: nothing
    more when its ``.part`` holds every block already (no free byte at all will do),
    and a refusal when the file is over ARW_MODELS_MAX_MB, which removes its bytes."""
    res = origin.add("/q.gguf", payload(6 * MiB, seed=313))
    app, client, watch = service(ARW_DL_SEGMENTS=2, ARW_DL_SEGMENT_MIN_MB=1, ARW_MODELS_MAX_MB=limit_mb)
    preallocated_resume(app, res, origin.url("/q.gguf"))
    ArwModels.state(app).manager.disk_free = lambda path: free
    post_download(client, "q", origin.url("/q.gguf"), sha256=res.sha256)
    done = watch.terminal("q")
    if limit_mb is None:
        assert done["status"] == "complete", done
    else:
        assert (done["status"], done["code"]) == ("error", "size-limit"), done
        assert origin.requests_for("/q.gguf") == []  # refused before asking for a byte
        assert listing(app) == []  # bytes of a file over the limit are of no use: they go


@pytest.mark.parametrize("segments", [4, 1], ids=["ranges", "stream"])
def test_a_part_that_is_no_file_when_the_body_comes_ends_as_disk_error(
    service: Service, origin: Origin, segments: int,
) -> None:
    """Something other than a regular file at the ``.part`` when the body is to be
    written (a pipe made there by hand): the job ends as ``disk-error`` with the
    cause, rather than as a failure of the service, and writes nothing into it."""
    app, client, watch = service(ARW_DL_SEGMENTS=segments, ARW_DL_SEGMENT_MIN_MB=1, ARW_DL_CHUNK_BYTES=64 * KiB)
    res = origin.add("/f.gguf", payload(4 * MiB, seed=314))

    def checkpoint(point: str, job: Any) -> None:
        if point == "answered":
            if os.path.lexists(part(app, "f")):
                os.unlink(part(app, "f"))
            os.mkfifo(part(app, "f"))

    ArwModels.state(app).manager.checkpoint = checkpoint
    post_download(client, "f", origin.url("/f.gguf"), sha256=res.sha256)
    err = watch.terminal("f")
    assert (err["status"], err.get("code")) == ("error", "disk-error"), err
    assert err["error"].startswith("cannot write the partial file: "), err
    assert err["downloaded"] == 0 and err["received"] == 0, err
