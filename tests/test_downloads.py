"""Downloads against a real local origin: the paths a user walks every day."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest

from arw_models import ArwModels
from arw_models.engine import download

from .support.app import post_download
from .support.helpers import listing, models_dir, read, write_partial
from .support.origin import payload

MiB = 1024 * 1024








def test_download_verifies_and_installs(client: Any, app: Any, origin: Any, watch: Any) -> None:
    res = origin.add("/m/qwen.gguf", payload(3 * MiB + 17))
    r = post_download(client, "qwen", origin.url("/m/qwen.gguf"), sha256=res.sha256.upper())
    assert r.status_code == 202
    assert r.headers["Location"] == "/models/downloads/qwen"
    assert r.json["status"] in ("started", "queued")
    done = watch.terminal("qwen")
    assert done == {"id": "qwen", "status": "complete", "file": "qwen.gguf", "provider": "local",
                    "sha256": res.sha256, "bytes": len(res.data), "sha256_source": "request",
                    "path": os.path.join(models_dir(app), "qwen.gguf")}
    with open(os.path.join(models_dir(app), "qwen.gguf"), "rb") as fh:
        assert fh.read() == res.data
    assert listing(app) == ["qwen.gguf"]  # no .part, no sidecar left
    job = client.get("/models/downloads/qwen").json
    assert job["status"] == "complete" and job["finished_at"] >= job["created_at"]
    items = client.get("/models").json["items"]
    assert [(m["id"], m["status"], m["file"], m["bytes"], m["sha256"]) for m in items] == [
        ("qwen", "available", "qwen.gguf", len(res.data), res.sha256)
    ]
    assert items[0]["path"] == os.path.join(models_dir(app), "qwen.gguf")
    # Where the store keeps its bytes: the model's file is a link of that blob.
    assert os.path.samefile(items[0]["blob"], items[0]["path"])
    statuses = watch.statuses("qwen")
    assert statuses[0] == "started" and statuses[-1] == "complete"
    assert statuses.count("complete") == 1
    started = next(p for p in watch.payloads("qwen") if p["status"] == "started")
    assert started["total"] == len(res.data)
    job = client.get("/models/downloads/qwen").json
    assert job["status"] == "complete" and job["downloaded"] == len(res.data) and job["progress"] == 100
    # The registry is on disk and survives a restart.
    with open(os.path.join(app.config["ARW_STATE_DIR"], "models.json")) as fh:
        assert json.load(fh)["models"]["qwen"]["sha256"] == res.sha256


def test_a_state_directory_moved_elsewhere_lists_its_models_where_they_are_now(make_app: Any, origin: Any,
                                                                             tmp_path: Any) -> None:
    """The registry records where each file was installed; moved with its state
    directory (to a larger disk, say), a model is listed at its path in the new
    place, not at the old one."""
    app = make_app()
    res = origin.add("/moved.bin", payload(MiB, seed=62))
    post_download(app.test_client(), "moved", origin.url("/moved.bin"), sha256=res.sha256)
    assert ArwModels.state(app).manager.wait("moved", 10)
    ArwModels.state(app).shutdown()
    elsewhere = str(tmp_path / "elsewhere")
    os.rename(app.config["ARW_STATE_DIR"], elsewhere)
    again = make_app(ARW_STATE_DIR=elsewhere)
    [item] = again.test_client().get("/models").json["items"]
    assert (item["status"], item["path"]) == ("available", os.path.join(models_dir(again), "moved.bin"))
    assert read(item["path"]) == res.data


def test_progress_events_carry_percent_and_grow(make_app: Any, origin: Any) -> None:
    from .support.app import Watch

    app = make_app(ARW_DL_PROGRESS_INTERVAL_MS=0)
    watch = Watch(app)
    res = origin.add("/p.bin", payload(2 * MiB), throttle=16 * MiB)
    post_download(app.test_client(), "p", origin.url("/p.bin"))
    watch.terminal("p")
    progress = [p for p in watch.payloads("p") if p["status"] == "downloading"]
    assert len(progress) >= 2
    downloaded = [p["downloaded"] for p in progress]
    assert downloaded == sorted(downloaded) and downloaded[-1] <= len(res.data)
    assert all(p["total"] == len(res.data) and p["progress"] == p["downloaded"] * 100 // len(res.data)
               for p in progress)
    watch.close()


def test_unknown_total_leaves_out_total_and_progress(client: Any, origin: Any, watch: Any, app: Any) -> None:
    res = origin.add("/c.bin", payload(MiB + 3), chunked=True)
    post_download(client, "c", origin.url("/c.bin"), sha256=res.sha256)
    assert watch.terminal("c")["status"] == "complete"
    for p in watch.payloads("c"):
        if p["status"] in ("started", "downloading"):
            assert "total" not in p and "progress" not in p
    assert read(os.path.join(models_dir(app), "c.bin")) == res.data


def test_checksum_mismatch_leaves_nothing(client: Any, app: Any, origin: Any, watch: Any) -> None:
    res = origin.add("/bad.gguf", payload(MiB))
    wrong = hashlib.sha256(b"something else").hexdigest()
    post_download(client, "bad", origin.url("/bad.gguf"), sha256=wrong)
    err = watch.terminal("bad")
    assert err["status"] == "error" and err["code"] == "checksum-mismatch"
    assert err["expected"] == wrong and err["actual"] == res.sha256
    assert listing(app) == []
    assert client.get("/models").json["items"] == []
    assert client.get("/models/downloads/bad").json["code"] == "checksum-mismatch"


def test_content_disposition_names_the_file_safely(client: Any, app: Any, origin: Any, watch: Any) -> None:
    origin.add("/dl", payload(1000), content_disposition='attachment; filename="../../evil/../Llama 3.gguf"')
    post_download(client, "llama", origin.url("/dl?x=1"))
    assert watch.terminal("llama")["file"] == "Llama 3.gguf"
    assert listing(app) == ["Llama 3.gguf"]


def test_url_without_a_name_falls_back_to_the_id(client: Any, app: Any, origin: Any, watch: Any) -> None:
    origin.add("/", payload(10))
    post_download(client, "root-model", origin.url("/"))
    assert watch.terminal("root-model")["file"] == "root-model"


def test_never_overwrites_another_models_file(client: Any, app: Any, origin: Any, watch: Any) -> None:
    a = origin.add("/a/model.gguf", payload(1000, seed=1))
    b = origin.add("/b/model.gguf", payload(1000, seed=2))
    post_download(client, "a", origin.url("/a/model.gguf"))
    assert watch.terminal("a")["file"] == "model.gguf"
    post_download(client, "b", origin.url("/b/model.gguf"))
    assert watch.terminal("b")["file"] == "model-b.gguf"
    d = models_dir(app)
    assert read(os.path.join(d, "model.gguf")) == a.data
    assert read(os.path.join(d, "model-b.gguf")) == b.data


def test_reposting_an_installed_model_transfers_nothing(client: Any, origin: Any, watch: Any) -> None:
    res = origin.add("/m.gguf", payload(1000))
    post_download(client, "m", origin.url("/m.gguf"), sha256=res.sha256)
    watch.terminal("m")
    before = len(origin.requests_for("/m.gguf"))
    again = post_download(client, "m", origin.url("/m.gguf"), sha256=res.sha256)
    assert again.status_code == 200
    assert again.json["id"] == "m" and again.json["status"] == "available" and again.json["sha256"] == res.sha256
    assert post_download(client, "m", origin.url("/m.gguf")).status_code == 200
    assert len(origin.requests_for("/m.gguf")) == before


def test_new_url_replaces_the_model_only_when_complete(client: Any, app: Any, origin: Any, watch: Any) -> None:
    old = origin.add("/v1/m.gguf", payload(1000, seed=1))
    new = origin.add("/v2/m-new.gguf", payload(2000, seed=2))
    post_download(client, "m", origin.url("/v1/m.gguf"))
    watch.terminal("m")
    bad = post_download(client, "m", origin.url("/v2/m-new.gguf"), sha256="0" * 64)
    assert bad.status_code == 202
    assert watch.terminal("m")["code"] == "checksum-mismatch"
    # The failed replacement touched neither the entry nor the file.
    entry = client.get("/models").json["items"][0]
    assert entry["sha256"] == old.sha256 and entry["file"] == "m.gguf"
    post_download(client, "m", origin.url("/v2/m-new.gguf"), sha256=new.sha256)
    assert watch.terminal("m")["status"] == "complete"
    entry = client.get("/models").json["items"][0]
    assert entry["sha256"] == new.sha256 and entry["file"] == "m-new.gguf"
    assert listing(app) == ["m-new.gguf"]  # the old file went with the old entry


def test_same_post_while_active_is_idempotent_and_another_url_conflicts(
    client: Any, origin: Any, watch: Any
) -> None:
    origin.add("/slow.gguf", payload(MiB), throttle=256 * 1024)
    first = post_download(client, "s", origin.url("/slow.gguf"))
    assert first.status_code == 202
    watch.status("s", "downloading")
    again = post_download(client, "s", origin.url("/slow.gguf"))
    # The running job, with the status a start reports (its live one is at Location).
    assert again.status_code == 202 and again.json["id"] == "s" and again.json["status"] == "started"
    assert again.headers["Location"].endswith("/models/downloads/s")
    other = post_download(client, "s", origin.url("/other.gguf"))
    assert other.status_code == 409 and other.json["code"] == "already-downloading"
    sha = post_download(client, "s", origin.url("/slow.gguf"), sha256="a" * 64)
    assert sha.status_code == 409
    assert len(origin.requests_for("/slow.gguf")) == 1
    assert client.delete("/models/s").json["code"] == "download-in-progress"
    assert client.post("/models/download/cancel", json={"id": "s"}).json == {"id": "s", "status": "canceled"}


def test_cancel_a_slow_transfer(client: Any, app: Any, origin: Any, watch: Any) -> None:
    origin.add("/big.gguf", payload(8 * MiB), throttle=2 * MiB)
    post_download(client, "big", origin.url("/big.gguf"))
    watch.status("big", "downloading")
    r = client.post("/models/download/cancel", json={"id": "big"})
    assert r.status_code == 200 and r.json == {"id": "big", "status": "canceled"}
    # The cancel answered after the worker stopped: nothing is left on disk.
    assert listing(app) == []
    assert watch.terminal("big")["status"] == "canceled"
    item = client.get("/models/downloads/big").json  # its bytes are gone, and it says so
    assert (item["status"], item["downloaded"], item["progress"]) == ("canceled", 0, 0)
    assert client.get("/models/downloads").json["items"] == []
    assert client.post("/models/download/cancel", json={"id": "big"}).status_code == 404


def test_cancel_unknown_is_404(client: Any) -> None:
    r = client.post("/models/download/cancel", json={"id": "ghost"})
    assert r.status_code == 404 and r.json["code"] == "no-active-download"
    assert r.mimetype == "application/problem+json"




def test_resume_of_a_part_left_by_an_earlier_run(client: Any, app: Any, origin: Any, watch: Any) -> None:
    res = origin.add("/r.gguf", payload(2 * MiB + 5))
    have = 700_001
    write_partial(app, "r", res.data[:have], {"url": origin.url("/r.gguf"), "etag": res.etag, "total": len(res.data)})
    r = post_download(client, "r", origin.url("/r.gguf"), sha256=res.sha256)
    assert r.json["status"] == "resumed"
    done = watch.terminal("r")
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    seen = origin.requests_for("/r.gguf")
    assert len(seen) == 1
    assert seen[0].range == f"bytes={have}-" and seen[0].headers["if-range"] == res.etag
    assert seen[0].status == 206
    resumed = next(p for p in watch.payloads("r") if p["status"] == "resumed")
    assert resumed["offset"] == have and resumed["total"] == len(res.data)
    assert read(os.path.join(models_dir(app), "r.gguf")) == res.data


def test_a_stream_is_hashed_as_it_arrives_and_never_read_back(client: Any, app: Any, origin: Any, watch: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A file fetched in one stream is hashed as its bytes arrive: its resume reads
    back the bytes already on disk, once, and its verification reads nothing."""
    opened: list[str] = []
    real_read_part = download.read_part

    def read_part(path: str) -> Any:
        opened.append(os.path.basename(path))
        return real_read_part(path)

    monkeypatch.setattr(download, "read_part", read_part)
    res = origin.add("/h.gguf", payload(2 * MiB + 5, seed=12))
    write_partial(app, "h", res.data[:MiB], {"url": origin.url("/h.gguf"), "etag": res.etag, "total": len(res.data)})
    post_download(client, "h", origin.url("/h.gguf"), sha256=res.sha256)
    done = watch.terminal("h")
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    assert opened == ["h.part"]


