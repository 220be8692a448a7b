"""The web page in a real headless Chromium, against the service under a real server
and the local origin: starting, following, pausing, cancelling and removing
downloads from the page, a reload in the middle of one, and a service that goes
away behind nginx and comes back.

``WEB_PAGE_SCREENSHOT=path`` saves the screenshot taken mid-download there (the
picture in docs/web.rst is made so)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

import arw_models.server.web
from arw_models import ArwModels

from .support.app import FAST, LiveServer
from .support.browser import NginxProxy, StaticSite, chromium, nginx_binary
from .support.helpers import listing
from .support.origin import Origin, payload

MiB = 1024 * 1024
TOKEN = "web-page-token-3f9a"
WEB = Path(arw_models.server.web.__file__).parent


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "chromium-profile") as context:
        yield context


def row(page: Any, table: str, model_id: str) -> Any:
    return page.locator(f'#{table} tr[data-id="{model_id}"]')


def bar(page: Any, model_id: str) -> int:
    return int(page.eval_on_selector(f'#downloads tr[data-id="{model_id}"] progress', "p => p.value"))


def wait_row(page: Any, model_id: str, status: str, least: int = 0, below: int = 101) -> int:
    """Waits until the download row shows ``status`` with a bar in [least, below);
    returns the bar's value."""
    page.wait_for_function(
        """([id, status, least, below]) => {
            const r = document.querySelector(`#downloads tr[data-id="${id}"]`);
            if (!r || r.dataset.status !== status) return false;
            const v = r.querySelector("progress").value;
            return v >= least && v < below;
        }""",
        arg=[model_id, status, least, below],
        polling=50,
    )
    return bar(page, model_id)


def screenshot(page: Any, tmp_path: Path) -> None:
    path = tmp_path / "page.png"
    page.screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("WEB_PAGE_SCREENSHOT"):
        shutil.copyfile(path, os.environ["WEB_PAGE_SCREENSHOT"])


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LiveServer]:
    """A host app with the service under /ai and an admin token, on a real server."""
    app = Flask("host")
    app.config.update(FAST, ARW_STATE_DIR=str(tmp_path / "state"), ARW_ADMIN_TOKEN=TOKEN,
                      ARW_DL_PROGRESS_INTERVAL_MS=100)

    @app.get("/")
    def home() -> str:
        return "the host's own page"

    ArwModels(app, url_prefix="/ai")
    server = LiveServer(app)
    yield server
    server.close()


