"""A client generated from the live ``/openapi.json`` by openapi-python-client
talks to a live service: a refusal is parsed into the typed ``Problem`` with its
``code``, an accepted download into the typed job, the model list into its type.
What the generator drops (a response it cannot type) shows here as ``None``."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from .support.app import LiveServer, Watch
from .support.origin import Origin, payload

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
PACKAGE = "arw_generated_client"
TOKEN = "gen-token"


def generate(document: str, where: Path) -> None:
    (where / "openapi.json").write_text(document)
    # No post hooks: the formatter it runs by default need not be on PATH.
    (where / "config.yml").write_text("post_hooks: []\n")
    done = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(where / "openapi.json"), "--config", str(where / "config.yml"),
         "--output-path", str(where / PACKAGE), "--meta", "none", "--overwrite"],
        check=False, capture_output=True, text=True, timeout=60, cwd=where)
    assert done.returncode == 0, done.stdout + done.stderr
    # A response or schema it could not type is left out with a warning: none may be.
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr


@pytest.fixture
def served(make_app: Any) -> Iterator[LiveServer]:
    server = LiveServer(make_app(ARW_ADMIN_TOKEN=TOKEN))
    yield server
    server.close()


@pytest.fixture
def generated(served: LiveServer, tmp_path: Path) -> Iterator[ModuleType]:
    if not GENERATOR.exists():
        pytest.skip("openapi-python-client is not installed: pip install -e '.[test]'")
    generate(requests.get(served.url + "/openapi.json", timeout=5).text, tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_answers_parse_into_the_documented_types(generated: ModuleType, served: LiveServer, origin: Origin) -> None:
    models = importlib.import_module(f"{PACKAGE}.models")
    start = importlib.import_module(f"{PACKAGE}.api.default.start_download")
    list_models = importlib.import_module(f"{PACKAGE}.api.default.list_models")
    good = origin.add("/m.gguf", payload(20_000, seed=5))
    watch = Watch(served.app)
    with generated.AuthenticatedClient(base_url=served.url, token=TOKEN, timeout=10) as client:
        refused = start.sync_detailed(client=client, body=models.DownloadRequest(id="../x", url=origin.url("/m.gguf")))
        assert refused.status_code == 400
        assert isinstance(refused.parsed, models.Problem), refused.content
        assert (refused.parsed.code, refused.parsed.status) == ("invalid-id", 400)
        assert refused.parsed.detail and refused.parsed.title

        accepted = start.sync_detailed(client=client, body=models.DownloadRequest(
            id="m", url=origin.url("/m.gguf"), sha256=good.sha256))
        assert accepted.status_code == 202
        assert isinstance(accepted.parsed, models.Job), accepted.content
        assert accepted.parsed.id == "m" and accepted.parsed.status.value in ("queued", "started")
        try:
            assert watch.terminal("m")["status"] == "complete"
        finally:
            watch.close()

        listed = list_models.sync(client=client)
        assert [(m.id, m.sha256, m.bytes_) for m in listed.items] == [("m", good.sha256, 20_000)]

    with generated.Client(base_url=served.url, timeout=10) as anonymous:  # no token: 401, typed too
        unauthorized = start.sync_detailed(client=anonymous, body=models.DownloadRequest(id="n", url="http://h/n"))
        assert isinstance(unauthorized.parsed, models.Problem), unauthorized.content
        assert unauthorized.parsed.code == "missing-token"
