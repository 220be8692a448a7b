"""Sources that name a file by its SHA-256: peers (ARW_DL_PEERS: other services'
``/blobs/sha256/<digest>``) and ``{sha256}`` mirror templates. They are asked only
when the digest is known, first; their bytes are held to that digest; a peer that
serves other bytes, stalls, is down or lacks the blob is skipped at the cost of one
short request; the peers' token goes to their hosts alone.

The peers here are real local servers (tests/support/origin.py) serving
``/blobs/sha256/<digest>``, or a real service (the app on a socket)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from arw_models.config import parse_mirrors, parse_peers
from arw_models.engine import sources
from arw_models.engine.route import Route
from arw_models.errors import TransferError

from .support.app import LiveServer, Service, Watch, post_download
from .support.helpers import models_dir, read
from .support.hub import Hub, needs_second_host
from .support.origin import Origin, payload
from .support.servers import closed_port

KiB = 1024
MiB = 1024 * KiB
TOKEN = "peer-token"


def blob(digest: str) -> str:
    return f"/blobs/sha256/{digest}"


def installed(app: Any, name: str) -> bytes:
    return read(os.path.join(models_dir(app), name))


def peers(*bases: str, **more: Any) -> dict[str, Any]:
    return {"ARW_DL_PEERS": ",".join(bases), "ARW_PEERS_TOKEN": TOKEN, "ARW_DL_PEER_TIMEOUT_SECS": 1.0, **more}


# -- the settings and the source list ---------------------------------------------------------


def test_templates_and_peers_are_checked() -> None:
    assert parse_mirrors("http://b.lan/sha256/{sha256},http://c.lan{path}") == (
        "http://b.lan/sha256/{sha256}", "http://c.lan{path}")
    assert parse_mirrors("http://b.lan/{sha256}?size={size}") == ("http://b.lan/{sha256}?size={size}",)
    for bad in ("http://b.lan/fixed", "http://b.lan/{digest}", "ftp://b.lan/{sha256}", "http://b.lan/{size}"):
        with pytest.raises(ValueError):
            parse_mirrors(bad)
    assert parse_peers(" http://10.0.0.5:8090 , http://host/arw/ ") == ("http://10.0.0.5:8090", "http://host/arw")
    for bad in ("10.0.0.5:8090", "http://u:pw@host", "http://host/?x=1", "ftp://host"):
        with pytest.raises(ValueError):
            parse_peers(bad)


def test_sources_by_digest_come_first_and_only_with_a_digest() -> None:
    fleet = sources.fleet_of(("http://bucket.lan/sha256/{sha256}", "http://cache.lan{path}",
                              "http://b2.lan/{sha256}/{size}"), ("http://p1:8090", "http://p2/arw"), "tok", 2.0)
    digest = "ab" * 32
    known = sources.for_job("https://o.example/m.gguf", {"Authorization": "Bearer origin"}, "https://hf.co", None,
                            ("http://cache.lan{path}",), fleet, digest, None)
    assert [s.url for s in known] == [
        f"http://p1:8090/blobs/sha256/{digest}", f"http://p2/arw/blobs/sha256/{digest}",
        f"http://bucket.lan/sha256/{digest}",  # {size} unknown: the other bucket waits
        "http://cache.lan/m.gguf", "https://o.example/m.gguf"]
    assert [dict(s.headers) for s in known] == [{"Authorization": "Bearer tok"}] * 2 + [{}, {}, {
        "Authorization": "Bearer origin"}]
    assert [s.timeout for s in known] == [(2.0, 2.0), (2.0, 2.0), None, None, None]
    assert [s.label for s in known[:3]] == ["http://p1:8090", "http://p2", "http://bucket.lan"]
    with_size = sources.for_job("https://o.example/m.gguf", {}, "https://hf.co", None, (), fleet, digest, 77)
    assert f"http://b2.lan/{digest}/77" in [s.url for s in with_size]
    unknown = sources.for_job("https://o.example/m.gguf", {}, "https://hf.co", None, ("http://cache.lan{path}",),
                              fleet, None, None)
    assert [s.url for s in unknown] == ["http://cache.lan/m.gguf", "https://o.example/m.gguf"]
    assert "tok" not in repr(fleet) + repr(known)


def test_a_template_is_filled_only_by_what_is_known() -> None:
    """A template that names the digest or the size is asked only when that is
    known: half filled, it would name some other file, or none."""
    assert sources.fillable("http://b.lan/{sha256}", "ab" * 32, None)
    assert not sources.fillable("http://b.lan/{sha256}", None, 77)
    assert not sources.fillable("http://b.lan/{sha256}/{size}", "ab" * 32, None)
    assert sources.fillable("http://b.lan/{sha256}/{size}", "ab" * 32, 77)
    assert sources.fillable("http://b.lan{path}", None, None)


def test_the_sources_by_digest_join_a_route_once() -> None:
    """A job's route takes the sources by digest once, before the origin: a second
    digest it is told of (another answer's) adds no source to ask again."""
    origin_source = sources.origin("https://o.example/m.gguf", {}, "https://hf.co", None)
    route = Route("m", [origin_source])
    first = [sources.peer("http://p1:8090", "ab" * 32, None, 2.0)]
    assert route.learn(first) and route.current == first[0]
    route.exhausted(TransferError("http-status", "it answered 404"))  # the peer is skipped: the origin again
    assert route.current == origin_source
    assert not route.learn([sources.peer("http://p1:8090", "cd" * 32, None, 2.0)])
    assert route.current == origin_source
    assert [item["source"] for item in route.summary(0)] == ["http://p1:8090"]


# -- peers that serve, and peers that do not ------------------------------------------------------


def test_a_peer_serves_the_file_with_the_token_for_its_host_alone(
        service: Service, origin: Origin, servers: Callable[[], Origin]) -> None:
    data = payload(3 * MiB + 3, seed=900)
    res = origin.add("/m/p.gguf", data)
    peer = servers()
    peer.add(blob(res.sha256), data)
    app, client, watch = service(**peers(peer.base))
    post_download(client, "p", origin.url("/m/p.gguf"), sha256=res.sha256,
                  headers={"X-Origin-Key": "for-the-origin"})
    done = watch.terminal("p")
    assert done["status"] == "complete", done
    assert installed(app, "p.gguf") == data
    assert done["sources"] == [{"source": peer.base, "bytes": len(data)}]
    assert origin.requests_for("/m/p.gguf") == []
    asked = peer.requests_for(blob(res.sha256))
    assert asked and all(s.headers.get("authorization") == f"Bearer {TOKEN}" for s in asked)
    assert all("x-origin-key" not in s.headers for s in asked)  # the origin's headers stay home


def test_a_peer_with_other_bytes_and_a_stalled_one_are_skipped_and_the_origin_serves(
        service: Service, origin: Origin, servers: Callable[[], Origin]) -> None:
    data = payload(2 * MiB, seed=901)
    res = origin.add("/m/w.gguf", data)
    liar, staller = servers(), servers()
    liar.add(blob(res.sha256), payload(len(data), seed=902))  # 200, the right size, other bytes
    staller.add(blob(res.sha256), data, stall_after=0)  # its answer, then nothing
    app, client, watch = service(**peers(liar.base, staller.base), ARW_DL_RETRIES=0)
    post_download(client, "w", origin.url("/m/w.gguf"), sha256=res.sha256)
    done = watch.terminal("w", timeout=15)
    assert done["status"] == "complete", done
    assert installed(app, "w.gguf") == data
    assert [(s["source"], s.get("skipped")) for s in done["sources"]] == [
        (liar.base, "its bytes did not match the sha256"),
        (staller.base, "network error at byte 0: no data arrived within the idle timeout"),
        ("origin", None)]
    assert len(liar.requests_for(blob(res.sha256))) == 1 and len(staller.requests_for(blob(res.sha256))) == 1
    assert origin.bytes_sent("/m/w.gguf") == len(data)
    assert staller.resources[blob(res.sha256)].stalled.is_set()


def test_a_peer_that_is_down_hung_or_lacks_the_blob_costs_one_request(
        service: Service, origin: Origin, servers: Callable[[], Origin]) -> None:
    data = payload(1 * MiB, seed=903)
    res = origin.add("/m/d.gguf", data)
    empty = servers()
    down = f"http://127.0.0.1:{closed_port()}"
    with socket.socket() as hung_socket:  # takes connections (the kernel's backlog), never answers
        hung_socket.bind(("127.0.0.1", 0))
        hung_socket.listen(8)
        hung = f"http://127.0.0.1:{hung_socket.getsockname()[1]}"
        # Moving on is no retry: none allowed, and a minute's backoff, change nothing.
        # And the ordinary timeouts, long: a peer gets its own short one.
        app, client, watch = service(**peers(down, hung, empty.base), ARW_DL_RETRIES=0,
                                     ARW_DL_RETRY_BACKOFF_MS=60_000, ARW_DL_RETRY_BACKOFF_MAX_MS=60_000,
                                     ARW_DL_IDLE_TIMEOUT_SECS=60, ARW_DL_CONNECT_TIMEOUT_SECS=60)
        began = time.monotonic()
        post_download(client, "d", origin.url("/m/d.gguf"), sha256=res.sha256)
        done = watch.terminal("d")
        took = time.monotonic() - began
    assert done["status"] == "complete", done
    assert installed(app, "d.gguf") == data
    assert [(s["source"], s.get("skipped", "")[:14]) for s in done["sources"]] == [
        (down, "cannot connect"), (hung, "network error "), (empty.base, "it answered 40"), ("origin", "")]
    assert len(empty.requests_for(blob(res.sha256))) == 1
    assert [p["delay_ms"] for p in watch.payloads("d") if p["status"] == "retrying"] == [0, 0, 0]
    assert took < 1.0 + 4  # the hung peer's one short wait (ARW_DL_PEER_TIMEOUT_SECS), and little else


def test_without_a_digest_no_peer_or_digest_mirror_is_asked(
        service: Service, origin: Origin, servers: Callable[[], Origin]) -> None:
    data = payload(512 * KiB, seed=904)
    res = origin.add("/m/n.gguf", data)
    peer, bucket = servers(), servers()
    peer.add(blob(res.sha256), data)
    _app, client, watch = service(**peers(peer.base, ARW_DL_MIRRORS=bucket.base + "/sha256/{sha256}"))
    post_download(client, "n", origin.url("/m/n.gguf"))  # no sha256, and the origin publishes none
    done = watch.terminal("n")
    assert done["status"] == "complete" and done["sha256_source"] == "computed", done
    assert peer.seen == [] and bucket.seen == []
    assert origin.bytes_sent("/m/n.gguf") == len(data)


def test_a_digest_the_origin_publishes_sends_the_body_to_the_peer(
        service: Service, origin: Origin, servers: Callable[[], Origin]) -> None:
    data = payload(8 * MiB, seed=905)
    digest = hashlib.sha256(data).hexdigest()
    origin.add("/m/r.gguf", data, headers={"Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(digest)).decode()}:"},
               throttle=4 * MiB)  # slow: the switch happens after its answer, long before its body ends
    peer = servers()
    peer.add(blob(digest), data)
    app, client, watch = service(**peers(peer.base))
    post_download(client, "r", origin.url("/m/r.gguf"))
    done = watch.terminal("r")
    assert done["status"] == "complete", done
    assert done["sha256"] == digest and done["sha256_source"] == "origin"
    assert installed(app, "r.gguf") == data
    assert done["sources"] == [{"source": "origin", "bytes": 0}, {"source": peer.base, "bytes": len(data)}]
    assert len(origin.requests_for("/m/r.gguf")) == 1
    assert origin.bytes_sent("/m/r.gguf") < len(data) // 2  # what was in flight when its answer was closed


def test_a_digest_the_origin_publishes_asks_no_peer_again_when_the_request_had_it(
        service: Service, origin: Origin, servers: Callable[[], Origin]) -> None:
    """With the request's sha256 the peers were asked first, and lacked the blob: the
    origin publishing that digest too is no reason to ask them a second time, nor to
    leave the origin's body unread."""
    data = payload(1 * MiB, seed=909)
    digest = hashlib.sha256(data).hexdigest()
    origin.add("/m/t.gguf", data, headers={"Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(digest)).decode()}:"})
    empty = servers()
    app, client, watch = service(**peers(empty.base))
    post_download(client, "t", origin.url("/m/t.gguf"), sha256=digest)
    done = watch.terminal("t")
    assert done["status"] == "complete", done
    assert installed(app, "t.gguf") == data
    assert [(s["source"], s.get("skipped", "")[:14]) for s in done["sources"]] == [
        (empty.base, "it answered 40"), ("origin", "")]
    assert len(empty.requests_for(blob(digest))) == 1
    assert len(origin.requests_for("/m/t.gguf")) == 1


def test_a_bucket_that_needs_the_size_is_not_asked_when_the_origin_gives_none(
        service: Service, origin: Origin, servers: Callable[[], Origin]) -> None:
    """The origin publishes the digest but sends its body chunked, without a size:
    a bucket keyed by digest and size cannot be named, so the origin's own body is
    read on, in its one request (not asked again, nor the bucket)."""
    data = payload(1 * MiB, seed=910)
    digest = hashlib.sha256(data).hexdigest()
    origin.add("/m/u.gguf", data, chunked=True, send_length=False,
               headers={"Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(digest)).decode()}:"})
    bucket = servers()
    bucket.add(f"/b/{digest}/{len(data)}", data)
    app, client, watch = service(ARW_DL_MIRRORS=bucket.base + "/b/{sha256}/{size}")
    post_download(client, "u", origin.url("/m/u.gguf"))
    done = watch.terminal("u")
    assert done["status"] == "complete", done
    assert installed(app, "u.gguf") == data and done["sha256"] == digest and done["sha256_source"] == "origin"
    assert len(origin.requests_for("/m/u.gguf")) == 1
    assert bucket.seen == []


def test_a_digest_the_origin_publishes_sends_the_body_to_a_bucket_keyed_by_digest(
        service: Service, origin: Origin, servers: Callable[[], Origin]) -> None:
    """A ``{sha256}`` template is a source by digest of its own, peers or none: the
    origin's published digest sends the body there too."""
    data = payload(4 * MiB, seed=909)
    digest = hashlib.sha256(data).hexdigest()
    origin.add("/m/b.gguf", data, headers={"Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(digest)).decode()}:"},
               throttle=4 * MiB)
    bucket = servers()
    bucket.add(f"/sha256/{digest}", data)
    app, client, watch = service(ARW_DL_MIRRORS=bucket.base + "/sha256/{sha256}")
    post_download(client, "b", origin.url("/m/b.gguf"))
    done = watch.terminal("b")
    assert done["status"] == "complete", done
    assert done["sha256"] == digest and installed(app, "b.gguf") == data
    assert done["sources"] == [{"source": "origin", "bytes": 0}, {"source": bucket.base, "bytes": len(data)}]
    assert origin.bytes_sent("/m/b.gguf") < len(data) // 2


def test_a_peer_with_other_bytes_than_the_origin_published_is_caught(
        service: Service, origin: Origin, servers: Callable[[], Origin]) -> None:
    data = payload(1 * MiB, seed=906)
    digest = hashlib.sha256(data).hexdigest()
    origin.add("/m/q.gguf", data, headers={"Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(digest)).decode()}:"})
    liar = servers()
    liar.add(blob(digest), payload(len(data), seed=907))
    app, client, watch = service(**peers(liar.base))
    post_download(client, "q", origin.url("/m/q.gguf"))
    done = watch.terminal("q")
    assert done["status"] == "complete", done
    assert installed(app, "q.gguf") == data and done["sha256"] == digest
    assert [(s["source"], s.get("skipped")) for s in done["sources"]] == [
        ("origin", None), (liar.base, "its bytes did not match the sha256")]


def test_a_bucket_keyed_by_digest_serves_with_its_size(
        service: Service, origin: Origin, servers: Callable[[], Origin]) -> None:
    data = payload(1 * MiB + 1, seed=908)
    res = origin.add("/m/s.gguf", data)
    bucket = servers()
    bucket.add(f"/models/sha256/{res.sha256}", data)
    _app, client, watch = service(ARW_DL_MIRRORS=bucket.base + "/models/sha256/{sha256}")
    post_download(client, "s", origin.url("/m/s.gguf"), sha256=res.sha256)
    done = watch.terminal("s")
    assert done["status"] == "complete", done
    assert done["sources"] == [{"source": bucket.base, "bytes": len(data)}]
    assert origin.requests_for("/m/s.gguf") == []


def test_a_service_serves_its_peer(make_app: Callable[..., Any], tmp_path: Any, origin: Origin) -> None:
    """Two in-process services: the second fetches through the first's blob endpoint,
    with the first's admin token as its peers' token."""
    data = payload(2 * MiB + 9, seed=909)
    res = origin.add("/m/t.gguf", data)
    first = make_app(ARW_STATE_DIR=str(tmp_path / "one"), ARW_ADMIN_TOKEN=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    w1 = Watch(first)
    try:
        assert first.test_client().post("/models/download", json={"id": "t", "url": origin.url("/m/t.gguf")},
                                        headers=auth).status_code == 202
        assert w1.terminal("t")["status"] == "complete"
    finally:
        w1.close()
    server = LiveServer(first)
    try:
        second = make_app(ARW_STATE_DIR=str(tmp_path / "two"), **peers(server.url))
        w2 = Watch(second)
        try:
            post_download(second.test_client(), "t", origin.url("/m/t.gguf"), sha256=res.sha256)
            done = w2.terminal("t")
        finally:
            w2.close()
    finally:
        server.close()
    assert done["status"] == "complete", done
    assert done["sources"] == [{"source": server.url, "bytes": len(data)}]
    assert installed(second, "t.gguf") == data
    assert origin.bytes_sent("/m/t.gguf") == len(data)  # the first's download alone


@needs_second_host
def test_a_many_file_model_fetches_its_listed_files_from_a_peer(
        service: Service, servers: Callable[[], Origin]) -> None:
    files = {"config.json": b'{"model_type": "tiny"}\n',
             "model-00001-of-00002.safetensors": payload(300 * KiB, seed=910),
             "model-00002-of-00002.safetensors": payload(200 * KiB, seed=911)}
    hub = Hub(token=None)
    try:
        hub.commit("acme/peer-model", files)  # the two large files are in LFS: the listing gives their sha256
        peer = servers()
        for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
            peer.add(blob(hashlib.sha256(files[name]).hexdigest()), files[name])
        app, client, watch = service(ARW_HF_ENDPOINT=hub.endpoint, **peers(peer.base))
        assert post_download(client, "pm", "hf://acme/peer-model").status_code == 202
        done = watch.terminal("pm")
        cdn_asked = [s.path for s in hub.cdn.seen]
    finally:
        hub.close()
    assert done["status"] == "complete", done
    folder = os.path.join(models_dir(app), "pm")
    for name, data in files.items():
        assert read(os.path.join(folder, name)) == data
    assert cdn_asked == []  # the listed digests went to the peer; the small file came from the hub itself
    assert sorted(s.path for s in peer.seen) == sorted(
        blob(hashlib.sha256(files[n]).hexdigest()) for n in files if n.endswith(".safetensors"))
