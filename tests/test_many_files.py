"""Models of many files: fetched as one job into a staging folder, each file
verified and put in the store, installed together as a folder of links."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

from arw_models import ArwModels
from arw_models.engine.fileset import RemoteFile
from arw_models.errors import TransferError

from .support.app import Service, post_download
from .support.models import LocalModels
from .support.origin import Origin, payload

KiB = 1024


def models_app(service: Service, origin: Origin, **config: Any) -> tuple[Any, Any, Any, LocalModels]:
    app, client, watch = service(**config)
    client.get("/healthz")  # the service starts
    resolver = LocalModels(origin)
    ArwModels.state(app).manager.references = resolver
    return app, client, watch, resolver


def tiny(seed: int = 0) -> dict[str, bytes]:
    return {"config.json": b'{"model_type": "llama"}', "model-00001-of-00002.safetensors": payload(300 * KiB, seed),
            "model-00002-of-00002.safetensors": payload(200 * KiB, seed + 1), "tokenizer/tokenizer.json": b"{}" * 50}


def test_the_files_are_fetched_and_installed_together(service: Service, origin: Origin) -> None:
    app, client, watch, models = models_app(service, origin)
    files = tiny()
    ref = models.add("tiny", files, git=("config.json",), inline={"README.md": b"# tiny\n"})
    r = post_download(client, "tiny", ref)
    assert r.status_code == 202, r.json
    assert (r.json["status"], r.json["kept"], r.json["discarded"], r.json["provisional"]) == ("started", 0, 0, False)
    done = watch.terminal("tiny")
    assert done["status"] == "complete", done
    assert client.get("/models/downloads/tiny").json["file"] == done["file"] == "tiny"  # the job names its folder
    state = ArwModels.state(app).dirs
    folder = os.path.join(state.models_dir, "tiny")
    for path, data in files.items():
        with open(os.path.join(folder, path), "rb") as fh:
            assert fh.read() == data
    with open(os.path.join(folder, "README.md"), "rb") as fh:
        assert fh.read() == b"# tiny\n"
    # Each file is a link of its blob.
    shard = os.path.join(folder, "model-00001-of-00002.safetensors")
    assert os.stat(shard).st_nlink == 2
    [entry] = client.get("/models").json["items"]
    total = sum(len(d) for d in files.values()) + len(b"# tiny\n")
    assert (entry["file"], entry["path"], entry["bytes"], entry["sha256"]) == ("tiny", folder, total, None)
    assert entry["revision"] == "0" * 40 and "status" not in entry or entry["status"] == "available"
    listed = {f["path"]: f for f in entry["files"]}
    assert listed["model-00002-of-00002.safetensors"]["sha256"] == hashlib.sha256(
        files["model-00002-of-00002.safetensors"]).hexdigest()
    assert "git_oid" in listed["config.json"]
    # The manifest says who vouches for each SHA-256: the origin's listing, or the service's own hashing of a
    # file the listing names only by its git blob id.
    with open(os.path.join(state.manifests_dir, "tiny.json")) as fh:
        sources = {f["path"]: f["sha256_source"] for f in json.load(fh)["files"]}
    assert (sources["config.json"], sources["model-00002-of-00002.safetensors"]) == ("computed", "origin")
    # Progress sums into the job; the files are listed as agreed.
    progress = [p for p in watch.payloads("tiny") if p["status"] == "downloading"]
    assert progress and all(set(f) == {"path", "downloaded", "total", "status"} for f in progress[-1]["files"])
    assert all(p["total"] == sum(len(d) for d in files.values()) for p in progress)
    assert not os.path.exists(os.path.join(state.root, "partial", "tiny"))  # staging removed
    # The origin saw each file's request with the resolver's headers.
    seen = origin.requests_for("/tiny/" + "0" * 40 + "/config.json")
    assert seen and seen[0].headers.get("authorization") == "Bearer first"


def test_a_bad_digest_names_its_file_and_installs_nothing(service: Service, origin: Origin) -> None:
    app, client, watch, models = models_app(service, origin)
    ref = models.add("bad", tiny(3), digests={"model-00002-of-00002.safetensors": "ab" * 32})
    assert post_download(client, "bad", ref).status_code == 202
    failed = watch.terminal("bad")
    assert failed["status"] == "error" and failed["code"] == "checksum-mismatch"
    assert failed["file"] == "model-00002-of-00002.safetensors"
    assert {f["path"]: f["status"] for f in failed["files"]}["model-00002-of-00002.safetensors"] == "failed"
    assert "model-00002-of-00002.safetensors" in failed["error"]
    assert client.get("/models").json["items"] == []
    assert not os.path.exists(os.path.join(ArwModels.state(app).dirs.models_dir, "bad"))


def test_a_failed_file_stops_the_files_still_coming(service: Service, origin: Origin) -> None:
    """The first file that fails ends the model at once: a file stalled at its origin is stopped, not waited
    for until the idle timeout."""
    _, client, watch, models = models_app(service, origin, ARW_DL_FILES_AT_ONCE=2, ARW_DL_IDLE_TIMEOUT_SECS=60)
    ref = models.add("stop", {"slow.bin": payload(300 * KiB, 41), "bad.bin": payload(10 * KiB, 42)},
                     digests={"bad.bin": "ab" * 32})
    slow = origin.add(f"/stop/{'0' * 40}/slow.bin", payload(300 * KiB, 41), stall_after=50 * KiB)
    assert post_download(client, "stop", ref).status_code == 202
    try:
        assert slow.stalled.wait(5)
        failed = watch.terminal("stop")
    finally:
        slow.release.set()
    assert (failed["status"], failed["code"], failed["file"]) == ("error", "checksum-mismatch", "bad.bin")


def test_a_size_other_than_listed_names_its_file(service: Service, origin: Origin) -> None:
    _, client, watch, models = models_app(service, origin)
    ref = models.add("short", tiny(5), sizes={"config.json": 5})
    assert post_download(client, "short", ref).status_code == 202
    failed = watch.terminal("short")
    assert (failed["status"], failed["code"], failed["file"]) == ("error", "size-mismatch", "config.json")
    assert client.get("/models").json["items"] == []


def test_a_401_asks_for_the_files_headers_afresh_once(service: Service, origin: Origin) -> None:
    """A token that expired mid-model is asked for again and the file fetched with it; an origin that refuses
    the fresh one too ends the model with its 401 rather than asking forever."""
    _, client, watch, models = models_app(service, origin, ARW_DL_RETRY_BACKOFF_MS=1)
    ref = models.add("expired", {"a.bin": payload(10 * KiB, 7)}, statuses=[(401, {})])
    assert post_download(client, "expired", ref).status_code == 202
    assert watch.terminal("expired")["status"] == "complete"
    assert models.fresh == ["a.bin"]
    seen = origin.requests_for("/expired/" + "0" * 40 + "/a.bin")
    assert [s.headers.get("authorization") for s in seen][-1] == "Bearer fresh"
    ref = models.add("refused", {"b.bin": payload(10 * KiB, 8)}, statuses=[(401, {}), (401, {})])
    assert post_download(client, "refused", ref).status_code == 202
    failed = watch.terminal("refused")
    assert (failed["status"], failed.get("http_status"), failed["file"]) == ("error", 401, "b.bin"), failed
    assert models.fresh == ["a.bin", "b.bin"]


def test_a_file_listed_by_its_git_blob_id_is_held_to_its_size_and_id(service: Service,
                                                                     origin: Origin) -> None:
    """A file listed by its git blob id alone (no SHA-256 to check while it comes) is held to its listed size
    even when the origin sends no length, and to that id: either failure names its file and installs nothing."""
    _, client, watch, models = models_app(service, origin)
    ref = models.add("long", {"a.bin": payload(10 * KiB, 31)}, git=("a.bin",))
    origin.add(f"/long/{'0' * 40}/a.bin", payload(12 * KiB, 31), send_length=False)
    assert post_download(client, "long", ref).status_code == 202
    failed = watch.terminal("long")
    assert (failed["status"], failed["code"], failed["file"]) == ("error", "size-mismatch", "a.bin"), failed
    assert [f["downloaded"] for f in failed["files"]] == [0]  # bytes of another size are not kept either
    ref = models.add("oid", {"config.json": b'{"model_type": "llama"}'}, git=("config.json",))
    origin.add(f"/oid/{'0' * 40}/config.json", b'{"model_type": "LLAMA"}')  # the same size, other bytes
    assert post_download(client, "oid", ref).status_code == 202
    failed = watch.terminal("oid")
    assert (failed["status"], failed["code"], failed["file"]) == ("error", "checksum-mismatch", "config.json")
    assert [f["downloaded"] for f in failed["files"]] == [0]  # its bytes are not kept for a resume
    assert client.get("/models").json["items"] == []


def test_a_file_listed_by_its_sha256_is_not_held_to_a_git_blob_id_too(service: Service, origin: Origin) -> None:
    """A hub lists an LFS file with the git blob id of its pointer beside the SHA-256 of its content: the file is
    held to its SHA-256, checked as it came, and not read again for a git id that is not its content's."""
    app, client, watch, models = models_app(service, origin)
    data = payload(40 * KiB, 33)
    ref = models.add("lfs", {"a.bin": data})
    [listed] = models.models[ref]
    models.models[ref] = [RemoteFile(listed.path, listed.url, listed.size, listed.sha256, git_oid="1" * 40)]
    assert post_download(client, "lfs", ref).status_code == 202
    assert watch.terminal("lfs")["status"] == "complete"
    with open(os.path.join(ArwModels.state(app).dirs.manifests_dir, "lfs.json")) as fh:
        [file] = json.load(fh)["files"]
    assert (file["sha256"], file["sha256_source"]) == (hashlib.sha256(data).hexdigest(), "origin")


