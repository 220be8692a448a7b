"""The admin token (``ARW_ADMIN_TOKEN``): it guards the writes and the event stream
and nothing else, and a blank one is no token."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from arw_models.service.manager import CHANGED

from .support.app import LiveServer, Watch, assert_problem
from .support.origin import payload
from .support.sse import SSEClient

KiB = 1024
MiB = 1024 * KiB


TOKEN = "adm1n-T0ken-zqv"


def test_the_admin_token_guards_writes_and_events_only(make_app: Callable[..., Any], origin: Any) -> None:
    app = make_app(ARW_ADMIN_TOKEN=TOKEN)
    client = app.test_client()
    watch = Watch(app)
    server: LiveServer | None = None
    res = origin.add("/t.gguf", payload(128 * KiB, seed=6))
    stalled = origin.add("/stall.gguf", payload(1 * MiB, seed=7), stall_after=256 * KiB)
    body = {"id": "t", "url": origin.url("/t.gguf"), "sha256": res.sha256}
    guarded: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/models/download", body),
        ("POST", "/models/download/cancel", {"id": "t"}),
        ("DELETE", "/models/t", None),
        ("GET", "/events", None),
    ]
    try:
        for method, path, json_body in guarded:
            for headers, code in [
                ({}, "missing-token"),
                ({"Authorization": "Basic dXNlcjpwdw=="}, "missing-token"),
                ({"Authorization": "Bearer wrong"}, "invalid-token"),
                ({"Authorization": f"Bearer {TOKEN}x"}, "invalid-token"),
                ({"X-ARW-Admin": "wrong"}, "invalid-token"),
                ({"X-ARW-Admin": ""}, "invalid-token"),
            ]:
                r = client.open(path, method=method, json=json_body, headers=headers)
                assert_problem(r, 401, code)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert TOKEN not in r.get_data(as_text=True)
        # Nothing was started by the refused requests.
        assert client.get("/models/downloads").json == {"items": []}

        # Reads stay open.
        assert client.get("/healthz").json == {"ok": True}
        assert client.get("/models").json == {"items": []}
        assert client.get("/models/downloads").json == {"items": []}
        assert_problem(client.get("/models/downloads/t"), 404, "unknown-download")
        probe = client.get("/probe")
        assert probe.status_code == 200 and probe.json["settings"]["auth"] == "token"
        assert TOKEN not in probe.get_data(as_text=True)

        # Accepted with either header.
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        admin = {"X-ARW-Admin": TOKEN}
        r = client.post("/models/download", json=body, headers=bearer)
        assert r.status_code == 202, r.json
        assert watch.terminal("t")["status"] == "complete"
        r = client.post("/models/download", json={"id": "s", "url": origin.url("/stall.gguf")}, headers=admin)
        assert r.status_code == 202, r.json
        assert stalled.stalled.wait(5)
        r = client.post("/models/download/cancel", json={"id": "s"}, headers={"Authorization": f"bearer {TOKEN}"})
        assert r.json == {"id": "s", "status": "canceled"}
        assert_problem(client.post("/models/download/cancel", json={"id": "s"}, headers=admin),
                       404, "no-active-download")
        assert client.delete("/models/t", headers=admin).json == {"id": "t", "status": "deleted"}

        server = LiveServer(app)
        r = requests.get(server.url + "/events", timeout=5)
        assert r.status_code == 401 and r.headers["Content-Type"] == "application/problem+json"
        assert r.json()["code"] == "missing-token" and r.headers["WWW-Authenticate"].startswith("Bearer")
        for headers in (bearer, admin):
            with SSEClient(server.url + "/events", headers=headers, params={"replay": "1000"}) as sse:
                assert sse.response.status_code == 200
                first = sse.next()
                assert first.event == "service.connected" and TOKEN not in first.data
                ends = sse.until(lambda f: f.event == CHANGED and f.payload["op"] == "remove")
                assert ends.payload == {"op": "remove", "id": "t"}

        # The token is in no event, and the probe still does not show it.
        assert watch.events
        for event in watch.events:
            assert TOKEN not in event.encode().decode("utf-8")
        assert TOKEN not in requests.get(server.url + "/probe", timeout=5).text
    finally:
        stalled.release.set()
        watch.close()
        if server is not None:
            server.close()


def test_a_blank_token_is_no_token_and_a_padded_one_is_trimmed(make_app: Any, tmp_path: Path) -> None:
    blank = make_app(ARW_ADMIN_TOKEN=" \t ").test_client()
    assert blank.get("/probe").json["settings"]["auth"] == "none"
    padded = make_app(ARW_ADMIN_TOKEN=f" {TOKEN}\n", ARW_STATE_DIR=str(tmp_path / "other")).test_client()
    cancel = {"id": "nothing"}
    assert padded.post("/models/download/cancel", json=cancel).status_code == 401
    r = padded.post("/models/download/cancel", json=cancel, headers={"X-ARW-Admin": TOKEN})
    assert r.status_code == 404 and r.json["code"] == "no-active-download"
