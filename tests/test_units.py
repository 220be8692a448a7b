from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from arw_models.config import DEFAULTS, Settings, from_env
from arw_models.engine import backoff_delay
from arw_models.engine.headers import (
    ContentRange,
    content_length,
    filename_from_disposition,
    parse_content_range,
    parse_retry_after,
    strong_etag,
    url_filename,
)
from arw_models.redact import redact_text, redact_url
from arw_models.service.events import Event, EventHub
from arw_models.store.storage import sanitize_filename, valid_id


def test_event_frame_is_exact_bytes() -> None:
    event = Event(42, "Models.DownloadProgress", {"id": "m", "status": "queued"}, time="2026-11-25T19:20:00.123Z")
    assert event.encode() == (
        b"id: 42\n"
        b"event: Models.DownloadProgress\n"
        b'data: {"time":"2026-11-25T19:20:00.123Z","kind":"Models.DownloadProgress",'
        b'"payload":{"id":"m","status":"queued"}}\n'
        b"\n"
    )
    assert str(event) == event.encode().decode()


def test_event_frame_without_id_and_with_newlines_in_data() -> None:
    event = Event(None, "service.connected", {"note": "a\nb\r\nc"}, time="2026-11-25T19:20:00.000Z")
    frame = event.encode()
    assert frame.startswith(b"event: service.connected\ndata: {")
    assert b"id:" not in frame
    # One data line, whatever the payload holds: the frame ends at the first blank line.
    assert frame.count(b"\n") == 3 and frame.endswith(b"\n\n")
    assert b'"a\\nb\\r\\nc"' in frame


def test_event_frame_keeps_unicode_as_utf8() -> None:
    frame = Event(1, "k", {"file": "modèle.gguf"}, time="t").encode()
    assert "modèle".encode() in frame


@pytest.mark.parametrize("value", ["a", "qwen2.5-coder-7b", "A_b-C.9", "x" * 128, "-lead", "_x"])
def test_valid_ids(value: str) -> None:
    assert valid_id(value)


@pytest.mark.parametrize(
    "value",
    ["", ".hidden", "..", "../x", "a/b", "a\\b", "x" * 129, "x" * 10240, "a b", "é", "a\x00", "a\n", None, 5, ["a"]],
)
def test_invalid_ids(value: object) -> None:
    assert not valid_id(value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.gguf", "model.gguf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("/abs/path/m.gguf", "m.gguf"),
        ("..", "fallback"),
        ("...", "fallback"),
        (".bashrc", "bashrc"),
        ("a\x00b\x1fc.gguf", "a_b_c.gguf"),
        ("we<ird>:na|me?.gguf", "we_ird__na_me_.gguf"),
        ("name. . ", "name"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("com1.gguf", "_com1.gguf"),
        ("x.part", "x.part.bin"),
        ("x.PART.json", "x.PART.json.bin"),
        ("", "fallback"),
        ("   ", "fallback"),
        ("\u202eevil.gguf", "evil.gguf"),
    ],
)
def test_sanitize_filename(name: str, expected: str) -> None:
    assert sanitize_filename(name, "fallback") == expected


def test_sanitize_filename_shortens_overlong_names_keeping_the_extension() -> None:
    result = sanitize_filename("a" * 500 + ".gguf", "fallback")
    assert result.endswith(".gguf")
    assert len(result.encode()) <= 200
    multibyte = sanitize_filename("é" * 300 + ".gguf", "fallback")
    assert len(multibyte.encode()) <= 200 and multibyte.endswith(".gguf")
    multibyte.encode("utf-8")  # no split character


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('attachment; filename="q.gguf"', "q.gguf"),
        ("attachment; filename*=UTF-8''mod%C3%A8le.gguf", "modèle.gguf"),
        ("attachment", None),
        (None, None),
        ("", None),
    ],
)
def test_filename_from_disposition(header: str | None, expected: str | None) -> None:
    assert filename_from_disposition(header) == expected


