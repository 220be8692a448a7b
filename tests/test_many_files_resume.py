"""Models of many files stopped and started again: pause and resume, a restart on
the same state directory, a cancel, the files-at-once limit, the disk budget."""

from __future__ import annotations

import json
import os
import queue
import stat
import threading
import time
from typing import Any

from arw_models import ArwModels
from arw_models.engine.fileset import FileSet, RemoteFile
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


def paused_in_b(client: Any, models: LocalModels, origin: Origin, watch: Watch, name: str, seed: int,
                **post: Any) -> Resource:
    """Model ``name``, a.bin (20 KiB) then b.bin (300 KiB), paused once b.bin has
    100 KiB on disk; b.bin's resource, which still holds its answer back."""
    ref = models.add(name, {"a.bin": payload(20 * KiB, seed), "b.bin": payload(300 * KiB, seed + 1)})
    b = origin.add(f"/{name}/{REV}/b.bin", payload(300 * KiB, seed + 1), stall_after=100 * KiB)
    assert post_download(client, name, ref, **post).status_code == 202
    assert b.stalled.wait(5)
    watch.until(lambda e: e.payload.get("id") == name and e.payload.get("downloaded") == 120 * KiB)
    r = client.post("/models/download/pause", json={"id": name})
    assert r.status_code == 200 and r.json["status"] == "paused"
    return b


