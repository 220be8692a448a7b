"""A single stream written past the page cache (``O_DIRECT``), and its fallbacks.

The state directory of these tests is on the machine's real disk (pytest's
``tmp_path``), where ``O_DIRECT`` works; a file system that refuses it is acted by
the declared seams of :mod:`arw_models.store.partfile` (``open_direct``,
``pwrite_direct``), which also show what went past the page cache. ``/dev/shm``
(tmpfs) is tried for real: older kernels refuse ``O_DIRECT`` there, Linux 6.6 and
later accept it, and the test expects whichever this kernel does.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import Any, Self

import pytest

from arw_models import ArwModels
from arw_models.config import DEFAULTS, Settings, from_env
from arw_models.engine.pipeline import Pipeline
from arw_models.store import partfile
from arw_models.store.partfile import ALIGN, PartFile
from arw_models.store.storage import open_part

from .support.app import Service, Watch, post_download
from .support.helpers import models_dir, open_files, part, read, sidecar, write_partial
from .support.origin import Origin, payload

MiB = 1024 * 1024
KiB = 1024


def accepts_direct_io(directory: str) -> bool:
    """Whether the file system of ``directory`` takes an aligned ``O_DIRECT`` write."""
    path = os.path.join(directory, ".direct-io-probe")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0), 0o600)
    except OSError:
        return False
    try:
        return bool(getattr(os, "O_DIRECT", 0)) and os.pwrite(fd, mmap.mmap(-1, ALIGN), 0) == ALIGN
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(path)


@pytest.fixture
def real_disk(tmp_path: Any) -> None:
    if not accepts_direct_io(str(tmp_path)):
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT (and /dev/shm is tried on its own below)")


class Seams:
    """The declared seams of :mod:`arw_models.store.partfile`, wrapped: what was opened
    and written past the page cache, and faults on demand (a refusal at the open
    or at a write; a disk that fills up after ``room`` direct bytes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, refuse: str | None = None) -> None:
        self.opened: list[str] = []
        self.writes: list[tuple[int, int]] = []  # (offset, bytes) of each direct write
        self.attempts = 0
        self.room: int | None = None
        self.before_full: threading.Event | None = None  # set: the disk fills up only after it
        real_open, real_pwrite = partfile.open_direct, partfile.pwrite_direct

        def open_direct(path: str) -> int:
            self.opened.append(path)
            if refuse == "open":
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            return real_open(path)

        def pwrite_direct(fd: int, data: Any, at: int) -> int:
            self.attempts += 1
            if refuse == "write":
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            if self.room is not None:
                if self.before_full is not None:
                    assert self.before_full.wait(10)
                if self.room < len(data):
                    fits = self.room - self.room % ALIGN  # a short write first (whole blocks), then ENOSPC
                    if fits <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    data = memoryview(data)[:fits]
            n = real_pwrite(fd, data, at)
            self.writes.append((at, n))
            if self.room is not None:
                self.room -= n
            return n

        monkeypatch.setattr(partfile, "open_direct", open_direct)
        monkeypatch.setattr(partfile, "pwrite_direct", pwrite_direct)

    @property
    def direct_bytes(self) -> int:
        return sum(n for _, n in self.writes)

    def all_aligned(self) -> bool:
        return all(at % ALIGN == 0 and n % ALIGN == 0 for at, n in self.writes)


def installed(app: Any, name: str) -> bytes:
    return read(os.path.join(models_dir(app), name))