def test_files_in_the_store_are_not_fetched_and_a_dry_run_says_so(service: Service, origin: Origin) -> None:
    _, client, watch, models = models_app(service, origin)
    files = tiny(7)
    first = models.add("one", files)
    assert post_download(client, "one", first).status_code == 202
    assert watch.terminal("one")["status"] == "complete"
    more = dict(files, **{"extra.bin": payload(50 * KiB, 9)})
    second = models.add("two", more, inline={"README.md": b"# two\n"})  # written by the service, never fetched
    dry = post_download(client, "two", second, dry_run=True)
    assert dry.status_code == 200
    assert dry.json["revision"] == "0" * 40 and dry.json["provider"] == "hf"
    in_store = {f["path"]: f["in_store"] for f in dry.json["files"]}
    assert in_store == {**{p: True for p in files}, "extra.bin": False, "README.md": False}
    assert dry.json["to_fetch"] == 50 * KiB and dry.json["total"] == sum(len(d) for d in more.values()) + 6
    assert client.get("/models/downloads").json["items"] == []  # nothing started
    assert post_download(client, "two", second).status_code == 202
    done = watch.terminal("two")
    assert done["status"] == "complete"
    listed = {f["path"]: (f["status"], f["downloaded"]) for f in client.get("/models/downloads/two").json["files"]}
    assert listed == {**{p: ("stored", len(d)) for p, d in files.items()}, "extra.bin": ("complete", 50 * KiB)}
    assert origin.requests_for("/two/" + "0" * 40 + "/config.json") == []
    assert len(origin.requests_for("/two/" + "0" * 40 + "/extra.bin")) == 1


