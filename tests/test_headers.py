"""The origin's headers as :mod:`arw_models.engine.headers` reads them on werkzeug's parsers:
the shapes a download depends on, the malformed values that must come out as None
(never as an exception out of the worker), and, against the local origin, what
the service does with them.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import requests

from arw_models.engine.headers import (
    ContentRange,
    content_length,
    filename_from_disposition,
    parse_content_range,
    parse_retry_after,
    same_version,
    strong_etag,
)

from .support.app import Service, post_download
from .support.helpers import models_dir, read, write_partial
from .support.origin import Origin, payload

HUGE = "9" * 5000  # past Python's limit on the digits of an int: int() raises
LM = "Wed, 25 Nov 2026 10:00:00 GMT"


# -- Content-Range ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-9/*", ContentRange(0, 9, None)),
        ("bytes */100", ContentRange(None, None, 100)),
        ("bytes 0-0/1", ContentRange(0, 0, 1)),
        ("Bytes 5-9/10", ContentRange(5, 9, 10)),
        ("  bytes   0-9/10 \t", ContentRange(0, 9, 10)),
        ("bytes\t0-9/10", ContentRange(0, 9, 10)),
        ("bytes 0-99999999999999999999999/100000000000000000000000",
         ContentRange(0, 99999999999999999999999, 100000000000000000000000)),
    ],
)
def test_content_range_shapes(value: str, expected: ContentRange) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "bytes 0 - 9 / 10",  # werkzeug alone takes blanks inside the range
        "items 0-9/10",  # ... and any unit
        "bytes 0-9",
        "bytes 0-/10",
        "bytes -9/10",
        "bytes 9-0/10",  # end before start
        "bytes 10-19/10",  # start at the total
        "bytes */-0",
        "bytes 0-9/-0",
        "bytes +0-9/10",
        "bytes 0-1_0/20",
        "bytes 0-\u00b2/10",  # '²': isdigit(), yet no ASCII digit
        "bytes \uff10-\uff19/\uff11\uff10",  # fullwidth digits, which int() takes
        "bytes 0-9/10/",
        f"bytes 0-{HUGE}/*",
        f"bytes */{HUGE}",
        "bytes 0-9/10 extra",
    ],
)
def test_malformed_content_range_is_none(value: str) -> None:
    assert parse_content_range(value) is None


# -- Retry-After -----------------------------------------------------------------------

NOW = 1795600800.0  # Wed, 25 Nov 2026 10:00:00 GMT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" 7 ", 7.0),
        ("0", 0.0),
        ("Wed, 25 Nov 2026 10:00:10 GMT", 10.0),
        ("Wed, 25 Nov 2026 10:00:10 -0000", 10.0),  # no zone: UTC, not the local time
        ("Wednesday, 25-Nov-26 10:00:10 GMT", 10.0),  # RFC 850, obsolete but allowed
        ("Wed Nov 25 10:00:10 2026", 10.0),  # asctime
        ("Tue, 24 Nov 2026 10:00:00 GMT", 0.0),  # in the past: at once
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
    ],
)
def test_retry_after(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize("value", ["-5", "1.5", "+5", "\u0665", "soon", "Wed, 25 Nov", "Wed, 31 Feb 2026 10:00:00 GMT",
                                   "", "   "])
def test_malformed_retry_after_is_none(value: str) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_a_huge_retry_after_is_no_error() -> None:
    # The worker caps the delay at ARW_DL_RETRY_BACKOFF_MAX_MS.
    assert parse_retry_after(HUGE) == float("inf")


# -- ETags and the version check ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"abc"', '"abc"'),
        (' "abc" ', '"abc"'),
        ('""', '""'),
        ('W/"abc"', None),
        ('w/"abc"', None),
        ("abc", None),  # unquoted: werkzeug's unquote_etag would take it
        ('"', None),
        ('"a"b"', None),
        ('"abc', None),
        ("", None),
    ],
)
def test_strong_etag(value: str, expected: str | None) -> None:
    assert strong_etag(value) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('"v1"', True),
        (' "v1" ', True),
        ('W/"v1"', False),  # a weak ETag is never strongly equal
        ("v1", False),  # nor an unquoted one
        ('"v2"', False),
    ],
)
def test_same_version_compares_etags_strongly(answer: str, expected: bool) -> None:
    headers = requests.structures.CaseInsensitiveDict({"etag": answer, "Last-Modified": LM})
    assert same_version('"v1"', LM, headers) is expected


def test_same_version_compares_last_modified_as_sent() -> None:
    # The same instant spelt another way is not the recorded validator (If-Range asks for an exact match).
    assert same_version(None, LM, {"Last-Modified": "Wed, 25 Nov 2026 10:00:00 +0000"}) is False
    assert same_version(None, LM, {"Last-Modified": f"  {LM} "}) is True


# -- Content-Length and Content-Disposition -----------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("42", 42), (" 42\t", 42), ("0", 0), ("+42", None), ("4 2", None), ("42.0", None), ("", None), (HUGE, None)],
)
def test_content_length(value: str, expected: int | None) -> None:
    assert content_length({"Content-Length": value}) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("attachment; filename=q.gguf", "q.gguf"),  # a token, unquoted
        ('inline; FILENAME="up.gguf"', "up.gguf"),
        ('attachment; filename="a\\"b.gguf"', 'a"b.gguf'),
        ('attachment; filename=""', None),
        ("attachment; filename*=iso-8859-1''caf%E9.gguf", "café.gguf"),
        ("attachment; filename*0=mod; filename*1=el.gguf", "model.gguf"),
        # The order RFC 6266 recommends: the plain fallback first, then filename*, which wins.
        ("attachment; filename=\"fallback.gguf\"; filename*=UTF-8''mod%C3%A8le.gguf", "modèle.gguf"),
        ('attachment; filename="../../etc/passwd"', "../../etc/passwd"),  # made safe by the caller
    ],
)
def test_filename_from_disposition_edges(header: str, expected: str | None) -> None:
    assert filename_from_disposition(header) == expected


# -- against the local origin --------------------------------------------------------------


def test_a_weak_etag_is_never_sent_in_if_range(service: Service, origin: Origin) -> None:
    """An origin whose ETag is weak: the resume after a dropped connection asks with
    Last-Modified, and its 206 (weak ETag again) is accepted on Last-Modified."""
    app, client, watch = service()
    cut = 200_001
    res = origin.add("/w.gguf", payload(600_000, seed=81), etag='W/"w1"', drop_after=cut)
    post_download(client, "w", origin.url("/w.gguf"))
    assert watch.terminal("w")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "w.gguf")) == res.data
    seen = [(s.range, s.headers.get("if-range"), s.status) for s in origin.requests_for("/w.gguf")]
    assert seen == [(None, None, 200), (f"bytes={cut}-", LM, 206)]


def test_a_retry_after_date_in_the_past_retries_at_once(service: Service, origin: Origin) -> None:
    # Backoff of 30 s or more: only the Retry-After explains a prompt retry.
    app, client, watch = service(ARW_DL_RETRY_BACKOFF_MS=60_000, ARW_DL_RETRY_BACKOFF_MAX_MS=120_000)
    res = origin.add("/r.gguf", payload(100_000, seed=82),
                     statuses=[(503, {"Retry-After": "Sun, 06 Nov 1994 08:49:37 GMT"})])
    post_download(client, "r", origin.url("/r.gguf"))
    assert watch.terminal("r")["status"] == "complete"
    retrying = [p for p in watch.payloads("r") if p["status"] == "retrying"]
    assert [(p["code"], p["delay_ms"]) for p in retrying] == [("http-status", 0)]
    assert [s.status for s in origin.requests_for("/r.gguf")] == [503, 200]
    assert read(os.path.join(models_dir(app), "r.gguf")) == res.data


@pytest.mark.parametrize("content_range", [f"bytes 100000-{HUGE}/*", "bytes 100000-29999\u00b9/300000"],
                         ids=["huge", "superscript-digit"])
def test_a_206_with_an_unreadable_content_range_starts_again(
    service: Service, origin: Origin, content_range: str
) -> None:
    """A range the worker cannot read is a resume-invalid (the .part starts again),
    never an exception out of the worker."""
    app, client, watch = service()
    data = payload(300_000, seed=83)
    res = origin.add("/u.gguf", data, statuses=[(206, {"Content-Range": content_range})])
    write_partial(app, "u", data[:100_000], {"url": origin.url("/u.gguf"), "etag": res.etag,
                                             "last_modified": res.last_modified, "total": len(data)})
    post_download(client, "u", origin.url("/u.gguf"), sha256=hashlib.sha256(data).hexdigest())
    done = watch.terminal("u")
    assert done["status"] == "complete", done
    assert [p["code"] for p in watch.payloads("u") if p["status"] == "retrying"] == ["resume-invalid"]
    assert [(s.range, s.status) for s in origin.requests_for("/u.gguf")] == [("bytes=100000-", 206), (None, 200)]
    assert read(os.path.join(models_dir(app), "u.gguf")) == data


def test_filename_star_names_the_installed_file(service: Service, origin: Origin) -> None:
    app, client, watch = service()
    origin.add("/dl", payload(50_000, seed=84),
               content_disposition="attachment; filename=\"fallback.gguf\"; filename*=UTF-8''mod%C3%A8le.gguf")
    post_download(client, "d", origin.url("/dl?id=7"))
    assert watch.terminal("d")["status"] == "complete"
    assert os.listdir(models_dir(app)) == ["modèle.gguf"]
