"""The HTTP contract: input checks, problem documents, read-only endpoints."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import responses
from werkzeug.test import EnvironBuilder, run_wsgi_app

from arw_models import __version__
from arw_models.config import DEFAULTS

from .support.app import post_download

GOOD_URL = "https://example.invalid/m.gguf"


def assert_problem(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.mimetype == "application/problem+json"
    body = r.json
    assert body["status"] == status and body["code"] == code
    assert body["title"] and body["detail"] and body["type"]
    assert "Traceback" not in r.get_data(as_text=True)


@pytest.mark.parametrize(
    "model_id",
    ["", ".hidden", "../x", "a/b", "..", "x" * 129, "x" * 10240, "a b", None, 12, ["a"], {"a": 1}],
)
def test_bad_ids_are_400(client: Any, model_id: Any, tmp_path: Any) -> None:
    r = post_download(client, model_id, GOOD_URL)
    assert_problem(r, 400, "invalid-id")
    assert not any(tmp_path.rglob("*.part"))


def test_missing_id_is_400(client: Any) -> None:
    assert_problem(client.post("/models/download", json={"url": GOOD_URL}), 400, "invalid-id")


@pytest.mark.parametrize(
    "url",
    ["", "file:///etc/passwd", "ftp://h/m", "gopher://h/m", "javascript:alert(1)", "http://", "https:///path",
     "http://h/a b", "http://h/\nx", "not a url", "//h/m", "http://h:99999/m", 7, None, "http://h/" + "a" * 9000],
)
def test_bad_urls_are_400(client: Any, url: Any) -> None:
    assert_problem(post_download(client, "m", url), 400, "invalid-url")


@pytest.mark.parametrize("sha", ["", "abc", "g" * 64, "a" * 63, "a" * 65, 5, ["a" * 64]])
def test_bad_sha256_is_400(client: Any, sha: Any) -> None:
    assert_problem(post_download(client, "m", GOOD_URL, sha256=sha), 400, "invalid-sha256")


def test_bad_provider_is_400(client: Any) -> None:
    assert_problem(post_download(client, "m", GOOD_URL, provider=["x"]), 400, "invalid-provider")


def test_not_json_is_415_and_malformed_json_is_400(client: Any) -> None:
    assert_problem(client.post("/models/download", data="id=m", content_type="application/x-www-form-urlencoded"),
                   415, "unsupported-media-type")
    assert_problem(client.post("/models/download"), 415, "unsupported-media-type")
    assert_problem(client.post("/models/download", data="{nope", content_type="application/json"), 400,
                   "invalid-json")
    assert_problem(client.post("/models/download", data="[1,2]", content_type="application/json"), 400,
                   "invalid-body")
    assert_problem(client.post("/models/download/cancel", data="{", content_type="application/json"), 400,
                   "invalid-json")


def test_huge_body_is_413(client: Any) -> None:
    r = client.post("/models/download", data='{"id": "' + "x" * 100_000 + '"}', content_type="application/json")
    assert_problem(r, 413, "body-too-large")


def test_deeply_nested_json_is_400_not_500(client: Any) -> None:
    nested = '{"id": "m", "url": ' + "[" * 20_000 + "]" * 20_000 + "}"
    assert_problem(client.post("/models/download", data=nested, content_type="application/json"), 400,
                   "invalid-json")


class CountingStream(io.RawIOBase):
    """A big request body without a length, as a chunked upload arrives."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.read_bytes)
        buffer[:n] = b" " * n
        self.read_bytes += n
        return n


def test_a_huge_body_without_a_length_is_refused_after_the_limit(app: Any) -> None:
    body = CountingStream(64 * 1024 * 1024)
    environ = EnvironBuilder(path="/models/download", method="POST", content_type="application/json").get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"wsgi.input": body, "wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})
    app_iter, status, _headers = run_wsgi_app(app, environ, buffered=True)
    problem = json.loads(b"".join(app_iter))
    assert status.startswith("413") and problem["code"] == "body-too-large"
    assert body.read_bytes <= 2 * 64 * 1024  # read up to the limit, not the whole body


@pytest.mark.parametrize("query, headers", [
    ("?after=%C2%B2", {}), ("?replay=%C2%B2", {}), ("", {"Last-Event-ID": "\u00b2"}),
    ("?after=-1", {}), ("?after=1e9", {}), ("?after=" + "9" * 21, {}),
])
def test_event_ids_are_ascii_digits(client: Any, query: str, headers: dict[str, str]) -> None:
    assert_problem(client.get("/events" + query, headers=headers), 400, "invalid-event-id")


