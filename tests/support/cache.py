"""A real nginx pull-through cache for tests: ``proxy_cache`` with the slice module in
front of one upstream, configured as the "A fleet behind one cache" section of docs/deployment.rst
shows, with its own cache directory, pid file and logs in a directory of the caller's.

Like :class:`tests.support.nginx.Nginx`, it listens on a socket this process bound first
(handed over through ``NGINX=<fd>;``): no port race, no wait for it to come up.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from . import debian
from .nginx import launch, stop

# The bytes of one slice: what the cache fetches from, and stores per key for, the
# upstream. Small enough that a range starts being served at once, large enough that
# three clients meet on few locks.
SLICE_BYTES = 1024 * 1024


def binary() -> str:
    """nginx with the slice module, or a skip saying why there is none."""
    path = debian.binary("nginx-light", "nginx", "/usr/sbin/nginx")
    built = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10, check=False).stderr
    if "--with-http_slice_module" not in built:
        pytest.skip(f"{path} is built without the slice module (--with-http_slice_module), "
                    "which the pull-through cache needs")
    return path


def location(upstream: str) -> str:
    """The ``location`` body of the cache, as docs/deployment.rst gives it (with its comments
    there)."""
    return f"""
            slice {SLICE_BYTES // (1024 * 1024)}m;
            proxy_cache models;
            proxy_cache_key $uri$is_args$args$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 1h;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_cache_lock_age 60s;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass {upstream};
"""


class Cache:
    """nginx caching the origin at ``host`` (``127.0.0.1:<port>``) slice by slice,
    under ``/<host>/``: the layout of the mirror template ``http://cache/{host}{path}``."""

    def __init__(self, binary: str, base: str, host: str) -> None:
        self.host = host
        os.makedirs(base)
        self.access_log = os.path.join(base, "access.log")
        self.proc, self.port = launch(binary, base, lambda port: f"""
    log_format cache escape=none '$status "$http_range" $upstream_cache_status $body_bytes_sent';
    access_log {self.access_log} cache;
    client_body_temp_path {base}/body;
    proxy_temp_path {base}/proxy;
    proxy_cache_path {base}/cache levels=1:2 keys_zone=models:10m max_size=1g inactive=1h use_temp_path=off;
    server {{
        listen 127.0.0.1:{port};
        location /{host}/ {{
            {location(f"http://{host}/")}
        }}
    }}
""", connections=256)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def template(self) -> str:
        """The ``ARW_DL_MIRRORS`` entry for this cache."""
        return self.base + "/{host}{path}"

    def url(self, path: str) -> str:
        """Where the cache serves the origin's ``path``."""
        return f"{self.base}/{self.host}{path}"

    def close(self) -> None:
        stop(self.proc)