def test_origin_that_ignores_range_still_gives_a_correct_file(client: Any, app: Any, origin: Any, watch: Any) -> None:
    res = origin.add("/nr.gguf", payload(MiB + 1), ignore_range=True)
    write_partial(app, "nr", res.data[:1000], {"url": origin.url("/nr.gguf"), "etag": res.etag})
    post_download(client, "nr", origin.url("/nr.gguf"), sha256=res.sha256)
    assert watch.terminal("nr")["status"] == "complete"
    assert origin.requests_for("/nr.gguf")[0].range == "bytes=1000-"
    assert origin.requests_for("/nr.gguf")[0].status == 200
    assert read(os.path.join(models_dir(app), "nr.gguf")) == res.data


def test_cancel_removes_a_part_left_by_an_earlier_run(client: Any, app: Any, watch: Any) -> None:
    write_partial(app, "old", b"x" * 10, {"url": "http://127.0.0.1:9/old.gguf"})
    listed = client.get("/models/downloads").json["items"]
    assert [(i["id"], i["status"], i["downloaded"]) for i in listed] == [("old", "resumable", 10)]
    r = client.post("/models/download/cancel", json={"id": "old"})
    assert r.status_code == 200 and r.json["status"] == "canceled"
    assert listing(app) == []
    assert watch.terminal("old")["status"] == "canceled"


