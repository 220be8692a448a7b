"""A blob no manifest names is removed: when the last model that names it is
deleted, and at start (what a crash left); a crash between the writes of an install
or a delete is put in order at the next start."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from arw_models import ArwModels
from arw_models.store import gc
from arw_models.store.blobs import Blobs
from arw_models.store.manifests import Manifests
from arw_models.store.staging import Staging
from arw_models.store.storage import StateDir

from .support.app import post_download
from .support.models import LocalModels
from .support.origin import Origin, payload

KiB = 1024


def blobs_of(app: Any) -> list[str]:
    return sorted(os.listdir(StateDir(app.config["ARW_STATE_DIR"]).blobs_dir))


def ids(client: Any) -> list[str]:
    return [m["id"] for m in client.get("/models").json["items"]]


def test_a_blob_goes_with_the_last_model_that_names_it(client: Any, app: Any, origin: Origin,
                                                       watch: Any) -> None:
    res = origin.add("/m.bin", payload(20 * KiB, seed=1))
    for model_id, path in (("a", "/m.bin"), ("b", "/again/m.bin")):
        post_download(client, model_id, origin.url(path) if model_id == "a" else "http://127.0.0.1:9/m.bin",
                      sha256=res.sha256)
        assert watch.terminal(model_id)["status"] == "complete"
    assert blobs_of(app) == [res.sha256]

    assert client.delete("/models/a").status_code == 200
    assert blobs_of(app) == [res.sha256]  # b names it still
    assert client.get("/probe").json["store_bytes"] == len(res.data)
    assert client.delete("/models/b").status_code == 200
    assert blobs_of(app) == []
    assert client.get("/probe").json["store_bytes"] == 0


def test_a_replaced_model_leaves_no_blob_of_its_old_bytes(client: Any, app: Any, origin: Origin,
                                                          watch: Any) -> None:
    old = origin.add("/v1/m.bin", payload(10 * KiB, seed=2))
    new = origin.add("/v2/m.bin", payload(12 * KiB, seed=3))
    for path, res in (("/v1/m.bin", old), ("/v2/m.bin", new)):
        post_download(client, "m", origin.url(path), sha256=res.sha256)
        assert watch.terminal("m")["status"] == "complete"
    assert blobs_of(app) == [new.sha256]


def test_at_start_blobs_no_manifest_names_are_removed_and_crashes_put_in_order(
        make_app: Any, origin: Origin) -> None:
    app = make_app()
    client = app.test_client()
    datas = {name: payload((5 + i) * KiB, seed=10 + i) for i, name in enumerate(("kept", "indexed", "deleted"))}
    for name, data in datas.items():
        origin.add(f"/{name}.bin", data)
        post_download(client, name, origin.url(f"/{name}.bin"))
        assert ArwModels.state(app).manager.wait(name, 10)
    ArwModels.state(app).shutdown()
    state = StateDir(app.config["ARW_STATE_DIR"])
    stray = "0" * 64  # linked into the store, and the crash came before its manifest
    with open(os.path.join(state.blobs_dir, stray), "wb") as fh:
        fh.write(b"orphan")
    # A crash between an install's manifest and its registry entry...
    with open(state.registry_path) as fh:
        registry = json.load(fh)
    del registry["models"]["indexed"]
    # ... and one in a delete, after its manifest went.
    os.unlink(os.path.join(state.manifests_dir, "deleted.json"))
    with open(state.registry_path, "w") as fh:
        json.dump(registry, fh)

    again = make_app(ARW_STATE_DIR=state.root)
    items = {m["id"]: m for m in again.test_client().get("/models").json["items"]}
    assert sorted(items) == ["indexed", "kept"]
    assert items["indexed"]["status"] == "available" and items["indexed"]["file"] == "indexed.bin"
    assert items["indexed"]["url"] == origin.url("/indexed.bin")
    assert not os.path.exists(state.model_path("deleted.bin"))
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in datas.items()}
    assert blobs_of(again) == sorted([digests["kept"], digests["indexed"]])


def test_a_model_of_many_files_whose_entry_a_crash_lost_is_listed_again(make_app: Any, origin: Origin) -> None:
    """A crash between a folder model's manifest and its registry entry: the next
    start lists the model again from its manifest, as it was listed before, and
    keeps its blobs."""
    app = make_app()
    client = app.test_client()
    client.get("/healthz")  # the service starts
    models = LocalModels(origin)
    ArwModels.state(app).manager.references = models
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": payload(40 * KiB, seed=20)}
    ref = models.add("tiny", files, git=("config.json",), inline={"empty.txt": b""})
    assert post_download(client, "tiny", ref).status_code == 202
    assert ArwModels.state(app).manager.wait("tiny", 10)
    [before] = client.get("/models").json["items"]
    ArwModels.state(app).shutdown()
    state = StateDir(app.config["ARW_STATE_DIR"])
    kept = blobs_of(app)
    with open(state.registry_path) as fh:
        registry = json.load(fh)
    del registry["models"]["tiny"]
    with open(state.registry_path, "w") as fh:
        json.dump(registry, fh)

    again = make_app(ARW_STATE_DIR=state.root)
    [item] = again.test_client().get("/models").json["items"]
    assert item["status"] == "available"
    for key in ("id", "provider", "file", "path", "sha256", "bytes", "url", "revision"):
        assert item[key] == before[key], key
    assert item["bytes"] == sum(len(d) for d in files.values())
    assert item["provider"] == "hf" and item["file"] == "tiny"
    assert sorted(item["files"], key=lambda f: f["path"]) == sorted(before["files"], key=lambda f: f["path"])
    assert blobs_of(again) == kept


def installed(make_app: Any, origin: Origin, *names: str) -> StateDir:
    """The state directory of an app that installed ``names`` (one small file each),
    shut down."""
    app = make_app()
    client = app.test_client()
    for i, name in enumerate(names):
        origin.add(f"/{name}.bin", payload((5 + i) * KiB, seed=30 + i))
        post_download(client, name, origin.url(f"/{name}.bin"))
        assert ArwModels.state(app).manager.wait(name, 10)
    ArwModels.state(app).shutdown()
    return StateDir(app.config["ARW_STATE_DIR"])


def test_a_delete_cut_short_after_its_manifest_is_finished_at_start(make_app: Any, origin: Origin) -> None:
    """A crash in a delete after its manifest went, and nothing else to put in
    order: the next start finishes the delete (entry, file and blob)."""
    state = installed(make_app, origin, "kept", "deleted")
    os.unlink(os.path.join(state.manifests_dir, "deleted.json"))

    again = make_app(ARW_STATE_DIR=state.root)
    assert ids(again.test_client()) == ["kept"]
    with open(state.registry_path) as fh:
        assert sorted(json.load(fh)["models"]) == ["kept"]
    assert not os.path.exists(state.model_path("deleted.bin"))
    assert len(blobs_of(again)) == 1


def test_finishing_a_delete_keeps_a_file_another_model_names(make_app: Any, origin: Origin) -> None:
    """An entry left without its manifest whose file name another model's entry
    names too (a registry put together by hand): the file stays for that model."""
    state = installed(make_app, origin, "kept")
    with open(state.registry_path) as fh:
        registry = json.load(fh)
    registry["models"]["stale"] = {**registry["models"]["kept"], "id": "stale"}
    with open(state.registry_path, "w") as fh:
        json.dump(registry, fh)

    again = make_app(ARW_STATE_DIR=state.root)
    [item] = again.test_client().get("/models").json["items"]
    assert item["id"] == "kept" and item["status"] == "available"
    assert os.path.exists(state.model_path("kept.bin"))


def test_collect_removes_and_names_the_blobs_no_manifest_names(tmp_path: Any) -> None:
    """Of the blobs asked about, those no manifest names are removed and returned;
    a digest an older entry recorded oddly (none, or not a sha256) names no blob:
    it removes nothing and is no error."""
    state = StateDir(str(tmp_path))
    os.makedirs(state.models_dir)
    blobs, manifests = Blobs(state), Manifests(state)
    digests = []
    for name, data in (("named.bin", b"named"), ("stray.bin", b"stray")):
        path = state.model_path(name)
        with open(path, "wb") as fh:
            fh.write(data)
        digests.append(hashlib.sha256(data).hexdigest())
        blobs.put(path, digests[-1])
    named, stray = digests
    manifests.write({"id": "named", "files": [{"path": "named.bin", "size": 5, "sha256": named}]})
    assert gc.collect(blobs, manifests, [None, "", "ABC", "../models.json"]) == []
    assert gc.collect(blobs, manifests) == [stray]
    assert blobs.digests() == [named]


def test_only_a_staged_plan_of_its_own_keeps_blobs(tmp_path: Any) -> None:
    """A blob a many-file download in progress marks done is kept for its resume;
    a staging folder that is a link, or whose plan is another model's, not a plan,
    or marks nothing done, keeps no blob."""
    state = StateDir(str(tmp_path))
    os.makedirs(state.models_dir)
    blobs, manifests = Blobs(state), Manifests(state)
    digests = {}
    for name in ("kept", "linked", "other", "listed", "oddly"):
        path = state.model_path(name)
        with open(path, "wb") as fh:
            fh.write(name.encode())
        digests[name] = hashlib.sha256(name.encode()).hexdigest()
        blobs.put(path, digests[name])

    def plan(model_id: str, **fields: Any) -> dict[str, Any]:
        return {"id": model_id, "fileset": {}, "done": {"w.bin": {"sha256": digests[model_id], "size": 4}}, **fields}

    Staging(state, "kept").write_plan(plan("kept"))
    Staging(state, "other").write_plan(plan("other", id="someone-else"))
    Staging(state, "listed").write_plan(plan("listed", fileset=["w.bin"]))
    Staging(state, "oddly").write_plan(plan("oddly", done=[digests["oddly"]]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Staging(StateDir(str(elsewhere)), "linked").write_plan(plan("linked"))
    os.symlink(elsewhere / "partial" / "linked", os.path.join(state.root, "partial", "linked"))

    gc.collect(blobs, manifests)
    assert blobs.digests() == [digests["kept"]]
