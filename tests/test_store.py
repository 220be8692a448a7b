"""The content-addressed store: a model's bytes are a blob under their SHA-256, its
file in ``models/`` a link of that blob (a copy where no link can be made), its
manifest says what it is; the listings and the probe say where the store is."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import sys
import threading
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from arw_models import ArwModels
from arw_models.errors import JobStopped
from arw_models.redact import redact_url
from arw_models.store import blobs, folders
from arw_models.store.files import temp_path
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


def test_writing_a_manifest_makes_its_folder_owner_only(tmp_path: Any) -> None:
    """The first manifest written makes ``manifests/`` if it is not there, and the
    folder and every manifest in it are the owner's alone: they name urls."""
    state = StateDir(str(tmp_path))
    manifests = Manifests(state)
    good = {"id": "m", "files": [{"path": "m.bin", "size": 3, "sha256": "0" * 64}]}
    manifests.write(good)
    assert manifests.read("m") == good and mode(state.manifests_dir) == 0o700
    os.chmod(state.manifests_dir, 0o755)
    os.chmod(manifests.path("m"), 0o644)
    manifests.write({**good, "id": "n"})
    assert mode(state.manifests_dir) == 0o700
    assert mode(manifests.path("m")) == mode(manifests.path("n")) == 0o600


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


def store_of(tmp_path: Any) -> blobs.Blobs:
    store = blobs.Blobs(StateDir(str(tmp_path / "state")))
    os.makedirs(store.state.models_dir)
    store.ensure()
    return store


def a_file(path: str, data: bytes) -> str:
    with open(path, "wb") as fh:
        fh.write(data)
    return hashlib.sha256(data).hexdigest()


def refuse(*args: Any, **kw: Any) -> None:
    raise OSError(errno.EPERM, "Operation not permitted")


def test_a_name_that_is_not_a_digest_is_no_blob(tmp_path: Any) -> None:
    """Blobs are named by a digest alone: any other name (a path out of the store)
    is refused, never read or removed, so no client's name reaches another file."""
    store = store_of(tmp_path)
    victim = store.state.registry_path
    with open(victim, "w") as fh:
        fh.write("{}")
    name = os.path.relpath(victim, store.dir)
    for call in (store.path, store.remove):
        with pytest.raises(ValueError):
            call(name)
    assert not store.has(name) and store.open(name) is None
    assert not store.has("0" * 64) and store.open("0" * 64) is None  # a digest the store lacks
    assert os.path.exists(victim)


def test_a_state_dir_without_blobs_holds_none(tmp_path: Any) -> None:
    """Before the first start has made ``blobs/`` the store is empty, rather than
    an error."""
    store = blobs.Blobs(StateDir(str(tmp_path)))
    assert store.stat("0" * 64) is None and store.digests() == [] and store.total_bytes() == 0
    assert store.place("0" * 64, str(tmp_path / "m.bin")) is False


def test_the_bytes_of_the_store_count_its_blobs_alone(tmp_path: Any) -> None:
    """What is in ``blobs/sha256/`` under a digest's name but is no file (a folder
    made by hand) holds no bytes of the store."""
    store = store_of(tmp_path)
    digest = a_file(os.path.join(store.state.models_dir, "m.bin"), b"abc")
    store.put(os.path.join(store.state.models_dir, "m.bin"), digest)
    os.mkdir(os.path.join(store.dir, "1" * 64))
    assert store.digests() == sorted([digest, "1" * 64])
    assert store.stat("1" * 64) is None and store.total_bytes() == 3


def test_only_a_regular_file_becomes_a_blob(tmp_path: Any) -> None:
    """A link where the verified file should be is never stored (the blob would be
    a link to whatever it names), nor anything else that is no regular file."""
    store = store_of(tmp_path)
    target = tmp_path / "elsewhere.bin"
    digest = a_file(str(target), b"not verified")
    link = os.path.join(store.state.models_dir, "m.part")
    os.symlink(target, link)
    with pytest.raises(FileNotFoundError):
        store.put(link, digest)
    with pytest.raises(FileNotFoundError):
        store.put(os.path.join(store.state.models_dir, "absent.part"), digest)
    fifo = os.path.join(store.state.models_dir, "fifo.part")
    os.mkfifo(fifo)
    with pytest.raises(FileNotFoundError):
        store.put(fifo, digest)
    assert os.listdir(store.dir) == []


