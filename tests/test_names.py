"""File names: a name from the url or ``Content-Disposition`` and the name made
when it collides with another model's file both fit the file system's limit on a
name (in UTF-8 bytes), keep the extension, and cut the stem between characters.
Model ids, and the names taken from a url or a ``Content-Disposition``, one by one."""

from __future__ import annotations

import os
from urllib.parse import quote

import pytest

from arw_models.engine.headers import (
    filename_from_disposition,
    url_filename,
)
from arw_models.store.names import free_name
from arw_models.store.storage import MAX_NAME_BYTES, sanitize_filename, valid_id

from .support.app import Service, post_download
from .support.helpers import models_dir, read
from .support.origin import Origin, payload

NAME_MAX = 255  # bytes, on Linux file systems
LONG_ID = "m" * 100  # "-<id>" alone would push a 200-byte name past NAME_MAX

# 250 bytes each: plain ASCII, and 3-byte characters whose cut lands inside one.
ASCII = "a" * 245 + ".gguf"
MULTIBYTE = "模" * 81 + "é" + ".gguf"


@pytest.mark.parametrize("name", [ASCII, MULTIBYTE], ids=["ascii", "multibyte"])
@pytest.mark.parametrize("via", ["url", "content-disposition"])
def test_a_long_name_that_collides_gets_a_name_that_fits(service: Service, origin: Origin, name: str,
                                                         via: str) -> None:
    assert len(name.encode("utf-8")) == 250
    app, client, watch = service()
    paths = []
    for n in range(2):
        if via == "url":
            path = f"/{n}/{quote(name)}"
            origin.add(path, payload(4096, seed=n))
        else:
            path = f"/{n}/download"
            origin.add(path, payload(4096, seed=n),
                       content_disposition=f"attachment; filename*=UTF-8''{quote(name)}")
        paths.append(path)
    first = post_download(client, "first", origin.url(paths[0]))
    assert first.status_code == 202
    assert watch.terminal("first")["status"] == "complete"
    post_download(client, LONG_ID, origin.url(paths[1]))
    done = watch.terminal(LONG_ID)
    assert done["status"] == "complete", done
    made = done["file"]
    installed = {m["id"]: m["file"] for m in client.get("/models").json["items"]}
    taken = installed["first"]
    assert installed[LONG_ID] == made != taken
    for file in (taken, made):
        assert len(file.encode("utf-8")) <= MAX_NAME_BYTES < NAME_MAX
        assert file.endswith(".gguf")
    stem = made[: -len(".gguf")]
    assert stem.endswith("-" + LONG_ID)
    assert name.startswith(stem[: -len("-" + LONG_ID)])  # a prefix of whole characters
    assert read(os.path.join(models_dir(app), made)) == payload(4096, seed=1)


@pytest.mark.parametrize("ext", [".gguf", ""])
def test_free_name_cuts_the_stem_on_a_character_boundary(ext: str) -> None:
    name = "é" * 90 + "模" * 6 + ext  # 198 bytes with the extension
    taken = {name}
    made = free_name(name, "i" * 128, taken.__contains__)
    assert len(made.encode("utf-8")) <= MAX_NAME_BYTES and made.endswith("-" + "i" * 128 + ext)
    assert name.startswith(made[: -len("-" + "i" * 128 + ext)])
    taken.add(made)
    again = free_name(name, "i" * 128, taken.__contains__)
    assert again.endswith("-" + "i" * 128 + "-2" + ext) and len(again.encode("utf-8")) <= MAX_NAME_BYTES


def test_a_short_name_is_kept_whole() -> None:
    assert free_name("a.gguf", "m", lambda n: False) == "a.gguf"
    assert free_name("a.gguf", "m", {"a.gguf"}.__contains__) == "a-m.gguf"


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


def test_a_name_another_model_holds_is_not_taken_even_when_its_file_is_missing(
        service: Service, origin: Origin) -> None:
    """Another model is recorded under the name, though its file was removed by hand:
    the name stays that model's (a repair, or its delete, still refers to it), so a
    new download of the same name gets a name of its own."""
    app, client, watch = service()
    first = origin.add("/a/model.gguf", payload(1000, seed=71))
    second = origin.add("/b/model.gguf", payload(1000, seed=72))
    post_download(client, "first", origin.url("/a/model.gguf"), sha256=first.sha256)
    assert watch.terminal("first")["file"] == "model.gguf"
    os.remove(os.path.join(models_dir(app), "model.gguf"))
    post_download(client, "second", origin.url("/b/model.gguf"), sha256=second.sha256)
    name = watch.terminal("second")["file"]
    assert name != "model.gguf"
    assert read(os.path.join(models_dir(app), name)) == second.data
    items = {m["id"]: m for m in client.get("/models").json["items"]}
    assert (items["first"]["file"], items["first"]["status"]) == ("model.gguf", "missing")
