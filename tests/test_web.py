"""The web page's server side, without a browser: the page and its files, and that
a build of the package ships them. The page itself, in Chromium, is in
test_web_page.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from flask import Flask

from arw_models import ArwModels

from .support.app import FAST
from .support.servers import ROOT

TOKEN = "q-t0ken-in-the-query-7Hs"
PAGE_FILES = {"__init__.py", "index.html", "app.js", "app.css"}


def problem(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.mimetype == "application/problem+json"
    assert r.json["code"] == code


# -- the page and its files -----------------------------------------------------------


def test_the_page_is_served_with_relative_urls_and_a_strict_policy(client: Any) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    # Relative, so that the same page works under any url_prefix.
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == ["data:,", "web/app.css", "web/app.js"]
    policy = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Cache-Control"] == "no-cache"
    assert client.get("/web/app.js").mimetype == "text/javascript"
    assert client.get("/web/app.css").mimetype == "text/css"
    # Only the page's files: the directory also holds Python.
    problem(client.get("/web/__init__.py"), 404, "unknown-asset")
    problem(client.get("/web/index.html"), 404, "unknown-asset")
    assert client.get("/web/..%2fapi.py").status_code == 404


def test_the_page_needs_no_token_and_lives_under_the_url_prefix(tmp_path: Path) -> None:
    host = Flask("host")
    host.config.update(FAST, ARW_STATE_DIR=str(tmp_path / "state"), ARW_ADMIN_TOKEN=TOKEN)
    ArwModels(host, url_prefix="/ai")
    try:
        client = host.test_client()
        assert client.get("/ai/").status_code == 200
        assert client.get("/ai/web/app.js").status_code == 200
        assert client.get("/").status_code == 404  # the host's root is the host's
    finally:
        host.extensions["arw_models"].shutdown()


def test_a_build_of_the_package_ships_the_page(tmp_path: Path) -> None:
    # build_py is the step of a wheel (and so of `pip install .`) that copies the
    # package's files: what it leaves out, an installed service would answer 500 for.
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    shipped = {p.name for p in (tmp_path / "arw_models" / "server" / "web").iterdir()}
    assert shipped == PAGE_FILES