def test_a_file_gone_before_its_copy_is_not_stored(tmp_path: Any, monkeypatch: Any) -> None:
    """Without hard links the file is copied: if it went away in between, the put
    says so as for a missing file, and leaves no blob."""
    store = store_of(tmp_path)
    path = os.path.join(store.state.models_dir, "m.part")
    digest = a_file(path, b"abc")

    def refuse_and_lose(*args: Any, **kw: Any) -> None:
        os.unlink(path)
        refuse()

    monkeypatch.setattr(blobs, "link", refuse_and_lose)
    with pytest.raises(FileNotFoundError):
        store.put(path, digest)
    assert os.listdir(store.dir) == []


def test_a_copy_that_fails_leaves_nothing_behind(tmp_path: Any, monkeypatch: Any) -> None:
    """An I/O error in the copy of a file into the store is raised, and leaves no
    partial blob, no temporary file and no file open."""
    store = store_of(tmp_path)
    path = os.path.join(store.state.models_dir, "m.part")
    digest = a_file(path, b"abc" * 1000)

    def broken(*args: Any, **kw: Any) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(blobs, "link", refuse)
    monkeypatch.setattr(blobs, "copy_file_range", broken)
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError) as failed:
        store.put(path, digest)
    assert failed.value.errno == errno.EIO
    assert os.listdir(store.dir) == []
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_a_temporary_name_a_dead_process_left_is_taken_over(tmp_path: Any) -> None:
    """A crash of a process with our pid can leave a temporary file under the name
    a put or a place is about to use: it is replaced, not an error."""
    store = store_of(tmp_path)
    path = os.path.join(store.state.models_dir, "m.bin")
    digest = a_file(path, b"abc")
    blob = os.path.join(store.dir, digest)
    for stale in (temp_path(blob), temp_path(path)):
        with open(stale, "wb") as fh:
            fh.write(b"left by a crash")
    store.put(path, digest)
    with open(blob, "rb") as fh:
        assert fh.read() == b"abc"
    os.unlink(path)
    a_file(path, b"abc")  # the same bytes in a file of their own
    assert store.place(digest, path) is True
    assert os.path.samefile(path, blob)
    assert sorted(os.listdir(store.dir)) == [digest]


def test_place_says_whether_the_file_is_a_link_of_the_blob(tmp_path: Any, monkeypatch: Any) -> None:
    """``place`` makes a file a link of its blob and says whether it is one now;
    where no link can be made the file is left as it is."""
    store = store_of(tmp_path)
    path = os.path.join(store.state.models_dir, "m.bin")
    digest = a_file(path, b"abc")
    store.put(path, digest)
    assert store.place(digest, path) is True  # it is one already
    copy = os.path.join(store.state.models_dir, "n.bin")
    a_file(copy, b"abc")
    assert store.place("1" * 64, copy) is False  # no such blob
    monkeypatch.setattr(blobs, "link", refuse)
    assert store.place(digest, copy) is False
    assert not os.path.samefile(copy, path)
    monkeypatch.undo()
    assert store.place(digest, copy) is True and os.path.samefile(copy, path)


def test_a_link_at_a_blobs_name_is_never_followed(tmp_path: Any) -> None:
    """A link put at a blob's name (by hand, by another user of the store) is not
    linked through to the file it names, not even to the file the caller expects."""
    store = store_of(tmp_path)
    target = tmp_path / "elsewhere.bin"
    digest = a_file(str(target), b"abc")
    os.symlink(target, os.path.join(store.dir, digest))
    dst = os.path.join(store.state.models_dir, "m.bin")
    assert store.link_at(digest, dst, os.stat(target)) is False
    assert not os.path.lexists(dst)
    with pytest.raises(ValueError):  # and a name that is no digest is refused
        store.link_at(os.path.relpath(target, store.dir), dst, os.stat(target))
    assert not os.path.lexists(dst)


def test_a_copy_takes_the_bytes_asked_for_however_the_kernel_splits_it(tmp_path: Any, monkeypatch: Any) -> None:
    """``copy_fd`` copies the first ``size`` bytes exactly, also where the kernel
    copies fewer bytes a call than asked."""
    data = payload(20 * KiB, seed=5)
    a_file(str(tmp_path / "src"), data)

    def short(src: int, dst: int, count: int, offset_src: int, offset_dst: int) -> int:
        return os.copy_file_range(src, dst, min(count, 4096), offset_src, offset_dst)

    monkeypatch.setattr(blobs, "copy_file_range", short)
    fd = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        blobs.copy_fd(fd, str(tmp_path / "dst"), 10_000)
    finally:
        os.close(fd)
    assert (tmp_path / "dst").read_bytes() == data[:10_000]


