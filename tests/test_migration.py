"""A state directory the version before the blob store wrote (tests/fixtures/
state-before-store) is migrated at start: every model listed as before, its file
a link of its blob, the shared file one blob, the ``.part`` resumable, the paused
download paused, and a second start changes nothing."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from arw_models import ArwModels
from arw_models.store.blobs import Blobs
from arw_models.store.manifests import Manifests, manifest_of
from arw_models.store.registry import Registry
from arw_models.store.storage import StateDir

from .support.app import Watch
from .support.origin import Origin, payload

FIXTURE = Path(__file__).parent / "fixtures" / "state-before-store"
KiB = 1024
ALPHA = payload(4 * KiB, seed=11)
BETA = payload(3 * KiB, seed=12)
RUNNING = payload(8 * KiB, seed=13)
PAUSED = payload(6 * KiB, seed=14)
FILES = {"alpha": "alpha.bin", "alpha-again": "alpha-alpha-again.bin", "beta": "beta.bin"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def restore(root: Path, origin: Origin) -> Path:
    """A copy of the fixture at ``root``, with the origin's address and the state
    directory filled in, and alpha-again's file a hard link of alpha's again (as
    the old dedup made it: git keeps two copies)."""
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("README", "make.py"),
                    copy_function=shutil.copy)  # fresh times: no .part is stale
    for name in ("models.json", "models/running.part.json", "models/paused.part.json"):
        path = root / name
        path.write_text(path.read_text().replace("http://ORIGIN", origin.url("/")[:-1])
                        .replace("STATE_DIR", str(root)))
    models = root / "models"
    os.unlink(models / "alpha-alpha-again.bin")
    os.link(models / "alpha.bin", models / "alpha-alpha-again.bin")
    for path, data in (("/a/alpha.bin", ALPHA), ("/a2/alpha.bin", ALPHA), ("/b/beta.bin", BETA),
                       ("/r/running.bin", RUNNING), ("/p/paused.bin", PAUSED)):
        origin.add(path, data)
    return root


def tree(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every file under ``root`` but the lock (which names its holder): inode, mode,
    mtime and bytes."""
    seen = {}
    for directory, _, names in os.walk(root):
        for name in set(names) - {"arw-models.lock"}:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            with open(path, "rb") as fh:
                seen[os.path.relpath(path, root)] = (st.st_ino, stat.S_IMODE(st.st_mode), st.st_mtime_ns, fh.read())
    return seen


@pytest.fixture
def old_state(tmp_path: Path, origin: Origin) -> Path:
    return restore(tmp_path / "old", origin)


def test_every_model_is_listed_as_before_and_its_file_is_a_link_of_its_blob(
        make_app: Any, old_state: Path, origin: Origin, caplog: pytest.LogCaptureFixture) -> None:
    before = json.loads((old_state / "models.json").read_text())["models"]
    caplog.set_level(logging.INFO, logger="arw_models")
    app = make_app(ARW_STATE_DIR=str(old_state))
    items = {m["id"]: m for m in app.test_client().get("/models").json["items"]}

    assert sorted(items) == ["alpha", "alpha-again", "beta"]
    for model_id, item in items.items():
        old = before[model_id]
        for key in ("file", "sha256", "bytes", "url", "provider", "downloaded_at", "sha256_source"):
            assert item[key] == old[key], key
        assert item["status"] == "available"
        assert item["path"] == str(old_state / "models" / FILES[model_id])
        assert item["blob"] == str(old_state / "blobs" / "sha256" / old["sha256"])
        assert os.path.samefile(item["path"], item["blob"])  # a link: no byte copied
    assert (old_state / "models" / "alpha.bin").read_bytes() == ALPHA
    assert (old_state / "models" / "alpha-alpha-again.bin").read_bytes() == ALPHA
    assert (old_state / "models" / "beta.bin").read_bytes() == BETA
    # The shared file is one blob; the blobs are those two, with the models' mode.
    assert sorted(os.listdir(old_state / "blobs" / "sha256")) == sorted([sha(ALPHA), sha(BETA)])
    assert os.stat(old_state / "blobs" / "sha256" / sha(ALPHA)).st_nlink == 3
    assert stat.S_IMODE(os.stat(old_state / "blobs" / "sha256" / sha(BETA)).st_mode) == 0o644
    manifest = json.loads((old_state / "manifests" / "alpha-again.json").read_text())
    assert manifest["files"] == [{"path": "alpha-alpha-again.bin", "size": 4 * KiB, "sha256": sha(ALPHA),
                                  "source": origin.url("/a2/alpha.bin"), "sha256_source": "request"}]
    assert stat.S_IMODE(os.stat(old_state / "manifests" / "alpha-again.json").st_mode) == 0o600
    assert json.loads((old_state / "models.json").read_text())["version"] == 2
    probe = app.test_client().get("/probe").json
    assert probe["store_dir"] == str(old_state / "blobs") and probe["store_bytes"] == len(ALPHA) + len(BETA)
    assert any("3 models stored, 0 left as they were" in r.getMessage() for r in caplog.records)