def test_bad_ids_in_paths_are_400_not_paths(client: Any) -> None:
    assert_problem(client.delete("/models/.hidden"), 400, "invalid-id")
    assert_problem(client.get("/models/downloads/" + "x" * 200), 400, "invalid-id")
    # A slash never reaches the view: that is a route the app does not have.
    assert client.delete("/models/a/../b").status_code in (404, 405)


def test_unknown_routes_and_methods_are_problem_documents(client: Any) -> None:
    assert_problem(client.get("/nowhere"), 404, "not-found")
    assert_problem(client.put("/models"), 405, "method-not-allowed")


def test_probe_and_health(client: Any, app: Any) -> None:
    assert client.get("/healthz").json == {"ok": True}
    probe = client.get("/probe").json
    assert probe["version"] == __version__
    assert probe["state_dir"] == app.config["ARW_STATE_DIR"]
    assert probe["models_dir"].startswith(probe["state_dir"]) and probe["models_dir"].endswith("models")
    assert probe["settings"]["max_conc"] == 2 and probe["settings"]["auth"] == "none"
    # One entry for every setting the service itself reads.
    assert set(probe["settings"]) == {
        "max_conc", "max_mb", "disk_reserve_mb", "connect_timeout_secs", "idle_timeout_secs", "retries",
        "retry_backoff_ms", "retry_backoff_max_ms", "chunk_bytes", "fsync_bytes", "checkpoint_secs", "direct_io", "progress_interval_ms",
        "resume_on_start", "stale_part_hours", "events_replay", "events_queue", "events_keepalive_secs",
        "events_retry_ms", "jobs_keep", "segments", "segment_min_mb", "stream_keep_mb_s", "rate_limit",
        "lock_wait_secs", "events_max_streams", "threads", "body_timeout_secs", "log_format", "auth", "cors_origins",
        "hf_endpoint", "hf_token", "mirrors", "models_mode", "files_at_once", "registry_insecure", "hf_cache",
        "peers", "peers_token", "peer_timeout_secs", "serve_blobs", "serve_gated_blobs",
    }
    # All but ARW_STATE_DIR, ARW_BIND and ARW_PORT (the server's), ARW_ALLOW_REMOTE and ARW_SERVER (the launcher's and the CLI's).
    assert len(probe["settings"]) == len(DEFAULTS) - 5


def test_empty_lists(client: Any) -> None:
    assert client.get("/models").json == {"items": []}
    assert client.get("/models/downloads").json == {"items": []}
    assert_problem(client.get("/models/downloads/nothing"), 404, "unknown-download")
    assert_problem(client.delete("/models/nothing"), 404, "unknown-model")


@responses.activate
def test_resume_sends_range_and_if_range(make_app: Any, tmp_path: Any) -> None:
    from .support.app import Watch
    from .test_downloads import write_partial

    app = make_app()
    data = b"0123456789" * 100
    write_partial(app, "m", data[:400], {"url": GOOD_URL, "etag": '"v1"', "last_modified": "x", "total": 1000})
    responses.get(GOOD_URL, status=206, body=data[400:],
                  headers={"Content-Range": "bytes 400-999/1000", "ETag": '"v1"'})
    watch = Watch(app)
    post_download(app.test_client(), "m", GOOD_URL)
    assert watch.terminal("m")["status"] == "complete"
    sent = responses.calls[0].request.headers
    assert sent["Range"] == "bytes=400-"
    assert sent["If-Range"] == '"v1"'  # the strong ETag wins over Last-Modified
    assert sent["Accept-Encoding"] == "identity"
    watch.close()


@responses.activate
def test_resume_uses_last_modified_when_the_etag_is_weak(make_app: Any) -> None:
    from .support.app import Watch
    from .test_downloads import write_partial

    app = make_app()
    data = b"x" * 1000
    lm = "Wed, 25 Nov 2026 10:00:00 GMT"
    write_partial(app, "m", data[:10], {"url": GOOD_URL, "etag": 'W/"weak"', "last_modified": lm, "total": 1000})
    responses.get(GOOD_URL, status=206, body=data[10:], headers={"Content-Range": "bytes 10-999/1000",
                                                                 "Last-Modified": lm})
    watch = Watch(app)
    post_download(app.test_client(), "m", GOOD_URL)
    assert watch.terminal("m")["status"] == "complete"
    assert responses.calls[0].request.headers["If-Range"] == lm
    watch.close()


@responses.activate
def test_fresh_download_sends_no_range(make_app: Any) -> None:
    from .support.app import Watch

    app = make_app()
    responses.get(GOOD_URL, status=200, body=b"abc")
    watch = Watch(app)
    post_download(app.test_client(), "m", GOOD_URL)
    assert watch.terminal("m")["status"] == "complete"
    headers = responses.calls[0].request.headers
    assert "Range" not in headers and "If-Range" not in headers
    watch.close()