def test_a_copy_of_a_source_shorter_than_said_fails(tmp_path: Any) -> None:
    """A source that ends before ``size`` (truncated since it was measured) is an
    I/O error, not a short copy taken for the whole."""
    a_file(str(tmp_path / "src"), b"abc")
    fd = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as failed:
            blobs.copy_fd(fd, str(tmp_path / "dst"), 10)
    finally:
        os.close(fd)
    assert failed.value.errno == errno.EIO


def test_a_stop_ends_a_copy(tmp_path: Any) -> None:
    """A copy for a job that is stopped ends with JobStopped, before more bytes."""
    a_file(str(tmp_path / "src"), b"abc")
    stop = threading.Event()
    stop.set()
    fd = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        with pytest.raises(JobStopped):
            blobs.copy_fd(fd, str(tmp_path / "dst"), 3, stop)
    finally:
        os.close(fd)
    assert (tmp_path / "dst").read_bytes() == b""


def stored(store: blobs.Blobs, *datas: bytes) -> list[str]:
    """Puts each of ``datas`` in the store; their digests."""
    digests = []
    for i, data in enumerate(datas):
        path = os.path.join(store.state.models_dir, f"scratch-{i}")
        digests.append(a_file(path, data))
        store.put(path, digests[-1])
        os.unlink(path)
    return digests


