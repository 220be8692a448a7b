"""Models of many files stopped and started again: pause and resume, a restart on
the same state directory, a cancel, the files-at-once limit, the disk budget."""

from __future__ import annotations

import os
import queue
import stat
from typing import Any

from arw_models import ArwModels
from arw_models.store.staging import Staging, staged_ids
from arw_models.store.storage import StateDir

from .support.app import Service, Watch, post_download
from .support.models import LocalModels
from .support.origin import Origin, Resource, payload

KiB = 1024
REV = "0" * 40


def attach(app: Any, client: Any, origin: Origin) -> LocalModels:
    client.get("/healthz")
    resolver = LocalModels(origin)
    ArwModels.state(app).manager.references = resolver
    return resolver


def test_pause_and_resume_fetch_nothing_finished_again(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    models = attach(app, client, origin)
    ref = models.add("p", {"a.bin": payload(20 * KiB, 1), "b.bin": payload(300 * KiB, 2)})
    b = origin.add(f"/p/{REV}/b.bin", payload(300 * KiB, 2), stall_after=100 * KiB)
    assert post_download(client, "p", ref).status_code == 202
    assert b.stalled.wait(5)
    watch.until(lambda e: e.payload.get("id") == "p" and e.payload.get("downloaded") == 120 * KiB)
    r = client.post("/models/download/pause", json={"id": "p"})
    assert r.status_code == 200 and r.json["status"] == "paused"
    item = client.get("/models/downloads/p").json
    assert item["resumable"] is True
    files = {f["path"]: f["status"] for f in item["files"]}
    assert files["a.bin"] == "complete"
    b.release.set()
    r = client.post("/models/download/resume", json={"id": "p"})
    assert r.status_code == 202, r.json
    # The answer says so: the file done is kept.
    assert (r.json["status"], r.json["kept"], r.json["discarded"]) == ("resumed", 20 * KiB, 0)
    assert watch.terminal("p")["status"] == "complete"
    assert len(origin.requests_for(f"/p/{REV}/a.bin")) == 1  # done before the pause: not fetched again
    assert origin.requests_for(f"/p/{REV}/b.bin")[-1].range == f"bytes={100 * KiB}-"
    assert models.resolved == 1  # the resume read its plan


def test_a_restart_resumes_from_the_plan_without_resolving_again(make_app: Any, origin: Origin) -> None:
    app = make_app(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    client = app.test_client()
    models = attach(app, client, origin)
    first = Watch(app)
    ref = models.add("r", {"a.bin": payload(20 * KiB, 3), "b.bin": payload(300 * KiB, 4)})
    b = origin.add(f"/r/{REV}/b.bin", payload(300 * KiB, 4), stall_after=100 * KiB)
    assert post_download(client, "r", ref).status_code == 202
    assert b.stalled.wait(5)
    first.until(lambda e: e.payload.get("id") == "r" and e.payload.get("downloaded") == 120 * KiB)
    first.close()
    ArwModels.state(app).shutdown()
    b.release.set()
    state_dir = app.config["ARW_STATE_DIR"]
    assert os.path.isfile(os.path.join(state_dir, "partial", "r", "plan.json"))

    again = make_app(ARW_DL_FILES_AT_ONCE=1, ARW_DL_RESUME_ON_START=True)
    # No resolver for the test origin is set on the new app: the plan alone resumes it.
    ArwModels.state(again).start()
    assert ArwModels.state(again).manager.wait("r", 10)
    assert models.resolved == 1
    assert len(origin.requests_for(f"/r/{REV}/a.bin")) == 1
    assert any(s.range == f"bytes={100 * KiB}-" for s in origin.requests_for(f"/r/{REV}/b.bin"))
    [entry] = again.test_client().get("/models").json["items"]
    assert entry["file"] == "r" and entry["bytes"] == 320 * KiB


def test_cancel_removes_the_staging_folder(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    models = attach(app, client, origin)
    ref = models.add("c", {"a.bin": payload(20 * KiB, 5)})
    b = origin.add(f"/c/{REV}/a.bin", payload(200 * KiB, 5), stall_after=50 * KiB)
    models.models[ref] = [f if f.path != "a.bin" else type(f)(f.path, f.url, 200 * KiB, b.sha256)
                          for f in models.models[ref]]
    assert post_download(client, "c", ref).status_code == 202
    assert b.stalled.wait(5)
    staging = os.path.join(ArwModels.state(app).dirs.root, "partial", "c")
    assert os.path.isdir(staging)
    r = client.post("/models/download/cancel", json={"id": "c"})
    b.release.set()
    assert r.status_code == 200 and r.json["status"] == "canceled"
    assert watch.terminal("c")["status"] == "canceled"
    assert not os.path.exists(staging)
    assert client.get("/models/downloads").json["items"] == []


def test_no_more_files_at_once_than_the_setting(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_FILES_AT_ONCE=2, ARW_DL_IDLE_TIMEOUT_SECS=30)
    models = attach(app, client, origin)
    files = {f"s{i}.bin": payload(64 * KiB, 20 + i) for i in range(5)}
    ref = models.add("n", files)
    stalls: queue.SimpleQueue[Resource] = queue.SimpleQueue()
    resources = {p: origin.add(f"/n/{REV}/{p}", d, stall_after=16 * KiB, on_stall=stalls) for p, d in files.items()}
    assert post_download(client, "n", ref).status_code == 202
    released: set[str] = set()
    for _ in range(len(files)):
        # The next file in flight stalls; never more than two have a request at once.
        stalled = stalls.get(timeout=10)
        path = next(p for p, r in resources.items() if r is stalled)
        asked = {s.path.rsplit("/", 1)[-1] for p in files for s in origin.requests_for(f"/n/{REV}/{p}")}
        assert len(asked - released) <= 2, (asked, released)
        stalled.release.set()
        released.add(path)
    assert watch.terminal("n")["status"] == "complete"


def test_the_disk_budget_refuses_the_model_before_its_first_byte(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    models = attach(app, client, origin)
    ref = models.add("big", {"a.bin": payload(100 * KiB, 1), "b.bin": payload(100 * KiB, 2)})
    ArwModels.state(app).manager.disk_free = lambda path: 150 * KiB
    assert post_download(client, "big", ref).status_code == 202
    failed = watch.terminal("big")
    assert failed["status"] == "error" and failed["code"] == "disk-insufficient"
    assert origin.requests_for(f"/big/{REV}/a.bin") == [] and origin.requests_for(f"/big/{REV}/b.bin") == []


def test_a_staging_folder_is_the_owners_alone_again_when_its_plan_is_written(tmp_path: Any) -> None:
    """A plan holds the request's headers: a staging folder, plan or ``.part``
    left readable by others (a restore from a backup) is narrowed to the owner
    when the download writes its plan again."""
    state = StateDir(str(tmp_path))
    staging = Staging(state, "m")
    staging.write_plan({"id": "m", "fileset": {}, "headers": {"Authorization": "Bearer t0ken"}})
    part = os.path.join(staging.dir, "f0000.part")
    with open(part, "wb") as fh:
        fh.write(b"abc")
    for path, loose in ((staging.dir, 0o755), (staging.plan_path, 0o644), (part, 0o644)):
        os.chmod(path, loose)

    staging.write_plan({**(staging.read_plan() or {}), "paused": True})
    assert [stat.S_IMODE(os.stat(p).st_mode) for p in (staging.dir, staging.plan_path, part)] == [0o700, 0o600, 0o600]


def test_a_staging_folder_that_is_a_link_is_not_read_and_only_the_link_goes(tmp_path: Any) -> None:
    """A link at a staging folder's name (made by hand, or by another user) is not
    followed: its plan is not read, and a remove takes the link, not what it names;
    ``remove`` says whether anything was there."""
    state = StateDir(str(tmp_path / "state"))
    elsewhere = Staging(StateDir(str(tmp_path / "elsewhere")), "m")
    os.makedirs(elsewhere.root)
    elsewhere.write_plan({"id": "m", "fileset": {}})
    staging = Staging(state, "m")
    os.makedirs(staging.root)
    os.symlink(elsewhere.dir, staging.dir)
    with open(os.path.join(staging.root, "stray"), "w") as fh:
        fh.write("a file, no folder")
    assert staging.read_plan() is None and not staging.exists()
    assert staged_ids(state) == []  # neither the link nor the file is a download in progress
    assert staging.remove() is True
    assert not os.path.lexists(staging.dir) and elsewhere.read_plan() is not None
    assert staging.remove() is False and staging.mtime() is None
    assert elsewhere.remove() is True and not os.path.exists(elsewhere.dir)