def test_delete_removes_entry_and_file(client: Any, app: Any, origin: Any, watch: Any) -> None:
    origin.add("/d.gguf", payload(100))
    post_download(client, "d", origin.url("/d.gguf"))
    watch.terminal("d")
    r = client.delete("/models/d")
    assert r.status_code == 200 and r.json == {"id": "d", "status": "deleted"}
    assert listing(app) == [] and client.get("/models").json["items"] == []
    assert client.delete("/models/d").status_code == 404
    watch.until(lambda e: e.payload.get("op") == "remove")
    assert watch.payloads(kind="Models.Changed") == [{"op": "add", "id": "d"}, {"op": "remove", "id": "d"}]


def test_http_error_is_reported_with_its_status(client: Any, app: Any, origin: Any, watch: Any) -> None:
    post_download(client, "missing", origin.url("/nope.gguf"))
    err = watch.terminal("missing")
    assert err["code"] == "http-status" and err["http_status"] == 404
    assert client.get("/models").json["items"] == []
    assert listing(app) == []


@pytest.mark.parametrize("damage", ["removed", "cut short"])
def test_a_part_damaged_before_its_bytes_are_hashed_is_fetched_again(service: Any, origin: Any, damage: str) -> None:
    """Removed, or truncated, by hand between the origin's answer and the hashing of
    the bytes kept: nothing is lost but the bytes gone. A hash that runs out of bytes
    says so (it must not wait for bytes that will never come), and the next attempt
    continues from what is left."""
    data = payload(256 * 1024, seed=61)
    res = origin.add("/v.gguf", data)
    app, client, watch = service()
    write_partial(app, "v", data[:100_000], {"url": origin.url("/v.gguf"), "etag": res.etag, "total": len(data)})
    manager = ArwModels.state(app).manager
    done_once: list[str] = []

    def checkpoint(point: str, job: Any) -> None:
        if point == "answered" and not done_once:  # in the job's thread, the first answer only
            path = os.path.join(models_dir(app), "v.part")
            if damage == "removed":
                os.unlink(path)
            else:
                os.truncate(path, 40_000)
            done_once.append(point)

    manager.checkpoint = checkpoint
    post_download(client, "v", origin.url("/v.gguf"), sha256=res.sha256)
    done = watch.terminal("v")
    assert done["status"] == "complete", done
    assert read(os.path.join(models_dir(app), "v.gguf")) == data
    retries = [p for p in watch.payloads("v") if p["status"] == "retrying"]
    assert [p["code"] for p in retries] == ["resume-invalid"]
    if damage == "cut short":
        assert "shorter" in retries[0]["error"]
        assert [s.range for s in origin.requests_for("/v.gguf")] == ["bytes=100000-", "bytes=40000-"]


def test_a_part_that_vanishes_after_its_last_byte_ends_the_job_as_resume_invalid(service: Any, origin: Any) -> None:
    """Removed by hand once every byte is in, before the verification: the job ends
    with an error that says so (the bytes are gone), not as a failure of the service,
    and leaves nothing behind."""
    data = payload(64 * 1024, seed=62)
    res = origin.add("/w.gguf", data)
    app, client, watch = service()
    manager = ArwModels.state(app).manager

    def checkpoint(point: str, job: Any) -> None:
        if point == "transferred":
            os.unlink(os.path.join(models_dir(app), "w.part"))

    manager.checkpoint = checkpoint
    post_download(client, "w", origin.url("/w.gguf"), sha256=res.sha256)
    done = watch.terminal("w")
    assert done["status"] == "error" and done["code"] == "resume-invalid", done
    assert "disappeared" in done["error"]
    assert listing(app) == []