def test_where_names_cannot_be_exchanged_a_folder_is_replaced_in_two_steps(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A file system (or kernel) that refuses an atomic exchange of two names: the
    new folder still takes the old one's place, by renaming the old one away first,
    says so in the log, and leaves nothing of either behind."""
    store = store_of(tmp_path)
    state = store.state
    one, two = stored(store, b"config", b"weights")
    folders.build(state, store, "m", [("config.json", one)])
    monkeypatch.setattr(folders, "_RENAME_EXCHANGE", 1 << 30)  # a flag no kernel knows: EINVAL
    caplog.set_level(logging.INFO, logger="arw_models")
    path = folders.build(state, store, "m", [("w.bin", two)])
    assert os.listdir(path) == ["w.bin"] and os.path.samefile(os.path.join(path, "w.bin"),
                                                              os.path.join(store.dir, two))
    # Why, as the kernel said it.
    assert [r for r in caplog.records if "no atomic exchange" in r.getMessage()
            and os.strerror(errno.EINVAL) in r.getMessage()]
    assert os.listdir(state.models_dir) == ["m"]


def test_a_folder_is_built_of_links_of_blobs_in_place_of_what_was_there(tmp_path: Any,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A model of many files is a folder of links of its blobs, its folders of the
    models' folder mode; built again, the new folder takes the old one's place
    (a folder or a file), and nothing of the old one or of the building is left
    (nor of a building a dead process left under the same temporary name)."""
    store = store_of(tmp_path)
    state = store.state
    one, two, three = stored(store, b"config", b"weights", b"other")
    os.makedirs(os.path.join(temp_path(state.model_path("m")), "left"))  # by a process that died with our pid
    path = folders.build(state, store, "m", [("config.json", one), ("sub/w.bin", two)])
    assert path == state.model_path("m") and folders.is_folder(state, "m")
    assert os.path.samefile(os.path.join(path, "sub", "w.bin"), os.path.join(store.dir, two))
    assert mode(path) == mode(os.path.join(path, "sub")) == state.models_dir_mode

    caplog.set_level(logging.INFO, logger="arw_models")
    folders.build(state, store, "m", [("other.bin", three)])
    assert os.listdir(path) == ["other.bin"]
    # Exchanged in one step where the kernel can (Linux, since 3.15): never a moment without the folder.
    if sys.platform == "linux":
        assert not [r for r in caplog.records if "no atomic exchange" in r.getMessage()]
    a_file(state.model_path("f"), b"a single file")
    folders.build(state, store, "f", [("config.json", one)])
    assert folders.is_folder(state, "f") and os.listdir(state.model_path("f")) == ["config.json"]
    folders.build(state, store, "none", [])  # no file at all: an empty folder, not an error
    assert folders.is_folder(state, "none") and os.listdir(state.model_path("none")) == []
    assert sorted(os.listdir(state.models_dir)) == ["f", "m", "none"]


def test_a_folder_with_a_blob_the_store_lacks_is_not_built(tmp_path: Any) -> None:
    """A blob missing (gone since the download) fails the build with
    FileNotFoundError and changes nothing: the folder there stays as it was."""
    store = store_of(tmp_path)
    state = store.state
    [one] = stored(store, b"config")
    folders.build(state, store, "m", [("config.json", one)])
    with pytest.raises(FileNotFoundError):
        folders.build(state, store, "m", [("new.json", one), ("w.bin", "9" * 64)])
    assert os.listdir(state.models_dir) == ["m"] and os.listdir(state.model_path("m")) == ["config.json"]


def test_without_hard_links_a_folder_is_built_of_copies(tmp_path: Any, monkeypatch: Any) -> None:
    """Where no hard link can be made each file is a copy, with the models mode."""
    store = store_of(tmp_path)
    [one] = stored(store, b"config")
    monkeypatch.setattr(blobs, "link", refuse)
    path = folders.build(store.state, store, "m", [("config.json", one)])
    copy = os.path.join(path, "config.json")
    assert not os.path.samefile(copy, os.path.join(store.dir, one))
    with open(copy, "rb") as fh:
        assert fh.read() == b"config"
    assert mode(copy) == store.state.models_mode


def test_a_model_name_is_taken_unless_nothing_is_there(tmp_path: Any) -> None:
    """A name that would leave ``models/`` counts as taken; removing what is not
    there says so; a link in ``models/`` is removed, never what it points to."""
    store = store_of(tmp_path)
    state = store.state
    assert folders.exists(state, "../elsewhere") and not folders.exists(state, "m")
    assert folders.remove_model(state, "m") is False
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(target, state.model_path("m"))
    assert folders.exists(state, "m")
    assert folders.remove_model(state, "m") is True
    assert not os.path.lexists(state.model_path("m")) and target.is_dir()


def test_an_inline_file_goes_in_the_store_once(tmp_path: Any) -> None:
    """A file the listing gives inline (no url) is put in the store as any blob,
    also over a scratch file a dead process with our pid left, and nothing else
    is left in ``blobs/sha256/``."""
    store = store_of(tmp_path)
    data = b"# a model card\n"
    digest = hashlib.sha256(data).hexdigest()
    with open(temp_path(os.path.join(store.dir, digest + ".inline")), "wb") as fh:
        fh.write(b"left by a crash")
    folders.put_bytes(store.state, store, data, digest)
    folders.put_bytes(store.state, store, data, digest)
    assert os.listdir(store.dir) == [digest]
    with open(os.path.join(store.dir, digest), "rb") as fh:
        assert fh.read() == data


def test_a_model_is_a_folder_only_where_a_folder_is(tmp_path: Any) -> None:
    """What the listing calls a model of many files present: a folder at its name,
    not a single file, not nothing, and never ``models/`` itself or its parent
    through an empty name, ``.`` or ``..``."""
    store = store_of(tmp_path)
    state = store.state
    [one] = stored(store, b"config")
    folders.build(state, store, "m", [("config.json", one)])
    a_file(state.model_path("f"), b"a single file")
    assert folders.is_folder(state, "m")
    assert not folders.is_folder(state, "f") and not folders.is_folder(state, "absent")
    for name in ("", ".", "..", "m/"):
        assert not folders.is_folder(state, name), name


def test_a_folder_model_is_removed_whole(tmp_path: Any) -> None:
    """Removing a model of many files removes its folder and all in it, and says
    that something was there."""
    store = store_of(tmp_path)
    state = store.state
    [one] = stored(store, b"config")
    folders.build(state, store, "m", [("config.json", one), ("sub/w.json", one)])
    assert folders.remove_model(state, "m") is True
    assert not os.path.lexists(state.model_path("m"))
    assert os.listdir(store.dir) == [one]  # the blob is the collector's to remove, not this


def busy(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file called ``name`` cannot be removed (in use on a file system that says so)."""
    real_unlink = os.unlink

    def unlink(path: Any, *args: Any, **kw: Any) -> None:
        if os.path.basename(os.fsdecode(path)) == name:
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_unlink(path, *args, **kw)

    monkeypatch.setattr(os, "unlink", unlink)


def test_a_folder_part_of_which_cannot_be_removed_is_no_failure(tmp_path: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A file of an old folder that cannot be removed fails neither the removal of
    its model nor an install in its place: the new folder is in place, and what is
    left of the old one is a leftover, not an error."""
    store = store_of(tmp_path)
    state = store.state
    one, two = stored(store, b"config", b"weights")
    folders.build(state, store, "m", [("stuck.bin", one)])
    folders.build(state, store, "n", [("stuck.bin", one)])
    busy("stuck.bin", monkeypatch)
    path = folders.build(state, store, "m", [("w.bin", two)])
    assert os.listdir(path) == ["w.bin"]
    assert folders.remove_model(state, "n") is True


@pytest.mark.parametrize("lacking", ["no C library found", "a C library without renameat2"])
def test_without_renameat2_a_folder_is_replaced_in_two_steps(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                             lacking: str) -> None:
    """Where no atomic exchange can even be asked for (a C library ctypes does not
    find, as on some musl systems, or an old one without ``renameat2``), a model
    installed again still gets its new folder, by two renames."""
    store = store_of(tmp_path)
    state = store.state
    one, two = stored(store, b"config", b"weights")
    folders.build(state, store, "m", [("config.json", one)])
    if lacking == "no C library found":
        monkeypatch.setattr(folders.ctypes.util, "find_library", lambda name: None)
    else:
        monkeypatch.setattr(folders.ctypes, "CDLL", lambda *args, **kw: object())
    path = folders.build(state, store, "m", [("w.bin", two)])
    assert os.listdir(path) == ["w.bin"]
    assert os.listdir(state.models_dir) == ["m"]


def test_a_folder_being_built_is_its_owners_alone(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until it is complete and in place, the folder being built is open to its
    owner only: a runtime of another user never finds a model half made."""
    store = store_of(tmp_path)
    state = store.state
    [one] = stored(store, b"config")
    modes = []
    real_link_at = store.link_at

    def noting(digest: str, path: str, expected: os.stat_result) -> bool:
        modes.append(mode(os.path.dirname(path)))
        return real_link_at(digest, path, expected)

    monkeypatch.setattr(store, "link_at", noting)
    path = folders.build(state, store, "m", [("config.json", one)])
    assert modes == [0o700]
    assert mode(path) == state.models_dir_mode


def test_a_folder_build_and_an_inline_file_leave_no_descriptor_open(tmp_path: Any) -> None:
    """Each blob a folder is built of is opened, and each inline file written: a
    service that installs many models must close every one of them."""
    store = store_of(tmp_path)
    state = store.state
    one, two = stored(store, b"config", b"weights")
    before = len(os.listdir("/proc/self/fd"))
    folders.build(state, store, "m", [("config.json", one), ("sub/w.bin", two)])
    data = b"# a model card\n"
    folders.put_bytes(state, store, data, hashlib.sha256(data).hexdigest())
    assert len(os.listdir("/proc/self/fd")) == before


def test_an_inline_file_is_its_owners_alone_until_it_is_a_blob(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scratch file an inline file is written to is the owner's alone (0600)
    until the store makes it a blob of the models mode."""
    store = store_of(tmp_path)
    data = b"# a model card\n"
    digest = hashlib.sha256(data).hexdigest()
    modes = []
    real_put = store.put

    def noting(path: str, digest: str, size: int | None = None) -> None:
        modes.append(mode(path))
        real_put(path, digest, size)

    monkeypatch.setattr(store, "put", noting)
    folders.put_bytes(store.state, store, data, digest)
    assert modes == [0o600]
    assert mode(os.path.join(store.dir, digest)) == store.state.models_mode


def test_a_two_step_replacement_takes_over_an_old_name_a_dead_process_left(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replacing a folder in two steps moves the old one to a temporary name first:
    one a process that died with our pid left there is removed, not in the way."""
    store = store_of(tmp_path)
    state = store.state
    one, two = stored(store, b"config", b"weights")
    folders.build(state, store, "m", [("config.json", one)])
    os.makedirs(os.path.join(temp_path(state.model_path("m") + ".old"), "left"))
    monkeypatch.setattr(folders, "_RENAME_EXCHANGE", 1 << 30)  # a flag no kernel knows: EINVAL
    path = folders.build(state, store, "m", [("w.bin", two)])
    assert os.listdir(path) == ["w.bin"]
    assert os.listdir(state.models_dir) == ["m"]
