"""A real headless Chromium for tests of the web page (Debian's ``chromium``, driven
by Playwright; no browser is downloaded), and nginx as a reverse proxy in front of
the service. Both end when their ``with`` block or ``close()`` does, whatever the test did."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import debian, nginx

# Flags that keep Chromium quiet and offline: no QUIC, no updates, no sync, no
# first-run work. Playwright adds --headless and --no-sandbox itself.
CHROMIUM_FLAGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A browser context of Debian's Chromium with a fresh ``--user-data-dir``
    (``profile``); skips the test when Chromium cannot be installed."""
    executable = debian.binary("chromium", "chromium", "/usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 720},
        )
        try:
            context.set_default_timeout(TIMEOUT_MS)
            yield context
        finally:
            context.close()  # ends the browser process
    finally:
        playwright.stop()  # ends the driver, which kills any browser it still has


class NginxProxy:
    """nginx passing every request to ``127.0.0.1:<upstream>``, set up for event
    streams as docs/deployment.rst says. It listens on a socket this process bound first
    (handed over through ``NGINX=<fd>;``): no port race, no wait for it to start.
    While nothing listens upstream it answers 502, as in front of a restarting service."""

    def __init__(self, binary: str, base: Path, upstream: int) -> None:
        base.mkdir()
        self.access_log = base / "access.log"
        self.proc, self.port = nginx.launch(binary, str(base), lambda port: f"""
    log_format brief '$status $request_method $uri';
    access_log {self.access_log} brief;
    client_body_temp_path {base}/body;
    proxy_temp_path {base}/proxy;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
        }}
    }}
""")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        nginx.stop(self.proc)


def nginx_binary() -> str:
    return debian.binary("nginx-light", "nginx", "/usr/sbin/nginx")


class StaticSite:
    """A plain static web server for ``root`` on another loopback address than the
    service's (127.0.0.2): a page served from it is of another origin."""

    def __init__(self, root: Path, host: str = "127.0.0.2") -> None:
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), functools.partial(Quiet, directory=str(root)))
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="test-static-site")
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