def test_pause_and_resume_fetch_nothing_finished_again(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    models = attach(app, client, origin)
    b = paused_in_b(client, models, origin, watch, "p", 1)
    item = client.get("/models/downloads/p").json
    assert item["resumable"] is True
    files = {f["path"]: (f["status"], f["downloaded"]) for f in item["files"]}
    assert files == {"a.bin": ("complete", 20 * KiB), "b.bin": ("queued", 100 * KiB)}  # b.bin's bytes are kept
    staging = os.path.join(ArwModels.state(app).dirs.root, "partial", "p")
    # a.bin is in the blob store: nothing of it is left in the staging folder, b.bin's .part and sidecar are.
    assert sorted(os.listdir(staging)) == ["f0001.part", "f0001.part.json", "plan.json"]
    b.release.set()
    r = client.post("/models/download/resume", json={"id": "p"})
    assert r.status_code == 202, r.json
    # The answer says so: the file done is kept, and counted as downloaded already.
    assert (r.json["status"], r.json["kept"], r.json["discarded"]) == ("resumed", 20 * KiB, 0)
    assert r.json["downloaded"] == 20 * KiB
    assert watch.terminal("p")["status"] == "complete"
    assert len(origin.requests_for(f"/p/{REV}/a.bin")) == 1  # done before the pause: not fetched again
    assert origin.requests_for(f"/p/{REV}/b.bin")[-1].range == f"bytes={100 * KiB}-"
    # The file done before the pause is still vouched for by the origin's listing in the manifest.
    with open(os.path.join(ArwModels.state(app).dirs.manifests_dir, "p.json")) as fh:
        assert {f["path"]: f["sha256_source"] for f in json.load(fh)["files"]} == {"a.bin": "origin", "b.bin": "origin"}
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
    item = client.get("/models/downloads/r").json  # as the stopping service last shows it
    assert (item["status"], item["resumable"]) == ("interrupted", True), item
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


def test_a_paused_model_stays_paused_across_a_restart_and_can_be_canceled(make_app: Any, origin: Origin) -> None:
    """After a restart a paused model is listed from its plan alone (its finished files as such), is not resumed
    on start, and a cancel with no job in memory still removes its staging folder and answers for the model
    with the url and provider it was asked with."""
    app = make_app(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    client = app.test_client()
    models = attach(app, client, origin)
    first = Watch(app)
    b = paused_in_b(client, models, origin, first, "q", 6, provider="acme-mirror")
    first.close()
    ArwModels.state(app).shutdown()
    b.release.set()

    again = make_app(ARW_DL_FILES_AT_ONCE=1, ARW_DL_RESUME_ON_START=True)
    ArwModels.state(again).start()
    client = again.test_client()
    item = client.get("/models/downloads/q").json
    assert (item["status"], item["resumable"], item["total"], item["progress"]) == ("paused", True, 320 * KiB, 6)
    assert item["files"] == [
        {"path": "a.bin", "downloaded": 20 * KiB, "total": 20 * KiB, "status": "complete"},
        {"path": "b.bin", "downloaded": 0, "total": 300 * KiB, "status": "queued"}]
    assert len(origin.requests_for(f"/q/{REV}/b.bin")) == 1  # not resumed on start
    r = client.post("/models/download/cancel", json={"id": "q"})
    assert r.status_code == 200 and r.json["status"] == "canceled"
    assert not os.path.exists(os.path.join(again.config["ARW_STATE_DIR"], "partial", "q"))
    canceled = client.get("/models/downloads/q").json
    assert (canceled["status"], canceled["url"], canceled["provider"]) == ("canceled", "hf://acme/q", "acme-mirror")


def test_a_plan_with_a_damaged_size_is_listed_and_resumed(make_app: Any, origin: Origin) -> None:
    """After a restart, a paused model whose plan records a finished file's size as no number (a plan damaged
    by hand or by the disk) neither breaks the listing of downloads nor its resume, which completes."""
    app = make_app(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    client = app.test_client()
    models = attach(app, client, origin)
    first = Watch(app)
    b = paused_in_b(client, models, origin, first, "z", 21)
    first.close()
    ArwModels.state(app).shutdown()
    b.release.set()
    b.stall_after = None
    staging = Staging(StateDir(app.config["ARW_STATE_DIR"]), "z")
    plan = staging.read_plan()
    assert plan is not None
    plan["done"]["a.bin"]["size"] = "twenty KiB"
    staging.write_plan(plan)

    again = make_app(ARW_DL_FILES_AT_ONCE=1)
    attach(again, again.test_client(), origin)
    client = again.test_client()
    listed = client.get("/models/downloads")
    assert listed.status_code == 200 and [i["id"] for i in listed.json["items"]] == ["z"]
    watch = Watch(again)
    try:
        r = client.post("/models/download/resume", json={"id": "z"})
        assert r.status_code == 202, r.json
        assert watch.terminal("z")["status"] == "complete"
    finally:
        watch.close()


def test_a_models_request_headers_and_provider_go_with_it_across_a_restart(make_app: Any, origin: Origin) -> None:
    """A model asked for with headers of its own (a token, say) and a provider, paused and resumed by the next
    run from its plan: the files still to fetch are asked with those headers, though the request that carried
    them is long gone, and the model is recorded under the provider it was asked with."""
    app = make_app(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    client = app.test_client()
    models = attach(app, client, origin)
    first = Watch(app)
    b = paused_in_b(client, models, origin, first, "h", 8, headers={"X-Model-Token": "t-1"},
                    provider="acme-mirror")
    first.close()
    ArwModels.state(app).shutdown()
    b.release.set()
    b.stall_after = None
    seen = len(origin.requests_for(f"/h/{REV}/b.bin"))

    again = make_app(ARW_DL_FILES_AT_ONCE=1)
    attach(again, again.test_client(), origin)
    watch = Watch(again)
    try:
        assert again.test_client().post("/models/download/resume", json={"id": "h"}).status_code == 202
        assert watch.terminal("h")["status"] == "complete"
        [entry] = again.test_client().get("/models").json["items"]
        assert (entry["id"], entry["provider"]) == ("h", "acme-mirror")
    finally:
        watch.close()
    later = origin.requests_for(f"/h/{REV}/b.bin")[seen:]
    assert later and all(s.headers.get("x-model-token") == "t-1" for s in later), later


def test_at_start_stale_and_unreadable_staging_folders_go_and_the_others_wait(make_app: Any) -> None:
    """A staging folder untouched past ``ARW_DL_STALE_PART_HOURS`` or with a plan that cannot be read is removed
    at start; with resume on start off, a sound one stays, listed as resumable, and is not started. A folder
    with no plan is never listed."""
    app = make_app(ARW_DL_RESUME_ON_START=False, ARW_DL_STALE_PART_HOURS=1)
    partial = os.path.join(app.config["ARW_STATE_DIR"], "partial")
    # The waiting one's listing cannot be read (an empty one): it is listed with no files. Of partly's, a
    # registry's model, both files were listed with no size: one is done (its size known), the other is not.
    files = (RemoteFile("a.bin", "https://e.com/a", None, "a" * 64),
             RemoteFile("b.bin", "https://e.com/b", None, "b" * 64))
    partly = {"id": "partly", "url": "ollama://llama3:8b", "provider": "ollama",
              "fileset": FileSet("ollama://llama3:8b", "ollama", REV, files).to_json(),
              "done": {"a.bin": {"size": 10, "sha256": "a" * 64, "stored": True}}}
    files = (RemoteFile("a.bin", "https://e.com/a", 199, "a" * 64), RemoteFile("b.bin", "https://e.com/b", 1, "b" * 64))
    nearly = dict(partly, id="nearly", fileset=FileSet("ollama://llama3:8b", "ollama", REV, files).to_json(),
                  done={"a.bin": {"size": 199, "sha256": "a" * 64}})
    over = dict(nearly, id="over", done={"a.bin": {"size": 400, "sha256": "a" * 64}})  # a plan not to be trusted
    for model_id, plan in (("stale", json.dumps({"id": "stale", "url": "hf://acme/stale", "fileset": {}})),
                           ("broken", "{"),
                           ("waiting", json.dumps({"id": "waiting", "url": "hf://acme/waiting", "fileset": {}})),
                           ("partly", json.dumps(partly)), ("nearly", json.dumps(nearly)),
                           ("over", json.dumps(over))):
        os.makedirs(os.path.join(partial, model_id))
        with open(os.path.join(partial, model_id, "plan.json"), "w") as fh:
            fh.write(plan)
    old = time.time() - 2 * 3600
    for path in (os.path.join(partial, "stale", "plan.json"), os.path.join(partial, "stale")):
        os.utime(path, (old, old))
    ArwModels.state(app).start()
    assert sorted(os.listdir(partial)) == ["nearly", "over", "partly", "waiting"]
    item = app.test_client().get("/models/downloads/waiting").json
    assert (item["status"], item["resumable"], item["url"], item["files"], item["total"]) == (
        "resumable", True, "hf://acme/waiting", [], 0)
    assert "progress" not in item
    os.makedirs(os.path.join(partial, "late"))  # a folder whose plan is not written yet: not a download
    items = {i["id"]: i for i in app.test_client().get("/models/downloads").json["items"]}
    assert sorted(items) == ["nearly", "over", "partly", "waiting"]
    assert (items["nearly"]["downloaded"], items["nearly"]["total"], items["nearly"]["progress"]) == (199, 200, 99)
    assert items["over"]["progress"] == 100
    assert {k: items["partly"][k] for k in ("provider", "downloaded", "total", "progress", "files")} == {
        "provider": "ollama", "downloaded": 10, "total": 10, "progress": 100,
        "files": [{"path": "a.bin", "downloaded": 10, "total": 10, "status": "stored"},
                  {"path": "b.bin", "downloaded": 0, "total": None, "status": "queued"}]}


def test_another_request_over_a_paused_model_says_what_it_discards(service: Service, origin: Origin) -> None:
    """A POST for the same id with another selection starts anew: its answer says the bytes of the paused
    model's finished files are discarded, not kept."""
    app, client, watch = service(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    models = attach(app, client, origin)
    b = paused_in_b(client, models, origin, watch, "k", 11)
    b.release.set()
    r = post_download(client, "k", "hf://acme/k", files=["a.bin"])  # the same model, another selection
    assert r.status_code == 202, r.json
    assert (r.json["status"], r.json["kept"], r.json["discarded"], r.json["provisional"]) == (
        "started", 0, 20 * KiB, False)
    done = watch.terminal("k")
    assert done["status"] == "complete" and [f["path"] for f in done["files"]] == ["a.bin"]


def test_a_new_request_over_a_paused_model_does_not_take_its_files_bytes(service: Service, origin: Origin) -> None:
    """Paused with 100 KiB of b.bin on disk, the model is asked for again with a selection in which c.bin takes
    b.bin's place in the list: the paused model's staging goes, and c.bin is fetched from its first byte, not
    continued from b.bin's bytes."""
    app, client, watch = service(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    models = attach(app, client, origin)
    ref = models.add("s", {"a.bin": payload(20 * KiB, 22), "b.bin": payload(300 * KiB, 23),
                           "c.bin": payload(200 * KiB, 24)})
    b = origin.add(f"/s/{REV}/b.bin", payload(300 * KiB, 23), stall_after=100 * KiB)
    assert post_download(client, "s", ref).status_code == 202
    assert b.stalled.wait(5)
    watch.until(lambda e: e.payload.get("id") == "s" and e.payload.get("downloaded") == 120 * KiB)
    assert client.post("/models/download/pause", json={"id": "s"}).json["status"] == "paused"
    b.release.set()
    assert post_download(client, "s", ref, files=["a.bin", "c.bin"]).status_code == 202
    done = watch.status("s", "complete", "error")
    assert done["status"] == "complete", done
    assert [seen.range for seen in origin.requests_for(f"/s/{REV}/c.bin")] == [None]


def test_a_file_whose_origin_now_has_another_size_is_not_resumed_from_its_bytes(service: Service, origin: Origin,
                                                                                make_app: Any) -> None:
    """Paused with 100 KiB of b.bin on disk, its origin now serves a file of another size than the listing: the
    resume fails naming the file, and those bytes (of a version the listing does not vouch for) are not kept.
    The model, resumed once, is no longer paused: the next run lists it as resumable."""
    app, client, watch = service(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    models = attach(app, client, origin)
    b = paused_in_b(client, models, origin, watch, "v", 15)
    b.release.set()
    origin.add(f"/v/{REV}/b.bin", payload(310 * KiB, 16))
    assert client.post("/models/download/resume", json={"id": "v"}).status_code == 202
    failed = watch.status("v", "error")
    assert (failed["code"], failed["file"]) == ("size-mismatch", "b.bin"), failed
    assert {f["path"]: f["downloaded"] for f in failed["files"]} == {"a.bin": 20 * KiB, "b.bin": 0}
    staging = os.path.join(ArwModels.state(app).dirs.root, "partial", "v")
    assert sorted(os.listdir(staging)) == ["plan.json"]
    ArwModels.state(app).shutdown()
    item = make_app(ARW_DL_RESUME_ON_START=False).test_client().get("/models/downloads/v").json
    assert (item["status"], item["resumable"]) == ("resumable", True), item


def test_a_pause_as_a_file_is_about_to_begin_sends_no_request_for_it(service: Service, origin: Origin) -> None:
    """The pause lands while b.bin's headers are being asked for, before its transfer has begun: that transfer
    is stopped as it begins, so the origin never sees a request for b.bin."""
    app, client, watch = service(ARW_DL_FILES_AT_ONCE=1)
    manager = ArwModels.state(app).manager
    models = attach(app, client, origin)
    authorizer = models.authorizer

    def pausing(url: str, settings: Any, headers: Any) -> Any:
        authorize = authorizer(url, settings, headers)

        def paused_at_b(file: RemoteFile, fresh: bool) -> Any:
            if file.path == "b.bin":
                manager.pause("ab", wait=0)
            return authorize(file, fresh)

        return paused_at_b

    models.authorizer = pausing  # type: ignore[method-assign]
    ref = models.add("ab", {"a.bin": payload(10 * KiB, 17), "b.bin": payload(10 * KiB, 18)})
    assert post_download(client, "ab", ref).status_code == 202
    paused = watch.status("ab", "paused", "complete")
    assert paused["status"] == "paused", paused
    files = {f["path"]: (f["status"], f["downloaded"]) for f in paused["files"]}
    assert files == {"a.bin": ("complete", 10 * KiB), "b.bin": ("queued", 0)}
    assert origin.requests_for(f"/ab/{REV}/b.bin") == []


def test_a_finished_files_record_that_cannot_be_read_is_not_trusted(service: Service, origin: Origin) -> None:
    """A paused model's plan whose record of a finished file is damaged: the resume does not take the record's
    word for it, finds the file in the store by its listed digest, and completes."""
    app, client, watch = service(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    models = attach(app, client, origin)
    b = paused_in_b(client, models, origin, watch, "d", 19)
    b.release.set()
    b.stall_after = None
    staging = Staging(ArwModels.state(app).dirs, "d")
    plan = staging.read_plan()
    assert plan is not None
    del plan["done"]["a.bin"]["sha256"]
    staging.write_plan(plan)
    assert client.post("/models/download/resume", json={"id": "d"}).status_code == 202
    done = watch.status("d", "complete", "error")
    assert done["status"] == "complete", done
    assert {f["path"]: f["status"] for f in done["files"]} == {"a.bin": "stored", "b.bin": "complete"}
    assert len(origin.requests_for(f"/d/{REV}/a.bin")) == 1


def test_a_pause_during_a_files_retry_wait_fetches_nothing_more(service: Service, origin: Origin) -> None:
    """A file waiting to retry after a dropped connection is paused at once with its model: no request follows
    the pause."""
    app, client, watch = service(ARW_DL_RETRY_BACKOFF_MS=60000, ARW_DL_RETRY_BACKOFF_MAX_MS=60000)
    models = attach(app, client, origin)
    dropped = threading.Event()
    ref = models.add("w", {"a.bin": payload(10 * KiB, 13)}, drop_after=0, on_drop=lambda res: dropped.set())
    assert post_download(client, "w", ref).status_code == 202
    assert dropped.wait(5)
    assert client.post("/models/download/pause", json={"id": "w"}).json["status"] == "paused"
    assert watch.status("w", "paused")["files"][0]["status"] == "queued"
    assert ArwModels.state(app).manager.wait("w", 5)
    assert len(origin.requests_for(f"/w/{REV}/a.bin")) == 1


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
    assert client.get("/models/downloads/c").json["downloaded"] == 0  # nothing is kept of a canceled model


def test_a_file_a_paused_model_found_in_the_store_outlives_the_model_that_brought_it(service: Service,
                                                                                    origin: Origin) -> None:
    """A model that found a file in the store, paused, keeps it there: the delete of the model that brought the
    file leaves its blob, and the resume fetches it from nowhere."""
    app, client, watch = service(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    models = attach(app, client, origin)
    assert post_download(client, "one", models.add("one", {"a.bin": payload(20 * KiB, 31)})).status_code == 202
    assert watch.terminal("one")["status"] == "complete"
    b = paused_in_b(client, models, origin, watch, "two", 31)
    assert client.delete("/models/one").status_code == 200
    b.release.set()
    b.stall_after = None
    assert client.post("/models/download/resume", json={"id": "two"}).status_code == 202
    done = watch.status("two", "complete", "error")
    assert {f["path"]: f["status"] for f in done["files"]} == {"a.bin": "stored", "b.bin": "complete"}, done
    assert origin.requests_for(f"/two/{REV}/a.bin") == []


def test_a_delete_collects_its_own_blobs_not_a_canceled_models_files(service: Service, origin: Origin) -> None:
    """The files a canceled model finished stay in the store until the next start; a delete of another model
    collects that model's blobs only, so the canceled one, asked for again, does not fetch them again."""
    app, client, watch = service(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    models = attach(app, client, origin)
    assert post_download(client, "other", models.add("other", {"o.bin": payload(10 * KiB, 60)})).status_code == 202
    assert watch.terminal("other")["status"] == "complete"
    b = paused_in_b(client, models, origin, watch, "x", 61)
    assert client.post("/models/download/cancel", json={"id": "x"}).json["status"] == "canceled"
    assert client.delete("/models/other").status_code == 200
    b.release.set()
    b.stall_after = None
    assert post_download(client, "x", "hf://acme/x").status_code == 202
    done = watch.status("x", "complete")
    assert {f["path"]: f["status"] for f in done["files"]} == {"a.bin": "stored", "b.bin": "complete"}
    assert len(origin.requests_for(f"/x/{REV}/a.bin")) == 1


def test_a_resumed_model_canceled_shows_nothing_kept(service: Service, origin: Origin) -> None:
    """A model resumed with 120 KiB kept, canceled as its origin answers: its last event says what was
    discarded, and its job shows no file and no byte any more (its staging is gone)."""
    app, client, watch = service(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    models = attach(app, client, origin)
    b = paused_in_b(client, models, origin, watch, "x2", 30)
    b.release.set()
    manager = ArwModels.state(app).manager

    def checkpoint(at: str, job: Any) -> None:
        if at == "answered":
            manager.cancel(job.id, wait=0)

    manager.checkpoint = checkpoint
    assert client.post("/models/download/resume", json={"id": "x2"}).status_code == 202
    canceled = watch.status("x2", "canceled", "complete")
    assert (canceled["status"], canceled["downloaded"]) == ("canceled", 120 * KiB), canceled
    snap = client.get("/models/downloads/x2").json
    assert (snap["status"], snap["downloaded"], snap["files"]) == ("canceled", 0, []), snap


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


def test_a_models_own_rate_limit_holds_for_all_its_files(service: Service, origin: Origin) -> None:
    """A model asked for at 2 MiB/s, two files of 512 KiB fetched at once: together they keep to the model's
    limit (about half a second), not each to a limit of its own or to none."""
    app, client, watch = service(ARW_DL_FILES_AT_ONCE=2)
    models = attach(app, client, origin)
    ref = models.add("slow", {"a.bin": payload(512 * KiB, 28), "b.bin": payload(512 * KiB, 29)})
    began = time.monotonic()
    assert post_download(client, "slow", ref, rate_limit=2048 * KiB).status_code == 202
    assert watch.terminal("slow")["status"] == "complete"
    assert time.monotonic() - began >= 0.3


def test_the_disk_budget_refuses_the_model_before_its_first_byte(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    models = attach(app, client, origin)
    ref = models.add("big", {"a.bin": payload(100 * KiB, 1), "b.bin": payload(100 * KiB, 2)})
    ArwModels.state(app).manager.disk_free = lambda path: 150 * KiB
    assert post_download(client, "big", ref).status_code == 202
    failed = watch.terminal("big")
    assert failed["status"] == "error" and failed["code"] == "disk-insufficient"
    assert origin.requests_for(f"/big/{REV}/a.bin") == [] and origin.requests_for(f"/big/{REV}/b.bin") == []


def test_a_disk_one_byte_short_of_what_a_model_lacks_refuses_it(service: Service, origin: Origin) -> None:
    """The budget asks for every byte the model lacks plus the reserve (a file listed with no size counts for
    nothing, its size unknown): one byte less free refuses the model and says how much it needed; exactly that
    much lets it go."""
    app, client, watch = service()
    models = attach(app, client, origin)
    ref = models.add("edge", {"a.bin": payload(10 * KiB, 25), "b.bin": payload(20 * KiB, 26),
                              "c.bin": payload(5 * KiB, 27)}, sizes={"c.bin": None})
    manager = ArwModels.state(app).manager
    need = 30 * KiB + manager.settings.disk_reserve_bytes
    manager.disk_free = lambda path: need - 1
    assert post_download(client, "edge", ref).status_code == 202
    failed = watch.terminal("edge")
    assert (failed["status"], failed["code"], failed["needed"], failed["free"]) == (
        "error", "disk-insufficient", need, need - 1), failed
    manager.disk_free = lambda path: need
    assert post_download(client, "edge", ref).status_code == 202
    done = watch.terminal("edge")
    assert done["status"] == "complete", done
    # The total it began with is that of the sizes it knew.
    assert [p["total"] for p in watch.payloads("edge") if p["status"] == "started"] == [30 * KiB]


def test_a_resumed_model_asks_the_disk_only_for_what_it_still_lacks(service: Service, origin: Origin) -> None:
    """Paused with 100 KiB of a 300 KiB file on disk: the resume needs 200 KiB more,
    not the whole file again, and a disk with 250 KiB free lets it go on."""
    app, client, watch = service(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    models = attach(app, client, origin)
    b = paused_in_b(client, models, origin, watch, "k", 10)
    b.release.set()
    b.stall_after = None
    ArwModels.state(app).manager.disk_free = lambda path: 250 * KiB
    assert client.post("/models/download/resume", json={"id": "k"}).status_code == 202
    done = watch.terminal("k")
    assert done["status"] == "complete", done


def test_a_file_not_yet_begun_shows_no_byte(service: Service, origin: Origin) -> None:
    """One file at a time: while the first one comes, the next is listed queued with
    nothing downloaded, not a byte it does not have."""
    app, client, watch = service(ARW_DL_FILES_AT_ONCE=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    models = attach(app, client, origin)
    ref = models.add("n", {"a.bin": payload(300 * KiB, 13), "b.bin": payload(20 * KiB, 14)})
    a = origin.add(f"/n/{REV}/a.bin", payload(300 * KiB, 13), stall_after=100 * KiB)
    assert post_download(client, "n", ref).status_code == 202
    assert a.stalled.wait(5)
    frame = watch.until(lambda e: e.payload.get("id") == "n" and e.payload.get("downloaded") == 100 * KiB)
    files = {f["path"]: f for f in frame.payload["files"]}
    assert (files["b.bin"]["status"], files["b.bin"]["downloaded"]) == ("queued", 0), files
    assert files["a.bin"]["status"] == "downloading", files
    assert "resumable" not in client.get("/models/downloads/n").json  # running: nothing to resume
    a.release.set()
    assert watch.terminal("n")["status"] == "complete"


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
