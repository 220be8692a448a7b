"""CORS for pages served from other origins (``ARW_CORS_ORIGINS``): headers for
the listed origins only, on the blueprint's routes only, none at all when unset.
A page of another origin in a real browser is in test_web_page.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from arw_models import ArwModels, create_app
from arw_models.config import from_env, parse_origins

from .support.app import FAST

TOKEN = "cors-t0ken-Xq2"


def problem(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.mimetype == "application/problem+json"
    assert r.json["code"] == code


A = "http://a.example"
B = "https://b.example:8443"


def cors_headers(r: Any) -> list[str]:
    return [name for name, _ in r.headers.items() if name.startswith("Access-Control-")]


def test_without_cors_origins_no_cors_header_is_sent(client: Any) -> None:
    r = client.get("/models", headers={"Origin": A})
    assert r.status_code == 200 and not cors_headers(r)
    r = client.options("/models/download", headers={"Origin": A, "Access-Control-Request-Method": "POST"})
    assert not cors_headers(r)


def test_cors_origins_may_call_the_api_and_read_its_answers(make_app: Callable[..., Any]) -> None:
    app = make_app(ARW_CORS_ORIGINS=f" {A}, {B}/ ", ARW_ADMIN_TOKEN=TOKEN)
    client = app.test_client()
    r = client.get("/models", headers={"Origin": A})
    assert r.headers["Access-Control-Allow-Origin"] == A and "Origin" in r.headers.get_all("Vary")
    assert client.get("/models", headers={"Origin": B}).headers["Access-Control-Allow-Origin"] == B
    assert "Access-Control-Allow-Origin" not in client.get("/models", headers={"Origin": "http://evil.example"}).headers
    assert "Access-Control-Allow-Origin" not in client.get("/models").headers  # no Origin: not a CORS request
    # The preflight of a POST with the token and a JSON body.
    r = client.options("/models/download", headers={
        "Origin": A, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == A
    assert r.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in r.headers  # the token is a header, never a cookie
    # Errors too, so that the page can show why.
    r = client.post("/models/download", json={"id": "m", "url": "http://x/m"}, headers={"Origin": A})
    problem(r, 401, "missing-token")
    assert r.headers["Access-Control-Allow-Origin"] == A
    assert "WWW-Authenticate" in r.headers["Access-Control-Expose-Headers"]
    assert "Location" in r.headers["Access-Control-Expose-Headers"]


def test_cors_covers_the_blueprint_only_whatever_the_host_app_configures(tmp_path: Path) -> None:
    host = Flask("host")
    # The host's own flask-cors settings, were it to use flask-cors: they do not widen ours.
    host.config.update(FAST, ARW_STATE_DIR=str(tmp_path / "state"), ARW_CORS_ORIGINS=A,
                       CORS_ORIGINS="*", CORS_SUPPORTS_CREDENTIALS=True)

    @host.get("/hello")
    def hello() -> str:
        return "hello"

    ArwModels(host, url_prefix="/ai")
    try:
        client = host.test_client()
        assert client.get("/ai/models", headers={"Origin": A}).headers["Access-Control-Allow-Origin"] == A
        assert client.get("/ai/models/downloads/x", headers={"Origin": A}).headers["Access-Control-Allow-Origin"] == A
        assert "Access-Control-Allow-Origin" not in client.get("/ai/models", headers={"Origin": B}).headers
        assert "Access-Control-Allow-Credentials" not in client.get("/ai/models", headers={"Origin": A}).headers
        for path in ("/hello", "/elsewhere"):
            r = client.get(path, headers={"Origin": A})
            assert "Access-Control-Allow-Origin" not in r.headers, path
    finally:
        host.extensions["arw_models"].shutdown()


@pytest.mark.parametrize("value", ["a.example", "http://a.example/path", "ftp://a.example", "http://a.*"])
def test_a_cors_origin_that_is_no_origin_fails_at_start(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValueError, match="ARW_CORS_ORIGINS"):
        create_app({"TESTING": True, "ARW_STATE_DIR": str(tmp_path), "ARW_CORS_ORIGINS": value})


def test_cors_origins_from_the_environment() -> None:
    assert from_env({"ARW_CORS_ORIGINS": f"{A}, {B}"}) == {"ARW_CORS_ORIGINS": [A, B]}
    assert from_env({"ARW_CORS_ORIGINS": " "}) == {"ARW_CORS_ORIGINS": None}
    with pytest.raises(ValueError, match="ARW_CORS_ORIGINS"):
        from_env({"ARW_CORS_ORIGINS": "a.example"})
    assert parse_origins(f"{A},,{B}/") == [A, B]
    assert parse_origins(["*"]) == ["*"]
    assert parse_origins(None) == []
