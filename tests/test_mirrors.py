"""Mirrors (ARW_DL_MIRRORS): each tried before the origin, skipped for the rest of the
job when it fails, serves other bytes or another size, or stalls; a file assembled
from several sources when their validators agree; what each source served, in the
events and the job; and the origin's private headers kept from every mirror.

Every mirror here is a real local origin serving the same path (or the path under
``/{host}``), so what each served is counted where it was sent."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import pytest

from arw_models import ArwModels
from arw_models.engine import sources

from .support.app import Service, post_download
from .support.helpers import models_dir, read, write_partial
from .support.origin import Origin, payload
from .test_digests import FORMS
from .test_openapi import Contract

KiB = 1024
MiB = 1024 * KiB
SPLIT = {"ARW_DL_SEGMENTS": 4, "ARW_DL_SEGMENT_MIN_MB": 1, "ARW_DL_CHUNK_BYTES": 64 * KiB}


def at(server: Origin) -> str:
    """A template that asks ``server`` for the same path."""
    return server.base + "{path}"


def mirrors(*templates: str) -> dict[str, Any]:
    return {"ARW_DL_MIRRORS": ",".join(templates)}


def installed(app: Any, name: str) -> bytes:
    return read(os.path.join(models_dir(app), name))


# -- the source list ------------------------------------------------------------------------


def test_a_template_gets_the_origin_host_with_its_port_and_the_path_with_its_query() -> None:
    listed = sources.for_job("https://u:pw@files.example:8443/m/q.gguf?sig=abc", {"Authorization": "Bearer t"},
                             "https://huggingface.co", None,
                             ("http://cache.lan:8080/{host}{path}", "http://k:secret@cache2.lan{path}"))
    assert [s.url for s in listed] == [
        "http://cache.lan:8080/files.example:8443/m/q.gguf?sig=abc",
        "http://k:secret@cache2.lan/m/q.gguf?sig=abc",
        "https://u:pw@files.example:8443/m/q.gguf?sig=abc",
    ]
    assert [s.label for s in listed] == ["http://cache.lan:8080", "http://cache2.lan", "origin"]
    assert [dict(s.headers) for s in listed] == [{}, {}, {"Authorization": "Bearer t"}]
    assert [s.mirror for s in listed] == [True, True, False]


def test_an_hf_reference_fills_the_template_with_its_resolve_url_and_keeps_the_token_home() -> None:
    listed = sources.for_job("hf://org/repo/w/model.gguf@v1", {}, "https://hub.example", "hf_tok",
                             ("http://cache.lan{path}",))
    assert listed[0].url == "http://cache.lan/org/repo/resolve/v1/w/model.gguf"
    assert dict(listed[0].headers) == {}
    assert listed[1].url == "https://hub.example/org/repo/resolve/v1/w/model.gguf"
    assert dict(listed[1].headers) == {"Authorization": "Bearer hf_tok"}


# -- mirrors that serve --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["{path}", "/{host}{path}"])
def test_a_healthy_mirror_serves_everything(service: Service, origin: Origin, servers: Callable[[], Origin],
                                            layout: str) -> None:
    data = payload(3 * MiB + 5, seed=300)
    origin.add("/m/a.gguf", data)
    mirror = servers()
    where = "/m/a.gguf" if layout == "{path}" else "/" + origin.base.split("//", 1)[1] + "/m/a.gguf"
    mirror.add(where, data)
    app, client, watch = service(**mirrors(mirror.base + layout))
    post_download(client, "a", origin.url("/m/a.gguf"), sha256=origin.resources["/m/a.gguf"].sha256)
    done = watch.terminal("a")
    assert done["status"] == "complete", done
    assert installed(app, "a.gguf") == data
    assert done["sources"] == [{"source": mirror.base, "bytes": len(data)}]
    assert origin.requests_for("/m/a.gguf") == []  # the origin served nothing, not even an answer
    assert mirror.bytes_sent(where) == len(data)
    job = client.get("/models/downloads/a")
    assert job.json["sources"] == [{"source": mirror.base, "bytes": len(data)}]
    Contract(client.get("/openapi.json").json).check("/models/downloads/{model_id}", "get", job)


def test_an_empty_file_a_mirror_serves_is_installed(service: Service, origin: Origin,
                                                    servers: Callable[[], Origin]) -> None:
    """A file of no bytes, served whole by a mirror (whose sizes bind nothing, so no
    size was ever announced): an empty answer where nothing was announced is no
    version cut short, and the empty model is installed with its digest checked."""
    origin.add("/m/empty.gguf", b"")
    mirror = servers()
    mirror.add("/m/empty.gguf", b"")
    app, client, watch = service(**mirrors(mirror.base + "{path}"))
    post_download(client, "e", origin.url("/m/empty.gguf"), sha256=hashlib.sha256(b"").hexdigest())
    done = watch.terminal("e")
    assert done["status"] == "complete" and done["bytes"] == 0, done
    assert installed(app, "empty.gguf") == b""
    assert origin.requests_for("/m/empty.gguf") == []


def test_a_pause_of_a_stream_from_a_mirror_keeps_the_mirror_for_the_resume(
        service: Service, origin: Origin, servers: Callable[[], Origin]) -> None:
    """A download paused while a mirror streams it, a body without a length of its
    own (its size stated by ``X-Linked-Size``): the socket shut down by the pause
    reads as the end of the body, short, which is no fault of the mirror. It is not
    skipped: the resume asks it again, from where the bytes on disk end."""
    data = payload(2 * MiB, seed=302)
    origin.add("/m/p.gguf", data)
    mirror = servers()
    held = mirror.add("/m/p.gguf", data, stall_after=700 * KiB, send_length=False,
                      headers={"X-Linked-Size": str(len(data))})
    app, client, watch = service(**mirrors(at(mirror)), ARW_DL_SEGMENTS=1, ARW_DL_IDLE_TIMEOUT_SECS=30)
    post_download(client, "p", origin.url("/m/p.gguf"), sha256=held.sha256)
    assert held.stalled.wait(5)
    watch.until(lambda e: e.payload.get("id") == "p" and e.payload.get("downloaded") == 700 * KiB)
    r = client.post("/models/download/pause", json={"id": "p"})
    assert r.status_code == 200 and r.json["status"] == "paused", r.json
    assert client.get("/models/downloads/p").json["sources"] == [{"source": mirror.base, "bytes": 700 * KiB}]
    held.release.set()
    assert client.post("/models/download/resume", json={"id": "p"}).status_code == 202
    done = watch.terminal("p")
    assert done["status"] == "complete" and installed(app, "p.gguf") == data
    assert mirror.requests_for("/m/p.gguf")[-1].range == f"bytes={700 * KiB}-"
    assert origin.requests_for("/m/p.gguf") == []


def test_without_mirrors_no_sources_are_listed(service: Service, origin: Origin) -> None:
    res = origin.add("/n.gguf", payload(64 * KiB, seed=301))
    _app, client, watch = service()
    post_download(client, "n", origin.url("/n.gguf"))
    done = watch.terminal("n")
    assert done["status"] == "complete" and "sources" not in done
    assert origin.bytes_sent("/n.gguf") == len(res.data)


# -- mirrors that fail ---------------------------------------------------------------------------


def test_a_mirror_that_answers_404_is_skipped_at_once_and_the_origin_serves(
    service: Service, origin: Origin, servers: Callable[[], Origin], caplog: pytest.LogCaptureFixture,
) -> None:
    data = payload(2 * MiB, seed=302)
    origin.add("/b.gguf", data)
    mirror = servers()  # has no such file
    template = mirror.base.replace("//", "//k:mirror-pw@") + "{path}"
    # Moving on is no retry: none allowed, and a backoff of a minute, change nothing.
    _app, client, watch = service(**mirrors(template), ARW_DL_RETRIES=0, ARW_DL_RETRY_BACKOFF_MS=60_000,
                                  ARW_DL_RETRY_BACKOFF_MAX_MS=60_000)
    with caplog.at_level(logging.INFO, logger="arw_models"):
        post_download(client, "b", origin.url("/b.gguf"))
        done = watch.terminal("b")
    assert done["status"] == "complete", done
    assert done["sources"] == [{"source": mirror.base, "bytes": 0, "skipped": "it answered 404"},
                               {"source": "origin", "bytes": len(data)}]
    assert len(mirror.requests_for("/b.gguf")) == 1  # skipped for the rest of the job
    assert origin.bytes_sent("/b.gguf") == len(data)
    moved = [p for p in watch.payloads("b") if p["status"] == "retrying"]
    assert [p["delay_ms"] for p in moved] == [0]
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert skipped == [f"download b: mirror {mirror.base} skipped: it answered 404"]
    shown = json.dumps([e.payload for e in watch.events]) + caplog.text
    assert "mirror-pw" not in shown


def test_a_mirror_with_other_bytes_is_caught_by_the_sha256_and_the_origin_serves_again(
    service: Service, origin: Origin, servers: Callable[[], Origin],
) -> None:
    data = payload(2 * MiB, seed=303)
    res = origin.add("/c.gguf", data)
    mirror = servers()
    mirror.add("/c.gguf", payload(2 * MiB, seed=304))
    app, client, watch = service(**mirrors(at(mirror)))
    post_download(client, "c", origin.url("/c.gguf"), sha256=res.sha256)
    done = watch.terminal("c")
    assert done["status"] == "complete", done
    assert installed(app, "c.gguf") == data and done["sha256"] == res.sha256
    assert done["sources"] == [
        {"source": mirror.base, "bytes": len(data), "skipped": "its bytes did not match the sha256"},
        {"source": "origin", "bytes": len(data)},
    ]
    assert [s.range for s in origin.requests_for("/c.gguf")] == [None]  # the mirror's bytes were dropped


def test_a_mirror_with_a_file_of_another_size_fails_the_sha256(
    service: Service, origin: Origin, servers: Callable[[], Origin],
) -> None:
    data = payload(2 * MiB, seed=305)
    res = origin.add("/d.gguf", data)
    mirror, good = servers(), servers()
    mirror.add("/d.gguf", data + b"more")
    good.add("/d.gguf", data)
    app, client, watch = service(**mirrors(at(mirror), at(good)))
    post_download(client, "d", origin.url("/d.gguf"), sha256=res.sha256)
    done = watch.terminal("d")
    assert done["status"] == "complete", done
    assert installed(app, "d.gguf") == data and done["bytes"] == len(data)
    # The size the first announced went with its bytes: the next is not held to it.
    assert [(s["bytes"], "skipped" in s) for s in done["sources"]] == [(len(data) + 4, True), (len(data), False)]
    assert origin.requests_for("/d.gguf") == []


DATA_E = payload(3 * MiB, seed=306)
ETAG_E = '"e-version"'
# The second mirror, after the first served a part: how it answers, and why it is skipped.
OTHERS = {
    # A smaller file under the same ETag (a cache that lies): a 206 of another size.
    "shorter": (MiB, {"data": DATA_E[: 2 * MiB], "etag": ETAG_E}, f"the mirror's file has {2 * MiB} bytes"),
    # ... and where the .part already reaches past its end: a 416 of another size.
    "ends-before": (2 * MiB + 5, {"data": DATA_E[: 2 * MiB], "etag": ETAG_E}, f"the mirror's file has {2 * MiB} bytes"),
    # Another version (its ETag does not match If-Range): a whole file of another size.
    "other-version": (MiB, {"data": DATA_E[: 2 * MiB]}, f"the mirror's file has {2 * MiB} bytes"),
    # The whole file, chunked, without saying its size.
    "unsaid": (MiB, {"data": DATA_E, "ignore_range": True, "chunked": True}, "the mirror's file has a size it does not say"),
    "missing": (MiB, None, "it answered 404"),
}


@pytest.mark.parametrize("other", list(OTHERS))
def test_a_mirror_of_another_size_than_the_job_knows_is_skipped_keeping_the_bytes_on_disk(
    service: Service, origin: Origin, servers: Callable[[], Origin], other: str,
) -> None:
    """The first mirror served a part and dropped; the second has a file of another
    size, or does not say its size: it is refused before its bytes are read, and the
    origin continues the bytes on disk."""
    dropped, second_file, why = OTHERS[other]
    data = DATA_E
    origin.add("/e.gguf", data, etag=ETAG_E)
    first, second = servers(), servers()
    first.add("/e.gguf", data, etag=ETAG_E, drop_after=dropped)
    if second_file is not None:
        second.add("/e.gguf", **second_file)
    app, client, watch = service(**mirrors(at(first), at(second)))
    post_download(client, "e", origin.url("/e.gguf"))  # no sha256: the size is what tells
    done = watch.terminal("e")
    assert done["status"] == "complete", done
    assert installed(app, "e.gguf") == data
    assert done["sources"][0] == {"source": first.base, "bytes": dropped, "skipped": done["sources"][0]["skipped"]}
    assert done["sources"][1:] == [
        {"source": second.base, "bytes": 0, "skipped": why if other == "missing" else f"{why}, not {3 * MiB} bytes"},
        {"source": "origin", "bytes": len(data) - dropped},
    ]
    assert [s.range for s in origin.requests_for("/e.gguf")] == [f"bytes={dropped}-"]
    assert origin.bytes_sent("/e.gguf") == len(data) - dropped


def test_a_size_announced_by_a_mirror_that_then_stalled_holds_the_next_mirror_to_it(
    service: Service, origin: Origin, servers: Callable[[], Origin],
) -> None:
    data = payload(MiB, seed=315)
    origin.add("/k.gguf", data)
    first, second = servers(), servers()
    first.add("/k.gguf", data, stall_after=0)  # its answer, then nothing
    second.add("/k.gguf", data + b"x")
    app, client, watch = service(**mirrors(at(first), at(second)), ARW_DL_IDLE_TIMEOUT_SECS=0.5)
    post_download(client, "k", origin.url("/k.gguf"))
    done = watch.terminal("k")
    assert done["status"] == "complete", done
    assert installed(app, "k.gguf") == data
    assert [(s["bytes"], s.get("skipped", "")) for s in done["sources"][1:]] == [
        (0, f"the mirror's file has {MiB + 1} bytes, not {MiB} bytes"), (MiB, "")]


def test_a_stalled_mirror_is_skipped_and_the_origin_continues_its_bytes(
    service: Service, origin: Origin, servers: Callable[[], Origin],
) -> None:
    """The first mirror drops after 1 MiB, the second continues and stalls 512 KiB
    later: the origin continues from there."""
    data = payload(2 * MiB, seed=307)
    origin.add("/f.gguf", data)
    first, second = servers(), servers()
    first.add("/f.gguf", data, drop_after=MiB)
    second.add("/f.gguf", data, stall_after=512 * KiB)
    app, client, watch = service(**mirrors(at(first), at(second)), ARW_DL_IDLE_TIMEOUT_SECS=0.5)
    post_download(client, "f", origin.url("/f.gguf"))
    done = watch.terminal("f")
    assert done["status"] == "complete", done
    assert installed(app, "f.gguf") == data
    dropped, stalled, rest = done["sources"]
    assert (dropped["bytes"], stalled["source"], stalled["bytes"], rest) == (
        MiB, second.base, 512 * KiB, {"source": "origin", "bytes": MiB - 512 * KiB})
    assert stalled["skipped"].startswith("network error")
    assert len(second.requests_for("/f.gguf")) == 1
    assert origin.bytes_sent("/f.gguf") == MiB - 512 * KiB
    # While the second stalled, progress said who had served the bytes so far.
    during = [p for p in watch.payloads("f") if p["status"] == "downloading" and p["downloaded"] == MiB + 512 * KiB]
    assert during and during[0]["sources"] == [dropped, {"source": second.base, "bytes": 512 * KiB}]


def test_the_origin_is_not_held_to_a_mirrors_size(service: Service, origin: Origin,
                                                   servers: Callable[[], Origin]) -> None:
    """The mirror has a stale version: the origin's newer one, of another size, is
    what the job installs."""
    old, new = payload(2 * MiB, seed=319), payload(3 * MiB, seed=320)
    origin.add("/v.gguf", new)
    mirror = servers()
    mirror.add("/v.gguf", old, drop_after=MiB)
    app, client, watch = service(**mirrors(at(mirror)))
    post_download(client, "v", origin.url("/v.gguf"))
    done = watch.terminal("v")
    assert done["status"] == "complete", done
    assert installed(app, "v.gguf") == new
    assert [(s.range, s.status) for s in origin.requests_for("/v.gguf")] == [(f"bytes={MiB}-", 200)]


def test_a_mirror_that_sends_more_than_the_size_it_states_leaves_no_bytes_behind(
    service: Service, origin: Origin, servers: Callable[[], Origin],
) -> None:
    """A mirror's body without a length of its own runs past the size it states
    (X-Linked-Size): none of its bytes can be trusted, so they go with it, and the
    move to the origin says so (nothing kept) as it happens."""
    data = payload(256 * KiB, seed=321)
    origin.add("/x.gguf", data)
    mirror = servers()
    mirror.add("/x.gguf", data + b"trailing bytes", chunked=True, headers={"X-Linked-Size": str(len(data))})
    app, client, watch = service(**mirrors(at(mirror)))
    post_download(client, "x", origin.url("/x.gguf"))
    done = watch.terminal("x")
    assert done["status"] == "complete", done
    assert installed(app, "x.gguf") == data
    [skipped, served] = done["sources"]
    assert (skipped["source"], skipped["bytes"]) == (mirror.base, len(data) + 14)
    assert skipped["skipped"] == f"received {len(data) + 14} bytes, expected {len(data)}"
    assert served == {"source": "origin", "bytes": len(data)}
    [moved] = [p for p in watch.payloads("x") if p["status"] == "retrying"]
    assert (moved["delay_ms"], moved["downloaded"]) == (0, 0)


def test_a_mirror_nobody_listens_on_is_skipped(service: Service, origin: Origin,
                                               servers: Callable[[], Origin]) -> None:
    res = origin.add("/l.gguf", payload(256 * KiB, seed=314))
    gone = servers()
    base = gone.base
    gone.close()  # its port refuses connections now
    app, client, watch = service(**mirrors(base + "{path}"))
    post_download(client, "l", origin.url("/l.gguf"))
    done = watch.terminal("l")
    assert done["status"] == "complete", done
    assert installed(app, "l.gguf") == res.data
    host = base.split("//", 1)[1]
    assert [(s["source"], s["bytes"], s.get("skipped", "")) for s in done["sources"]] == [
        (base, 0, f"cannot connect to {host}: connection refused"), ("origin", len(res.data), "")]
    # Skipped at once: the refusal is not retried on the mirror.
    assert [p["delay_ms"] for p in watch.payloads("l") if p["status"] == "retrying"] == [0]


# -- one file from several sources ------------------------------------------------------------------


def test_the_next_mirror_continues_where_the_first_died_without_fetching_its_bytes_again(
    service: Service, origin: Origin, servers: Callable[[], Origin],
) -> None:
    data = payload(4 * MiB, seed=308)
    res = origin.add("/g.gguf", data)
    first, second = servers(), servers()
    first.add("/g.gguf", data, drop_after=1536 * KiB)  # the same validators as the origin's
    second.add("/g.gguf", data)
    app, client, watch = service(**mirrors(at(first), at(second)))
    post_download(client, "g", origin.url("/g.gguf"), sha256=res.sha256)
    done = watch.terminal("g")
    assert done["status"] == "complete", done
    assert installed(app, "g.gguf") == data
    assert first.bytes_sent("/g.gguf") == 1536 * KiB
    assert second.bytes_sent("/g.gguf") == len(data) - 1536 * KiB
    assert origin.requests_for("/g.gguf") == []
    asked = second.requests_for("/g.gguf")
    assert [(s.range, s.headers.get("if-range"), s.status) for s in asked] == [
        (f"bytes={1536 * KiB}-", res.etag, 206)]
    assert [(s["source"], s["bytes"], "skipped" in s) for s in done["sources"]] == [
        (first.base, 1536 * KiB, True), (second.base, len(data) - 1536 * KiB, False)]


def test_bytes_from_a_mirror_whose_validators_differ_are_fetched_again(
    service: Service, origin: Origin, servers: Callable[[], Origin],
) -> None:
    data = payload(2 * MiB, seed=309)
    origin.add("/h.gguf", data)
    mirror = servers()
    mirror.add("/h.gguf", data, etag='"another"', last_modified=None, drop_after=MiB)
    app, client, watch = service(**mirrors(at(mirror)))
    post_download(client, "h", origin.url("/h.gguf"))
    done = watch.terminal("h")
    assert done["status"] == "complete", done
    assert installed(app, "h.gguf") == data
    # Asked to continue under the mirror's ETag, the origin sent the whole file.
    assert [(s.headers.get("if-range"), s.status) for s in origin.requests_for("/h.gguf")] == [('"another"', 200)]
    assert done["sources"][1] == {"source": "origin", "bytes": len(data)}


def test_the_origins_own_bytes_that_fail_the_sha256_fail_as_ever(
    service: Service, origin: Origin, servers: Callable[[], Origin],
) -> None:
    """A mirror's bytes were dropped (its validators were not the origin's): the
    bytes that failed the sha256 are the origin's alone, so the job fails, once."""
    data = payload(2 * MiB, seed=313)
    origin.add("/x.gguf", data, drop_after=512 * KiB)  # its bytes come in two attempts
    mirror = servers()
    mirror.add("/x.gguf", data, etag='"another"', last_modified=None, drop_after=MiB)
    _app, client, watch = service(**mirrors(at(mirror)))
    post_download(client, "x", origin.url("/x.gguf"), sha256="0" * 64)
    done = watch.terminal("x")
    assert (done["status"], done["code"]) == ("error", "checksum-mismatch"), done
    assert [(s.range, s.status) for s in origin.requests_for("/x.gguf")] == [
        (f"bytes={MiB}-", 200), (f"bytes={512 * KiB}-", 206)]  # the mirror's bytes went at once
    assert client.get("/models").json["items"] == []


