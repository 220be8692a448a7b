"""The install is durable: the ``.part`` is fsynced before its rename and the directory
after, and a rename that fails leaves a resumable ``.part``."""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from .support.app import Service, post_download
from .support.helpers import models_dir, part, read, sidecar
from .support.origin import Origin, payload


def test_part_is_fsynced_before_the_rename_and_the_directory_after(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client, watch = service()
    res = origin.add("/d.gguf", payload(1000, seed=49))
    log: list[tuple[str, Any]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        log.append(("fsync", (st.st_dev, st.st_ino)))
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        if str(src).endswith(".part"):
            st = os.stat(src)
            log.append(("replace", (st.st_dev, st.st_ino)))
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    post_download(client, "d", origin.url("/d.gguf"))
    assert watch.terminal("d")["status"] == "complete"
    monkeypatch.undo()
    assert read(os.path.join(models_dir(app), "d.gguf")) == res.data
    renames = [i for i, (op, _) in enumerate(log) if op == "replace"]
    assert len(renames) == 1
    at, file_id = renames[0], log[renames[0]][1]
    assert ("fsync", file_id) in log[:at], "the .part was not fsynced before its rename"
    st = os.stat(models_dir(app))
    assert ("fsync", (st.st_dev, st.st_ino)) in log[at:], "models/ was not fsynced after the rename"


def test_a_failed_rename_leaves_a_resumable_part(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until the file has its final name, the
    .part keeps its sidecar (a crash at that point must leave a resumable download)."""
    app, client, watch = service()
    res = origin.add("/f.gguf", payload(1000, seed=50))
    real_replace = os.replace

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        if str(src).endswith(".part"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    post_download(client, "f", origin.url("/f.gguf"), sha256=res.sha256)
    assert watch.terminal("f")["status"] == "error"
    monkeypatch.undo()
    assert read(part(app, "f")) == res.data
    assert os.path.exists(sidecar(app, "f"))
    assert client.get("/models").json["items"] == []