def test_copies_of_the_same_bytes_become_links_of_one_blob(make_app: Any, old_state: Path) -> None:
    """Where the older version copied a model's bytes (no hard link could be made),
    the migration keeps one copy: each file becomes a link of the one blob."""
    again = old_state / "models" / "alpha-alpha-again.bin"
    again.unlink()
    again.write_bytes(ALPHA)
    app = make_app(ARW_STATE_DIR=str(old_state))
    items = {m["id"]: m for m in app.test_client().get("/models").json["items"]}
    assert items["alpha"]["blob"] == items["alpha-again"]["blob"]
    assert os.path.samefile(again, old_state / "models" / "alpha.bin")
    assert os.path.samefile(again, items["alpha"]["blob"]) and again.read_bytes() == ALPHA


def test_a_model_an_older_version_left_unstored_is_stored_when_it_can_be(make_app: Any, old_state: Path) -> None:
    """An entry marked unstored (its file was missing at a start) in a registry of
    the older layout (written back by an older version since) is stored once its
    file is there, and no longer marked."""
    registry = json.loads((old_state / "models.json").read_text())
    registry["models"]["beta"]["unstored"] = True
    (old_state / "models.json").write_text(json.dumps(registry))
    app = make_app(ARW_STATE_DIR=str(old_state))
    item = {m["id"]: m for m in app.test_client().get("/models").json["items"]}["beta"]
    assert item["blob"] == str(old_state / "blobs" / "sha256" / sha(BETA))
    assert "unstored" not in json.loads((old_state / "models.json").read_text())["models"]["beta"]


def test_the_part_resumes_and_the_paused_download_stays_paused(make_app: Any, old_state: Path,
                                                              origin: Origin) -> None:
    app = make_app(ARW_STATE_DIR=str(old_state))
    client = app.test_client()
    jobs = {j["id"]: j for j in client.get("/models/downloads").json["items"]}
    assert jobs["paused"]["status"] == "paused" and jobs["paused"]["downloaded"] == 2 * KiB
    assert jobs["running"]["status"] == "resumable" and jobs["running"]["downloaded"] == 3 * KiB

    watch = Watch(app)
    try:
        answer = client.post("/models/download/resume", json={"id": "running"})
        assert answer.status_code == 202 and answer.json["status"] == "resumed", answer.json
        done = watch.terminal("running")
    finally:
        watch.close()
    assert done["status"] == "complete" and done["sha256"] == sha(RUNNING), done
    assert [r.range for r in origin.requests_for("/r/running.bin")] == ["bytes=3072-"]
    assert (old_state / "models" / "running.bin").read_bytes() == RUNNING
    assert os.path.samefile(old_state / "models" / "running.bin", old_state / "blobs" / "sha256" / sha(RUNNING))
    jobs = {j["id"]: j for j in client.get("/models/downloads").json["items"]}
    assert jobs["paused"]["status"] == "paused"
    assert (old_state / "models" / "paused.part").read_bytes() == PAUSED[:2 * KiB]
    assert origin.requests_for("/p/paused.bin") == []


def test_a_second_start_changes_nothing(make_app: Any, old_state: Path) -> None:
    first = make_app(ARW_STATE_DIR=str(old_state))
    assert len(first.test_client().get("/models").json["items"]) == 3
    ArwModels.state(first).shutdown()
    after_first = tree(old_state)

    again = make_app(ARW_STATE_DIR=str(old_state))
    assert len(again.test_client().get("/models").json["items"]) == 3
    assert tree(old_state) == after_first


