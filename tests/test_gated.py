"""Request headers for a gated origin (the POST's ``headers``): sent to the url's
own host and port alone, kept (in the owner-only sidecar) only while a resume may
need them, and never shown: not in events, logs, listings, /probe or any other
file of the state directory. Against the real local servers of tests/support/hub.py."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from .support.app import LiveServer, Service, Watch, post_download
from .support.helpers import listing, models_dir, read, sidecar, write_partial
from .support.hub import (
    Server,
    events_text,
    needs_second_host,
    records_holding,
    shown_nowhere,
    state_files_holding,
)
from .support.origin import Origin, payload
from .support.sse import SSEClient

KiB = 1024
MiB = 1024 * KiB
SECRET = "gate-S3cr3t-7c1d9e0b2a"
KEY = "X-Api-Key"


@pytest.fixture
def servers() -> Iterator[Callable[[str], Server]]:
    started: list[Server] = []

    def start(host: str = "127.0.0.1") -> Server:
        server = Server(host)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def gate(servers: Callable[[str], Server]) -> Server:
    return servers("127.0.0.1")


def gated(gate: Server, path: str, data: bytes, name: str = KEY, value: str = SECRET, **options: Any) -> Any:
    gate.require(path, name, value)
    return gate.add(path, data, **options)


def test_a_gated_origin_serves_with_its_header(service: Service, gate: Server) -> None:
    res = gated(gate, "/g.gguf", payload(300 * KiB, seed=800))
    app, client, watch = service()
    r = post_download(client, "g", gate.url("/g.gguf"), headers={KEY: SECRET}, sha256=res.sha256)
    assert r.status_code == 202 and SECRET not in r.get_data(as_text=True)
    assert watch.terminal("g")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "g.gguf")) == res.data
    [seen] = gate.requests_for("/g.gguf")
    assert seen.headers[KEY.lower()] == SECRET


@pytest.mark.parametrize("headers", [None, {KEY: "not-the-" + SECRET}], ids=["without", "wrong-value"])
def test_without_its_header_a_gated_origin_ends_the_job_with_401(service: Service, gate: Server,
                                                                 headers: dict[str, str] | None) -> None:
    gated(gate, "/g.gguf", payload(100 * KiB, seed=801))
    app, client, watch = service()
    post_download(client, "g", gate.url("/g.gguf"), **({"headers": headers} if headers else {}))
    end = watch.terminal("g")
    assert (end["status"], end["code"], end.get("http_status")) == ("error", "http-status", 401), end
    assert "401" in end["error"]
    assert "retrying" not in watch.statuses("g")
    assert client.get("/models").json["items"] == []
    assert state_files_holding(app.config["ARW_STATE_DIR"], SECRET) == []
    assert SECRET not in events_text(watch.events)


@needs_second_host
@pytest.mark.parametrize("name", ["Authorization", KEY, "Cookie"])
@pytest.mark.parametrize("elsewhere", ["127.0.0.2", "127.0.0.1"], ids=["other-host", "other-port"])
def test_a_redirect_elsewhere_drops_the_header(service: Service, gate: Server, servers: Callable[[str], Server],
                                               name: str, elsewhere: str) -> None:
    value = {"Authorization": f"Bearer {SECRET}", "Cookie": f"sid={SECRET}"}.get(name, SECRET)
    cdn = servers(elsewhere)
    res = cdn.add("/blob/abc", payload(400 * KiB, seed=802))
    gate.require("/g.gguf", name, value)
    gate.redirect("/g.gguf", cdn.url("/blob/abc") + "?sig=1")
    app, client, watch = service()
    post_download(client, "g", gate.url("/g.gguf"), headers={name: value})
    assert watch.terminal("g")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "g.gguf")) == res.data
    assert gate.saw(SECRET) and len(cdn.all_seen()) == 1
    assert cdn.saw(SECRET) == [] and name.lower() not in cdn.all_seen()[0].headers


@needs_second_host
def test_a_redirect_that_has_left_the_host_never_gets_the_header_back(service: Service, gate: Server,
                                                                      servers: Callable[[str], Server]) -> None:
    """Once dropped, the header stays dropped for the rest of the chain, even on
    a redirect within the other host."""
    cdn = servers("127.0.0.2")
    res = cdn.add("/blob/abc", payload(100 * KiB, seed=808))
    cdn.redirect("/hop", "/blob/abc")
    gate.require("/g.gguf", KEY, SECRET)
    gate.redirect("/g.gguf", cdn.url("/hop"))
    app, client, watch = service()
    post_download(client, "g", gate.url("/g.gguf"), headers={KEY: SECRET})
    assert watch.terminal("g")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "g.gguf")) == res.data
    assert [s.path for s in cdn.all_seen()] == ["/hop", "/blob/abc"]
    assert cdn.saw(SECRET) == []


@pytest.mark.parametrize("location", ["absolute", "relative"])
def test_a_redirect_on_the_same_host_keeps_the_header(service: Service, gate: Server, location: str) -> None:
    res = gated(gate, "/new/g.gguf", payload(200 * KiB, seed=803))
    gate.require("/old/g.gguf", KEY, SECRET)
    gate.redirect("/old/g.gguf", gate.url("/new/g.gguf") if location == "absolute" else "/new/g.gguf", status=301)
    app, client, watch = service()
    post_download(client, "g", gate.url("/old/g.gguf"), headers={KEY: SECRET})
    assert watch.terminal("g")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "g.gguf")) == res.data
    assert [s.headers.get(KEY.lower()) for s in gate.all_seen()] == [SECRET, SECRET]


@pytest.mark.parametrize("set_cookie", [False, True], ids=["plain", "and-one-set-on-the-way"])
def test_a_cookie_header_survives_a_redirect_on_the_same_host(service: Service, gate: Server,
                                                              set_cookie: bool) -> None:
    """requests drops a Cookie header it did not make itself on every redirect; the
    one given for the origin is still the origin's on its own host."""
    cookie = f"sid={SECRET}"
    res = gated(gate, "/files/g.gguf", payload(200 * KiB, seed=807), name="Cookie", value=cookie)
    gate.require("/download/g", "Cookie", cookie)
    gate.redirect("/download/g", "/files/g.gguf", headers={"Set-Cookie": "hop=1; Path=/"} if set_cookie else {})
    app, client, watch = service()
    post_download(client, "g", gate.url("/download/g"), headers={"Cookie": cookie})
    end = watch.terminal("g")
    assert end["status"] == "complete", end
    assert read(os.path.join(models_dir(app), end["file"])) == res.data
    sent = [s.headers.get("cookie") for s in gate.all_seen()]
    assert sent == [cookie, f"{cookie}; hop=1" if set_cookie else cookie]