def test_ranges_of_a_mirror_that_dies_are_resumed_from_the_next(
    service: Service, origin: Origin, servers: Callable[[], Origin],
) -> None:
    data = payload(8 * MiB, seed=310)
    res = origin.add("/s.gguf", data)
    first, second = servers(), servers()
    # Split into ranges at once; one of them drops.
    first.add("/s.gguf", data, throttle=4 * MiB, range_drop_after=256 * KiB, range_drops=1)
    second.add("/s.gguf", data)
    app, client, watch = service(**SPLIT, **mirrors(at(first), at(second)))
    post_download(client, "s", origin.url("/s.gguf"), sha256=res.sha256)
    done = watch.terminal("s", timeout=20)
    assert done["status"] == "complete", done
    assert installed(app, "s.gguf") == data
    assert len([s for s in first.requests_for("/s.gguf") if s.range]) > 1  # it was split
    (one, served_one, skipped), (two, served_two, _) = [
        (s["source"], s["bytes"], "skipped" in s) for s in done["sources"]]
    assert (one, two, skipped) == (first.base, second.base, True)
    assert served_one + served_two == len(data) and served_one > 256 * KiB
    asked = second.requests_for("/s.gguf")
    assert asked and all(s.range and not s.range.startswith("bytes=0-") for s in asked)
    assert second.bytes_sent("/s.gguf") == served_two  # nothing the first mirror wrote came again
    assert origin.requests_for("/s.gguf") == []


