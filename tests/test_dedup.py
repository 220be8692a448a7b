"""No model fetched twice: a download whose sha256 an installed model already has
gets that model's file (a hard link, else a copy), with no request to any origin."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from arw_models import ArwModels
from arw_models.service import dedup
from arw_models.store import blobs

from .support.app import post_download
from .support.helpers import listing, models_dir, read, write_partial
from .support.origin import payload

MiB = 1024 * 1024
# Nothing listens there: a transfer from it fails at once.
UNREACHABLE = "http://127.0.0.1:9/never/m.bin"


def requests_seen(origin: Any) -> int:
    with origin.lock:
        return len(origin.seen)


def install(client: Any, watch: Any, origin: Any, model_id: str = "a", path: str = "/a/m.bin",
            size: int = MiB + 7) -> Any:
    res = origin.add(path, payload(size, seed=3))
    assert post_download(client, model_id, origin.url(path), sha256=res.sha256).status_code == 202
    done = watch.terminal(model_id)
    assert done["status"] == "complete" and "deduplicated" not in done
    return res


def entry(client: Any, model_id: str) -> dict[str, Any]:
    return next(m for m in client.get("/models").json["items"] if m["id"] == model_id)


def test_same_sha256_under_another_id_is_linked_without_a_request(client: Any, app: Any, origin: Any,
                                                                   watch: Any) -> None:
    res = install(client, watch, origin)
    before = requests_seen(origin)
    # One url the origin would answer 404, one where nothing listens: neither is asked.
    assert post_download(client, "b", origin.url("/b/missing.bin"), sha256=res.sha256.upper()).status_code == 202
    done = watch.terminal("b")
    assert done == {"id": "b", "status": "complete", "file": "missing.bin", "provider": "local",
                    "sha256": res.sha256, "bytes": len(res.data), "sha256_source": "request", "deduplicated": True,
                    "path": done["path"]}
    assert done["path"].endswith("/models/missing.bin")
    job = client.get("/models/downloads/b").json  # the job says all of it is there, as for a transfer
    assert (job["status"], job["downloaded"], job["total"], job["progress"]) == ("complete", len(res.data),
                                                                                  len(res.data), 100)
    assert post_download(client, "c", UNREACHABLE, sha256=res.sha256).status_code == 202
    done = watch.terminal("c")
    assert done["status"] == "complete" and done["deduplicated"] is True
    # The name is taken by a's file: c gets its own.
    assert done["file"] == "m-c.bin"
    assert requests_seen(origin) == before
    assert watch.statuses("b") == ["complete"]  # nothing started: no transfer
    assert ArwModels.state(app).observer.wait_for("c", "complete", timeout=10)
    metrics = {s.name: s.value for f in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
               for s in f.samples}
    assert metrics["arw_download_received_bytes_total"] == len(res.data)  # a's transfer alone
    assert metrics["arw_downloads_started_total"] == 1 and metrics["arw_downloads_completed_total"] == 3

    paths = [os.path.join(models_dir(app), name) for name in ("m.bin", "missing.bin", "m-c.bin")]
    assert len({(os.stat(p).st_dev, os.stat(p).st_ino) for p in paths}) == 1  # one file, three names
    assert all(read(p) == res.data for p in paths)
    assert listing(app) == ["m-c.bin", "m.bin", "missing.bin"]  # no .part, sidecar or temporary file
    b = entry(client, "b")
    assert (b["file"], b["sha256"], b["bytes"], b["url"]) == ("missing.bin", res.sha256, len(res.data),
                                                              origin.url("/b/missing.bin"))
    job = client.get("/models/downloads/b").json
    assert job["status"] == "complete" and job["downloaded"] == len(res.data) == job["total"]
    # On disk, and so after a restart.
    with open(os.path.join(app.config["ARW_STATE_DIR"], "models.json")) as fh:
        assert json.load(fh)["models"]["c"]["file"] == "m-c.bin"


@pytest.mark.parametrize("deleted, kept", [("a", "b"), ("b", "a")])
def test_delete_of_either_keeps_the_others_file(client: Any, app: Any, origin: Any, watch: Any,
                                               deleted: str, kept: str) -> None:
    res = install(client, watch, origin)
    post_download(client, "b", UNREACHABLE, sha256=res.sha256)
    assert watch.terminal("b")["deduplicated"] is True
    files = {"a": "m.bin", "b": "m-b.bin"}

    assert client.delete(f"/models/{deleted}").status_code == 200
    assert listing(app) == [files[kept]]
    assert read(os.path.join(models_dir(app), files[kept])) == res.data
    assert [m["id"] for m in client.get("/models").json["items"]] == [kept]
    assert entry(client, kept)["status"] == "available"
    # The one left is still what a POST of it asks for: no transfer.
    kept_url = origin.url("/a/m.bin") if kept == "a" else UNREACHABLE
    assert post_download(client, kept, kept_url, sha256=res.sha256).status_code == 200


def test_without_hard_links_the_file_is_copied(client: Any, app: Any, origin: Any, watch: Any,
                                              monkeypatch: Any) -> None:
    res = install(client, watch, origin, size=3 * MiB + 5)
    asked: list[tuple[str, str]] = []

    def refuse(src: str, dst: str, **kw: Any) -> None:
        asked.append((src, dst))
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(blobs, "link", refuse)
    before = requests_seen(origin)
    post_download(client, "b", UNREACHABLE, sha256=res.sha256)
    done = watch.terminal("b")
    assert done["status"] == "complete" and done["deduplicated"] is True and done["file"] == "m-b.bin"
    assert asked and asked[0][0] == res.sha256  # the link is made of the store's blob
    assert requests_seen(origin) == before
    a, b = (os.path.join(models_dir(app), n) for n in ("m.bin", "m-b.bin"))
    assert os.stat(a).st_ino != os.stat(b).st_ino  # a file of its own
    assert os.stat(b).st_mode & 0o777 == 0o644  # ARW_MODELS_MODE, as every installed model
    assert hashlib.sha256(read(b)).hexdigest() == res.sha256
    assert listing(app) == ["m-b.bin", "m.bin"]
    # Separate files: deleting one leaves the other whole.
    assert client.delete("/models/a").status_code == 200
    assert read(b) == res.data


def test_a_copy_is_fsynced_and_short_writes_go_on_where_they_stopped(client: Any, app: Any, origin: Any,
                                                                    watch: Any, monkeypatch: Any) -> None:
    """Without copy_file_range the bytes go through this process, and a write may
    take fewer bytes than it was given (a disk filling up): the rest is written
    after them, not over them. The copy is on the disk before it is installed."""
    res = install(client, watch, origin, size=blobs.COPY_CHUNK + 3 * MiB + 5)

    def refuse(src: str, dst: str, **kw: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def unsupported(*args: Any) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    real_pwrite, real_fsync = os.pwrite, os.fsync
    synced: list[tuple[int, int]] = []

    def short_pwrite(fd: int, data: Any, offset: int) -> int:
        return real_pwrite(fd, bytes(data[: 100_000]), offset)  # at most 100,000 bytes a call

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(blobs, "link", refuse)
    monkeypatch.setattr(blobs, "copy_file_range", unsupported)
    monkeypatch.setattr(os, "pwrite", short_pwrite)
    monkeypatch.setattr(os, "fsync", fsync)
    post_download(client, "b", UNREACHABLE, sha256=res.sha256)
    done = watch.terminal("b")
    assert done["status"] == "complete" and done["deduplicated"] is True, done
    copy = os.path.join(models_dir(app), "m-b.bin")
    assert read(copy) == res.data
    st = os.stat(copy)
    assert (st.st_dev, st.st_ino) in synced
    assert open_fds_of(copy) == []  # the copy's descriptor is closed once it is written


def test_a_copy_that_does_not_fit_is_not_made(client: Any, app: Any, origin: Any, watch: Any,
                                              monkeypatch: Any) -> None:
    res = install(client, watch, origin)

    def refuse(*args: Any, **kw: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(blobs, "link", refuse)
    ArwModels.state(app).manager.disk_free = lambda path: len(res.data) - 1
    post_download(client, "b", origin.url("/a/m.bin"), sha256=res.sha256)
    done = watch.terminal("b")
    # The transfer decides (its own check refuses the file too); no copy, whole or half, stays.
    assert done["status"] == "error" and done["code"] == "disk-insufficient"
    assert listing(app) == ["m.bin"]


def test_a_link_takes_no_space_and_keeps_no_descriptor(client: Any, app: Any, origin: Any, watch: Any,
                                                        monkeypatch: Any) -> None:
    """A hard link writes no byte: a disk with no room for a copy still shares the
    installed file, and the blob opened for the link is closed once it is made."""
    res = install(client, watch, origin)
    ArwModels.state(app).manager.disk_free = lambda path: len(res.data) - 1
    copied: list[int] = []

    def copy_file_range(src: int, dst: int, count: int, *offsets: int) -> int:
        copied.append(count)
        raise OSError(errno.ENOSYS, "Function not implemented")  # and the copy falls back to pread/pwrite

    monkeypatch.setattr(blobs, "copy_file_range", copy_file_range)
    post_download(client, "b", UNREACHABLE, sha256=res.sha256)
    done = watch.terminal("b")
    assert done["status"] == "complete" and done["deduplicated"] is True, done
    assert copied == []  # not a byte copied
    assert open_fds_of(os.path.join(models_dir(app), "m.bin")) == []


def test_a_partial_download_of_the_id_is_replaced(client: Any, app: Any, origin: Any, watch: Any) -> None:
    res = install(client, watch, origin)
    write_partial(app, "b", b"x" * 4096, {"id": "b", "url": UNREACHABLE, "sha256": res.sha256,
                                          "etag": '"old"', "total": len(res.data)})
    before = requests_seen(origin)
    post_download(client, "b", UNREACHABLE, sha256=res.sha256)
    done = watch.terminal("b")
    assert done["status"] == "complete" and done["deduplicated"] is True
    assert requests_seen(origin) == before
    assert listing(app) == ["m-b.bin", "m.bin"]  # neither the .part nor its sidecar is left
    assert read(os.path.join(models_dir(app), "m-b.bin")) == res.data


def test_same_id_another_url_same_sha256_moves_without_a_transfer(client: Any, app: Any, origin: Any,
                                                                 watch: Any) -> None:
    res = install(client, watch, origin)
    inode = os.stat(os.path.join(models_dir(app), "m.bin")).st_ino
    before = requests_seen(origin)
    # The same file name: the .part is a link of the very file it is installed over.
    moved = origin.url("/moved/m.bin")
    assert post_download(client, "a", moved, sha256=res.sha256).status_code == 202
    done = watch.terminal("a")
    assert done["status"] == "complete" and done["deduplicated"] is True and done["file"] == "m.bin"
    assert requests_seen(origin) == before
    assert listing(app) == ["m.bin"]  # no .part left behind
    assert os.stat(os.path.join(models_dir(app), "m.bin")).st_ino == inode
    assert read(os.path.join(models_dir(app), "m.bin")) == res.data
    a = entry(client, "a")
    assert (a["url"], a["file"], a["sha256"]) == (moved, "m.bin", res.sha256)
    # Now the new url is what the model is: asked again, nothing happens.
    assert post_download(client, "a", moved, sha256=res.sha256).status_code == 200

    # Under another file name: the model's file is renamed, its old name goes.
    assert post_download(client, "a", UNREACHABLE.replace("m.bin", "n.bin"), sha256=res.sha256).status_code == 202
    assert watch.terminal("a")["file"] == "n.bin"
    assert listing(app) == ["n.bin"]
    assert read(os.path.join(models_dir(app), "n.bin")) == res.data


def test_a_digest_nobody_has_is_fetched(client: Any, app: Any, origin: Any, watch: Any) -> None:
    install(client, watch, origin)
    other = origin.add("/b/other.bin", payload(MiB, seed=4))
    post_download(client, "b", origin.url("/b/other.bin"), sha256=other.sha256)
    done = watch.terminal("b")
    assert done["status"] == "complete" and "deduplicated" not in done
    assert origin.bytes_sent("/b/other.bin") == len(other.data)
    assert read(os.path.join(models_dir(app), "other.bin")) == other.data
    assert os.stat(os.path.join(models_dir(app), "other.bin")).st_ino != os.stat(
        os.path.join(models_dir(app), "m.bin")).st_ino


def test_without_a_sha256_the_file_is_fetched(client: Any, app: Any, origin: Any, watch: Any) -> None:
    res = install(client, watch, origin)
    origin.add("/b/m.bin", res.data)
    post_download(client, "b", origin.url("/b/m.bin"))
    done = watch.terminal("b")
    assert done["status"] == "complete" and "deduplicated" not in done
    assert done["sha256_source"] == "computed"
    assert origin.bytes_sent("/b/m.bin") == len(res.data)


def fetched_again_after_an_edit(client: Any, app: Any, origin: Any, watch: Any, res: Any) -> None:
    """Appends to the installed ``m.bin`` by hand, then asks for its digest again as
    ``b``: the edited file is not shared, the bytes come from the origin again."""
    with open(os.path.join(models_dir(app), "m.bin"), "ab") as fh:
        fh.write(b"edited")
    origin.add("/b/m.bin", res.data)
    post_download(client, "b", origin.url("/b/m.bin"), sha256=res.sha256)
    done = watch.terminal("b")
    assert done["status"] == "complete" and "deduplicated" not in done
    assert origin.bytes_sent("/b/m.bin") == len(res.data)
    assert read(os.path.join(models_dir(app), "m-b.bin")) == res.data


def test_an_installed_file_changed_by_hand_is_not_shared(client: Any, app: Any, origin: Any, watch: Any) -> None:
    res = install(client, watch, origin)
    fetched_again_after_an_edit(client, app, origin, watch, res)
    # The blob opened to compare its size is closed again: a service that shares
    # nothing must not keep a descriptor of it for every download that asked.
    assert open_fds_of(os.path.join(models_dir(app), "m.bin")) == []


def test_a_file_changed_by_hand_to_another_models_size_is_not_shared(client: Any, app: Any, origin: Any,
                                                                      watch: Any) -> None:
    """Only the size of the models with the digest asked for vouches for a blob: an
    edited file that happens to have another installed model's size is not shared."""
    res = install(client, watch, origin)
    other = install(client, watch, origin, model_id="o", path="/o/other.bin", size=MiB + 13)
    assert other.sha256 != res.sha256
    fetched_again_after_an_edit(client, app, origin, watch, res)  # now MiB + 13 bytes, the other model's size