# -- the page cache bypassed --------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, ALIGN - 1, 3 * ALIGN, MiB + 123])
def test_a_stream_bypasses_the_page_cache_and_the_file_is_exact(
    real_disk: None, service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    seams = Seams(monkeypatch)
    app, client, watch = service(ARW_DL_DIRECT_IO="on")
    res = origin.add("/d.gguf", payload(size, seed=size))
    post_download(client, "d", origin.url("/d.gguf"), sha256=res.sha256)
    done = watch.terminal("d")
    assert done["status"] == "complete" and done["sha256"] == res.sha256 and done["bytes"] == size
    assert installed(app, "d.gguf") == res.data
    assert len(seams.opened) == 1
    assert seams.all_aligned()  # or the file system would have refused them
    assert seams.direct_bytes <= size
    if size >= MiB:
        assert seams.direct_bytes > size // 2  # most bytes went past the page cache


def test_a_resume_from_an_unaligned_byte(
    real_disk: None, service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    seams = Seams(monkeypatch)
    app, client, watch = service(ARW_DL_DIRECT_IO="on")
    res = origin.add("/r.gguf", payload(2 * MiB + 5, seed=1))
    have = 100_003
    write_partial(app, "r", res.data[:have], {"url": origin.url("/r.gguf"), "etag": res.etag,
                                              "total": len(res.data)})
    assert post_download(client, "r", origin.url("/r.gguf"), sha256=res.sha256).json["status"] == "resumed"
    done = watch.terminal("r")
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert [(s.range, s.status) for s in origin.requests_for("/r.gguf")] == [(f"bytes={have}-", 206)]
    assert installed(app, "r.gguf") == res.data
    assert seams.all_aligned() and min(at for at, _ in seams.writes) >= have
    assert seams.direct_bytes > MiB


def test_a_drop_mid_body_resumes_where_the_bytes_on_disk_end(
    real_disk: None, service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    seams = Seams(monkeypatch)
    app, client, watch = service(ARW_DL_DIRECT_IO="on")
    cut = 300_001
    res = origin.add("/drop.gguf", payload(MiB + 77, seed=2), drop_after=cut)
    post_download(client, "drop", origin.url("/drop.gguf"), sha256=res.sha256)
    done = watch.terminal("drop")
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    retries = [p for p in watch.payloads("drop") if p["status"] == "retrying"]
    assert [r["downloaded"] for r in retries] == [cut]  # every byte received before the drop was kept
    assert [(s.range, s.status) for s in origin.requests_for("/drop.gguf")] == [(None, 200), (f"bytes={cut}-", 206)]
    assert installed(app, "drop.gguf") == res.data
    assert seams.all_aligned() and seams.direct_bytes > 0


def test_a_full_disk_keeps_the_part_and_a_later_post_resumes_it(
    real_disk: None, service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    seams = Seams(monkeypatch)
    seams.room = 200 * KiB + 100
    app, client, watch = service(ARW_DL_DIRECT_IO="on")
    res = origin.add("/full.gguf", payload(MiB + 9, seed=3))
    url = origin.url("/full.gguf")
    post_download(client, "full", url, sha256=res.sha256)
    err = watch.terminal("full")
    assert err["status"] == "error" and err["code"] == "disk-full"
    assert "retrying" not in watch.statuses("full")
    kept = os.path.getsize(part(app, "full"))
    assert kept >= seams.direct_bytes > 0
    assert read(part(app, "full")) == res.data[:kept]
    assert os.path.exists(sidecar(app, "full"))

    seams.room = None  # space was freed
    assert post_download(client, "full", url, sha256=res.sha256).json["status"] == "resumed"
    done = watch.terminal("full")
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert origin.requests_for("/full.gguf")[-1].range == f"bytes={kept}-"
    assert installed(app, "full.gguf") == res.data


class FullAt:
    """A ``.part`` from the default opener on a disk that is full at byte ``at``:
    the write that would reach it fails with ``ENOSPC``."""

    def __init__(self, fh: Any, at: int) -> None:
        self.fh, self.at = fh, at

    def write(self, data: Any) -> int:
        if self.fh.pos + len(data) >= self.at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return int(self.fh.write(data))

    def fileno(self) -> int:
        return int(self.fh.fileno())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def test_a_failed_write_ends_a_read_that_waits_on_a_stalled_origin(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The write that fails is that of the last bytes before the stall: the reader
    # handed them over and waits for more (a 30 s idle timeout). The writer wakes it.
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30, ARW_DL_CHUNK_BYTES=MiB)
    stall = 256 * KiB
    res = origin.add("/s.gguf", payload(MiB, seed=4), stall_after=stall)
    manager = ArwModels.state(app).manager
    monkeypatch.setattr(manager, "open_part", lambda path, append: FullAt(open_part(path, append), stall))
    post_download(client, "s", origin.url("/s.gguf"))
    assert res.stalled.wait(5)
    err = watch.terminal("s", timeout=5)
    res.release.set()
    assert err["status"] == "error" and err["code"] == "disk-full"


@pytest.mark.parametrize("stall", [1000, 200 * KiB + 3])
def test_bytes_received_before_a_stall_are_written_at_once(service: Service, origin: Origin, stall: int) -> None:
    # 1000 bytes come in the same packets as the headers, and sit in the response's
    # buffered socket file; the reader takes them from there without waiting for more.
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30, ARW_DL_CHUNK_BYTES=MiB)
    res = origin.add("/h.gguf", payload(MiB, seed=10), stall_after=stall)
    post_download(client, "h", origin.url("/h.gguf"), sha256=res.sha256)
    watch.until(lambda e: e.payload.get("id") == "h" and e.payload.get("downloaded") == stall, timeout=5)
    assert read(part(app, "h")) == res.data[:stall]
    res.release.set()
    assert watch.terminal("h")["status"] == "complete"


# -- where the file system refuses ---------------------------------------------------------


@pytest.mark.parametrize("where", ["open", "write"])
def test_auto_falls_back_to_the_page_cache_where_refused(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    seams = Seams(monkeypatch, refuse=where)
    app, client, watch = service(ARW_DL_DIRECT_IO="auto")
    res = origin.add("/a.gguf", payload(MiB + 5, seed=5))
    post_download(client, "a", origin.url("/a.gguf"), sha256=res.sha256)
    done = watch.terminal("a")
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert installed(app, "a.gguf") == res.data
    assert len(seams.opened) == 1 and seams.writes == []
    assert seams.attempts == (1 if where == "write" else 0)  # refused once, never asked again



@pytest.mark.parametrize("where", ["open", "write"])
def test_on_fails_with_a_clear_disk_error_where_refused_and_keeps_the_part(
    make_app: Any, origin: Origin, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    seams = Seams(monkeypatch, refuse=where)
    app = make_app(ARW_DL_DIRECT_IO="on")
    watch = Watch(app)
    res = origin.add("/o.gguf", payload(MiB, seed=6))
    url = origin.url("/o.gguf")
    post_download(app.test_client(), "o", url, sha256=res.sha256)
    err = watch.terminal("o")
    watch.close()
    assert err["status"] == "error" and err["code"] == "disk-error"
    assert "O_DIRECT" in err["error"] and "ARW_DL_DIRECT_IO" in err["error"]
    assert "retrying" not in watch.statuses("o")
    assert os.path.exists(part(app, "o")) and os.path.exists(sidecar(app, "o"))
    assert len(seams.opened) == 1
    assert os.path.realpath(part(app, "o")) not in open_files()  # the .part opened for the stream is closed
    app.extensions["arw_models"].shutdown()

    # The operator sets it back to auto: the same POST goes on.
    again = make_app(ARW_DL_DIRECT_IO="auto")
    watch = Watch(again)
    post_download(again.test_client(), "o", url, sha256=res.sha256)
    done = watch.terminal("o")
    watch.close()
    assert done["status"] == "complete" and installed(again, "o.gguf") == res.data


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_off_never_opens_a_part_with_o_direct(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    seams = Seams(monkeypatch)
    app, client, watch = service(ARW_DL_DIRECT_IO=mode)
    res = origin.add("/f.gguf", payload(MiB + 1, seed=7))
    post_download(client, "f", origin.url("/f.gguf"), sha256=res.sha256)
    assert watch.terminal("f")["status"] == "complete"
    assert installed(app, "f.gguf") == res.data
    assert len(seams.opened) == (0 if mode == "off" else 1)
    if mode == "off":
        assert seams.attempts == 0


@pytest.fixture
def tmpfs_dir() -> Iterator[str]:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm here")
    path = tempfile.mkdtemp(dir="/dev/shm", prefix="arw-direct-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_a_state_dir_on_tmpfs(tmpfs_dir: str, make_app: Any, origin: Origin, mode: str) -> None:
    accepted = accepts_direct_io(tmpfs_dir)
    app = make_app(ARW_STATE_DIR=os.path.join(tmpfs_dir, "state"), ARW_DL_DIRECT_IO=mode)
    watch = Watch(app)
    res = origin.add("/t.gguf", payload(MiB + 3, seed=8))
    post_download(app.test_client(), "t", origin.url("/t.gguf"), sha256=res.sha256)
    end = watch.terminal("t")
    watch.close()
    if accepted or mode == "auto":
        assert end["status"] == "complete" and installed(app, "t.gguf") == res.data
    else:
        assert end["status"] == "error" and end["code"] == "disk-error" and "O_DIRECT" in end["error"]


# -- the file itself -------------------------------------------------------------------------


def test_any_sequence_of_writes_makes_the_same_file(real_disk: None, tmp_path: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes of any size, from aligned buffers or not, at aligned offsets or not,
    give the bytes written in order; only whole aligned blocks go past the cache."""
    seams = Seams(monkeypatch)
    rng = random.Random(9)
    path = str(tmp_path / "x.part")
    expected = bytearray()
    buffer = mmap.mmap(-1, 4 * ALIGN + 2 * MiB)
    view = memoryview(buffer)
    for reopen in range(3):
        with open_part(path, append=bool(reopen)) as fh:
            assert isinstance(fh, PartFile) and fh.bypass_page_cache(required=True)
            for _ in range(40):
                size = rng.choice([1, 7, ALIGN - 1, ALIGN, ALIGN + 1, 3 * ALIGN, 65_536 + 5, MiB, rng.randrange(MiB)])
                data = rng.randbytes(size)
                if rng.random() < 0.3:
                    written = fh.write(data)  # a read-only buffer
                else:  # mostly lined up with the file's blocks, as the stream's buffers are
                    start = rng.choice([fh.pos % ALIGN, fh.pos % ALIGN + ALIGN, 1, rng.randrange(ALIGN)])
                    view[start : start + size] = data
                    written = fh.write(view[start : start + size])
                assert written == size
                expected += data
        assert os.path.getsize(path) == len(expected)
    assert read(path) == bytes(expected)
    assert seams.all_aligned() and seams.direct_bytes > len(expected) // 4  # a third of the writes fit
    view.release()


def test_the_setting_is_checked_and_shown(make_app: Any, tmp_path: Any) -> None:
    assert Settings.from_config(DEFAULTS).direct_io == "auto"
    assert from_env({"ARW_DL_DIRECT_IO": " On "}) == {"ARW_DL_DIRECT_IO": "on"}
    with pytest.raises(ValueError, match="ARW_DL_DIRECT_IO"):
        from_env({"ARW_DL_DIRECT_IO": "always"})
    with pytest.raises(ValueError, match="auto, on, off"):
        Settings.from_config(dict(DEFAULTS, ARW_DL_DIRECT_IO="always"))
    for mode in ("auto", "on", "off"):
        app = make_app(ARW_DL_DIRECT_IO=mode.upper(), ARW_STATE_DIR=str(tmp_path / mode))
        assert app.test_client().get("/probe").json["settings"]["direct_io"] == mode


class _HeldFile:
    """A file whose first write waits for ``release``: the reads queued meanwhile
    show how the writer takes them."""

    def __init__(self, fd: int) -> None:
        self.fd = fd  # what finish() fsyncs
        self.writes: list[bytes] = []
        self.first = threading.Event()  # the first write is under way
        self.release = threading.Event()

    def write(self, data: Any) -> int:
        if not self.writes:
            self.first.set()
            assert self.release.wait(10)
        self.writes.append(bytes(data))
        return len(data)

    def fileno(self) -> int:
        return self.fd


def test_reads_queued_behind_a_slow_write_go_in_one_write_per_buffer(tmp_path: Any) -> None:
    """While a write waits for the disk, the reads queued after it that continue
    one another in the same buffer are written together (fewer, larger writes:
    O_DIRECT takes them faster), never across a buffer given back; the hash sees
    every byte once, in order."""
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    fh, hashed = _HeldFile(fd), bytearray()
    pipe = Pipeline(fh, 0, 64 * KiB, update=hashed.extend, progress=lambda n: None, durable=lambda n: None,
                    sync_every=1 << 40, sync_secs=3600, fail=lambda exc, at: exc, wake=lambda: None)
    data = random.Random(11).randbytes(128 * KiB)
    with pipe:
        first = pipe.take()
        first[:] = data[: 64 * KiB]
        pipe.write(first, 0, 4 * KiB)
        assert fh.first.wait(10)
        for start in (4 * KiB, 8 * KiB, 20 * KiB):  # three reads, one after the other
            pipe.write(first, start, {4 * KiB: 8 * KiB, 8 * KiB: 20 * KiB, 20 * KiB: 64 * KiB}[start])
        pipe.give_back(first)
        second = pipe.take()
        second[:] = data[64 * KiB :]
        pipe.write(second, 0, 32 * KiB)
        pipe.write(second, 32 * KiB, 64 * KiB)
        fh.release.set()
        assert pipe.finish() == 128 * KiB
    os.close(fd)
    assert [len(w) for w in fh.writes] == [4 * KiB, 60 * KiB, 64 * KiB]
    assert b"".join(fh.writes) == data and bytes(hashed) == data
