"""Urls are shown without what may carry credentials: userinfo and query strings, and
also path parameters (``/f.bin;token=...`` in any segment) and fragments, in answers,
events, the model list and logs, while the sidecar and ``models.json`` keep the full
url (a resume and a repeated POST compare it). And port 0 is no url to fetch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import pytest

from arw_models.engine.headers import (
    url_filename,
)
from arw_models.redact import redact_text, redact_url

from .support.app import Service, Watch, post_download
from .support.helpers import sidecar, write_partial
from .support.origin import Origin, payload
from .support.servers import closed_port

SECRETS = ("SECRET",)
PATH = "/d;sess=SECRET1/f.bin;token=SECRET2"


def assert_hidden(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} shows in {where}: {text}"


def assert_hidden_in_events(watch: Watch) -> None:
    assert watch.events
    for event in watch.events:
        assert_hidden(event.encode().decode("utf-8"), f"the event {event!r}")


def assert_hidden_in_logs(caplog: Any) -> int:
    """The service's own log records (urllib3's debug log is not ours); returns their number."""
    records = [r for r in caplog.records if r.name.startswith("arw_models")]
    for record in records:
        assert_hidden(record.getMessage(), f"the log record {record.name}")
    return len(records)


# -- the functions ----------------------------------------------------------------------


def test_redact_url_hides_path_parameters_in_every_segment_and_the_fragment() -> None:
    assert redact_url("http://h:8080/d;sess=S1/f.bin;token=S2;x=y?q=S3#S4") == "http://h:8080/d;***/f.bin;***?***"
    assert redact_url("https://h/f.bin#S4") == "https://h/f.bin"
    assert redact_url("https://h/a/b.gguf") == "https://h/a/b.gguf"


def test_redact_text_hides_path_parameters_and_fragments_of_quoted_urls_only() -> None:
    text = ("HTTPConnectionPool(host='h', port=80): Max retries exceeded with url: /d;s=S1/f.bin;token=S2 "
            "(Caused by NewConnectionError('refused; giving up')); see 'http://h/f.bin#S3'")
    redacted = redact_text(text)
    assert "S1" not in redacted and "S2" not in redacted and "S3" not in redacted
    assert "url: /d;***/f.bin;*** (Caused by" in redacted and "'http://h/f.bin#***'" in redacted
    assert "refused; giving up" in redacted  # a semicolon in prose is no path parameter
    assert redact_text("no space left; retry #3") == "no space left; retry #3"


def test_the_file_name_from_the_url_leaves_out_path_parameters() -> None:
    assert url_filename("http://h/d;s=1/f.bin;token=SECRET") == "f.bin"


# -- everywhere a url is shown --------------------------------------------------------------


def test_path_parameters_and_fragments_are_shown_nowhere(service: Service, origin: Origin, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="arw_models")
    app, client, watch = service()
    res = origin.add(PATH, payload(512 * 1024, seed=80), stall_after=128 * 1024)
    url = origin.url(PATH) + "#frag-SECRET3"
    try:
        r = post_download(client, "m", url)
        assert r.status_code == 202
        assert_hidden(r.get_data(as_text=True), "the 202 answer")
        assert r.json["url"] == origin.url("/d;***/f.bin;***")
        watch.status("m", "started")  # its sidecar is written
        listing = client.get("/models/downloads")
        assert [j["id"] for j in listing.json["items"]] == ["m"]
        assert_hidden(listing.get_data(as_text=True), "the job listing")
        assert_hidden(client.get("/models/downloads/m").get_data(as_text=True), "the job")
        conflict = post_download(client, "m", origin.url(PATH) + "#other")
        assert conflict.status_code == 409
        assert_hidden(conflict.get_data(as_text=True), "the 409 answer")
        with open(sidecar(app, "m")) as fh:
            assert json.load(fh)["url"] == url  # a resume needs the whole url
    finally:
        res.release.set()
    done = watch.terminal("m")
    assert done["status"] == "complete" and done["file"] == "f.bin"
    models = client.get("/models")
    assert [(m["id"], m["file"]) for m in models.json["items"]] == [("m", "f.bin")]
    assert_hidden(models.get_data(as_text=True), "GET /models")
    assert_hidden(client.get("/models/downloads/m").get_data(as_text=True), "the finished job")
    assert_hidden_in_events(watch)
    assert_hidden_in_logs(caplog)
    with open(os.path.join(app.config["ARW_STATE_DIR"], "models.json")) as fh:
        assert [m["url"] for m in json.load(fh)["models"].values()] == [url]  # the same POST is recognized
    assert post_download(client, "m", url).status_code == 200
    assert {s.path for s in origin.requests_for(PATH)} == {PATH}  # the origin got them (not the fragment)


@pytest.mark.parametrize("failure", ["http-status", "connection-refused"])
def test_path_parameters_are_not_in_error_events_or_logs(
    service: Service, origin: Origin, caplog: Any, failure: str
) -> None:
    # urllib3 quotes the request target (path parameters included) in its exception text.
    caplog.set_level(logging.DEBUG, logger="arw_models")
    _, client, watch = service(ARW_DL_RETRIES=1)
    if failure == "http-status":
        origin.add(PATH, b"", statuses=[(503, {})] * 2)
        url = origin.url(PATH) + "#frag-SECRET4"
    else:
        url = f"http://127.0.0.1:{closed_port()}{PATH}#frag-SECRET4"
    assert post_download(client, "m", url).status_code == 202
    err = watch.terminal("m")
    assert err["status"] == "error" and err["code"] == failure
    assert "retrying" in watch.statuses("m")
    assert_hidden(client.get("/models/downloads/m").get_data(as_text=True), "the failed job")
    assert_hidden_in_events(watch)
    assert assert_hidden_in_logs(caplog) >= 2  # the retry and the failure


def test_a_partial_download_left_by_an_earlier_run_lists_its_url_redacted(service: Service) -> None:
    app, client, _ = service()
    write_partial(app, "p", b"x" * 100, {"url": "http://127.0.0.1:9/a;k=SECRET/p.gguf;t=SECRET#frag-SECRET5",
                                         "etag": '"e"', "total": 1000})
    listed = client.get("/models/downloads")
    assert [(i["id"], i["url"]) for i in listed.json["items"]] == [("p", "http://127.0.0.1:9/a;***/p.gguf;***")]
    assert_hidden(listed.get_data(as_text=True), "the listing of a partial download")
    assert_hidden(client.get("/models/downloads/p").get_data(as_text=True), "a partial download")


# -- port 0 -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:0/m.gguf", "https://example.org:00/m.gguf",
                                 "http://[::1]:0/m.gguf"])
def test_port_zero_is_an_invalid_url(service: Service, url: str) -> None:
    app, client, watch = service()
    r = post_download(client, "z", url)
    assert r.status_code == 400 and r.mimetype == "application/problem+json"
    assert r.json["code"] == "invalid-url" and r.json["status"] == 400
    assert client.get("/models/downloads/z").status_code == 404
    assert watch.events == [] and not os.path.exists(sidecar(app, "z"))


KiB = 1024


CREDENTIALS = ("secret", "user:", "abcXYZ", "token=")


def assert_no_secret(text: str, where: str) -> None:
    for secret in CREDENTIALS:
        assert secret not in text, f"{secret!r} shows in {where}: {text}"


def assert_no_secret_in_logs(caplog: Any) -> int:
    """The service's own log records (urllib3's debug log is not ours); returns their number."""
    records = [r for r in caplog.records if r.name.startswith("arw_models")]
    for record in records:
        assert_no_secret(record.getMessage(), f"the log record {record.name}")
    return len(records)


def test_credentials_in_the_url_are_shown_nowhere(app: Any, client: Any, origin: Any, watch: Any,
                                                  caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="arw_models")
    res = origin.add("/m.gguf", payload(512 * KiB, seed=8), stall_after=128 * KiB)
    host, port = origin.base.removeprefix("http://").split(":")
    url = f"http://user:secret@{host}:{port}/m.gguf?token=abcXYZ"
    try:
        r = post_download(client, "m", url, sha256=res.sha256)
        assert r.status_code == 202
        assert_no_secret(r.get_data(as_text=True), "the 202 answer")
        assert_no_secret(r.headers["Location"], "the Location header")
        assert r.json["url"].startswith("http://") and "/m.gguf" in r.json["url"]
        assert res.stalled.wait(5)
        listing = client.get("/models/downloads")
        assert [j["id"] for j in listing.json["items"]] == ["m"]
        assert_no_secret(listing.get_data(as_text=True), "the job listing")
        assert_no_secret(client.get("/models/downloads/m").get_data(as_text=True), "the job")
        # The same POST again answers with the running job, redacted too.
        again = post_download(client, "m", url, sha256=res.sha256)
        assert again.status_code == 202
        assert_no_secret(again.get_data(as_text=True), "the repeated 202 answer")
        conflict = post_download(client, "m", url + "&other=1")
        assert conflict.status_code == 409
        assert_no_secret(conflict.get_data(as_text=True), "the 409 answer")
        res.release.set()
        assert watch.terminal("m")["status"] == "complete"
        models = client.get("/models")
        assert [m["id"] for m in models.json["items"]] == ["m"]
        assert_no_secret(models.get_data(as_text=True), "GET /models")
        assert_no_secret(client.get("/models/downloads/m").get_data(as_text=True), "the finished job")
        assert_no_secret(client.get("/probe").get_data(as_text=True), "the probe")
        for event in watch.events:
            assert_no_secret(event.encode().decode("utf-8"), f"the event {event!r}")
        # The transfer itself did use the full url.
        seen = origin.requests_for("/m.gguf")
        assert seen and seen[0].path == "/m.gguf?token=abcXYZ"
        assert seen[0].headers.get("authorization", "").startswith("Basic ")
        assert_no_secret_in_logs(caplog)
    finally:
        res.release.set()


def test_credentials_in_the_url_are_not_in_network_error_messages(make_app: Callable[..., Any], caplog: Any) -> None:
    # urllib3 quotes the request target (path and query) in its exception text,
    # which ends up in the retrying and error events and in the log.
    caplog.set_level(logging.DEBUG, logger="arw_models")
    app = make_app(ARW_DL_RETRIES=1)
    watch = Watch(app)
    try:
        url = f"http://user:secret@127.0.0.1:{closed_port()}/m.gguf?token=abcXYZ"
        r = post_download(app.test_client(), "m", url)
        assert r.status_code == 202
        assert watch.terminal("m")["code"] == "connection-refused"
        assert "retrying" in watch.statuses("m")
        assert_no_secret(app.test_client().get("/models/downloads/m").get_data(as_text=True), "the failed job")
        for event in watch.events:
            assert_no_secret(event.encode().decode("utf-8"), f"the event {event!r}")
        assert assert_no_secret_in_logs(caplog) >= 2  # the retry and the failure
    finally:
        watch.close()


def test_credentials_in_a_redirect_target_are_not_in_the_error(service: Service, origin: Origin) -> None:
    """``requests`` quotes the whole redirect target
    (userinfo included) when it has no adapter for its scheme."""
    _, client, watch = service()
    target = "ftp://user:secret@127.0.0.1/m.gguf?token=abcXYZ"
    origin.add("/r.gguf", payload(10), statuses=[(302, {"Location": target})])
    post_download(client, "r", origin.url("/r.gguf"))
    err = watch.terminal("r")
    assert err["status"] == "error" and err["code"] == "invalid-redirect"
    assert "ftp://***@127.0.0.1/m.gguf?***" in err["error"]
    texts = [e.encode().decode() for e in watch.events] + [client.get("/models/downloads/r").get_data(as_text=True)]
    for text in texts:
        assert "secret" not in text and "abcXYZ" not in text, text


@pytest.mark.parametrize("target", ["http://[::1/m.gguf?token=abcXYZ", "http://127.0.0.1:99999/m.gguf?token=abcXYZ"],
                         ids=["ipv6-left-open", "port-out-of-range"])
def test_a_redirect_to_a_url_that_cannot_be_parsed_is_invalid_url_without_its_secrets(
        service: Service, origin: Origin, target: str) -> None:
    """A redirect whose target has no valid host ends the job at once as
    ``invalid-url`` (retrying would only be sent there again), and what ``requests``
    quotes of that target keeps its query to itself."""
    _, client, watch = service()
    origin.add("/v.gguf", payload(10), statuses=[(302, {"Location": target})])
    post_download(client, "v", origin.url("/v.gguf"))
    err = watch.terminal("v")
    assert err["status"] == "error" and err["code"] == "invalid-url", err
    assert err["error"].startswith("cannot fetch: ")
    assert "retrying" not in watch.statuses("v")
    texts = [e.encode().decode() for e in watch.events] + [client.get("/models/downloads/v").get_data(as_text=True)]
    for text in texts:
        assert "abcXYZ" not in text, text


def test_redact_url() -> None:
    assert redact_url("https://user:secret@host:8443/p/m.gguf?token=abc#frag") == "https://***@host:8443/p/m.gguf?***"
    assert redact_url("http://host/m.gguf") == "http://host/m.gguf"


def test_redact_text_hides_query_and_userinfo_of_quoted_urls() -> None:
    text = ("HTTPSConnectionPool(host='h', port=443): Max retries exceeded with url: /m.gguf?token=s3cret "
            "(Caused by redirect to 'ftp://user:pw@h/m.gguf?sig=abc')")
    redacted = redact_text(text)
    assert "s3cret" not in redacted and "pw" not in redacted and "abc" not in redacted
    assert "/m.gguf?***" in redacted and "ftp://***@h/m.gguf?***" in redacted
    assert redact_text("connection refused") == "connection refused"