def test_bytes_of_a_mirrors_version_that_changed_are_counted_though_dropped(
    service: Service, origin: Origin, servers: Callable[[], Origin],
) -> None:
    """The counts are of bytes received, kept or not: a mirror whose file changes
    while its ranges run is asked again, and what it sent of the old
    version still counts."""
    old, new = payload(8 * MiB, seed=311), payload(8 * MiB, seed=312)
    origin.add("/v.gguf", new)
    mirror = servers()
    res = mirror.add("/v.gguf", old, throttle=2 * MiB)
    app, client, watch = service(**SPLIT, **mirrors(at(mirror)))
    post_download(client, "v", origin.url("/v.gguf"))
    watch.until(lambda e: e.payload.get("id") == "v" and e.payload.get("downloaded", 0) >= MiB
                and e.payload.get("segments", 0) > 1)
    with mirror.lock:
        res.replace(new)
        res.throttle = None
    done = watch.terminal("v", timeout=20)
    assert done["status"] == "complete", done
    assert installed(app, "v.gguf") == new
    assert "resume-invalid" in [p["code"] for p in watch.payloads("v") if p["status"] == "retrying"]
    [served] = done["sources"]
    assert served["source"] == mirror.base and "skipped" not in served
    assert len(new) < served["bytes"] <= mirror.bytes_sent("/v.gguf")
    # Counted as they came, the bytes dropped included: the count never goes back.
    counts = [p["sources"][0]["bytes"] for p in watch.payloads("v") if p.get("sources")]
    assert counts == sorted(counts) and counts[-1] == served["bytes"], counts
    assert origin.requests_for("/v.gguf") == []