def test_a_migration_cut_short_is_finished_by_the_next_start(make_app: Any, old_state: Path) -> None:
    """What a crash mid-migration leaves: alpha stored (its blob and manifest), the
    registry still of the old version, beta's blob linked but no manifest yet."""
    state = StateDir(str(old_state))
    registry, blobs, manifests = Registry(state), Blobs(state), Manifests(state)
    alpha = registry.get("alpha")
    assert alpha is not None
    blobs.put(state.model_path("alpha.bin"), sha(ALPHA))
    manifests.write(manifest_of(alpha))
    blobs.put(state.model_path("beta.bin"), sha(BETA))
    assert registry.version() == 1

    app = make_app(ARW_STATE_DIR=str(old_state))
    items = {m["id"]: m for m in app.test_client().get("/models").json["items"]}
    assert sorted(items) == ["alpha", "alpha-again", "beta"]
    assert all("blob" in m and os.path.samefile(m["path"], m["blob"]) for m in items.values())
    assert sorted(os.listdir(old_state / "manifests")) == ["alpha-again.json", "alpha.json", "beta.json"]
    assert sorted(os.listdir(old_state / "blobs" / "sha256")) == sorted([sha(ALPHA), sha(BETA)])


def test_a_file_that_does_not_match_its_digest_is_reported_and_left_where_it_is(
        make_app: Any, old_state: Path, caplog: pytest.LogCaptureFixture) -> None:
    edited = b"edited by hand" + BETA[14:]
    (old_state / "models" / "beta.bin").write_bytes(edited)
    caplog.set_level(logging.WARNING, logger="arw_models")

    app = make_app(ARW_STATE_DIR=str(old_state))
    items = {m["id"]: m for m in app.test_client().get("/models").json["items"]}
    assert sorted(items) == ["alpha", "alpha-again", "beta"]  # still listed, as before
    assert items["beta"]["status"] == "available" and "blob" not in items["beta"]
    assert "unstored" not in items["beta"]
    assert (old_state / "models" / "beta.bin").read_bytes() == edited
    assert os.listdir(old_state / "blobs" / "sha256") == [sha(ALPHA)]
    assert not (old_state / "manifests" / "beta.json").exists()
    assert any("beta" in r.getMessage() and "does not match" in r.getMessage() for r in caplog.records)
    # Deleted like any model.
    assert app.test_client().delete("/models/beta").status_code == 200
    assert not (old_state / "models" / "beta.bin").exists()


@pytest.mark.parametrize(("damage", "said"), [("file-missing", "its file beta.bin is missing"),
                                              ("no-digest", "its entry names no file and digest"),
                                              ("a-link", "beta.bin is not a regular file")])
def test_an_entry_that_cannot_be_stored_is_left_as_it_was(make_app: Any, old_state: Path, damage: str, said: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    registry = json.loads((old_state / "models.json").read_text())
    if damage == "file-missing":
        (old_state / "models" / "beta.bin").unlink()
    elif damage == "a-link":  # the file moved elsewhere by hand, a link left in its place
        os.rename(old_state / "models" / "beta.bin", old_state / "beta.bin")
        os.symlink(old_state / "beta.bin", old_state / "models" / "beta.bin")
    else:
        del registry["models"]["beta"]["sha256"]
        (old_state / "models.json").write_text(json.dumps(registry))
    caplog.set_level(logging.INFO, logger="arw_models")
    app = make_app(ARW_STATE_DIR=str(old_state))
    items = {m["id"]: m for m in app.test_client().get("/models").json["items"]}
    assert sorted(items) == ["alpha", "alpha-again", "beta"] and "blob" not in items["beta"]
    # A link is not followed out of models/: its file reads as missing.
    assert (items["beta"].get("status") == "missing") == (damage != "no-digest")
    messages = [r.getMessage() for r in caplog.records]
    about_beta = [m for m in messages if m.startswith("model beta: ")]
    assert len(about_beta) == 1 and said in about_beta[0], messages  # once, and why
    assert any("2 models stored, 1 left as they were" in m for m in messages), messages
    # No manifest names a file that is not in the store; the registry says why.
    assert sorted(os.listdir(old_state / "manifests")) == ["alpha-again.json", "alpha.json"]
    assert json.loads((old_state / "models.json").read_text())["models"]["beta"]["unstored"] is True
    assert sorted(os.listdir(old_state / "blobs" / "sha256")) == [sha(ALPHA)]