def test_the_page_starts_follows_pauses_cancels_and_removes_downloads(
    host: LiveServer, origin: Origin, browser: Any, tmp_path: Path
) -> None:
    api = host.url + "/ai"
    alpha = origin.add("/alpha.gguf", payload(3 * MiB, seed=1), stall_after=MiB, throttle=MiB)
    origin.add("/beta.gguf", payload(12 * MiB, seed=2), throttle=3 * MiB // 2)
    page = browser.new_page()
    page.goto(api + "/")

    # The service wants a token: the page asks for it before it follows events,
    # and says so when the one given is refused.
    page.locator("#token-input").fill("not-" + TOKEN)
    page.locator("#token-form button[type=submit]").click()
    page.wait_for_selector('#conn[data-state="disconnected"]:text("refused")')
    assert "refused" in page.locator("#token-why").inner_text()
    page.locator("#token-input").fill(TOKEN)
    page.locator("#token-form button[type=submit]").click()
    page.wait_for_selector('#conn[data-state="live"]')
    assert page.locator("#token-form").is_hidden()

    # Start from the form; the origin holds the file at a third until released.
    page.locator('#download-form input[name="id"]').fill("alpha")
    page.locator('#download-form input[name="url"]').fill(origin.url("/alpha.gguf"))
    page.locator('#download-form input[name="sha256"]').fill(alpha.sha256)
    page.locator("#download-form button[type=submit]").click()
    assert alpha.stalled.wait(10)
    wait_row(page, "alpha", "downloading", least=33)

    # A reload in the middle: the snapshot shows the bar where it was, no token asked.
    page.reload()
    page.wait_for_selector('#conn[data-state="live"]')
    assert page.locator("#token-form").is_hidden()
    assert wait_row(page, "alpha", "downloading", least=33, below=34) == 33
    alpha.release.set()
    # ...and the events move it on from there, to a complete row.
    wait_row(page, "alpha", "downloading", least=34, below=100)
    wait_row(page, "alpha", "complete", least=100)
    installed = row(page, "models", "alpha")
    installed.wait_for()
    assert installed.locator("td").all_inner_texts()[:5] == [
        "alpha", "alpha.gguf", "3.00 MiB", alpha.sha256[:12] + "…", "available"]

    # Another download: pause it, resume it, cancel it.
    page.locator('#download-form input[name="id"]').fill("beta")
    page.locator('#download-form input[name="url"]').fill(origin.url("/beta.gguf"))
    page.locator("#download-form button[type=submit]").click()
    wait_row(page, "beta", "downloading", least=15)
    screenshot(page, tmp_path)
    beta_row = row(page, "downloads", "beta")
    beta_row.get_by_role("button", name="Pause").click()
    wait_row(page, "beta", "paused")
    assert requests.get(api + "/models/downloads/beta", timeout=5).json()["status"] == "paused"
    assert "beta.part" in listing(host.app)
    beta_row.get_by_role("button", name="Resume").click()
    wait_row(page, "beta", "downloading", least=1)
    beta_row.get_by_role("button", name="Cancel").click()
    wait_row(page, "beta", "canceled")
    assert requests.get(api + "/models/downloads/beta", timeout=5).json()["status"] == "canceled"
    assert "beta.part" not in listing(host.app)

    # Remove the model: two clicks, then it is gone from the page and the service.
    remove = installed.get_by_role("button", name="Remove")
    remove.click()
    installed.get_by_role("button", name="Really remove?").click()
    installed.wait_for(state="detached")
    assert requests.get(api + "/models", timeout=5).json()["items"] == []
    assert "alpha.gguf" not in listing(host.app)
    assert page.locator("#message").is_hidden()
    # The host's own page is its own.
    assert requests.get(host.url + "/", timeout=5).text == "the host's own page"


def test_a_page_behind_nginx_says_it_is_disconnected_and_catches_up_after_a_restart(
    make_app: Callable[..., Any], origin: Origin, browser: Any, tmp_path: Path
) -> None:
    settings = {"ARW_EVENTS_RETRY_MS": 300, "ARW_DL_PROGRESS_INTERVAL_MS": 100}
    first = LiveServer(make_app(**settings))
    port = first.server.server_port
    proxy = NginxProxy(nginx_binary(), tmp_path / "nginx", port)
    second: LiveServer | None = None
    res = origin.add("/gamma.gguf", payload(2 * MiB, seed=3), stall_after=MiB // 2, throttle=2 * MiB)
    try:
        page = browser.new_page()
        page.goto(proxy.url + "/")
        page.wait_for_selector('#conn[data-state="live"]')
        post = requests.post(proxy.url + "/models/download", json={"id": "gamma", "url": origin.url("/gamma.gguf")},
                             timeout=5)
        assert post.status_code == 202
        assert res.stalled.wait(10)
        wait_row(page, "gamma", "downloading", least=25)

        # The service stops (its .part stays); nginx answers 502 meanwhile, which
        # ends the browser's own reconnecting: the page retries, and says so.
        first.close()
        res.release.set()
        page.wait_for_selector('#conn[data-state="disconnected"]')
        assert "disconnected" in page.locator("#conn").inner_text()
        # Down for longer than the retry delay: the page tried again, and failed again.
        page.wait_for_selector('#conn[data-failures="2"]')
        assert page.locator("#conn").get_attribute("data-state") == "disconnected"
        assert wait_row(page, "gamma", "downloading", least=25) < 100

        # Back on the same port, with the same state: it resumes the .part on start,
        # and the page catches up (a restart is a gap in the events) to the end.
        second = LiveServer(make_app(ARW_DL_RESUME_ON_START=True, **settings), port=port)
        wait_row(page, "gamma", "complete", least=100)
        page.wait_for_selector('#conn[data-state="live"]')
        row(page, "models", "gamma").wait_for()
        assert requests.get(proxy.url + "/models", timeout=5).json()["items"][0]["bytes"] == 2 * MiB
        assert any(line.startswith("502 ") for line in proxy.access_log.read_text().splitlines())
    finally:
        proxy.close()
        if second is not None:
            second.close()
        first.close()


def test_a_copy_of_the_page_on_another_origin_works_through_cors(
    make_app: Callable[..., Any], origin: Origin, browser: Any, tmp_path: Path
) -> None:
    site_root = tmp_path / "site"
    (site_root / "web").mkdir(parents=True)
    site = StaticSite(site_root)
    service: LiveServer | None = None
    try:
        service = LiveServer(make_app(ARW_ADMIN_TOKEN=TOKEN, ARW_CORS_ORIGINS=site.url))
        # The copy says where the service is, as the comment in the page tells.
        html = (WEB / "index.html").read_text()
        html = html.replace('<meta name="arw-api" content="">', f'<meta name="arw-api" content="{service.url}/">')
        assert service.url in html
        (site_root / "index.html").write_text(html)
        for name in ("app.js", "app.css"):
            shutil.copyfile(WEB / name, site_root / "web" / name)
        res = origin.add("/delta.gguf", payload(256 * 1024, seed=4))

        page = browser.new_page()
        page.goto(site.url + "/")
        page.locator("#token-input").fill(TOKEN)
        page.locator("#token-form button[type=submit]").click()
        page.wait_for_selector('#conn[data-state="live"]')  # EventSource across origins
        page.locator('#download-form input[name="id"]').fill("delta")
        page.locator('#download-form input[name="url"]').fill(origin.url("/delta.gguf"))
        page.locator("#download-form button[type=submit]").click()  # a preflighted POST with the token
        wait_row(page, "delta", "complete", least=100)
        row(page, "models", "delta").wait_for()
        assert requests.get(service.url + "/models", timeout=5).json()["items"][0]["sha256"] == res.sha256
    finally:
        if service is not None:
            service.close()
        site.close()


def cells(page: Any, model_id: str) -> dict[str, str]:
    """What a download row shows: status, speed, ETA, and the state of its bar and buttons."""
    return page.eval_on_selector(f'#downloads tr[data-id="{model_id}"]', """r => ({
        status: r.cells[1].textContent, speed: r.cells[4].textContent, eta: r.cells[5].textContent,
        busy: r.querySelector("progress").matches(":indeterminate"), stale: r.dataset.stale,
        buttons: [...r.querySelectorAll("button")].filter(b => !b.hidden).map(b => b.textContent).join(","),
    })""")


def test_a_failed_download_without_a_part_offers_retry_not_resume(
    make_app: Callable[..., Any], origin: Origin, browser: Any
) -> None:
    data = payload(200_000, seed=6)
    url = origin.url("/late.gguf")  # not there yet: the origin answers 404
    service = LiveServer(make_app(ARW_DL_RETRIES=0))
    try:
        page = browser.new_page()
        page.goto(service.url + "/")
        page.wait_for_selector('#conn[data-state="live"]')
        page.locator('#download-form input[name="id"]').fill("late")
        page.locator('#download-form input[name="url"]').fill(url)
        page.locator('#download-form input[name="sha256"]').fill(hashlib.sha256(data).hexdigest())
        page.locator("#download-form button[type=submit]").click()
        wait_row(page, "late", "error", below=1)
        assert "late.part" not in listing(service.app)
        # The row says why, its bar stands still, and it offers what the service can do.
        page.wait_for_function("""() => [...document.querySelectorAll('#downloads tr[data-id="late"] button')]
            .some(b => b.textContent === "Retry" && !b.hidden)""", polling=50)
        shown = cells(page, "late")
        assert shown["status"].startswith("error: http-status") and "404" in shown["status"], shown
        assert not shown["busy"] and shown["buttons"] == "Retry", shown

        # Retry POSTs the same url and sha256 again: now the file is there, and checked.
        origin.add("/late.gguf", data)
        row(page, "downloads", "late").get_by_role("button", name="Retry").click()
        wait_row(page, "late", "complete", least=100)
        installed = requests.get(service.url + "/models", timeout=5).json()["items"]
        assert [(m["id"], m["sha256_source"]) for m in installed] == [("late", "request")]
        assert page.locator("#message").is_hidden()
    finally:
        service.close()


def test_the_page_says_why_it_cannot_reach_the_service(make_app: Callable[..., Any], browser: Any) -> None:
    service = LiveServer(make_app(ARW_EVENTS_MAX_STREAMS=1, ARW_EVENTS_RETRY_MS=300))
    held = requests.get(service.url + "/events", stream=True, timeout=5)  # the one stream there is
    try:
        assert held.status_code == 200
        page = browser.new_page()
        page.goto(service.url + "/")
        # The stream is refused with a problem document: the badge gives its detail and
        # code. (Read in one go: the page tries again every 300 ms, and says
        # "connecting" meanwhile.)
        page.wait_for_function("""() => {
            const badge = document.querySelector('#conn');
            return badge.dataset.state === "disconnected" && badge.textContent.includes("too-many-streams")
                && badge.textContent.includes("HTTP 503: 1 event streams are open");
        }""", polling=20)

        # The service goes away: a request from the page, and the stream, say so.
        held.close()
        service.close()
        page.locator('#download-form input[name="id"]').fill("gone")
        page.locator('#download-form input[name="url"]').fill("http://127.0.0.1:9/gone.gguf")
        # Enter, not a click: the badge's text changes as the stream tries again, and
        # the layout with it, so a click aimed at the button may land beside it.
        page.locator('#download-form input[name="url"]').press("Enter")
        page.wait_for_selector('#message:text("cannot reach the service")')
        assert page.locator("#message").inner_text().startswith("download gone: cannot reach the service: ")
        page.wait_for_selector('#conn[data-state="disconnected"]:text("cannot reach the service")')
    finally:
        held.close()
        service.close()


def test_speed_and_eta_are_not_shown_while_the_page_is_disconnected(
    make_app: Callable[..., Any], origin: Origin, browser: Any
) -> None:
    settings = {"ARW_EVENTS_RETRY_MS": 300, "ARW_DL_PROGRESS_INTERVAL_MS": 100}
    res = origin.add("/eps.gguf", payload(3 * MiB, seed=7), stall_after=MiB, throttle=MiB)
    first = LiveServer(make_app(**settings))
    port = first.server.server_port
    second: LiveServer | None = None
    try:
        page = browser.new_page()
        page.goto(first.url + "/")
        page.wait_for_selector('#conn[data-state="live"]')
        assert requests.post(first.url + "/models/download", json={"id": "eps", "url": origin.url("/eps.gguf")},
                             timeout=5).status_code == 202
        assert res.stalled.wait(10)
        page.wait_for_function("""() => {
            const r = document.querySelector('#downloads tr[data-id="eps"]');
            return r && r.cells[4].textContent.endsWith("/s") && r.cells[5].textContent !== "";
        }""", polling=50)

        # The service stops: what the row last said about speed and time left is stale.
        first.close()
        page.wait_for_selector('#conn[data-state="disconnected"]')
        shown = cells(page, "eps")
        assert (shown["speed"], shown["eta"], shown["stale"]) == ("", "", "true"), shown
        assert shown["status"] == "downloading" and not shown["busy"]

        # Back (resuming its .part): with the stream, speed and ETA are back too.
        res.release.set()
        second = LiveServer(make_app(ARW_DL_RESUME_ON_START=True, **settings), port=port)
        page.wait_for_selector('#conn[data-state="live"]')
        page.wait_for_function("""() => {
            const r = document.querySelector('#downloads tr[data-id="eps"]');
            return r.cells[4].textContent.endsWith("/s") && r.dataset.stale === "false";
        }""", polling=50)
        wait_row(page, "eps", "complete", least=100)
    finally:
        if second is not None:
            second.close()
        first.close()