@pytest.mark.parametrize("case", ["mirrors", "wrong-sha256", "no-mirrors"])
def test_bytes_an_earlier_run_left_that_fail_the_sha256_are_fetched_again(
    service: Service, origin: Origin, servers: Callable[[], Origin], case: str,
) -> None:
    """Who served the bytes of an earlier run is not known: with mirrors, they may
    have, so the file is fetched again rather than failed (once: bytes of the origin
    alone that fail again fail the job). Without mirrors it fails as it always did."""
    data = payload(MiB, seed=316)
    res = origin.add("/y.gguf", data)
    mirror = servers()  # 404
    app, client, watch = service(**(mirrors(at(mirror)) if case != "no-mirrors" else {}))
    sha256 = "0" * 64 if case == "wrong-sha256" else res.sha256
    write_partial(app, "y", b"\0" * (256 * KiB), {"id": "y", "url": origin.url("/y.gguf"), "etag": res.etag,
                                                  "total": len(data), "sha256": sha256})
    post_download(client, "y", origin.url("/y.gguf"), sha256=sha256)
    done = watch.terminal("y")
    asked = [s.range for s in origin.requests_for("/y.gguf")]
    if case == "mirrors":
        assert done["status"] == "complete", done
        assert installed(app, "y.gguf") == data
        assert asked == [f"bytes={256 * KiB}-", None]
    else:
        assert (done["status"], done["code"]) == ("error", "checksum-mismatch"), done
        assert asked == ([f"bytes={256 * KiB}-", None] if case == "wrong-sha256" else [f"bytes={256 * KiB}-"])