def test_a_bucket_keyed_by_digest_and_size_serves_a_models_files(service: Service, origin: Origin,
                                                                 servers: Callable[[], Origin]) -> None:
    """Each file's listed SHA-256 and size fill a mirror template that needs both, as a single download's
    do: the bucket serves every file and the origin is asked for none."""
    bucket = servers()
    files = {"a.bin": payload(20 * KiB, 51), "b.bin": payload(30 * KiB, 52)}
    for data in files.values():
        bucket.add(f"/b/{hashlib.sha256(data).hexdigest()}/{len(data)}", data)
    _, client, watch, models = models_app(service, origin, ARW_DL_MIRRORS=bucket.base + "/b/{sha256}/{size}")
    ref = models.add("mirrored", files)
    assert post_download(client, "mirrored", ref).status_code == 202
    assert watch.terminal("mirrored")["status"] == "complete"
    assert [s for p in files for s in origin.requests_for(f"/mirrored/{'0' * 40}/{p}")] == []
    assert sorted(s.path for s in bucket.seen) == sorted(
        f"/b/{hashlib.sha256(d).hexdigest()}/{len(d)}" for d in files.values())


def test_every_http_session_of_a_model_is_closed_by_its_end(service: Service, origin: Origin) -> None:
    """The sessions a dry run, a model's resolution and each of its files open are closed by the answer or by
    the end of the download: none keeps its connections to the hub or the origin open."""
    app, client, watch, models = models_app(service, origin)
    manager = ArwModels.state(app).manager
    opened, still_open = [], set()
    new_session = manager.session

    def session() -> Any:
        s = new_session()
        opened.append(s)
        still_open.add(id(s))
        close = s.close
        s.close = lambda: (still_open.discard(id(s)), close())
        return s

    manager.session = session
    ref = models.add("closed", tiny(34))
    assert post_download(client, "closed", ref, dry_run=True).status_code == 200
    assert len(opened) == 1 and not still_open
    assert post_download(client, "closed", ref).status_code == 202
    assert watch.terminal("closed")["status"] == "complete"
    assert len(opened) == 1 + 1 + len(tiny(34)) and not still_open


