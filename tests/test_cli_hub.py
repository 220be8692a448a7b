"""The command line against the real service for models of many files: the app
under a real threaded WSGI server (tests/support/app.py ``LiveServer``), the hub
stand-in (tests/support/hub.py) as its ``ARW_HF_ENDPOINT``, and the CLI in-process.
What tests/test_cli_many_files.py shows against a stand-in of the service, here
with the service's own answers and events: where the two could disagree."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from arw_models import ArwModels
from arw_models.client.cli import main

from .support.app import LiveServer
from .support.hub import Hub, needs_second_host
from .support.origin import payload

pytestmark = needs_second_host  # the hub's CDN is on 127.0.0.2

TOKEN = "hf_CliToKeN0123456789abcdefghijXYZ"
REPO = "acme-ai/Tiny-Coder"
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
FILES = {
    "config.json": b'{"model_type": "tiny"}\n',
    "tokenizer/vocab.txt": b"a\nb\nc\n",
    SHARD1: payload(300 * 1024, seed=1),
    SHARD2: payload(200 * 1024, seed=2),
    "gguf/tiny-q4_k_m.gguf": payload(3000, seed=3),
}
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def no_cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("ARW_SERVER", "ARW_ADMIN_TOKEN", "ARW_PORT"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def hub() -> Iterator[Hub]:
    server = Hub(token=TOKEN)
    yield server
    server.close()  # fails the test if the CDN ever saw the token


@pytest.fixture
def live(make_app: Callable[..., Any], hub: Hub) -> Iterator[LiveServer]:
    server = LiveServer(make_app(ARW_HF_ENDPOINT=hub.endpoint, ARW_HF_TOKEN=TOKEN))
    yield server
    server.close()


@pytest.fixture
def cli(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--server", live.url, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def folder(live: LiveServer, model_id: str) -> str:
    return os.path.join(ArwModels.state(live.app).dirs.models_dir, model_id)


def read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def cdn_gets(hub: Hub, path: str) -> int:
    """How many times the CDN was asked for the bytes of ``path`` of REPO."""
    blob = hashlib.sha256(FILES[path]).hexdigest()
    return len(hub.cdn.requests_for(f"/repos/{blob[:2]}/{blob[2:4]}/{blob}"))


def test_a_repository_downloads_with_include_and_shows_each_file(live: LiveServer, hub: Hub, cli: Cli) -> None:
    commit = hub.commit(REPO, FILES)
    code, out, err = cli("download", "tiny", f"hf://{REPO}", "--include", "*.json", "--include", "*.safetensors")
    assert code == 0, err
    lines = out.splitlines()
    assert not re.search(r"[\r\x1b]", out)  # not a terminal: plain lines
    # A line for each file that ended, in the service's own words and sizes.
    for path, size in (("config.json", "23 B"), (SHARD1, "300.0 KiB"), (SHARD2, "200.0 KiB")):
        assert f"tiny: {path}: complete ({size})" in lines, lines
    assert not any("vocab.txt" in line or ".gguf" in line for line in lines)
    total = sum(len(FILES[p]) for p in ("config.json", SHARD1, SHARD2))
    assert lines[-1] == f"tiny: complete: tiny ({total / 1024:.1f} KiB, 3 files, revision {commit})"
    for path in ("config.json", SHARD1, SHARD2):
        assert read(os.path.join(folder(live, "tiny"), path)) == FILES[path]
    assert not os.path.exists(os.path.join(folder(live, "tiny"), "tokenizer"))

    # Asked again: installed as asked, nothing fetched; --force fetches every file again.
    before = cdn_gets(hub, SHARD1)
    code, out, _ = cli("download", "tiny", f"hf://{REPO}", "--include", "*.json", "--include", "*.safetensors")
    assert code == 0 and "already installed as tiny" in out
    assert cdn_gets(hub, SHARD1) == before
    code, out, err = cli("download", "tiny", f"hf://{REPO}", "--include", "*.json", "--include", "*.safetensors",
                         "--force")
    assert code == 0, err
    assert f"tiny: {SHARD1}: complete (300.0 KiB)" in out.splitlines()
    assert cdn_gets(hub, SHARD1) == before + 1


def test_a_dry_run_lists_sizes_what_is_in_the_store_and_what_is_to_fetch(live: LiveServer, hub: Hub,
                                                                          cli: Cli) -> None:
    commit = hub.commit(REPO, FILES)
    # One shard in the store already, by another model.
    assert cli("download", "one", f"hf://{REPO}", "--file", SHARD1)[0] == 0
    asked = len(hub.cdn.all_seen())
    code, out, err = cli("download", "tiny", f"hf://{REPO}", "--exclude", "gguf/*", "--dry-run")
    assert code == 0, err
    assert out.splitlines() == [
        f"tiny: hf://{REPO} (hf, revision {commit})",
        "PATH                                   SIZE  STATE",
        "config.json                            23 B  fetch",
        f"{SHARD1}  300.0 KiB  in store",
        f"{SHARD2}  200.0 KiB  fetch",
        "tokenizer/vocab.txt                     6 B  fetch",
        "4 files, 500.0 KiB in all; 3 to fetch, 200.0 KiB",
    ]
    # Nothing was fetched, nothing started, nothing staged.
    assert len(hub.cdn.all_seen()) == asked
    assert requests.get(live.url + "/models/downloads", timeout=5).json()["items"] == []
    code, out, _ = cli("--json", "download", "tiny", f"hf://{REPO}", "--exclude", "gguf/*", "--dry-run")
    answer = json.loads(out)
    assert code == 0 and answer["revision"] == commit
    assert answer["to_fetch"] == len(FILES[SHARD2]) + len(FILES["config.json"]) + len(FILES["tokenizer/vocab.txt"])
    assert {f["path"]: f["in_store"] for f in answer["files"]}[SHARD1] is True


def test_a_file_the_cdn_serves_wrong_fails_the_download_with_a_non_zero_exit(live: LiveServer, hub: Hub,
                                                                             cli: Cli) -> None:
    hub.commit(REPO, FILES)
    # The CDN serves other bytes than the listing vouches for.
    blob = hub.files_at(REPO, "main")[SHARD2].sha256
    hub.cdn.add(f"/repos/{blob[:2]}/{blob[2:4]}/{blob}", payload(200 * 1024, seed=99))
    code, out, err = cli("download", "tiny", f"hf://{REPO}", "--exclude", "gguf/*")
    assert code == 1
    assert f"tiny: checksum-mismatch: {SHARD2}: checksum mismatch" in err, err
    assert f"tiny: {SHARD2}: FAILED (200.0 KiB)" in out.splitlines()
    # The other files stop with it: how far each got depends on timing, but the failed one is named.
    assert re.search(rf"tiny: [1-4] of 4 files incomplete: .*{re.escape(SHARD2)} \(failed\)", err), err
    assert requests.get(live.url + "/models", timeout=5).json()["items"] == []
    assert not os.path.exists(folder(live, "tiny"))


def test_list_shows_each_file_of_an_installed_repository(live: LiveServer, hub: Hub, cli: Cli) -> None:
    hub.commit(REPO, FILES)
    assert cli("download", "tiny", f"hf://{REPO}", "--include", "*.safetensors", "--include", "*.json")[0] == 0
    code, out, _ = cli("list")
    assert code == 0
    path = folder(live, "tiny")
    sha = {p: hashlib.sha256(FILES[p]).hexdigest()[:12] for p in ("config.json", SHARD1, SHARD2)}
    assert out.splitlines() == [
        "ID    FILE                                     SIZE  SHA256        STATUS     PATH",
        f"tiny  tiny                                500.0 KiB  -             available  {path}",
        f"        config.json                            23 B  {sha['config.json']}",
        f"        {SHARD1}  300.0 KiB  {sha[SHARD1]}",
        f"        {SHARD2}  200.0 KiB  {sha[SHARD2]}",
    ]
    code, out, _ = cli("--json", "list")
    [item] = json.loads(out)["items"]
    assert [f["path"] for f in item["files"]] == ["config.json", SHARD1, SHARD2]