def test_bytes_an_earlier_run_left_that_are_not_continued_are_not_blamed_for_a_mismatch(
    service: Service, origin: Origin, servers: Callable[[], Origin],
) -> None:
    """A ``.part`` without its record cannot be continued: it goes before the origin
    is asked, so bytes that then fail the sha256 are the origin's alone, and the job
    fails once, without fetching the file a second time."""
    origin.add("/z.gguf", payload(MiB, seed=317))
    mirror = servers()  # 404
    app, client, watch = service(**mirrors(at(mirror)))
    write_partial(app, "z", b"\0" * (256 * KiB), None)
    post_download(client, "z", origin.url("/z.gguf"), sha256="0" * 64)
    done = watch.terminal("z")
    assert (done["status"], done["code"]) == ("error", "checksum-mismatch"), done
    assert [s.range for s in origin.requests_for("/z.gguf")] == [None]


def test_the_origins_spent_retries_fail_the_job_as_ever(service: Service, origin: Origin,
                                                        servers: Callable[[], Origin]) -> None:
    origin.add("/u.gguf", b"u", statuses=[(503, {})] * 5)
    mirror = servers()  # 404
    _app, client, watch = service(**mirrors(at(mirror)), ARW_DL_RETRIES=1)
    post_download(client, "u", origin.url("/u.gguf"))
    done = watch.terminal("u")
    assert (done["status"], done["code"], done["http_status"]) == ("error", "http-status", 503), done
    assert len(origin.requests_for("/u.gguf")) == 2