def test_a_file_listed_with_no_size_is_taken_from_the_store(service: Service, origin: Origin) -> None:
    """A listing that gives a file's SHA-256 but not its size (as some registries do): the file is found in the
    store by its digest alone, at the blob's size, and not fetched."""
    _, client, watch, models = models_app(service, origin)
    data = payload(30 * KiB, 44)
    assert post_download(client, "first", models.add("first", {"a.bin": data})).status_code == 202
    assert watch.terminal("first")["status"] == "complete"
    ref = models.add("unsized", {"a.bin": data, "b.bin": payload(10 * KiB, 45)}, sizes={"a.bin": None})
    assert post_download(client, "unsized", ref).status_code == 202
    done = watch.terminal("unsized")
    assert done["status"] == "complete", done
    assert {f["path"]: (f["status"], f["downloaded"]) for f in done["files"]} == {
        "a.bin": ("stored", 30 * KiB), "b.bin": ("complete", 10 * KiB)}
    assert origin.requests_for(f"/unsized/{'0' * 40}/a.bin") == []


def test_force_fetches_again_and_a_repeat_is_answered_installed(service: Service, origin: Origin) -> None:
    _, client, watch, models = models_app(service, origin)
    ref = models.add("f", {"a.bin": payload(10 * KiB, 1), "b.bin": payload(10 * KiB, 2)})
    assert post_download(client, "f", ref).status_code == 202
    assert watch.terminal("f")["status"] == "complete"
    again = post_download(client, "f", ref)
    assert again.status_code == 200 and again.json["file"] == "f"
    assert post_download(client, "f", ref, force=True).status_code == 202
    assert watch.terminal("f")["status"] == "complete"
    assert len(origin.requests_for("/f/" + "0" * 40 + "/a.bin")) == 2
    [entry] = client.get("/models").json["items"]
    assert entry["file"] == "f" and len(entry["files"]) == 2


def test_a_model_is_recorded_under_its_sources_provider_unless_one_is_given(service: Service,
                                                                          origin: Origin) -> None:
    """Posted without a provider, a model of many files is recorded under its source's
    name (``hf`` for a hub reference), not ``local``; a provider given is kept."""
    _, client, watch, models = models_app(service, origin)
    for model_id, given, recorded in (("plain", None, "hf"), ("named", "acme-mirror", "acme-mirror")):
        ref = models.add(model_id, tiny(20 if given else 21))
        r = post_download(client, model_id, ref, **({"provider": given} if given else {}))
        assert r.status_code == 202 and r.json["provider"] == recorded, r.json
        assert watch.terminal(model_id)["status"] == "complete"
    assert {m["id"]: m["provider"] for m in client.get("/models").json["items"]} == {
        "plain": "hf", "named": "acme-mirror"}


