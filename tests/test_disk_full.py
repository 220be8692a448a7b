"""A disk that fills up, for real: a small tmpfs as the state directory's file
system, filled by another file while a download runs.

The download ends as ``disk-full`` whatever write met the full disk (the ``.part``
or its sidecar), keeps its ``.part`` and the last whole sidecar, and continues
from there once space is free; a ``.part`` preallocated for parallel ranges
already holds its blocks, so a little free space is enough to go on.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from arw_models.engine.plan import Plan

from .support.app import Service, post_download
from .support.helpers import listing, part, read, sidecar
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
