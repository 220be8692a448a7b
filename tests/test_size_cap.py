"""``ARW_MODELS_MAX_MB``: a size announced over the cap is refused before the transfer,
a file at the cap is accepted, and a body of no announced size is stopped as it goes
past the cap, by one byte too."""

from __future__ import annotations

import os

import pytest

from .support.app import Service, post_download
from .support.helpers import (
    listing,
    models_dir,
    read,
)
from .support.origin import Origin, payload

MiB = 1024 * 1024
KiB = 1024


def test_announced_size_over_the_cap_is_refused_before_the_transfer(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_MODELS_MAX_MB=1)
    origin.add("/huge.gguf", payload(MiB + 1, seed=33))
    post_download(client, "huge", origin.url("/huge.gguf"))
    err = watch.terminal("huge")
    assert err["status"] == "error" and err["code"] == "size-limit"
    assert err["limit"] == MiB and err["expected_bytes"] == MiB + 1
    assert "started" not in watch.statuses("huge") and "downloading" not in watch.statuses("huge")
    assert listing(app) == []


def test_a_file_at_the_cap_is_accepted(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_MODELS_MAX_MB=1)
    res = origin.add("/edge.gguf", payload(MiB, seed=34))
    post_download(client, "edge", origin.url("/edge.gguf"))
    assert watch.terminal("edge")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "edge.gguf")) == res.data


@pytest.mark.parametrize("framing", ["chunked", "close-delimited"])
def test_unannounced_size_over_the_cap_is_stopped_during_the_transfer(
    service: Service, origin: Origin, framing: str
) -> None:
    app, client, watch = service(ARW_MODELS_MAX_MB=0.5)
    options = {"chunked": True} if framing == "chunked" else {"send_length": False}
    origin.add("/stream.gguf", payload(2 * MiB, seed=35), **options)
    post_download(client, "stream", origin.url("/stream.gguf"))
    err = watch.terminal("stream")
    assert err["status"] == "error" and err["code"] == "size-limit" and err["limit"] == MiB // 2
    assert "started" in watch.statuses("stream")
    assert "retrying" not in watch.statuses("stream")
    assert listing(app) == []
    assert client.get("/models").json["items"] == []


def test_unannounced_body_one_byte_over_the_cap_is_refused(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_MODELS_MAX_MB=0.5)
    origin.add("/edge.bin", payload(MiB // 2 + 1, seed=47), chunked=True)
    post_download(client, "edge", origin.url("/edge.bin"))
    err = watch.terminal("edge")
    assert err["status"] == "error" and err["code"] == "size-limit"
    assert os.listdir(models_dir(app)) == []