def open_fds_of(path: str) -> list[str]:
    """This process's descriptors open on the file at ``path`` (by inode: a blob and
    the model file it is linked as are one file)."""
    want = os.stat(path)
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir itself used, gone already
            continue
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            found.append(fd)
    return found


@pytest.mark.parametrize("digest_from", ["request", "origin"])
def test_a_copy_that_failed_is_not_tried_again_on_every_retry(client: Any, app: Any, origin: Any, watch: Any,
                                                              monkeypatch: Any, digest_from: str) -> None:
    """The store is asked once per download: a copy that failed fails again, and
    every retry would pay for it (a copy of gigabytes) before its transfer."""
    res = install(client, watch, origin)
    copies: list[str] = []

    def refuse(*args: Any, **kw: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def broken(src: int, path: str, size: int, stop: Any = None) -> None:
        copies.append(path)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(blobs, "link", refuse)
    monkeypatch.setattr(blobs, "copy_fd", broken)
    if digest_from == "request":  # known before any request; the origin fails once
        origin.add("/b/m.bin", res.data, statuses=[(503, {})])
        post_download(client, "b", origin.url("/b/m.bin"), sha256=res.sha256)
    else:  # known from the origin's answer, whose body is cut off once
        published = {"Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(res.sha256)).decode()}:"}
        origin.add("/b/m.bin", res.data, headers=published, drop_after=MiB // 2)
        post_download(client, "b", origin.url("/b/m.bin"))
    done = watch.terminal("b")
    assert done["status"] == "complete" and "deduplicated" not in done, done
    assert len(copies) == 1
    assert len([p for p in watch.payloads("b") if p["status"] == "retrying"]) == 1
    assert read(os.path.join(models_dir(app), "m-b.bin")) == res.data


def test_a_copy_without_copy_file_range_reads_and_writes(client: Any, app: Any, origin: Any, watch: Any,
                                                         monkeypatch: Any) -> None:
    """Both fallbacks at once: no hard link, and no copy in the kernel (ENOSYS, as
    on file systems and kernels without it): the bytes go through this process."""
    res = install(client, watch, origin, size=blobs.COPY_CHUNK + 3 * MiB + 5)  # more than one chunk

    def refuse(src: str, dst: str, **kw: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def unsupported(*args: Any) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(blobs, "link", refuse)
    monkeypatch.setattr(blobs, "copy_file_range", unsupported)
    before = requests_seen(origin)
    post_download(client, "b", UNREACHABLE, sha256=res.sha256)
    done = watch.terminal("b")
    assert done["status"] == "complete" and done["deduplicated"] is True, done
    assert requests_seen(origin) == before
    assert read(os.path.join(models_dir(app), "m-b.bin")) == res.data


def test_an_installed_name_swapped_before_the_link_is_copied_from_the_file_opened(
        client: Any, app: Any, origin: Any, watch: Any, monkeypatch: Any) -> None:
    """The name is linked after the file was opened (and its size checked): a file
    put under that name in between is not what the link must give. The link made of
    it is refused, and the bytes come from the file that was opened."""
    res = install(client, watch, origin, size=2 * MiB)
    impostor = os.path.join(models_dir(app), "impostor.bin")
    with open(impostor, "wb") as fh:
        fh.write(b"x" * len(res.data))

    def link_another(src: str, dst: str, **kw: Any) -> None:
        os.link(impostor, dst, dst_dir_fd=kw["dst_dir_fd"])

    monkeypatch.setattr(blobs, "link", link_another)
    post_download(client, "b", UNREACHABLE, sha256=res.sha256)
    done = watch.terminal("b")
    assert done["status"] == "complete" and done["deduplicated"] is True, done
    copied = os.path.join(models_dir(app), "m-b.bin")
    assert read(copied) == res.data
    assert os.stat(copied).st_ino not in (os.stat(impostor).st_ino, os.stat(os.path.join(models_dir(app), "m.bin")).st_ino)
    assert os.stat(impostor).st_nlink == 1  # the refused link was removed


def test_a_temporary_name_left_under_our_pid_does_not_stop_the_link(client: Any, app: Any, origin: Any,
                                                                    watch: Any, monkeypatch: Any) -> None:
    """A process that died with the pid (and thread id) this one has now may have
    left a file at the temporary name of the link: it is replaced, and the model
    is linked, not copied."""
    res = install(client, watch, origin)
    stale = os.path.join(models_dir(app), ".m-b.part.stale.tmp")
    with open(stale, "wb") as fh:
        fh.write(b"left by a crash")
    monkeypatch.setattr(dedup, "temp_path", lambda path: stale)
    post_download(client, "b", UNREACHABLE, sha256=res.sha256)
    done = watch.terminal("b")
    assert done["status"] == "complete" and done["deduplicated"] is True, done
    paths = [os.path.join(models_dir(app), name) for name in ("m.bin", done["file"])]
    assert os.stat(paths[0]).st_ino == os.stat(paths[1]).st_ino  # one file: linked
    assert read(paths[1]) == res.data
    assert not os.path.exists(stale)


def test_a_link_that_fails_to_be_put_in_place_leaves_nothing_behind(client: Any, app: Any, origin: Any,
                                                                         watch: Any, monkeypatch: Any) -> None:
    """The blob is opened to be linked; a rename of the link that fails (an I/O
    error) ends the download with an error, and leaves neither the blob's
    descriptor open nor the link at its temporary name."""
    res = install(client, watch, origin)

    def failing_rename(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(dedup, "rename_over", failing_rename)
    post_download(client, "b", UNREACHABLE, sha256=res.sha256)
    done = watch.terminal("b")
    assert done["status"] == "error" and "(OSError)" in done["error"], done  # the rename's, not a later one
    assert listing(app) == ["m.bin"]  # nor the temporary link, a name that would keep the blob's bytes
    assert open_fds_of(os.path.join(models_dir(app), "m.bin")) == []


def test_a_temporary_link_left_by_a_crash_is_removed_at_start(make_app: Any, origin: Any) -> None:
    """A process that died between linking an installed file and renaming the link
    leaves a temporary name, which would keep the model's bytes on the disk after
    the model is deleted. The next start removes it (and any other temporary file of
    a write that never finished), and nothing else."""
    app = make_app()
    client = app.test_client()
    res = origin.add("/a/m.bin", payload(MiB, seed=9))
    post_download(client, "a", origin.url("/a/m.bin"), sha256=res.sha256)
    assert ArwModels.state(app).manager.wait("a", 10)
    models = models_dir(app)
    os.link(os.path.join(models, "m.bin"), os.path.join(models, ".b.part.4242.139.tmp"))
    with open(os.path.join(app.config["ARW_STATE_DIR"], ".models.json.4242.139.tmp"), "w") as fh:
        fh.write("{")
    keep = os.path.join(models, ".notes.tmp")  # not a name the service writes
    with open(keep, "w") as fh:
        fh.write("mine")
    ArwModels.state(app).shutdown()

    again = make_app(ARW_STATE_DIR=app.config["ARW_STATE_DIR"])
    assert again.test_client().get("/models").json["items"][0]["id"] == "a"  # the service starts
    assert sorted(os.listdir(models_dir(again))) == [".notes.tmp", "m.bin"]
    assert os.stat(os.path.join(models, "m.bin")).st_nlink == 2  # its name and its blob's
    assert not os.path.exists(os.path.join(app.config["ARW_STATE_DIR"], ".models.json.4242.139.tmp"))


@pytest.mark.parametrize("store", ["blob-gone", "unreadable"])
def test_a_blob_the_store_cannot_give_is_fetched_instead(client: Any, app: Any, origin: Any, watch: Any,
                                                         monkeypatch: Any, store: str) -> None:
    """An installed model's digest whose blob was removed from the store by hand,
    or cannot be read (an I/O error), is no reason to fail a download: it is fetched
    from its origin like any other."""
    res = install(client, watch, origin)
    if store == "blob-gone":
        os.remove(os.path.join(ArwModels.state(app).manager.state.blobs_dir, res.sha256))
    else:
        def unreadable(self: Any, digest: str) -> int:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(blobs.Blobs, "open", unreadable)
    origin.add("/b/m.bin", res.data)
    post_download(client, "b", origin.url("/b/m.bin"), sha256=res.sha256)
    done = watch.terminal("b")
    assert done["status"] == "complete" and "deduplicated" not in done, done
    assert origin.bytes_sent("/b/m.bin") == len(res.data)
    assert read(os.path.join(models_dir(app), "m-b.bin")) == res.data


def test_a_blob_no_installed_model_has_is_not_shared_nor_warned_about(client: Any, app: Any, origin: Any,
                                                                       watch: Any, caplog: Any) -> None:
    """Only an installed model's entry vouches for a blob: bytes the store holds for
    no model (left there by hand, say) are fetched again, quietly, with no warning
    of a changed blob in the operator's log."""
    res = origin.add("/b/m.bin", payload(MiB, seed=5))
    store = ArwModels.state(app).manager.state.blobs_dir
    os.makedirs(store, exist_ok=True)
    with open(os.path.join(store, res.sha256), "wb") as fh:
        fh.write(res.data)
    post_download(client, "b", origin.url("/b/m.bin"), sha256=res.sha256)
    done = watch.terminal("b")
    assert done["status"] == "complete" and "deduplicated" not in done, done
    assert origin.bytes_sent("/b/m.bin") == len(res.data)
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "blob" in r.getMessage()]
