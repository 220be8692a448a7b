"""The web page in a real headless Chromium, for models of many files: a job or an
installed model with ``files`` is one row whose toggle opens a row of its files
(size, progress, state), updated in place by events; a single-file row is as it
was. The page is served by a stand-in of the API answering with the agreed
many-file shapes (tests/support/standin.py): a test of the page; and once by the
real app with a real job of a hub repository (the hub stand-in): the page and the
service agree."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from .support.app import LiveServer
from .support.browser import chromium
from .support.hub import Hub, needs_second_host
from .support.origin import payload
from .support.standin import StandIn, standin

KiB = 1024
MiB = 1024 * KiB
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "chromium-profile") as context:
        yield context


@pytest.fixture
def service() -> Iterator[StandIn]:
    with standin() as server:
        yield server


def many(status: str, *states: tuple[str, int, int, str]) -> dict[str, Any]:
    files = [{"path": p, "downloaded": d, "total": t, "status": s} for p, d, t, s in states]
    done, total = sum(f["downloaded"] for f in files), sum(f["total"] for f in files)
    return {"id": "tiny", "url": "hf://acme/tiny-model", "status": status, "revision": COMMIT, "downloaded": done,
            "total": total, "progress": done * 100 // total, "speed": MiB, "eta_s": 2.0, "files": files}


def file_rows(page: Any, table: str, model_id: str) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(
        f'#{table} tr.files-row[data-files-of="{model_id}"] tbody tr',
        """rows => rows.map(r => ({path: r.dataset.path, status: r.dataset.status || null,
            cells: Array.from(r.cells).map(c => c.textContent),
            bar: r.querySelector("progress") ? r.querySelector("progress").value : null}))""")


def test_a_many_file_job_and_model_open_to_their_files(service: StandIn, browser: Any) -> None:
    service.jobs = {
        "tiny": many("downloading", ("config.json", 700, 700, "stored"),
                     ("model.safetensors", MiB, 4 * MiB, "downloading"), ("tokenizer/vocab.json", 0, 2 * KiB, "queued")),
        "one": {"id": "one", "url": "https://host/one.gguf", "status": "downloading", "downloaded": MiB,
                "total": 2 * MiB, "progress": 50},
    }
    service.models = [
        {"id": "solo", "file": "solo.gguf", "path": "/s/models/solo.gguf", "bytes": 2 * MiB, "sha256": "b" * 64,
         "status": "available"},
        {"id": "repo", "file": "repo-folder", "path": "/s/models/repo-folder", "bytes": 3 * MiB + 700, "sha256": None,
         "status": "available", "revision": COMMIT,
         "files": [{"path": "config.json", "bytes": 700, "sha256": "c" * 64, "git_oid": "d" * 40},
                   {"path": "weights/model.safetensors", "bytes": 3 * MiB, "sha256": "e" * 64}]},
    ]
    page = browser.new_page()
    page.goto(service.url + "/")
    page.wait_for_selector('#conn[data-state="live"]')

    # The job: one row, its toggle says how many files are done; the list is closed.
    toggle = page.locator('#downloads tr[data-id="tiny"] button.files-toggle')
    assert toggle.inner_text() == "1/3 files"
    assert toggle.get_attribute("aria-expanded") == "false"
    files_row = page.locator('#downloads tr.files-row[data-files-of="tiny"]')
    assert files_row.is_hidden()
    toggle.click()
    assert files_row.is_visible() and toggle.get_attribute("aria-expanded") == "true"
    assert file_rows(page, "downloads", "tiny") == [
        {"path": "config.json", "status": "stored", "cells": ["config.json", "in store", "", "700 B / 700 B"],
         "bar": 100},
        {"path": "model.safetensors", "status": "downloading",
         "cells": ["model.safetensors", "downloading", "", "1.00 MiB / 4.00 MiB"], "bar": 25},
        {"path": "tokenizer/vocab.json", "status": "queued", "cells": ["tokenizer/vocab.json", "queued", "", "0 B / 2.00 KiB"],
         "bar": 0},
    ]

    # Events update the open list in place.
    service.push(many("downloading", ("config.json", 700, 700, "stored"),
                      ("model.safetensors", 4 * MiB, 4 * MiB, "verifying"),
                      ("tokenizer/vocab.json", KiB, 2 * KiB, "downloading")))
    page.wait_for_function("""() => {
        const r = document.querySelector('#downloads tr.files-row[data-files-of="tiny"] tr[data-path="tokenizer/vocab.json"]');
        return r && r.dataset.status === "downloading";
    }""")
    rows = file_rows(page, "downloads", "tiny")
    assert [(r["status"], r["bar"]) for r in rows] == [("stored", 100), ("verifying", 100), ("downloading", 50)]
    failed = many("error", ("config.json", 700, 700, "stored"), ("model.safetensors", 4 * MiB, 4 * MiB, "complete"),
                  ("tokenizer/vocab.json", KiB, 2 * KiB, "failed"))
    service.push(dict(failed, code="checksum-mismatch", error="checksum mismatch", resumable=False))
    page.wait_for_selector('#downloads tr[data-id="tiny"][data-status="error"]')
    assert toggle.inner_text() == "2/3 files" and files_row.is_visible()
    assert [r["status"] for r in file_rows(page, "downloads", "tiny")] == ["stored", "complete", "failed"]
    assert "status-failed" in page.locator(
        '#downloads tr.files-row tr[data-path="tokenizer/vocab.json"] td.status').get_attribute("class")
    toggle.click()
    assert files_row.is_hidden()

    # A single-file job: the row as it always was, no toggle, no row under it.
    assert page.locator('#downloads tr[data-id="one"] button.files-toggle').count() == 0
    assert page.locator('#downloads > tbody > tr').count() == 3  # tiny, its files, one
    assert page.locator('#downloads tr[data-id="one"] td').first.inner_text() == "one"

    # The installed model of many files: its folder's row opens to each file.
    model_toggle = page.locator('#models tr[data-id="repo"] button.files-toggle')
    assert model_toggle.inner_text() == "2 files"
    model_toggle.click()
    assert file_rows(page, "models", "repo") == [
        {"path": "config.json", "status": None, "cells": ["config.json", "700 B", "cccccccccccc…"], "bar": None},
        {"path": "weights/model.safetensors", "status": None,
         "cells": ["weights/model.safetensors", "3.00 MiB", "eeeeeeeeeeee…"], "bar": None},
    ]
    solo = page.locator('#models tr[data-id="solo"]')
    assert solo.locator("button.files-toggle").count() == 0
    assert solo.locator("td").nth(1).inner_text() == "solo.gguf"
    assert page.locator('#models > tbody > tr').count() == 3  # solo, repo, repo's files

    # Removed from the listing: the row and its list go together.
    service.models = service.models[:1]
    service.push({"id": "repo"}, kind="Models.Changed")
    page.wait_for_function("() => !document.querySelector('#models tr[data-id=\"repo\"]')")
    assert page.locator('#models > tbody > tr').count() == 1


@needs_second_host
def test_a_real_hub_job_shows_its_files_from_the_first_event_to_the_installed_model(
        make_app: Callable[..., Any], browser: Any) -> None:
    token = "hf_WeBToKeN0123456789abcdefghijXYZ"
    hub = Hub(token=token)
    try:
        files = {"config.json": b'{"model_type": "tiny"}\n', "small.safetensors": payload(64 * KiB, seed=61),
                 "big.safetensors": payload(512 * KiB, seed=62)}
        hub.commit("acme-ai/Web-Coder", files)
        big = hashlib.sha256(files["big.safetensors"]).hexdigest()
        # The big file stops a quarter in until the test lets it go on (the service retries from there).
        held = hub.cdn.add(f"/repos/{big[:2]}/{big[2:4]}/{big}", files["big.safetensors"], stall_after=128 * KiB)
        live = LiveServer(make_app(ARW_HF_ENDPOINT=hub.endpoint, ARW_HF_TOKEN=token))
        try:
            answer = requests.post(live.url + "/models/download",
                                   json={"id": "tiny", "url": "hf://acme-ai/Web-Coder"}, timeout=5)
            assert answer.status_code == 202, answer.text
            assert held.stalled.wait(10)
            page = browser.new_page()
            page.goto(live.url + "/")
            page.wait_for_selector('#conn[data-state="live"]')
            toggle = page.locator('#downloads tr[data-id="tiny"] button.files-toggle')
            page.wait_for_function("""() => {
                const t = document.querySelector('#downloads tr[data-id="tiny"] button.files-toggle');
                return t && t.textContent === "2/3 files";
            }""")
            toggle.click()
            # Every byte before the stall read by the service, and shown.
            page.wait_for_function("""() => {
                const r = document.querySelector('#downloads tr.files-row tr[data-path="big.safetensors"]');
                return r && r.querySelector("progress").value === 25;
            }""")
            rows = {r["path"]: r for r in file_rows(page, "downloads", "tiny")}
            assert rows["big.safetensors"]["status"] == "downloading"
            assert rows["big.safetensors"]["cells"][3] == "128.0 KiB / 512.0 KiB"
            assert [rows[p]["status"] for p in ("config.json", "small.safetensors")] == ["complete", "complete"]

            held.release.set()
            page.wait_for_selector('#downloads tr[data-id="tiny"][data-status="complete"]')
            # The last event says how each file ended: none is left "downloading" or "verifying".
            assert toggle.inner_text() == "3/3 files"
            assert {r["path"]: (r["status"], r["bar"]) for r in file_rows(page, "downloads", "tiny")} == {
                p: ("complete", 100) for p in files}

            # The installed model: its row opens to each file with its size and digest.
            model_toggle = page.locator('#models tr[data-id="tiny"] button.files-toggle')
            model_toggle.wait_for()
            assert model_toggle.inner_text() == "3 files"
            model_toggle.click()
            shown = {r["path"]: r["cells"][1:] for r in file_rows(page, "models", "tiny")}
            assert shown["big.safetensors"] == ["512.0 KiB", big[:12] + "…"]
            assert shown["small.safetensors"][0] == "64.0 KiB"
        finally:
            held.release.set()
            live.close()
    finally:
        hub.close()