def test_the_manager_fetches_a_reference_to_many_files_as_a_model(service: Service, origin: Origin) -> None:
    """A host that embeds the manager submits a reference with no selection: it names
    many files, so the whole model is fetched, as a folder."""
    app, _, watch, models = models_app(service, origin)
    ref = models.add("whole", tiny(22))
    status, answer = ArwModels.state(app).manager.submit("whole", ref, None, "local")
    assert status == 202 and answer["provider"] == "hf"
    assert watch.terminal("whole")["status"] == "complete"
    folder = os.path.join(ArwModels.state(app).dirs.models_dir, "whole")
    assert sorted(os.listdir(folder)) == ["config.json", "model-00001-of-00002.safetensors",
                                          "model-00002-of-00002.safetensors", "tokenizer"]


def test_selection_is_checked_and_refused_for_one_file(service: Service, origin: Origin) -> None:
    _, client, watch, models = models_app(service, origin)
    origin.add("/one.gguf", b"x" * 100)
    r = post_download(client, "one", origin.url("/one.gguf"), include=["*.gguf"])
    assert r.status_code == 400 and r.json["code"] == "invalid-selection"
    ref = models.add("sel", tiny(11))
    for bad in ({"include": "*.json"}, {"files": ["../x"]}, {"include": [3]}, {"files": ["a"], "exclude": ["b"]}):
        r = post_download(client, "sel", ref, **bad)
        assert r.status_code == 400 and r.json["code"] == "invalid-selection", bad
    r = post_download(client, "sel", ref, include=["*.json"])
    assert r.status_code == 202
    assert watch.terminal("sel")["status"] == "complete"
    [entry] = client.get("/models").json["items"]
    assert sorted(f["path"] for f in entry["files"]) == ["config.json", "tokenizer/tokenizer.json"]


def test_delete_of_a_folder_model_removes_it_and_its_blobs(service: Service, origin: Origin) -> None:
    app, client, watch, models = models_app(service, origin)
    ref = models.add("del", tiny(13))
    assert post_download(client, "del", ref).status_code == 202
    assert watch.terminal("del")["status"] == "complete"
    state = ArwModels.state(app).dirs
    assert len(os.listdir(state.blobs_dir)) == 4
    r = client.delete("/models/del")
    assert r.status_code == 200 and r.json["status"] == "deleted"
    assert not os.path.exists(os.path.join(state.models_dir, "del"))
    assert os.listdir(state.blobs_dir) == []
    assert client.get("/models").json["items"] == []


def test_a_name_an_entry_still_records_is_not_given_to_a_models_folder(service: Service, origin: Origin) -> None:
    """A file removed from ``models/`` by hand is still its entry's: a model installed under that id gets a
    folder of another name, so that the two entries never name one file."""
    app, client, watch, models = models_app(service, origin)
    single = origin.add("/m/w", payload(10 * KiB, 39))
    assert post_download(client, "one", origin.url("/m/w"), sha256=single.sha256).status_code == 202
    assert watch.terminal("one")["file"] == "w"
    os.remove(os.path.join(ArwModels.state(app).dirs.models_dir, "w"))
    assert post_download(client, "w", models.add("w", {"a.bin": payload(10 * KiB, 40)})).status_code == 202
    done = watch.terminal("w")
    assert done["status"] == "complete" and done["file"] != "w", done
    assert {e["id"]: e["file"] for e in client.get("/models").json["items"]} == {"one": "w", "w": done["file"]}