def test_the_next_source_starts_its_retries_afresh(service: Service, origin: Origin,
                                                   servers: Callable[[], Origin]) -> None:
    """A mirror's failures are not the origin's: the second mirror fails once in a
    way that is no reason to skip it (it refuses the range of the bytes on disk,
    which are dropped), then is skipped (its answer has no body); the origin, whose
    first answer fails, still has all its retries."""
    data = payload(2 * MiB, seed=319)
    origin.add("/f.gguf", data, statuses=[(503, {})])
    first, second = servers(), servers()
    first.add("/f.gguf", data, drop_after=MiB)
    second.add("/f.gguf", data, range_status=416, drop_after=0)
    app, client, watch = service(**mirrors(at(first), at(second)), ARW_DL_RETRIES=1)
    post_download(client, "f", origin.url("/f.gguf"))
    done = watch.terminal("f")
    assert done["status"] == "complete", done
    assert installed(app, "f.gguf") == data
    assert [(s.status, s.range) for s in second.requests_for("/f.gguf")] == [(416, f"bytes={MiB}-"), (200, None)]
    assert [s.status for s in origin.requests_for("/f.gguf")] == [503, 200]


@pytest.mark.parametrize("fails", [2, 4], ids=["origin-within-its-retries", "origin-past-them"])
def test_the_source_after_a_spent_mirror_has_retries_of_its_own_and_no_more(
    service: Service, origin: Origin, servers: Callable[[], Origin], fails: int,
) -> None:
    """A download in ranges whose mirror answers every range one byte off: not a reason
    to skip it at once, so it is skipped when its retries are spent. The origin then
    has its own retries (ARW_DL_RETRIES=1: each attempt a request and the range's own
    retry): failing twice (one failed attempt), it serves the range; failing in both
    its attempts, its retries are spent as a first source's would be, and the job
    ends with the origin's status rather than trying it a third time."""
    data = payload(6 * MiB, seed=320)
    res = origin.add("/g.gguf", data, statuses=[(503, {})] * fails)
    mirror = servers()
    mirror.add("/g.gguf", data, range_shift=1)
    app, client, watch = service(**mirrors(at(mirror)), **SPLIT, ARW_DL_RETRIES=1)
    # One range left to fetch, of 1 MiB: one connection, which nothing splits.
    write_partial(app, "g", data[: 5 * MiB], {"url": origin.url("/g.gguf"), "etag": res.etag, "total": len(data),
                                              "ranges": [[0, 4 * MiB, 4 * MiB], [4 * MiB, 6 * MiB, MiB]]})
    post_download(client, "g", origin.url("/g.gguf"), sha256=res.sha256)
    done = watch.terminal("g")
    left = f"bytes={5 * MiB}-{6 * MiB - 1}"
    assert [s.range for s in mirror.requests_for("/g.gguf")] == [left, left]
    if fails == 2:
        assert done["status"] == "complete", done
        assert installed(app, "g.gguf") == data
        assert [(s.status, s.range) for s in origin.requests_for("/g.gguf")] == [(503, left), (503, left), (206, left)]
    else:
        assert (done["status"], done.get("code"), done.get("http_status")) == ("error", "http-status", 503), done
        assert [(s.status, s.range) for s in origin.requests_for("/g.gguf")] == [(503, left)] * 4


