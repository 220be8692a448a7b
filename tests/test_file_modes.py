"""File modes: installed models are readable by runtimes that run as another user
(ARW_MODELS_MODE, 0644), their folder searchable; what can hold a url, a header
or a token stays 0600; the umask decides none of it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from arw_models import ArwModels, create_app
from arw_models.config import DEFAULTS, Settings

from .support.app import FAST, Service, post_download
from .support.origin import Origin, payload


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def tight_umask() -> Iterator[None]:
    """A umask that would make every file private: the modes must be set explicitly."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_a_model_is_readable_by_others_and_secrets_are_not(service: Service, origin: Origin,
                                                            tight_umask: None) -> None:
    app, client, watch = service(ARW_DL_SEGMENTS=1)
    ok = origin.add("/ok.gguf", payload(20_000, seed=1))
    slow = origin.add("/slow.gguf", payload(400_000, seed=2), stall_after=100_000)
    post_download(client, "ok", origin.url("/ok.gguf"), sha256=ok.sha256)
    assert watch.terminal("ok")["status"] == "complete"
    post_download(client, "slow", origin.url("/slow.gguf"), headers={"Authorization": "Bearer t0ken"})
    assert slow.stalled.wait(10)
    watch.status("slow", "started")
    assert client.post("/models/download/pause", json={"id": "slow"}).status_code == 200
    slow.release.set()
    watch.status("slow", "paused")

    state = Path(app.config["ARW_STATE_DIR"])
    models = state / "models"
    assert mode(models / "ok.gguf") == 0o644
    assert mode(models) == 0o755
    assert mode(state) == 0o711  # searchable on the way to the models, not listable
    assert mode(state / "models.json") == 0o600
    assert mode(state / "arw-models.lock") == 0o600
    assert mode(models / "slow.part") == 0o600
    assert mode(models / "slow.part.json") == 0o600
    assert "t0ken" in (models / "slow.part.json").read_text()  # why it must stay private
    assert client.get("/probe").json["settings"]["models_mode"] == "0644"


def test_the_models_mode_is_honoured(service: Service, origin: Origin, tight_umask: None) -> None:
    app, client, watch = service(ARW_MODELS_MODE="0640")
    data = origin.add("/m.gguf", payload(10_000, seed=3))
    post_download(client, "m", origin.url("/m.gguf"), sha256=data.sha256)
    done = watch.terminal("m")
    assert mode(done["path"]) == 0o640
    assert mode(os.path.dirname(done["path"])) == 0o750
    # The store's folders too: a blob is the same inode as the model.
    for store_dir in ("blobs", "blobs/sha256"):
        assert mode(os.path.join(app.config["ARW_STATE_DIR"], store_dir)) == 0o750, store_dir
    assert mode(app.config["ARW_STATE_DIR"]) == 0o710
    assert mode(os.path.join(app.config["ARW_STATE_DIR"], "models.json")) == 0o600


def test_models_of_an_older_version_get_the_mode_at_start(make_app: Any, origin: Origin, tmp_path: Path) -> None:
    data = origin.add("/m.gguf", payload(10_000, seed=4))
    app = make_app()
    state = ArwModels.state(app)
    post_download(app.test_client(), "m", origin.url("/m.gguf"), sha256=data.sha256)
    assert state.observer.wait_for("m", "complete", timeout=10)
    state.shutdown()
    # As an older version left them: everything private.
    root = Path(app.config["ARW_STATE_DIR"])
    os.chmod(root / "models" / "m.gguf", 0o600)
    os.chmod(root / "models", 0o700)
    os.chmod(root, 0o700)
    os.chmod(root / "models.json", 0o644)  # and a secret left readable by hand

    again = create_app(dict(FAST, ARW_STATE_DIR=str(root)))
    ArwModels.state(again)
    try:
        assert mode(root / "models" / "m.gguf") == 0o644
        assert mode(root / "models") == 0o755
        assert mode(root) == 0o711
        assert mode(root / "models.json") == 0o600
    finally:
        ArwModels.state(again).shutdown()


@pytest.mark.parametrize("value", ["abc", "0999", "0400", "0666", "01644", ""])
def test_a_bad_models_mode_stops_the_start(make_app: Any, value: str) -> None:
    with pytest.raises(ValueError, match="ARW_MODELS_MODE"):
        Settings.from_config(dict(DEFAULTS, ARW_MODELS_MODE=value))
    app = make_app(ARW_MODELS_MODE=value)
    with pytest.raises(ValueError, match="ARW_MODELS_MODE"):
        ArwModels.state(app)


def test_a_bad_models_mode_in_the_environment_stops_create_app(monkeypatch: Any, tmp_path: Path) -> None:
    monkeypatch.setenv("ARW_MODELS_MODE", "rw-r--r--")
    with pytest.raises(ValueError, match="ARW_MODELS_MODE='rw-r--r--'"):
        create_app({"ARW_STATE_DIR": str(tmp_path / "state")})
    for good, want in (("644", 0o644), ("0o600", 0o600), (" 0750 ", 0o750)):
        assert Settings.from_config(dict(DEFAULTS, ARW_MODELS_MODE=good)).models_mode == want


def test_a_download_of_bytes_already_here_leaves_the_model_readable(service: Service, origin: Origin) -> None:
    _app, client, watch = service()
    data = origin.add("/a.gguf", payload(30_000, seed=5))
    post_download(client, "a", origin.url("/a.gguf"), sha256=data.sha256)
    first = watch.terminal("a")
    # The same bytes under another id: linked to a's file, hashed through the .part.
    post_download(client, "b", origin.url("/a.gguf"), sha256=data.sha256)
    second = watch.terminal("b")
    assert second["status"] == "complete"
    assert mode(first["path"]) == mode(second["path"]) == 0o644