def test_a_delete_leaves_a_folder_another_entry_still_names(service: Service, origin: Origin) -> None:
    """Two entries that name one folder (a registry edited by hand, or restored from another copy): deleting
    one takes its entry and leaves the folder, which the other still names."""
    app, client, watch, models = models_app(service, origin)
    assert post_download(client, "first", models.add("first", {"a.bin": payload(10 * KiB, 43)})).status_code == 202
    assert watch.terminal("first")["status"] == "complete"
    registry = ArwModels.state(app).manager.registry
    registry.put(dict(registry.get("first"), id="alias"))
    assert client.delete("/models/first").status_code == 200
    folder = os.path.join(ArwModels.state(app).dirs.models_dir, "first")
    with open(os.path.join(folder, "a.bin"), "rb") as fh:
        assert fh.read() == payload(10 * KiB, 43)
    assert [e["id"] for e in client.get("/models").json["items"]] == ["alias"]


class FailingModels(LocalModels):
    """A resolver that fails: with ``error`` (a resolver's own refusal) or, with
    none, as a bug would."""

    def __init__(self, origin: Origin, error: TransferError | None) -> None:
        super().__init__(origin)
        self.error = error

    def resolve(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error or RuntimeError(f"a bug, with a secret url {self.origin.url('/s?token=x')}")


def test_a_bug_while_a_model_is_fetched_ends_it_with_an_internal_error(service: Service, origin: Origin) -> None:
    """Whatever goes wrong in a model's attempt, its job ends, with an error that names
    only the class of what failed (its text may quote a url and its credentials)."""
    app, client, watch, _ = models_app(service, origin)
    resolver = ArwModels.state(app).manager.references = FailingModels(origin, None)
    ref = resolver.add("buggy", tiny(15))
    assert post_download(client, "buggy", ref).status_code == 202
    failed = watch.terminal("buggy")
    assert (failed["status"], failed["code"]) == ("error", "internal-error"), failed
    assert "RuntimeError" in failed["error"] and "token" not in failed["error"]
    assert client.get("/models/downloads/buggy").json["status"] == "error"


class BuggyHeaders(LocalModels):
    """A resolver whose headers for one file fail as a bug would."""

    def __init__(self, origin: Origin, path: str) -> None:
        super().__init__(origin)
        self.path = path

    def authorizer(self, url: str, settings: Any, headers: Any) -> Any:
        authorize = super().authorizer(url, settings, headers)

        def buggy(file: RemoteFile, fresh: bool) -> Any:
            if file.path == self.path:
                raise RuntimeError("a bug in the headers of one file")
            return authorize(file, fresh)

        return buggy


def test_a_bug_while_one_file_is_fetched_ends_the_model_with_an_internal_error(service: Service,
                                                                              origin: Origin) -> None:
    """A bug in one file's fetch ends the whole model as a failure that says so, not as a cancel nor as a
    model stopped for no reason; the files already done stay staged for a resume."""
    app, client, watch, _ = models_app(service, origin, ARW_DL_FILES_AT_ONCE=1)
    resolver = ArwModels.state(app).manager.references = BuggyHeaders(origin, "b.bin")
    ref = resolver.add("bug", {"a.bin": payload(10 * KiB, 35), "b.bin": payload(10 * KiB, 36)})
    assert post_download(client, "bug", ref).status_code == 202
    failed = watch.terminal("bug")
    assert (failed["status"], failed["code"]) == ("error", "internal-error"), failed
    assert client.get("/models/downloads/bug").json["resumable"] is True


def cancel_at(manager: Any, point: str) -> None:
    """The job is canceled (not waited for) when its attempt reaches ``point``."""
    def checkpoint(at: str, job: Any) -> None:
        if at == point:
            manager.cancel(job.id, wait=0)

    manager.checkpoint = checkpoint


def test_a_cancel_that_lands_as_a_models_attempt_fails_ends_it_canceled(service: Service, origin: Origin) -> None:
    """The cancel comes as the attempt fails (here, its files cannot be listed): the
    job ends canceled, as asked, not as a failure."""
    app, client, watch, _ = models_app(service, origin)
    manager = ArwModels.state(app).manager
    resolver = manager.references = FailingModels(origin, TransferError("http-status", "the hub answered 500"))
    ref = resolver.add("fails", tiny(16))
    cancel_at(manager, "failed")
    assert post_download(client, "fails", ref).status_code == 202
    assert watch.terminal("fails")["status"] == "canceled"
    assert "error" not in watch.statuses("fails")


def test_a_cancel_between_a_models_verification_and_its_install_wins(service: Service, origin: Origin) -> None:
    """Every file is in and verified when the cancel lands, before the install: the
    model is not installed, and the job ends canceled."""
    app, client, watch, models = models_app(service, origin)
    manager = ArwModels.state(app).manager
    ref = models.add("late", tiny(17))
    cancel_at(manager, "verified")
    assert post_download(client, "late", ref).status_code == 202
    assert watch.terminal("late")["status"] == "canceled"
    assert client.get("/models").json["items"] == []
    assert not os.path.exists(os.path.join(ArwModels.state(app).dirs.models_dir, "late"))


def test_a_blob_gone_from_the_store_before_the_install_fails_the_model(service: Service, origin: Origin) -> None:
    """A file's blob removed from the store (by hand) between the verification of the model and its install: the
    model is not installed with a hole in it, and the failure says its bytes must be fetched again."""
    app, client, watch, models = models_app(service, origin)
    manager = ArwModels.state(app).manager
    data = payload(10 * KiB, 37)
    ref = models.add("gone", {"a.bin": data, "b.bin": payload(10 * KiB, 38)})

    def checkpoint(at: str, job: Any) -> None:
        if at == "verified":
            os.remove(os.path.join(ArwModels.state(app).dirs.blobs_dir, hashlib.sha256(data).hexdigest()))

    manager.checkpoint = checkpoint
    assert post_download(client, "gone", ref).status_code == 202
    failed = watch.terminal("gone")
    assert (failed["status"], failed["code"]) == ("error", "resume-invalid"), failed
    assert client.get("/models").json["items"] == []
    assert not os.path.exists(os.path.join(ArwModels.state(app).dirs.models_dir, "gone"))


def test_a_queued_model_can_be_canceled_and_never_reaches_the_origin(service: Service, origin: Origin) -> None:
    """Every slot is busy: the model waits in the queue, and a cancel ends it there,
    canceled, without a request for any of its files."""
    _, client, watch, models = models_app(service, origin, ARW_MODELS_MAX_CONC=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    hold = origin.add("/hold.gguf", payload(256 * KiB, seed=23), stall_after=KiB)
    post_download(client, "hold", origin.url("/hold.gguf"))
    assert hold.stalled.wait(5)
    ref = models.add("waits", tiny(24))
    assert post_download(client, "waits", ref).json["status"] == "queued"
    assert client.post("/models/download/cancel", json={"id": "waits"}).json == {"id": "waits", "status": "canceled"}
    assert watch.terminal("waits")["status"] == "canceled"
    assert not any(seen.path.startswith("/waits/") for seen in origin.seen)
    hold.release.set()
    assert watch.terminal("hold")["status"] == "complete"


def test_a_single_file_replaced_by_a_model_of_many_files_leaves_no_file_behind(service: Service,
                                                                              origin: Origin) -> None:
    """Forcing a folder model over an id installed as one file removes the old file and its blob, and a delete
    of an id that is not installed is refused and removes nothing."""
    app, client, watch, models = models_app(service, origin)
    single = origin.add("/m.gguf", payload(30 * KiB, 21))
    assert post_download(client, "m", origin.url("/m.gguf"), sha256=single.sha256).status_code == 202
    old = watch.terminal("m")["file"]
    state = ArwModels.state(app).dirs
    assert os.path.isfile(os.path.join(state.models_dir, old))
    ref = models.add("many", {"a.bin": payload(10 * KiB, 22)})
    assert post_download(client, "m", ref, force=True).status_code == 202
    done = watch.terminal("m")
    assert done["status"] == "complete" and done["file"] != old
    assert os.listdir(state.models_dir) == [done["file"]]
    assert os.listdir(state.blobs_dir) == [hashlib.sha256(payload(10 * KiB, 22)).hexdigest()]
    assert client.delete("/models/nothing-here").status_code == 404
    assert [e["id"] for e in client.get("/models").json["items"]] == ["m"]