def test_a_full_disk_is_not_the_mirrors_fault(service: Service, origin: Origin,
                                               servers: Callable[[], Origin]) -> None:
    data = payload(256 * KiB, seed=317)
    origin.add("/z.gguf", data)
    mirror = servers()
    mirror.add("/z.gguf", data)
    app, client, watch = service(**mirrors(at(mirror)))

    def full(path: str, append: bool) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    ArwModels.state(app).manager.open_part = full
    post_download(client, "z", origin.url("/z.gguf"))
    done = watch.terminal("z")
    assert (done["status"], done["code"]) == ("error", "disk-full"), done
    assert origin.requests_for("/z.gguf") == []
    assert "skipped" not in client.get("/models/downloads/z").json["sources"][0]


def test_a_mirror_whose_answers_cannot_be_continued_is_skipped_when_its_retries_are_spent(
    service: Service, origin: Origin, servers: Callable[[], Origin],
) -> None:
    data = payload(2 * MiB, seed=318)
    origin.add("/r.gguf", data)
    first, second = servers(), servers()
    first.add("/r.gguf", data, drop_after=MiB)
    second.add("/r.gguf", data, range_shift=1)  # a range one byte off what was asked
    # A long backoff: moving on to the next source must not wait for it.
    app, client, watch = service(**mirrors(at(first), at(second)), ARW_DL_RETRIES=0,
                                 ARW_DL_RETRY_BACKOFF_MS=5000, ARW_DL_RETRY_BACKOFF_MAX_MS=10000)
    post_download(client, "r", origin.url("/r.gguf"))
    done = watch.terminal("r")
    assert done["status"] == "complete", done
    assert installed(app, "r.gguf") == data
    assert [(s["bytes"], "skipped" in s) for s in done["sources"]] == [(MiB, True), (0, True), (2 * MiB, False)]
    moves = [p for p in watch.payloads("r") if p["status"] == "retrying"]
    assert len(moves) == 2 and all(p["delay_ms"] == 0 for p in moves), moves
    assert [s.range for s in origin.requests_for("/r.gguf")] == [None]  # the bytes on disk went with the answer


# -- what a mirror never sees -------------------------------------------------------------------------


