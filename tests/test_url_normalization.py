"""Dot segments in a download's url are resolved once, when the POST is taken.

Everything after sees the same url: the job, the sidecar, the model entry, the
origin and every mirror template. A ``..`` (or ``%2e%2e``) can then no longer climb
out of a mirror's own prefix, where an HTTP client or the mirror's server would
resolve it after the template was filled in; a path that climbs above the root
stays at the root, as browsers do. ``hf://`` references with such segments are
refused.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from arw_models.engine.headers import remove_dot_segments, without_dot_segments

from .support.app import Service, post_download
from .support.origin import Origin, payload

KiB = 1024


@pytest.fixture
def mirror() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


@pytest.mark.parametrize(("path", "resolved"), [
    ("/a/b/c/./../../g", "/a/g"),  # RFC 3986, 5.2.4
    ("/x/../../../admin/secret", "/admin/secret"),  # above the root: stays at the root
    ("/a/%2e%2E/b", "/b"),
    ("/a/.%2e/b", "/b"),
    ("/a/b/..", "/a/"),
    ("/a/./", "/a/"),
    ("/..", "/"),
    ("/a/..b/c.d/.e", "/a/..b/c.d/.e"),  # dots inside a name are the name's
    ("/a%2fb/../c", "/c"),
])
def test_dot_segments_are_removed(path: str, resolved: str) -> None:
    assert remove_dot_segments(path) == resolved


def test_only_the_path_is_resolved() -> None:
    assert without_dot_segments("http://u:p@o:8/x/../y/./z?q=/../a#/../f") == "http://u:p@o:8/y/z?q=/../a#/../f"
    assert without_dot_segments("http://o/a/b?") == "http://o/a/b?"  # untouched: byte for byte


@pytest.mark.parametrize("climb", ["/x/../../../m/m.gguf", "/x/%2e%2e/%2E%2E/./m/m.gguf"])
def test_a_mirror_gets_the_resolved_path_under_its_own_prefix(
        service: Service, origin: Origin, mirror: Origin, climb: str) -> None:
    data = payload(64 * KiB, seed=330)
    origin.add("/m/m.gguf", data)
    mirror.add("/cache/m/m.gguf", data)
    mirror.add("/m/m.gguf", b"not for this mirror's users")  # what a climb out of /cache would reach
    _app, client, watch = service(ARW_DL_MIRRORS=mirror.base + "/cache{path}")
    r = post_download(client, "m", origin.url(climb))
    assert r.status_code == 202
    assert r.json["url"] == origin.url("/m/m.gguf")
    done = watch.terminal("m")
    assert done["status"] == "complete", done
    assert {s.path for s in mirror.seen} == {"/cache/m/m.gguf"}
    [model] = client.get("/models").json["items"]
    assert model["url"] == origin.url("/m/m.gguf")
    assert model["file"] == "m.gguf"


def test_the_origin_is_asked_for_the_resolved_path(service: Service, origin: Origin) -> None:
    origin.add("/m.gguf", payload(16 * KiB, seed=331))
    _app, client, watch = service()
    post_download(client, "o", origin.url("/../a/%2E./m.gguf"))
    assert watch.terminal("o")["status"] == "complete"
    assert {s.path for s in origin.seen} == {"/m.gguf"}


@pytest.mark.parametrize("ref", ["hf://owner/repo/../../x", "hf://owner/repo/a/%2e%2e/%2E%2E/x.gguf",
                                 "hf://owner/repo/./x.gguf", "hf://../repo/x.gguf"])
def test_an_hf_reference_that_leaves_its_repository_is_refused(service: Service, ref: str) -> None:
    _app, client, _watch = service()
    r = post_download(client, "h", ref)
    assert r.status_code == 400 and r.json["code"] == "invalid-url"


@pytest.mark.parametrize("path", ["/cache/..%2f..%2fadmin/secret", "/a/..%5Cadmin", "/a/..\\admin", "/a/%2e%2e%2Fb"])
def test_a_dot_segment_behind_an_encoded_slash_is_refused(service: Service, path: str) -> None:
    # A server that decodes %2f (lighttpd does by default) or reads \ as / would
    # resolve these after the service has, and climb out of a mirror's prefix.
    _app, client, _watch = service()
    r = post_download(client, "e", "http://files.example" + path)
    assert r.status_code == 400 and r.json["code"] == "invalid-url"


def test_an_encoded_slash_inside_a_name_is_kept(service: Service, origin: Origin) -> None:
    origin.add("/api/group%2Fproject/m.gguf", payload(8 * KiB, seed=332))
    _app, client, watch = service()
    r = post_download(client, "g", origin.url("/api/group%2Fproject/m.gguf"))
    assert r.status_code == 202 and r.json["url"] == origin.url("/api/group%2Fproject/m.gguf")
    assert watch.terminal("g")["status"] == "complete"
