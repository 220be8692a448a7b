"""The staging folder of a many-file download (``partial/<id>/``): owner-only, never
read or removed through a link, its plan what says the download can resume, and the
single-file transfer's ``.part`` files and sidecars written inside it."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from arw_models.store.staging import Staging, done_files, staged_digests, staged_ids
from arw_models.store.storage import StateDir


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def plan(model_id: str) -> dict[str, object]:
    return {"id": model_id, "fileset": {}, "done": {}}


def test_a_staging_folder_is_its_owners_alone_even_one_made_wider_before(tmp_path: Path) -> None:
    """The plan holds a gated origin's headers: the folder and the files in it are
    narrowed to their owner when the plan is written, whatever mode they had."""
    state = StateDir(str(tmp_path))
    staging = Staging(state, "m")
    os.makedirs(staging.dir)
    os.chmod(staging.dir, 0o755)
    with open(staging.plan_path, "w") as fh:
        fh.write("{}")
    os.chmod(staging.plan_path, 0o644)
    staging.write_plan(plan("m"))
    assert mode(staging.dir) == 0o700 and mode(staging.plan_path) == 0o600
    assert staging.read_plan() == plan("m")


def test_only_a_plan_in_a_folder_of_its_own_makes_a_download_resumable(tmp_path: Path) -> None:
    """A download can resume (the listing says so) when its staging folder holds its
    plan: not before the plan is written, not when the folder is a link elsewhere,
    whose plan is neither read nor counted."""
    state = StateDir(str(tmp_path))
    staging = Staging(state, "m")
    assert not staging.exists() and staging.read_plan() is None
    staging.ensure()
    assert not staging.exists()
    staging.write_plan(plan("m"))
    assert staging.exists()

    (tmp_path / "elsewhere").mkdir()
    elsewhere = Staging(StateDir(str(tmp_path / "elsewhere")), "linked")
    elsewhere.write_plan(plan("linked"))
    linked = Staging(state, "linked")
    os.symlink(elsewhere.dir, linked.dir)
    assert not linked.exists() and linked.read_plan() is None
    assert staged_ids(state) == ["m"]
    assert linked.remove() is True  # the link goes, never what it points to
    assert not os.path.lexists(linked.dir) and elsewhere.read_plan() == plan("linked")


def test_the_transfer_of_a_file_writes_its_part_and_sidecar_in_the_staging_folder(tmp_path: Path) -> None:
    """Each file of the model is fetched as a single file is, into the staging
    folder: its ``.part`` and sidecar never land in ``models/``."""
    state = StateDir(str(tmp_path), 0o640)
    staging = Staging(state, "m")
    view = staging.view()
    assert os.path.dirname(view.part_path("f0003")) == staging.dir
    assert os.path.dirname(view.sidecar_path("f0003")) == staging.dir
    assert view.root == state.root and view.blobs_dir == state.blobs_dir and view.models_mode == 0o640


def test_removing_a_staging_folder_says_whether_one_was_there(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A staging folder is removed with all in it (True); there being none is no
    error (False); a file in it that cannot be removed leaves a leftover, not a
    failed cancel."""
    state = StateDir(str(tmp_path))
    staging = Staging(state, "m")
    assert staging.remove() is False
    staging.write_plan(plan("m"))
    with open(os.path.join(staging.dir, "f0000.part"), "wb") as fh:
        fh.write(b"bytes")
    assert staging.remove() is True
    assert not os.path.lexists(staging.dir) and staged_ids(state) == []

    staging.write_plan(plan("m"))
    real_unlink = os.unlink

    def busy(path: Any, *args: Any, **kw: Any) -> None:
        if os.fsdecode(path).endswith("plan.json"):
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_unlink(path, *args, **kw)

    monkeypatch.setattr(os, "unlink", busy)
    assert staging.remove() is True


def test_a_staging_folder_was_last_written_when_its_newest_file_was(tmp_path: Path) -> None:
    """How long ago a download last wrote (a start removes one stale for too long):
    the newest time of the folder and of the files in it; None when it is gone."""
    state = StateDir(str(tmp_path))
    staging = Staging(state, "m")
    assert staging.mtime() is None
    staging.write_plan(plan("m"))
    part = os.path.join(staging.dir, "f0000.part")
    with open(part, "wb") as fh:
        fh.write(b"bytes")
    os.utime(staging.dir, (1_000_000, 1_000_000))
    os.utime(staging.plan_path, (1_000_500, 1_000_500))
    os.utime(part, (1_002_000, 1_002_000))
    assert staging.mtime() == 1_002_000
    os.utime(part, (1_000_000, 1_000_000))
    os.utime(staging.dir, (1_003_000, 1_003_000))
    assert staging.mtime() == 1_003_000


def test_only_folders_named_as_an_id_are_staged_downloads(tmp_path: Path) -> None:
    """``partial/`` may hold other things: a file, a link, a name no download has;
    only a real folder named as an id is a staged download."""
    state = StateDir(str(tmp_path))
    Staging(state, "m").write_plan(plan("m"))
    root = os.path.join(state.root, "partial")
    with open(os.path.join(root, "notes"), "w") as fh:
        fh.write("a file")
    os.mkdir(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", os.path.join(root, "linked"))
    os.mkdir(os.path.join(root, ".hidden"))
    assert staged_ids(state) == ["m"]


def test_only_done_files_of_the_right_shape_count(tmp_path: Path) -> None:
    """A plan's files marked done are path to record: anything else in ``done``
    (written by hand, or by another version) is skipped, not a failure."""
    digest = "a" * 64
    done = {"w.bin": {"sha256": digest, "size": 4}, "odd.bin": digest, "n.bin": None}
    assert done_files({"done": done}) == {"w.bin": {"sha256": digest, "size": 4}}
    assert done_files({"done": ["w.bin"]}) == {} and done_files(None) == {}
    state = StateDir(str(tmp_path))
    Staging(state, "m").write_plan({**plan("m"), "done": done})
    assert staged_digests(state) == {digest}
