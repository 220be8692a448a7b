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