def test_url_filename() -> None:
    assert url_filename("https://h/a/b/model%20x.gguf?download=1") == "model x.gguf"
    assert url_filename("https://h/") == ""
    assert url_filename("https://h") == ""


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


def test_redact_url() -> None:
    assert redact_url("https://user:secret@host:8443/p/m.gguf?token=abc#frag") == "https://***@host:8443/p/m.gguf?***"
    assert redact_url("http://host/m.gguf") == "http://host/m.gguf"


def test_backoff_grows_and_is_capped() -> None:
    for failures, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (10, 5.0)):
        for _ in range(50):
            delay = backoff_delay(failures, 0.5, 5.0)
            assert ceiling / 2 <= delay <= ceiling


def test_config_from_env_parses_types_and_rejects_garbage() -> None:
    parsed = from_env({"ARW_MODELS_MAX_CONC": "3", "ARW_DL_RESUME_ON_START": "off", "ARW_ADMIN_TOKEN": "",
                       "ARW_MODELS_MAX_MB": "1.5", "UNRELATED": "x"})
    assert parsed == {"ARW_MODELS_MAX_CONC": 3, "ARW_DL_RESUME_ON_START": False, "ARW_ADMIN_TOKEN": None,
                      "ARW_MODELS_MAX_MB": 1.5}
    with pytest.raises(ValueError, match="ARW_PORT"):
        from_env({"ARW_PORT": "eighty"})
    settings = Settings.from_config(dict(DEFAULTS, ARW_MODELS_MAX_MB=1.5))
    assert settings.max_bytes == int(1.5 * 1024 * 1024)
    assert settings.max_conc == 2 and settings.idle_timeout == 30.0
    with pytest.raises(ValueError):
        Settings.from_config(dict(DEFAULTS, ARW_MODELS_MAX_CONC=0))


def test_hub_ids_increase_and_start_from_the_clock() -> None:
    import time

    before = time.time_ns() // 1000
    hub = EventHub(replay=10)
    ids = [hub.publish("k", {"n": n}).id for n in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert ids[0] >= before
    # A second hub (a restart) numbers after the first one's events.
    assert EventHub().first_id > ids[-1]


def test_redact_text_hides_query_and_userinfo_of_quoted_urls() -> None:
    text = ("HTTPSConnectionPool(host='h', port=443): Max retries exceeded with url: /m.gguf?token=s3cret "
            "(Caused by redirect to 'ftp://user:pw@h/m.gguf?sig=abc')")
    redacted = redact_text(text)
    assert "s3cret" not in redacted and "pw" not in redacted and "abc" not in redacted
    assert "/m.gguf?***" in redacted and "ftp://***@h/m.gguf?***" in redacted
    assert redact_text("connection refused") == "connection refused"



DOCS = Path(__file__).resolve().parent.parent / "docs"


def _docs_renderer() -> Any:
    """docs/_ext/arw_render.py, which renders the configuration page's table."""
    spec = importlib.util.spec_from_file_location("arw_render", DOCS / "_ext" / "arw_render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_page_lists_every_setting_and_no_other() -> None:
    # The table is generated from SETTINGS when the docs are built (`make docs`, in
    # CI); here, what it renders: every key once, with its default and doc line.
    from arw_models.config import SETTINGS

    table = _docs_renderer().settings_rst()
    assert set(re.findall(r"^   \* - ``(ARW_[A-Z_]+)``$", table, re.MULTILINE)) == {s.key for s in SETTINGS}
    assert table.count("   * - ``ARW_") == len(SETTINGS)
    assert all(s.doc for s in SETTINGS)
    assert "     - ``./state``" in table and "     - ``8090``" in table and "     - unset" in table
    page = (DOCS / "configuration.rst").read_text()
    assert "\n.. arw-settings::\n" in page
    # The notes below the table name settings that exist.
    assert set(re.findall(r"``(ARW_[A-Z_]+)``", page)) <= {s.key for s in SETTINGS}
