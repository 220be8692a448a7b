"""A fleet behind one cache: several services, each with its own state directory, pull
the same model at once through one nginx ``proxy_cache`` (slice module, cache lock),
and the origin sends the file about once, whatever the three do in parallel.

The origin is the real test origin (ranges, ETag), which counts every body byte it
writes; the cache is a real nginx configured as the README shows (tests/cache.py).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import cache as caches
from .conftest import Service, post_download
from .helpers import models_dir
from .origin import Origin, payload

MiB = 1024 * 1024
SIZE = 64 * MiB
PATH = "/org/fleet/fleet-64m.gguf"
HOSTS = 3
# The origin may send a little more than the file (a slice fetched twice when a
# lock wait ran out on a loaded machine), never a copy per host.
MOST = 1.2
# Bytes per second of each origin response: slower than ARW_DL_SPLIT_BELOW_MBPS, so
# every host opens more connections and the cache sees ranges at many offsets at once,
# as on a real uplink.
PACE = 40e6

# How the services reach the cache. True: each is given the origin's url and the
# cache as its mirror (ARW_DL_MIRRORS), the way a fleet is set up. False: the
# engine does not try mirrors, so each is given the cache's url itself.
VIA_MIRRORS = False


def mirror_env(cache: caches.Cache) -> dict[str, Any]:
    """The settings that send a service's downloads through ``cache`` first."""
    return {"ARW_DL_MIRRORS": f"{cache.base}{{path}}"} if VIA_MIRRORS else {}


def model_url(origin: Origin, cache: caches.Cache) -> str:
    return origin.url(PATH) if VIA_MIRRORS else cache.url(PATH)


@pytest.fixture
def cache(tmp_path: Path, origin: Origin) -> Iterator[caches.Cache]:
    server = caches.Cache(caches.binary(), str(tmp_path / "cache"), origin.base)
    yield server
    server.close()


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def test_three_hosts_behind_one_cache_get_the_model_while_the_origin_sends_it_once(
        tmp_path: Path, origin: Origin, cache: caches.Cache, service: Service) -> None:
    res = origin.add(PATH, payload(SIZE, seed=121), throttle=PACE)
    hosts = [service(ARW_STATE_DIR=str(tmp_path / f"host{n}"), **mirror_env(cache)) for n in range(HOSTS)]

    # No sha256 in the request: each file is checked here, not by the service.
    for _, client, _ in hosts:
        assert post_download(client, "fleet", model_url(origin, cache)).status_code == 202
    for app, _, watch in hosts:
        done = watch.terminal("fleet", timeout=60)
        assert done["status"] == "complete", done
        assert done["sha256"] == res.sha256
        assert sha256_of(os.path.join(models_dir(app), "fleet-64m.gguf")) == res.sha256

    served = origin.bytes_sent(PATH)
    ratio = served / SIZE
    assert ratio <= MOST, f"the origin sent {ratio:.2f}x the file for {HOSTS} hosts"
    # Every byte the origin sent was asked for by the cache, in whole slices.
    step = caches.SLICE_BYTES
    slices = sorted(s.range or "" for s in origin.requests_for(PATH) if s.sent)
    assert set(slices) == {f"bytes={n}-{n + step - 1}" for n in range(0, SIZE, step)}, slices
