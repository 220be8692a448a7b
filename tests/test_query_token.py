"""The admin token in the query of ``GET /events`` (``?access_token=``), for
browsers, whose ``EventSource`` cannot send headers: accepted on that route only,
and never written to the bundled gunicorn's log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from .support.app import LiveServer
from .support.origin import Origin, payload
from .support.servers import Gunicorn
from .support.sse import SSEClient

TOKEN = "q-t0ken-in-the-query-7Hs"


def problem(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.mimetype == "application/problem+json"
    assert r.json["code"] == code


def test_the_token_is_taken_from_the_query_on_get_events_only(make_app: Callable[..., Any]) -> None:
    app = make_app(ARW_ADMIN_TOKEN=TOKEN)
    client = app.test_client()
    problem(client.get("/events", query_string={"access_token": "wrong"}), 401, "invalid-token")
    problem(client.get("/events", query_string={"access_token": ""}), 401, "invalid-token")
    # Nowhere else: a url is easily copied, logged or shared.
    body = {"id": "m", "url": "http://127.0.0.1:9/m.gguf"}
    query = {"access_token": TOKEN}
    for r in (client.post("/models/download", json=body, query_string=query),
              client.post("/models/download/cancel", json={"id": "m"}, query_string=query),
              client.delete("/models/m", query_string=query)):
        problem(r, 401, "missing-token")
        assert TOKEN not in r.get_data(as_text=True)
    # A header, when one is sent, is what counts.
    r = client.get("/events", query_string=query, headers={"Authorization": "Bearer wrong"})
    problem(r, 401, "invalid-token")
    # A CORS preflight carries no credentials, and is not refused for lack of them.
    assert client.options("/events").status_code == 200


def test_a_stream_opened_with_the_token_in_the_query_delivers_events(
        make_app: Callable[..., Any], origin: Origin) -> None:
    app = make_app(ARW_ADMIN_TOKEN=TOKEN)
    res = origin.add("/q.gguf", payload(64 * 1024, seed=8))
    server = LiveServer(app)
    try:
        with SSEClient(server.url + "/events", params={"access_token": TOKEN, "prefix": "Models."}) as sse:
            assert sse.response.status_code == 200
            assert sse.next().event == "service.connected"
            r = requests.post(server.url + "/models/download", json={"id": "q", "url": origin.url("/q.gguf")},
                              headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
            assert r.status_code == 202
            done = sse.until(lambda f: f.event == "Models.DownloadProgress" and f.payload["status"] == "complete")
            assert done.payload["sha256"] == res.sha256
    finally:
        server.close()


def test_the_token_in_the_query_never_reaches_the_gunicorn_log(gunicorns: Callable[..., Gunicorn],
                                                               tmp_path: Path) -> None:
    g = gunicorns("token-log", tmp_path / "state", ARW_ADMIN_TOKEN=TOKEN)
    g.wait_ready()
    with SSEClient(g.url + "/events", params={"access_token": TOKEN}) as sse:
        assert sse.next().event == "service.connected"
    r = requests.get(g.url + "/events", params={"access_token": TOKEN + "-wrong"}, timeout=5)
    assert r.status_code == 401
    g.proc.terminate()  # the log is whole once gunicorn has stopped
    g.wait_exit(15)
    out = g.output()
    assert '"GET /events HTTP/1.1" 401' in out and '"GET /events HTTP/1.1" 200' in out, out
    assert TOKEN not in out and "access_token" not in out
