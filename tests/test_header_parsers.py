"""The header parsers of :mod:`arw_models.engine.headers`, one value at a time:
Content-Range, Retry-After, Content-Length and strong ETags (test_headers.py reads
headers as the engine meets them)."""

from __future__ import annotations

import pytest

from arw_models.engine.headers import (
    ContentRange,
    content_length,
    parse_content_range,
    parse_retry_after,
    strong_etag,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 10-19/100", ContentRange(10, 19, 100)),
        ("bytes 10-19/*", ContentRange(10, 19, None)),
        ("bytes */100", ContentRange(None, None, 100)),
        ("BYTES 0-0/1", ContentRange(0, 0, 1)),
        ("bytes 19-10/100", None),
        ("bytes=10-19/100", None),
        ("items 1-2/3", None),
        ("bytes \u0661\u0660-\u0661\u0669/\u0661\u0660\u0660", None),  # Arabic-Indic digits
        ("", None),
        (None, None),
    ],
)
def test_parse_content_range(value: str | None, expected: ContentRange | None) -> None:
    assert parse_content_range(value) == expected


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 25 Nov 2026 10:00:10 GMT", now=1795600800.0) == 10.0
    assert parse_retry_after("Wed, 25 Nov 2026 10:00:10 GMT", now=1795600900.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("\u00b2") is None  # '²'.isdigit(), yet int('²') raises
    assert parse_retry_after("\u0663") is None


def test_content_length_takes_only_ascii_digits() -> None:
    assert content_length({"Content-Length": " 42 "}) == 42
    assert content_length({"Content-Length": "\u00b2"}) is None
    assert content_length({"Content-Length": "\u0663"}) is None
    assert content_length({"Content-Length": "-1"}) is None
    assert content_length({}) is None


def test_strong_etag() -> None:
    assert strong_etag('"abc"') == '"abc"'
    assert strong_etag('W/"abc"') is None
    assert strong_etag("abc") is None
    assert strong_etag(None) is None
