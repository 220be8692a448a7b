"""Nothing in the state directory is followed through a symbolic link, and its files
are private.

Each case plants a link where a file of the service belongs, pointing at a file
outside the state directory, and checks that the outside file keeps its bytes and
its mtime while the download or the registry still does the right thing.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from arw_models import ArwModels, StateDirError, StateLockError
from arw_models.store.files import temp_path

from .support.app import Service, Watch, post_download
from .support.helpers import listing, models_dir, part, read, sidecar, write_partial
from .support.origin import Origin, payload

MiB = 1024 * 1024
PAST = 1_500_000_000  # an mtime no write of today can leave behind


class Outside:
    """A file outside the state directory, and a way to prove it was not touched."""

    def __init__(self, path: Path, data: bytes | None = b"not yours to write\n") -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.data = data
        if data is not None:
            path.write_bytes(data)
            os.utime(path, (PAST, PAST))

    def untouched(self) -> bool:
        if self.data is None:
            return not os.path.lexists(self.path)
        st = os.stat(self.path)
        return self.path.read_bytes() == self.data and st.st_mtime == PAST


@pytest.fixture
def outside(tmp_path: Path) -> Callable[..., Outside]:
    return lambda name="victim.bin", data=b"not yours to write\n": Outside(tmp_path / "outside" / name, data)


def state_dir(app: Any) -> str:
    return str(app.config["ARW_STATE_DIR"])


def is_regular(path: str) -> bool:
    return stat.S_ISREG(os.lstat(path).st_mode)


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def warned(caplog: pytest.LogCaptureFixture, path: str) -> bool:
    return any(r.levelno == logging.WARNING and path in r.getMessage() for r in caplog.records)


# -- partial files and sidecars -----------------------------------------------------------


def test_a_part_link_is_removed_and_the_download_starts_from_zero(
    service: Service, origin: Origin, outside: Callable[..., Outside], caplog: pytest.LogCaptureFixture
) -> None:
    app, client, watch = service()
    res = origin.add("/p.gguf", payload(MiB, seed=1))
    url = origin.url("/p.gguf")
    # Everything a resume needs, so that following the link would append to the victim.
    victim = outside(data=res.data[:100_000])
    write_partial(app, "p", b"", {"url": url, "etag": res.etag, "total": len(res.data)})
    os.unlink(part(app, "p"))
    os.symlink(victim.path, part(app, "p"))

    started = post_download(client, "p", url, sha256=res.sha256)
    assert started.status_code == 202 and started.json["status"] == "started"
    assert watch.terminal("p")["status"] == "complete"
    assert victim.untouched()
    assert origin.requests_for("/p.gguf")[0].range is None
    final = os.path.join(models_dir(app), "p.gguf")
    assert is_regular(final) and read(final) == res.data
    assert listing(app) == ["p.gguf"]
    assert warned(caplog, part(app, "p"))


def test_a_dangling_part_link_creates_nothing_outside(
    service: Service, origin: Origin, outside: Callable[..., Outside]
) -> None:
    app, client, watch = service()
    res = origin.add("/d.gguf", payload(300_000, seed=2))
    victim = outside("created-by-the-service.bin", data=None)
    os.makedirs(models_dir(app), exist_ok=True)
    os.symlink(victim.path, part(app, "d"))

    post_download(client, "d", origin.url("/d.gguf"))
    assert watch.terminal("d")["status"] == "complete"
    assert victim.untouched()
    final = os.path.join(models_dir(app), "d.gguf")
    assert is_regular(final) and read(final) == res.data


def test_a_sidecar_link_is_neither_trusted_nor_written(
    service: Service, origin: Origin, outside: Callable[..., Outside], caplog: pytest.LogCaptureFixture
) -> None:
    """A sidecar read through a link would glue foreign bytes in front of the rest of
    the file: the .part would be resumed on the word of a file the service never wrote."""
    app, client, watch = service()
    res = origin.add("/s.gguf", payload(MiB, seed=3))
    url = origin.url("/s.gguf")
    claim = json.dumps({"url": url, "etag": res.etag, "total": len(res.data)}).encode()
    victim = outside("sidecar.json", data=claim)
    write_partial(app, "s", b"\0" * 200_000, None)
    os.symlink(victim.path, sidecar(app, "s"))

    post_download(client, "s", url)  # no sha256: the validator alone decides on a resume
    assert watch.terminal("s")["status"] == "complete"
    assert victim.untouched()
    assert origin.requests_for("/s.gguf")[0].range is None
    assert read(os.path.join(models_dir(app), "s.gguf")) == res.data
    assert listing(app) == ["s.gguf"]
    assert warned(caplog, sidecar(app, "s"))


# -- the registry ------------------------------------------------------------------------


def test_a_link_at_the_registry_temp_name_is_not_written_through(
    service: Service, origin: Origin, outside: Callable[..., Outside], caplog: pytest.LogCaptureFixture
) -> None:
    app, client, watch = service()
    origin.add("/a.gguf", payload(1000, seed=4))
    post_download(client, "a", origin.url("/a.gguf"))
    assert watch.terminal("a")["status"] == "complete"
    registry = os.path.join(state_dir(app), "models.json")
    # The test client runs the DELETE in this thread: its temp name is this one.
    tmp = temp_path(registry)
    victim = outside()
    os.symlink(victim.path, tmp)

    assert client.delete("/models/a").status_code == 200
    assert victim.untouched()
    assert not os.path.lexists(tmp)
    assert is_regular(registry)
    with open(registry) as fh:
        assert json.load(fh)["models"] == {}
    assert warned(caplog, tmp)


def test_a_registry_link_is_not_read_and_is_replaced_by_a_file(
    make_app: Callable[..., Any], origin: Origin, outside: Callable[..., Outside], caplog: pytest.LogCaptureFixture
) -> None:
    ghost = {"version": 1, "models": {"ghost": {"id": "ghost", "file": "victim.bin", "url": "http://x/"}}}
    app = make_app()
    victim = outside(data=json.dumps(ghost).encode())
    registry = os.path.join(state_dir(app), "models.json")
    os.makedirs(state_dir(app), exist_ok=True)
    # Planted before the start: the registry is read then (the store's migration).
    os.symlink(victim.path, registry)
    client = app.test_client()

    assert client.get("/models").json["items"] == []
    watch = Watch(app)
    res = origin.add("/r.gguf", payload(1000, seed=5))
    post_download(client, "r", origin.url("/r.gguf"))
    assert watch.terminal("r")["status"] == "complete"
    watch.close()
    assert victim.untouched()
    assert is_regular(registry)
    assert [m["id"] for m in client.get("/models").json["items"]] == ["r"]
    assert client.get("/models").json["items"][0]["sha256"] == res.sha256
    assert warned(caplog, registry)


# -- final names --------------------------------------------------------------------------


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_a_link_at_the_final_name_is_left_alone_and_never_written(
    service: Service, origin: Origin, outside: Callable[..., Outside], dangling: bool
) -> None:
    app, client, watch = service()
    res = origin.add("/m.gguf", payload(1000, seed=6))
    victim = outside(data=None if dangling else b"not yours to write\n")
    os.makedirs(models_dir(app), exist_ok=True)
    link = os.path.join(models_dir(app), "m.gguf")
    os.symlink(victim.path, link)

    post_download(client, "mine", origin.url("/m.gguf"))
    done = watch.terminal("mine")
    assert done["status"] == "complete" and done["file"] == "m-mine.gguf"
    assert victim.untouched()
    assert os.readlink(link) == str(victim.path)
    final = os.path.join(models_dir(app), "m-mine.gguf")
    assert is_regular(final) and read(final) == res.data


def test_a_model_file_replaced_by_a_link_is_missing_downloaded_again_and_deleted_as_a_link(
    service: Service, origin: Origin, outside: Callable[..., Outside]
) -> None:
    app, client, watch = service()
    res = origin.add("/k.gguf", payload(1000, seed=7))
    url = origin.url("/k.gguf")
    post_download(client, "k", url)
    assert watch.terminal("k")["status"] == "complete"
    final = os.path.join(models_dir(app), "k.gguf")
    victim = outside()

    def plant() -> None:
        os.unlink(final)
        os.symlink(victim.path, final)

    plant()
    assert client.get("/models").json["items"][0]["status"] == "missing"
    again = post_download(client, "k", url)
    assert again.status_code == 202  # not "already installed": its file is not there
    assert watch.status("k", "complete", "error")["status"] == "complete"
    assert is_regular(final) and read(final) == res.data
    assert victim.untouched()

    plant()
    assert client.delete("/models/k").status_code == 200
    assert not os.path.lexists(final)
    assert victim.untouched()


# -- the lock and models/ ------------------------------------------------------------------


def test_a_lock_file_link_is_replaced_and_the_lock_still_holds(
    make_app: Callable[..., Any], outside: Callable[..., Outside], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    os.makedirs(state_dir(app))
    lock = os.path.join(state_dir(app), "arw-models.lock")
    victim = outside()
    os.symlink(victim.path, lock)

    ArwModels.state(app)
    assert victim.untouched()
    assert is_regular(lock) and f"pid {os.getpid()}" in read(lock).decode()
    assert warned(caplog, lock)
    with pytest.raises(StateLockError):
        ArwModels.state(make_app())


def test_a_models_dir_link_refuses_to_start(make_app: Callable[..., Any], tmp_path: Path) -> None:
    app = make_app()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.makedirs(state_dir(app))
    os.symlink(elsewhere, models_dir(app))

    answer = app.test_client().get("/models")
    assert answer.status_code == 503 and answer.json["code"] == "state-dir-unsafe"
    assert models_dir(app) in answer.json["detail"] and "symbolic link" in answer.json["detail"]
    with pytest.raises(StateDirError):
        ArwModels.state(app)
    assert not app.extensions["arw_models"].started
    assert list(elsewhere.iterdir()) == []

    os.unlink(models_dir(app))  # the operator puts a real directory there
    os.mkdir(models_dir(app))
    assert app.test_client().get("/models").status_code == 200


def test_a_models_dir_replaced_by_a_link_while_running_is_not_followed(
    service: Service, origin: Origin, tmp_path: Path
) -> None:
    app, client, _ = service()
    assert client.get("/models").status_code == 200  # started, with a real models/
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rmdir(models_dir(app))
    os.symlink(elsewhere, models_dir(app))
    origin.add("/x.gguf", payload(1000, seed=9))

    answer = post_download(client, "x", origin.url("/x.gguf"))
    assert answer.status_code == 503 and answer.json["code"] == "state-dir-unsafe"
    assert list(elsewhere.iterdir()) == []
    assert origin.requests_for("/x.gguf") == []


# -- file modes ----------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that takes nothing away: the modes must come from the service."""
    previous = os.umask(0)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_state_files_are_private_while_downloading_and_after(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client, watch = service()
    res = origin.add("/h.gguf", payload(MiB, seed=8), stall_after=300_000)
    opened = threading.Event()
    manager = ArwModels.state(app).manager
    real_open = manager.open_part

    def spy(path: str, append: bool) -> Any:
        fh = real_open(path, append)
        opened.set()
        return fh

    monkeypatch.setattr(manager, "open_part", spy)
    post_download(client, "h", origin.url("/h.gguf"), sha256=res.sha256)
    assert opened.wait(10) and res.stalled.wait(10)
    root = state_dir(app)
    # The state directory searchable, models/ readable: model files are for runtimes of other users.
    assert mode(root) == 0o711 and mode(models_dir(app)) == 0o755
    assert mode(part(app, "h")) == 0o600 and mode(sidecar(app, "h")) == 0o600
    assert mode(os.path.join(root, "arw-models.lock")) == 0o600

    res.release.set()
    assert watch.terminal("h")["status"] == "complete"
    assert mode(os.path.join(root, "models.json")) == 0o600
    assert mode(os.path.join(models_dir(app), "h.gguf")) == 0o644  # ARW_MODELS_MODE


def test_wider_modes_are_narrowed_at_start(make_app: Callable[..., Any], outside: Callable[..., Outside]) -> None:
    app = make_app()
    root, models = state_dir(app), models_dir(app)
    os.makedirs(models)
    victim = outside()
    os.chmod(victim.path, 0o644)
    ours = {
        os.path.join(root, "models.json"): b'{"version": 1, "models": {}}',
        os.path.join(root, "arw-models.lock"): b"",
        os.path.join(models, "w.part"): b"x" * 10,
        os.path.join(models, "w.part.json"): b"{}",
    }
    model = os.path.join(models, "old.gguf")
    with open(model, "wb") as fh:
        fh.write(b"a model")
    os.chmod(model, 0o666)
    for path, data in ours.items():
        with open(path, "wb") as fh:
            fh.write(data)
        os.chmod(path, 0o666)
    notes = os.path.join(root, "notes.txt")  # the operator's, not ours
    with open(notes, "w") as fh:
        fh.write("hello\n")
    os.chmod(notes, 0o644)
    os.symlink(victim.path, os.path.join(models, "linked.gguf"))
    os.chmod(root, 0o755)
    os.chmod(models, 0o777)

    ArwModels.state(app)
    assert mode(root) == 0o711 and mode(models) == 0o755
    assert {path: mode(path) for path in ours} == dict.fromkeys(ours, 0o600)
    assert mode(model) == 0o644  # a model file gets ARW_MODELS_MODE, no one else's write
    assert mode(notes) == 0o644
    assert mode(str(victim.path)) == 0o644 and victim.untouched()