def sse_text(stream: SSEClient, model_id: str) -> str:
    """Every frame of ``stream`` up to the end of ``model_id``'s job, as text."""
    out = []
    while True:
        frame = stream.next()
        out.append(f"{frame.id} {frame.event} {frame.data}")
        if frame.event == "Models.DownloadProgress" and frame.payload.get("id") == model_id and \
                frame.payload.get("status") in ("complete", "error", "canceled"):
            return "\n".join(out)


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_header_is_kept_in_the_sidecar_alone_and_shown_nowhere(make_app: Callable[..., Any], gate: Server,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    res = gated(gate, "/g.gguf", payload(MiB, seed=804), stall_after=300 * KiB)
    app = make_app(ARW_DL_IDLE_TIMEOUT_SECS=30)
    client = app.test_client()
    live = LiveServer(app)
    watch = Watch(app)
    stream = SSEClient(live.url + "/events")
    try:
        assert stream.next().event == "service.connected"
        r = requests.post(live.url + "/models/download", timeout=5,
                          json={"id": "g", "url": gate.url("/g.gguf"), "headers": {KEY: SECRET}})
        assert r.status_code == 202 and SECRET not in r.text
        assert res.stalled.wait(5)
        watch.until(lambda e: e.payload.get("id") == "g" and e.payload.get("downloaded") == 300 * KiB)
        state_dir = app.config["ARW_STATE_DIR"]
        # Running, then paused: a resume needs the header, so the sidecar keeps it, for its owner alone.
        assert state_files_holding(state_dir, SECRET) == [sidecar(app, "g")]
        assert mode(sidecar(app, "g")) == 0o600
        shown_nowhere(client, SECRET, "g")
        assert client.post("/models/download/pause", json={"id": "g"}).status_code == 200
        assert state_files_holding(state_dir, SECRET) == [sidecar(app, "g")]
        assert mode(sidecar(app, "g")) == 0o600
        shown_nowhere(client, SECRET, "g")

        res.release.set()
        # The resume is asked without headers: they come from the sidecar (the gate wants them).
        assert client.post("/models/download/resume", json={"id": "g"}).status_code == 202
        assert watch.terminal("g")["status"] == "complete"
        assert read(os.path.join(models_dir(app), "g.gguf")) == res.data
        last = gate.requests_for("/g.gguf")[-1]
        assert last.range == f"bytes={300 * KiB}-" and last.headers[KEY.lower()] == SECRET

        live_text = sse_text(stream, "g")
        assert '"status":"complete"' in live_text and SECRET not in live_text
        with SSEClient(live.url + "/events", params={"replay": "1000"}) as replay:
            replayed = sse_text(replay, "g")
        assert '"status":"paused"' in replayed and SECRET not in replayed
        assert SECRET not in events_text(watch.events)
        shown_nowhere(client, SECRET, "g")
        assert state_files_holding(state_dir, SECRET) == []
        assert listing(app) == ["g.gguf"]
        assert caplog.records and records_holding(caplog.records, SECRET) == []
    finally:
        res.release.set()
        stream.close()
        watch.close()
        live.close()


def test_a_restart_resumes_with_the_header(make_app: Callable[..., Any], gate: Server) -> None:
    res = gated(gate, "/g.gguf", payload(MiB, seed=805), stall_after=200 * KiB)
    first = make_app(ARW_DL_IDLE_TIMEOUT_SECS=30)
    watch = Watch(first)
    try:
        post_download(first.test_client(), "g", gate.url("/g.gguf"), headers={KEY: SECRET}, sha256=res.sha256)
        assert res.stalled.wait(5)
        watch.until(lambda e: e.payload.get("id") == "g" and e.payload.get("downloaded") == 200 * KiB)
    finally:
        watch.close()
    first.extensions["arw_models"].shutdown()  # interrupted: the .part and its sidecar stay
    res.release.set()
    assert state_files_holding(first.config["ARW_STATE_DIR"], SECRET) == [sidecar(first, "g")]
    assert mode(sidecar(first, "g")) == 0o600

    second = make_app(ARW_DL_RESUME_ON_START=True)
    watch = Watch(second)  # starts it: the interrupted download resumes now
    try:
        done = watch.terminal("g")
    finally:
        watch.close()
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    last = gate.requests_for("/g.gguf")[-1]
    assert last.range == f"bytes={200 * KiB}-" and last.headers[KEY.lower()] == SECRET
    assert state_files_holding(second.config["ARW_STATE_DIR"], SECRET) == []


INVALID_HEADERS = {
    "a-list": [f"{KEY}: {SECRET}"],  # not an object
    "a-string": f"{KEY}: {SECRET}",
    "a-number-value": {KEY: 918273645},  # a value that is not a string
    "a-list-value": {KEY: [SECRET]},
    "a-null-value": {KEY: None},
    "an-object-value": {KEY: {"v": SECRET}},
    "crlf": {KEY: f"{SECRET}\r\nX-Injected: 1"},  # a line break would make another header
    "lf": {KEY: f"{SECRET}\nX-Injected: 1"},
    "cr": {KEY: f"{SECRET}\r"},
    "nul": {KEY: f"{SECRET}\x00"},
    "too-long": {KEY: SECRET + "x" * 8192},
    "range": {"Range": f"bytes=0-{SECRET}"},  # set by the service itself
    "host": {"host": SECRET},
    "if-range": {"If-Range": SECRET},
    "accept-encoding": {"Accept-Encoding": SECRET},
    "content-length": {"Content-Length": SECRET},
    "transfer-encoding": {"Transfer-Encoding": SECRET},
    "connection": {"Connection": SECRET},
    "too-many": {f"X-H{i}": SECRET for i in range(33)},
    "a-space-in-the-name": {"X Api Key": SECRET},  # not a header name
    "a-colon-in-the-name": {"X-Api-Key:": SECRET},
    "an-empty-name": {"": SECRET},
    "a-non-ascii-name": {"X-Ключ": SECRET},
}


@pytest.mark.parametrize("headers", list(INVALID_HEADERS.values()), ids=list(INVALID_HEADERS))
def test_invalid_headers_are_a_400_that_never_quotes_the_value(service: Service, headers: Any) -> None:
    _, client, _ = service()
    r = post_download(client, "g", "http://127.0.0.1:9/g.gguf", headers=headers)
    assert r.status_code == 400 and r.json["code"] == "invalid-headers", r.json
    assert r.mimetype == "application/problem+json"
    text = r.get_data(as_text=True)
    assert SECRET not in text and "918273645" not in text
    assert client.get("/models/downloads").json["items"] == []


def test_one_header_in_two_spellings_is_sent_as_one_field(service: Service, origin: Origin) -> None:
    """JSON tells "X-Team" and "x-team" apart, HTTP does not: their values combine as
    repeated field lines do (a Cookie's with "; ")."""
    res = origin.add("/t.gguf", payload(KiB, seed=810))
    _, client, watch = service()
    headers = {"X-Team": "blue", "x-team": "green", "Cookie": "a=1", "COOKIE": "b=2"}
    assert post_download(client, "t", origin.url("/t.gguf"), headers=headers).status_code == 202
    assert watch.terminal("t")["sha256"] == res.sha256
    [seen] = origin.requests_for("/t.gguf")
    assert seen.headers["x-team"] == "blue, green"
    assert sorted(seen.headers["cookie"].split("; ")) == ["a=1", "b=2"]  # one Cookie field, in some order


def test_thirty_two_headers_are_accepted(service: Service, gate: Server) -> None:
    res = gated(gate, "/g.gguf", payload(64 * KiB, seed=806))
    _, client, watch = service()
    headers = {f"X-H{i}": f"v{i}" for i in range(31)} | {KEY: SECRET}
    assert post_download(client, "g", gate.url("/g.gguf"), headers=headers).status_code == 202
    done = watch.terminal("g")
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    [seen] = gate.requests_for("/g.gguf")
    assert all(seen.headers[name.lower()] == value for name, value in headers.items())


def test_parallel_ranges_carry_the_header_and_a_paused_one_resumes_with_it_after_a_restart(
        make_app: Callable[..., Any], gate: Server) -> None:
    segmented = {"ARW_DL_SEGMENTS": 4, "ARW_DL_SEGMENT_MIN_MB": 1}
    res = gated(gate, "/big.gguf", payload(8 * MiB, seed=809), throttle=4 * MiB)  # one connection alone: 2 s
    first = make_app(**segmented)
    watch = Watch(first)
    client = first.test_client()
    try:
        post_download(client, "big", gate.url("/big.gguf"), headers={KEY: SECRET}, sha256=res.sha256)
        watch.until(lambda e: e.payload.get("id") == "big" and e.payload.get("segments", 0) > 1)
        assert client.post("/models/download/pause", json={"id": "big"}).status_code == 200
    finally:
        watch.close()
    first.extensions["arw_models"].shutdown()
    assert state_files_holding(first.config["ARW_STATE_DIR"], SECRET) == [sidecar(first, "big")]
    assert mode(sidecar(first, "big")) == 0o600
    before = len(gate.requests_for("/big.gguf"))

    second = make_app(ARW_DL_RESUME_ON_START=True, **segmented)
    watch = Watch(second)
    try:
        assert second.test_client().post("/models/download/resume", json={"id": "big"}).status_code == 202
        done = watch.terminal("big", timeout=20)
    finally:
        watch.close()
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    seen = gate.requests_for("/big.gguf")
    assert len(seen) > before and all(s.status in (200, 206) for s in seen)  # not one 401
    assert all(s.headers.get(KEY.lower()) == SECRET for s in seen)
    assert sum(1 for s in seen if s.range) >= 2
    assert state_files_holding(second.config["ARW_STATE_DIR"], SECRET) == []


def test_a_post_without_headers_drops_those_a_paused_download_kept(service: Service, origin: Origin) -> None:
    """A download in parallel ranges, paused with a gated header in its sidecar, then
    asked for again without one: what the POST says now is what a restart would use."""
    data = payload(8 * MiB, seed=811)
    res = origin.add("/open.gguf", data, throttle=2 * MiB)
    url = origin.url("/open.gguf")
    app, client, watch = service(ARW_DL_SEGMENTS=4, ARW_DL_SEGMENT_MIN_MB=1, ARW_DL_CHUNK_BYTES=64 * KiB)
    ranges = [[0, 4 * MiB, MiB], [4 * MiB, 8 * MiB, MiB]]
    write_partial(app, "o", data, {"url": url, "etag": res.etag, "total": len(data), "ranges": ranges,
                                   "headers": {KEY: SECRET}})
    post_download(client, "o", url)
    watch.until(lambda e: e.payload.get("id") == "o" and e.payload.get("segments", 0) > 1)
    assert client.post("/models/download/pause", json={"id": "o"}).status_code == 200
    with open(sidecar(app, "o")) as fh:
        kept = json.load(fh)
    assert "headers" not in kept and SECRET not in json.dumps(kept)
    assert all(KEY.lower() not in s.headers for s in origin.requests_for("/open.gguf"))


def test_a_download_resumed_in_ranges_keeps_its_header_for_the_next_restart(
        make_app: Callable[..., Any], gate: Server) -> None:
    """Resumed at start in parallel ranges, then paused: its sidecar is written again
    while it runs, and still holds the header, so the restart after that sends it too."""
    segmented = {"ARW_DL_SEGMENTS": 4, "ARW_DL_SEGMENT_MIN_MB": 1}
    data = payload(8 * MiB, seed=813)
    res = gated(gate, "/again.gguf", data, throttle=4 * MiB)
    url = gate.url("/again.gguf")
    first = make_app(ARW_DL_RESUME_ON_START=True, **segmented)
    ranges = [[0, 4 * MiB, MiB], [4 * MiB, 8 * MiB, MiB]]
    write_partial(first, "again", data, {"url": url, "etag": res.etag, "total": len(data), "ranges": ranges,
                                          "headers": {KEY: SECRET}})
    watch = Watch(first)  # starts it: the download resumes in its ranges
    try:
        watch.until(lambda e: e.payload.get("id") == "again" and e.payload.get("segments", 0) > 1)
        assert first.test_client().post("/models/download/pause", json={"id": "again"}).status_code == 200
    finally:
        watch.close()
    first.extensions["arw_models"].shutdown()
    with open(sidecar(first, "again")) as fh:
        assert json.load(fh).get("headers") == {KEY: SECRET}

    second = make_app(**segmented)
    watch = Watch(second)
    try:
        assert second.test_client().post("/models/download/resume", json={"id": "again"}).status_code == 202
        done = watch.terminal("again", timeout=20)
    finally:
        watch.close()
    assert done["status"] == "complete" and done["sha256"] == res.sha256
    seen = gate.requests_for("/again.gguf")
    assert all(s.status in (200, 206) for s in seen)  # not one 401
    assert all(s.headers.get(KEY.lower()) == SECRET for s in seen)
