"""A 206 whose ``Content-Length`` is not the length of its ``Content-Range``.

One of the two headers is wrong, and which bytes the body holds is then a guess:
such an answer is refused before a byte of it is read, on a resume (one stream)
and on a range of a parallel download alike, and nothing is installed from it.
"""

from __future__ import annotations

import os

import pytest

from .support.app import Service, post_download
from .support.helpers import listing, part, write_partial
from .support.origin import Origin, payload

KiB = 1024
MiB = 1024 * KiB


@pytest.mark.parametrize("off", [-1000, 1000])
def test_a_resumed_206_whose_length_disagrees_with_its_range_is_refused(
        service: Service, origin: Origin, off: int) -> None:
    app, client, watch = service(ARW_DL_RETRIES=1)
    res = origin.add("/f.gguf", payload(MiB, seed=90), range_length_off=off)
    have = 300_000
    write_partial(app, "f", res.data[:have], {"url": origin.url("/f.gguf"), "etag": res.etag,
                                              "total": len(res.data)})
    post_download(client, "f", origin.url("/f.gguf"))
    done = watch.terminal("f")
    assert done["status"] == "error" and done["code"] == "size-mismatch"
    # Nothing of the answer was taken, of the bytes its Content-Range announced.
    assert (done["received"], done["expected_bytes"]) == (0, len(res.data) - have), done
    assert "f" not in listing(app)
    # Nothing of those answers was taken, and the bytes on disk stay for a resume.
    assert os.path.getsize(part(app, "f")) == have
    # A fault of one answer (a proxy's, say) may pass: it is asked once more (ARW_DL_RETRIES=1).
    assert [(s.status, s.range) for s in origin.requests_for("/f.gguf")] == [(206, f"bytes={have}-")] * 2
    assert [p["code"] for p in watch.payloads("f") if p["status"] == "retrying"] == ["size-mismatch"]


def test_a_range_whose_length_disagrees_with_its_content_range_is_refused(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_SEGMENTS=4, ARW_DL_SEGMENT_MIN_MB=1, ARW_DL_RETRIES=1)
    origin.add("/s.gguf", payload(4 * MiB, seed=91), throttle=4 * MiB, range_length_off=-4096)
    post_download(client, "s", origin.url("/s.gguf"))
    done = watch.terminal("s", timeout=20)
    assert done["status"] == "error" and done["code"] == "size-mismatch"
    assert "s" not in listing(app)
    ranged = [s for s in origin.requests_for("/s.gguf") if s.range]
    assert ranged and all(s.status == 206 for s in ranged)
