"""A file rewritten in place on a real server while its parallel ranges are in flight.

nginx, Apache and lighttpd each serve a directory; the file is overwritten where it
is (``cp`` over it: truncated, then written; ``dd conv=notrunc``: written over, its
size never changing; or emptied, and written only once the download saw it empty)
while a download of it runs on several connections. Whatever each server then sends
(the rest of a range from the new version under the old validators, a body cut
short, a 200 of an empty or half-written file), the model installed is exactly one
version of the file, or none: without the check after the last byte, all three
servers installed a mix (dd, and cp on Apache and lighttpd), and all three an
empty file.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support.app import TERMINAL, Service, Watch, post_download
from .support.origin import payload
from .support.webservers import KINDS, WebServer, serving

MiB = 1024 * 1024
SIZE = 6 * MiB
OLD_MTIME = 1_700_000_000
# Each connection paced by the server: its ranges are still being read from the file
# when it is rewritten (not already sitting in socket buffers).
RATE_KIB = 1024


@pytest.fixture(params=KINDS)
def web(request: Any, tmp_path: Path) -> Iterator[WebServer]:
    with serving(request.param, str(tmp_path / request.param), rate_kib=RATE_KIB) as server:
        yield server


def rewrite(how: str, source: str, target: str, watch: Watch) -> dict[str, Any] | None:
    """``target`` overwritten in place with the bytes of ``source``, as an operator would.

    ``truncate`` is a slow ``cp`` (or a shell's ``>`` before a slow writer): the file
    stays empty until the download has seen it so (or has ended), then is written.
    Returns the download's end when it came meanwhile."""
    if how == "cp":
        subprocess.run(["cp", source, target], check=True, timeout=10)
    elif how == "dd":
        subprocess.run(["dd", f"if={source}", f"of={target}", "bs=256K", "conv=notrunc", "status=none"],
                       check=True, timeout=10)
    else:
        with open(target, "r+b") as fh:
            fh.truncate(0)
            fh.flush()
            seen = watch.until(lambda e: e.payload.get("id") == "m" and (
                e.payload.get("status") in TERMINAL
                or (e.payload.get("status") == "retrying" and "empty" in e.payload.get("error", ""))), timeout=20)
            with open(source, "rb") as new:
                fh.write(new.read())
        if seen.payload["status"] in TERMINAL:
            return seen.payload
    return None


@pytest.mark.parametrize("how", ["cp", "dd", "truncate"])
def test_a_file_rewritten_in_place_during_its_ranges_installs_one_version(
        service: Service, web: WebServer, tmp_path: Path, how: str) -> None:
    old, new = payload(SIZE, seed=81), payload(SIZE, seed=82)
    path = web.path("m.bin")
    with open(path, "wb") as fh:
        fh.write(old)
    os.chmod(path, 0o644)
    os.utime(path, (OLD_MTIME, OLD_MTIME))
    staged = str(tmp_path / "new.bin")
    with open(staged, "wb") as fh:
        fh.write(new)
    _app, client, watch = service(ARW_DL_SEGMENTS=4, ARW_DL_SEGMENT_MIN_MB=0.5, ARW_DL_RETRIES=20)
    assert post_download(client, "m", web.url("m.bin")).status_code == 202
    # Parallel ranges in flight, about a third of the file on disk.
    watch.until(lambda e: e.payload.get("id") == "m" and e.payload.get("status") == "downloading"
                and e.payload.get("segments", 0) >= 2 and e.payload.get("downloaded", 0) >= SIZE // 3)
    end = rewrite(how, staged, path, watch) or watch.terminal("m", timeout=30)
    models = {m["id"]: m for m in client.get("/models").json["items"]}
    if end["status"] != "complete":
        assert "m" not in models  # an error is allowed; an install of neither version is not
        return
    with open(models["m"]["path"], "rb") as fh:
        got = fh.read()
    assert len(got) == SIZE, f"{web.kind}: installed {len(got)} bytes of {SIZE}"
    assert got in (old, new), f"{web.kind}: installed a mix of the two versions"