def test_the_origins_headers_never_reach_a_mirror(service: Service, origin: Origin,
                                                  servers: Callable[[], Origin]) -> None:
    data = payload(256 * KiB, seed=311)
    origin.add("/gated.gguf", data)
    mirror = servers()  # 404: the origin is asked too
    _app, client, watch = service(**mirrors(at(mirror)))
    r = post_download(client, "gated", origin.url("/gated.gguf"),
                      headers={"Authorization": "Bearer gate-secret", "X-Gate": "g-secret"})
    assert r.status_code == 202
    done = watch.terminal("gated")
    assert done["status"] == "complete", done
    (to_mirror,) = mirror.requests_for("/gated.gguf")
    assert "authorization" not in to_mirror.headers and "x-gate" not in to_mirror.headers
    (to_origin,) = origin.requests_for("/gated.gguf")
    assert to_origin.headers["authorization"] == "Bearer gate-secret" and to_origin.headers["x-gate"] == "g-secret"
    shown = json.dumps([e.payload for e in watch.events]) + json.dumps(client.get("/models/downloads/gated").json)
    assert "secret" not in shown


def test_the_hub_token_never_reaches_a_mirror(service: Service, origin: Origin,
                                              servers: Callable[[], Origin]) -> None:
    data = payload(256 * KiB, seed=312)
    origin.add("/org/repo/resolve/main/w.gguf", data)
    mirror = servers()
    mirror.add("/org/repo/resolve/main/w.gguf", data)
    app, client, watch = service(**mirrors(at(mirror)), ARW_HF_ENDPOINT=origin.base, ARW_HF_TOKEN="hf_secret")
    post_download(client, "w", "hf://org/repo/w.gguf")
    done = watch.terminal("w")
    assert done["status"] == "complete", done
    assert installed(app, "w.gguf") == data
    (asked,) = mirror.requests_for("/org/repo/resolve/main/w.gguf")
    assert "authorization" not in asked.headers
    assert origin.requests_for("/org/repo/resolve/main/w.gguf") == []


def test_a_mirror_whose_name_does_not_resolve_is_skipped_at_once(service: Service, origin: Origin) -> None:
    res = origin.add("/n.gguf", payload(256 * KiB, seed=330))
    app, client, watch = service(**mirrors("http://mirror.example.invalid{path}"), ARW_DL_RETRY_BACKOFF_MS=500,
                                 ARW_DL_RETRY_BACKOFF_MAX_MS=30_000)
    post_download(client, "n", origin.url("/n.gguf"))
    done = watch.terminal("n")
    assert done["status"] == "complete", done
    assert installed(app, "n.gguf") == res.data
    [skipped, served] = done["sources"]
    assert skipped["skipped"].startswith("cannot resolve host mirror.example.invalid: ")
    assert served == {"source": "origin", "bytes": len(res.data)}
    retrying = [p for p in watch.payloads("n") if p["status"] == "retrying"]
    assert all(p["delay_ms"] == 0 for p in retrying)  # on to the origin at once


# -- what a mirror cannot vouch for --------------------------------------------------------------------


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_digest_only_a_mirror_publishes_adopts_no_installed_file(
        service: Service, origin: Origin, servers: Callable[[], Origin], form: str) -> None:
    first, second = payload(256 * KiB, seed=320), payload(256 * KiB, seed=321)
    mirror = servers()
    a = origin.add("/a.gguf", first)
    mirror.add("/a.gguf", first)
    origin.add("/b.gguf", second)
    # The mirror states the installed model's digest for another file.
    mirror.add("/b.gguf", second, headers=FORMS[form](a.sha256))
    app, client, watch = service(**mirrors(at(mirror)))
    post_download(client, "a", origin.url("/a.gguf"), sha256=a.sha256)
    assert watch.terminal("a")["status"] == "complete"
    post_download(client, "b", origin.url("/b.gguf"))
    done = watch.terminal("b")
    assert done["status"] == "complete", done
    assert "deduplicated" not in done and done["sha256_source"] == "computed"
    assert installed(app, "b.gguf") == second  # its own bytes, read and hashed
    assert mirror.bytes_sent("/b.gguf") == len(second)
    models = {m["id"]: m for m in client.get("/models").json["items"]}
    assert models["b"]["sha256"] == hashlib.sha256(second).hexdigest()
    assert models["b"]["sha256_source"] == "computed"


@pytest.mark.parametrize("who", ["request", "origin", "mirror", "nobody"])
def test_sha256_source_names_who_vouched(service: Service, origin: Origin, servers: Callable[[], Origin],
                                         who: str) -> None:
    data = payload(128 * KiB, seed=322)
    digest = hashlib.sha256(data).hexdigest()
    mirror = servers()
    res = origin.add("/s.gguf", data)
    if who == "origin":
        res.headers = FORMS["Repr-Digest"](digest)  # the mirror has no such file: the origin serves it
    else:
        mirror.add("/s.gguf", data, headers=FORMS["Repr-Digest"](digest) if who == "mirror" else {})
    _app, client, watch = service(**mirrors(at(mirror)))
    post_download(client, "s", origin.url("/s.gguf"), **({"sha256": digest} if who == "request" else {}))
    done = watch.terminal("s")
    expected = {"request": "request", "origin": "origin", "mirror": "computed", "nobody": "computed"}[who]
    assert done["status"] == "complete" and done["sha256"] == digest
    assert done["sha256_source"] == expected
    [model] = client.get("/models").json["items"]
    assert model["sha256_source"] == expected
