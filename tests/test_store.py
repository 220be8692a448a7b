"""The content-addressed store: a model's bytes are a blob under their SHA-256, its
file in ``models/`` a link of that blob (a copy where no link can be made), its
manifest says what it is; the listings and the probe say where the store is."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from arw_models import ArwModels
from arw_models.redact import redact_url
from arw_models.store import blobs
from arw_models.store.manifests import Manifests, entry_of, manifest_of
from arw_models.store.storage import StateDir

from .support.app import post_download
from .support.origin import Origin, payload

KiB = 1024


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_an_install_stores_a_blob_and_writes_a_manifest(client: Any, app: Any, origin: Origin, watch: Any) -> None:
    res = origin.add("/org/m.gguf", payload(40 * KiB, seed=1))
    url = origin.url("/org/m.gguf").replace("http://", "http://user:secret@") + "?X-Amz-Signature=abc"
    assert post_download(client, "m", url, sha256=res.sha256).status_code == 202
    assert watch.terminal("m")["status"] == "complete"
    state = StateDir(app.config["ARW_STATE_DIR"])
    blob = os.path.join(state.blobs_dir, res.sha256)

    assert os.path.samefile(state.model_path("m.gguf"), blob)
    assert mode(blob) == 0o644 and mode(state.manifests_dir) == 0o700
    manifest_path = os.path.join(state.manifests_dir, "m.json")
    assert mode(manifest_path) == 0o600
    with open(manifest_path) as fh:
        manifest = json.load(fh)
    shown = redact_url(url)  # as the listing shows it: no userinfo, no signed query
    assert "secret" not in shown and "Signature" not in shown
    assert manifest == {"version": 1, "id": "m", "provider": "local", "url": shown,
                        "downloaded_at": manifest["downloaded_at"], "gated": True,  # credentials in its url
                        "files": [{"path": "m.gguf", "size": len(res.data), "sha256": res.sha256, "source": shown,
                                   "sha256_source": "request"}]}
    assert "secret" not in json.dumps(manifest) and "Signature" not in json.dumps(manifest)
    item = client.get("/models").json["items"][0]
    assert item["path"] == state.model_path("m.gguf") and item["blob"] == blob
    probe = client.get("/probe").json
    assert probe["store_dir"] == state.store_dir and probe["store_bytes"] == len(res.data)
    assert sorted(os.listdir(state.models_dir)) == ["m.gguf"]  # no .part, sidecar or temporary left


def test_bytes_the_store_holds_fetched_again_are_one_blob(client: Any, app: Any, origin: Origin,
                                                          watch: Any) -> None:
    """Without a sha256 the digest is known only once the bytes are here: the new
    file then becomes a link of the blob the store holds, not a second copy."""
    data = payload(30 * KiB, seed=2)
    origin.add("/a/m.bin", data)
    origin.add("/b/n.bin", data)
    for model_id, path in (("a", "/a/m.bin"), ("b", "/b/n.bin")):
        post_download(client, model_id, origin.url(path))
        assert watch.terminal(model_id)["status"] == "complete"
    state = StateDir(app.config["ARW_STATE_DIR"])
    digest = hashlib.sha256(data).hexdigest()
    assert os.listdir(state.blobs_dir) == [digest]
    assert os.stat(os.path.join(state.blobs_dir, digest)).st_nlink == 3
    assert os.path.samefile(state.model_path("m.bin"), state.model_path("n.bin"))
    metrics = {s.name: s.value for f in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
               for s in f.samples}
    assert metrics["arw_store_used_bytes"] == len(data)  # the blob, once


def test_without_hard_links_blob_and_model_are_copies(client: Any, app: Any, origin: Origin, watch: Any,
                                                     monkeypatch: Any) -> None:
    def refuse(*args: Any, **kw: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(blobs, "link", refuse)
    res = origin.add("/m.bin", payload(20 * KiB, seed=3))
    post_download(client, "m", origin.url("/m.bin"), sha256=res.sha256)
    assert watch.terminal("m")["status"] == "complete"
    state = StateDir(app.config["ARW_STATE_DIR"])
    blob = os.path.join(state.blobs_dir, res.sha256)
    with open(blob, "rb") as fh:
        assert fh.read() == res.data
    assert not os.path.samefile(state.model_path("m.bin"), blob)
    assert mode(blob) == 0o644 and mode(state.model_path("m.bin")) == 0o644
    assert client.delete("/models/m").status_code == 200
    assert os.listdir(state.blobs_dir) == [] and os.listdir(state.models_dir) == []


def test_a_copied_blob_follows_a_changed_models_mode_at_start(make_app: Any, origin: Origin,
                                                              monkeypatch: Any) -> None:
    def refuse(*args: Any, **kw: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(blobs, "link", refuse)
    app = make_app()
    res = origin.add("/m.bin", payload(5 * KiB, seed=4))
    post_download(app.test_client(), "m", origin.url("/m.bin"), sha256=res.sha256)
    assert ArwModels.state(app).manager.wait("m", 10)
    ArwModels.state(app).shutdown()
    state = StateDir(app.config["ARW_STATE_DIR"])
    assert mode(os.path.join(state.blobs_dir, res.sha256)) == 0o644

    again = make_app(ARW_MODELS_MODE="0640")
    assert again.test_client().get("/models").json["items"][0]["id"] == "m"
    assert mode(os.path.join(state.blobs_dir, res.sha256)) == 0o640 == mode(state.model_path("m.bin"))


def test_a_blobs_dir_link_refuses_to_start(make_app: Any, tmp_path: Any) -> None:
    app = make_app()
    root = app.config["ARW_STATE_DIR"]
    os.makedirs(root)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", os.path.join(root, "blobs"))
    answer = app.test_client().get("/models")
    assert answer.status_code == 503 and answer.json["code"] == "state-dir-unsafe"
    assert os.listdir(tmp_path / "elsewhere") == []


def test_a_manifest_that_is_not_the_models_is_not_read(tmp_path: Any) -> None:
    (tmp_path / "state").mkdir()
    state = StateDir(str(tmp_path / "state"))
    manifests = Manifests(state)
    manifests.ensure()
    good = {"id": "m", "files": [{"path": "m.bin", "size": 3, "sha256": "0" * 64}]}
    for model_id, data in (("m", good), ("other", {**good, "id": "m"}), ("listed", ["m"]),
                           ("nofiles", {"id": "nofiles", "files": {}})):
        with open(manifests.path(model_id), "w") as fh:
            json.dump(data, fh)
    assert manifests.read("m") == good
    assert [manifests.read(i) for i in ("other", "listed", "nofiles", "absent")] == [None] * 4
    # A file name that would leave the models folder makes no registry entry.
    assert entry_of({"id": "x", "files": [{"path": "../x.bin", "sha256": "0" * 64}]}, state) is None
    assert entry_of(good, state) is not None


def test_a_manifest_keeps_the_provider_and_gives_it_back(tmp_path: Any) -> None:
    state = StateDir(str(tmp_path))
    entry = {"id": "h", "file": "h.gguf", "bytes": 3, "sha256": "0" * 64, "url": "hf://acme/m/h.gguf",
             "provider": "hf"}
    manifest = manifest_of(entry)
    assert manifest["provider"] == "hf"
    rebuilt = entry_of(manifest, state)
    assert rebuilt is not None and (rebuilt["provider"], rebuilt["file"]) == ("hf", "h.gguf")
    # An entry that names no provider (an older version's) is a local one.
    assert manifest_of({**entry, "provider": None})["provider"] == "local"


def test_a_state_dir_without_manifests_names_no_model_and_no_blob(tmp_path: Any) -> None:
    """Before the first start has made ``manifests/`` there is nothing to keep,
    rather than an error."""
    manifests = Manifests(StateDir(str(tmp_path)))
    assert manifests.ids() == [] and manifests.all() == {} and manifests.digests() == set()


def test_only_json_files_named_for_a_model_are_manifests(tmp_path: Any) -> None:
    """A file of another kind in ``manifests/`` (a note, an editor's backup) names
    no model."""
    manifests = Manifests(StateDir(str(tmp_path)))
    manifests.ensure()
    manifests.write({"id": "m", "files": []})
    for name in ("notes.txt", "m.json~", "bad name.json"):
        with open(os.path.join(manifests.dir, name), "w") as fh:
            fh.write("{}")
    assert manifests.ids() == ["m"]


def test_loosened_manifests_are_narrowed_to_the_owner_at_start(make_app: Any) -> None:
    """A manifest names a url: a ``manifests/`` folder or file left readable by
    others (a restore from a backup, a hand edit) is made the owner's alone again."""
    app = make_app()
    assert app.test_client().get("/models").status_code == 200
    state = StateDir(app.config["ARW_STATE_DIR"])
    path = os.path.join(state.manifests_dir, "m.json")
    with open(path, "w") as fh:
        json.dump({"id": "m", "files": []}, fh)
    os.chmod(path, 0o644)
    os.chmod(state.manifests_dir, 0o755)
    ArwModels.state(app).shutdown()

    again = make_app()
    assert again.test_client().get("/models").status_code == 200
    assert mode(state.manifests_dir) == 0o700 and mode(path) == 0o600


def test_a_manifest_of_a_hub_file_keeps_its_revision() -> None:
    """The revision an ``hf://`` file was fetched at is recorded with it."""
    entry = {"id": "h", "file": "h.gguf", "bytes": 3, "sha256": "0" * 64, "url": "hf://acme/m/h.gguf"}
    assert manifest_of(entry, revision="a" * 40)["files"][0]["revision"] == "a" * 40
    assert "revision" not in manifest_of(entry)["files"][0]


def test_a_manifest_that_names_no_single_file_makes_no_entry(tmp_path: Any) -> None:
    """A manifest of no folder gives an entry only when it names one file: one of
    none or of several (damaged by hand) is not indexed as a model."""
    state = StateDir(str(tmp_path))
    file = {"path": "m.bin", "size": 3, "sha256": "0" * 64}
    for files in ([], [file, {**file, "path": "n.bin"}], [{**file, "path": None}]):
        assert entry_of({"id": "m", "files": files}, state) is None, files


def test_the_entry_of_a_folder_manifest_lists_its_files(tmp_path: Any) -> None:
    """A model of many files is listed from its manifest as its folder, its files
    and their sum (an older manifest that names no provider is a hub model's)."""
    state = StateDir(str(tmp_path))
    files = [{"path": "config.json", "size": 23, "sha256": "1" * 64, "git_oid": "2" * 40},
             {"path": "empty.txt", "size": 0, "sha256": "3" * 64},
             {"path": "model.safetensors", "size": 4096, "sha256": "4" * 64}]
    manifest = {"id": "t", "url": "hf://acme/t", "folder": "t", "revision": "0" * 40, "files": files}
    entry = entry_of(manifest, state)
    assert entry is not None
    assert (entry["provider"], entry["file"], entry["path"], entry["bytes"], entry["sha256"]) == (
        "hf", "t", state.model_path("t"), 23 + 4096, None)
    assert entry["files"] == [{"path": "config.json", "bytes": 23, "sha256": "1" * 64, "git_oid": "2" * 40},
                              {"path": "empty.txt", "bytes": 0, "sha256": "3" * 64},
                              {"path": "model.safetensors", "bytes": 4096, "sha256": "4" * 64}]
    assert entry_of({**manifest, "provider": "local"}, state)["provider"] == "local"
    # A folder name that would leave the models folder makes no registry entry.
    assert entry_of({**manifest, "folder": "../t"}, state) is None
