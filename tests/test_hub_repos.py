"""Hub repositories resolved to the files of one commit (arw_models.engine.hub),
against the hub stand-in of tests/support/hub.py (the hub on 127.0.0.1, its CDN on
127.0.0.2) with a real session of arw_models.engine.http."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from arw_models.engine import hub as hubs
from arw_models.engine import hubapi
from arw_models.engine.fileset import FileSet, RemoteFile, Selection
from arw_models.engine.http import new_session
from arw_models.engine.sources import InvalidReference, parse_hf
from arw_models.errors import TransferError

from .support.hub import Hub, git_blob_id, needs_second_host
from .support.origin import payload

TOKEN = "hf_RePoToKeN0123456789abcdefXYZ"
REPO = "acme-ai/Tiny-Coder"
TIMEOUT = (5.0, 10.0)

pytestmark = needs_second_host

FILES = {
    "config.json": b'{"model_type": "tiny"}\n',
    "README.md": b"# Tiny coder\n",
    "tokenizer/vocab.txt": b"a\nb\nc\n",
    "model.safetensors": payload(4096, seed=1),
    "gguf/tiny-q4_k_m.gguf": payload(3000, seed=2),
    "gguf/tiny-q8_0.gguf": payload(5000, seed=3),
    "onnx/model.onnx": payload(2048, seed=4),
}


@pytest.fixture
def hub() -> Iterator[Hub]:
    server = Hub(token=TOKEN)
    yield server
    server.close()  # fails the test if the CDN ever saw the token


@pytest.fixture
def session() -> Iterator[requests.Session]:
    s = new_session("arw-models-test")
    yield s
    s.close()


def resolve(hub: Hub, session: requests.Session, url: str, selection: Selection | None = None,
            token: str | None = TOKEN, headers: dict[str, str] | None = None) -> FileSet:
    return hubs.resolve(hubs.parse_repo(url), selection or Selection(), session, hub.endpoint, token, headers or {},
                        timeout=TIMEOUT)


def fetch(session: requests.Session, hub: Hub, file: RemoteFile, token: str | None = TOKEN) -> bytes:
    """A file's bytes as the many-file download will ask for them."""
    private = hubs.authorizer(hub.endpoint, token, {})(file, False)
    session.private_headers = frozenset(private)  # type: ignore[attr-defined]
    r = session.get(file.url, headers=dict(private), timeout=TIMEOUT)
    assert r.status_code == 200, (file.url, r.status_code)
    return r.content


def failure(call: Any) -> TransferError:
    with pytest.raises(TransferError) as caught:
        call()
    return caught.value


def test_a_branch_resolves_to_its_commit_and_the_files_stay_at_it(hub: Hub, session: requests.Session) -> None:
    first = hub.commit(REPO, FILES)
    got = resolve(hub, session, f"hf://{REPO}")
    assert got.revision == first and got.provider == "hf" and got.reference == f"hf://{REPO}"
    assert sorted(f.path for f in got.files) == sorted(FILES)
    by_path = {f.path: f for f in got.files}
    lfs = by_path["model.safetensors"]
    assert lfs.sha256 == hashlib.sha256(FILES["model.safetensors"]).hexdigest() and lfs.git_oid is None
    small = by_path["config.json"]
    assert small.git_oid == git_blob_id(FILES["config.json"]) and small.sha256 is None
    assert all(f.size == len(FILES[f.path]) for f in got.files)
    assert small.url == f"{hub.endpoint}/{REPO}/resolve/{first}/config.json"
    # The branch moves on: the resolved files still name the first commit's bytes.
    second = hub.commit(REPO, {**FILES, "config.json": b'{"model_type": "bigger"}\n'})
    assert fetch(session, hub, small) == FILES["config.json"]
    assert fetch(session, hub, lfs) == FILES["model.safetensors"]
    again = resolve(hub, session, f"hf://{REPO}")
    assert again.revision == second
    assert {f.path: f for f in again.files}["config.json"].git_oid == git_blob_id(b'{"model_type": "bigger"}\n')
    assert FileSet.from_json(got.to_json()) == got


def test_a_branch_that_moves_during_the_listing_does_not_mix_commits(hub: Hub, session: requests.Session) -> None:
    first = hub.commit(REPO, FILES)
    hub.page_size = 2

    def move_once(repo: str, shown: int) -> None:
        if shown == 2 and hub.files_at(REPO, "main").keys() == FILES.keys():
            hub.commit(REPO, {"other.bin": b"x" * 10})

    hub.on_page = move_once
    got = resolve(hub, session, f"hf://{REPO}")
    assert got.revision == first and sorted(f.path for f in got.files) == sorted(FILES)
    assert [f.path for f in resolve(hub, session, f"hf://{REPO}").files] == ["other.bin"]


def test_tags_pull_requests_and_commits_resolve(hub: Hub, session: requests.Session) -> None:
    first = hub.commit(REPO, FILES)
    pr = hub.commit(REPO, {"README.md": b"pr\n"}, branch="refs/pr/1")
    hub.move(REPO, "v1.0", first)
    assert resolve(hub, session, f"hf://{REPO}@v1.0").revision == first
    for written in ("refs/pr/1", "refs%2Fpr%2F1"):
        assert resolve(hub, session, f"hf://{REPO}@{written}").revision == pr
    assert resolve(hub, session, f"hf://{REPO}@{first}").revision == first
    [asked] = [s.path for s in hub.api_requests(REPO, "revision") if "pr" in s.path][:1]
    assert asked.endswith("/revision/refs%2Fpr%2F1")
    err = failure(lambda: resolve(hub, session, f"hf://{REPO}@{'0' * 40}"))
    assert err.code == "http-status" and err.context["http_status"] == 404 and "0" * 40 in str(err)
    err = failure(lambda: resolve(hub, session, f"hf://{REPO}@no-such-branch"))
    assert err.context["hub_error"] == "RevisionNotFound" and "no-such-branch" in str(err)
    err = failure(lambda: resolve(hub, session, "hf://acme-ai/absent"))
    assert err.context["http_status"] == 404 and "acme-ai/absent" in str(err) and not err.retryable


def test_datasets_are_asked_under_their_kind(hub: Hub, session: requests.Session) -> None:
    sha = hub.commit("datasets/acme-ai/corpus", {"data/train.parquet": payload(2000, seed=9)})
    got = resolve(hub, session, "hf://datasets/acme-ai/corpus")
    [f] = got.files
    assert f.url == f"{hub.endpoint}/datasets/acme-ai/corpus/resolve/{sha}/data/train.parquet"
    assert fetch(session, hub, f) == payload(2000, seed=9)
    assert hub.api_requests("datasets/acme-ai/corpus", "tree")


def test_the_listing_is_followed_page_by_page(hub: Hub, session: requests.Session) -> None:
    many = {f"shards/part-{i:03d}.bin": bytes([i]) * (10 + i) for i in range(9)}
    hub.commit(REPO, many)
    hub.page_size = 3  # 10 entries with the folder: 4 pages
    got = resolve(hub, session, f"hf://{REPO}")
    assert sorted(f.path for f in got.files) == sorted(many)
    pages = hub.api_requests(REPO, "tree")
    assert len(pages) == 4
    assert [p.path.rpartition("cursor=")[2] if "cursor=" in p.path else "0" for p in pages] == ["0", "3", "6", "9"]
    assert all(p.headers.get("authorization") == f"Bearer {TOKEN}" for p in pages)


def test_a_commits_listing_is_the_same_however_it_is_paged(hub: Hub, session: requests.Session) -> None:
    """The entries of one commit, asked for in one page or in many, are equal values (they
    compare and hash as such), one per file."""
    sha = hub.commit(REPO, FILES)
    api = hubapi.Api(session, hub.endpoint, {"Authorization": f"Bearer {TOKEN}"}, TIMEOUT)
    whole = api.tree("models", REPO, sha, REPO)
    hub.page_size = 2
    paged = api.tree("models", REPO, sha, REPO)
    assert paged == whole and set(paged) == set(whole) and len(set(whole)) == len(FILES)
    assert len(hub.api_requests(REPO, "tree")) == 1 + 5  # 10 entries with the folders: 5 pages of 2


def test_a_next_page_on_another_host_is_refused_and_never_asked(hub: Hub, session: requests.Session) -> None:
    hub.commit(REPO, FILES, gated=True)
    hub.page_size = 2
    hub.next_base = hub.cdn.base
    err = failure(lambda: resolve(hub, session, f"hf://{REPO}"))
    assert err.code == "invalid-listing" and "another host" in str(err) and REPO in str(err)
    assert hub.cdn.all_seen() == []


def test_a_listing_that_links_back_to_itself_ends(hub: Hub, session: requests.Session) -> None:
    hub.commit(REPO, FILES)
    hub.page_size = 2
    hub.on_page = lambda repo, shown: setattr(hub, "page_size", 0)  # every page now links to cursor=0
    assert "links back" in str(failure(lambda: resolve(hub, session, f"hf://{REPO}")))


def test_a_gated_repository_needs_the_token_which_only_the_hub_sees(hub: Hub, session: requests.Session) -> None:
    hub.commit(REPO, FILES, gated=True)
    err = failure(lambda: resolve(hub, session, f"hf://{REPO}", token=None))
    assert err.code == "http-status" and err.context["http_status"] == 401 and not err.retryable
    assert "gated" in str(err) and REPO in str(err)
    got = resolve(hub, session, f"hf://{REPO}")
    # The request's own Authorization is sent in place of the service's token.
    assert resolve(hub, session, f"hf://{REPO}", token="wrong", headers={"Authorization": f"Bearer {TOKEN}"}) == got
    for f in got.files:  # LFS files through the CDN: hub.close checks that it never saw the token
        assert fetch(session, hub, f) == FILES[f.path]
    assert any(s.path.startswith("/repos/") for s in hub.cdn.all_seen())
    refused = session.get(got.files[0].url, timeout=TIMEOUT)
    assert refused.status_code == 401


def test_an_api_answer_redirected_to_another_host_goes_there_without_the_token(hub: Hub,
                                                                           session: requests.Session) -> None:
    sha = hub.commit(REPO, FILES, gated=True)
    path = f"/api/models/{REPO}/revision/main"
    hub.cdn.add("/moved/revision", f'{{"sha": "{sha}"}}'.encode())
    served = hub.api.api
    assert served is not None
    hub.api.api = lambda raw, headers: ((307, {"Location": hub.cdn.url("/moved/revision")}, b"") if raw == path
                                        else served(raw, headers))
    assert resolve(hub, session, f"hf://{REPO}").revision == sha  # hub.close: the CDN never saw the token
    # The request's own headers are the hub's alone too.
    assert resolve(hub, session, f"hf://{REPO}", headers={"X-Mirror-Key": "k3y"}).revision == sha
    moved = hub.cdn.requests_for("/moved/revision")
    assert len(moved) == 2 and not [s for s in moved if "authorization" in s.headers or "x-mirror-key" in s.headers]
    assert hub.api_requests(REPO, "tree")[-1].headers.get("x-mirror-key") == "k3y"


def test_the_authorizer_gives_the_token_to_the_endpoint_alone() -> None:
    authorize = hubs.authorizer("https://hub.example", TOKEN, {})

    def file(url: str) -> RemoteFile:
        return RemoteFile("a.bin", url, 1, git_oid="0" * 40)

    assert authorize(file("https://hub.example/o/r/resolve/c/a.bin"), False) == {"Authorization": f"Bearer {TOKEN}"}
    assert authorize(file("https://HUB.example:443/o/r/resolve/c/a.bin"), True) == {"Authorization": f"Bearer {TOKEN}"}
    for elsewhere in ("http://hub.example/a", "https://hub.example:8443/a", "https://cdn.hub.example/a",
                      "https://hub.example.evil/a", "https://hub.example:x/a"):
        assert authorize(file(elsewhere), False) == {}, elsewhere
    own = hubs.authorizer("http://127.0.0.1:8080/mirror", TOKEN, {"Authorization": "Bearer theirs", "X-A": "1"})
    assert own(file("http://127.0.0.1:8080/mirror/o/r/resolve/c/a"), False) == {"Authorization": "Bearer theirs",
                                                                               "X-A": "1"}
    assert hubs.authorizer("https://hub.example", None, {})(file("https://hub.example/a"), False) == {}
    # http's own port is 80: written or not, the same origin.
    plain = hubs.authorizer("http://hub.example", TOKEN, {})
    assert plain(file("http://hub.example:80/o/r/resolve/c/a.bin"), False) == {"Authorization": f"Bearer {TOKEN}"}
    assert plain(file("http://hub.example:81/o/r/resolve/c/a.bin"), False) == {}
    # An endpoint with no host is nobody's: its token goes nowhere.
    assert hubs.authorizer("http:///mirror", TOKEN, {})(file("http:///mirror/o/r/resolve/c/a"), False) == {}


CASES: list[tuple[dict[str, list[str]], list[str]]] = [
    ({"include": ["*.gguf"]}, ["gguf/tiny-q4_k_m.gguf", "gguf/tiny-q8_0.gguf"]),  # * matches "/" too
    ({"include": ["gguf/"]}, ["gguf/tiny-q4_k_m.gguf", "gguf/tiny-q8_0.gguf"]),  # a folder: all under it
    ({"include": ["*q4_k_m*", "*.json"]}, ["config.json", "gguf/tiny-q4_k_m.gguf"]),
    ({"exclude": ["*.gguf", "onnx/"]}, ["README.md", "config.json", "model.safetensors", "tokenizer/vocab.txt"]),
    ({"include": ["gguf/*"], "exclude": ["*q8*"]}, ["gguf/tiny-q4_k_m.gguf"]),
    ({"include": ["[Rc]*"]}, ["README.md", "config.json"]),
    ({"include": ["readme.md"]}, []),  # case matters
    ({"files": ["README.md", "onnx/model.onnx"]}, ["README.md", "onnx/model.onnx"]),
    ({"files": ["README.md"], "include": ["*.json"]}, ["README.md", "config.json"]),  # a union
]


@pytest.mark.parametrize(("asked", "expected"), CASES)
def test_selection(hub: Hub, session: requests.Session, asked: dict[str, list[str]], expected: list[str]) -> None:
    hub.commit(REPO, FILES)
    selection = Selection.from_json(asked)
    if not expected:
        err = failure(lambda: resolve(hub, session, f"hf://{REPO}", selection))
        assert err.code == "invalid-selection" and "picks none" in str(err) and REPO in str(err)
        return
    assert sorted(f.path for f in resolve(hub, session, f"hf://{REPO}", selection).files) == expected


@pytest.mark.parametrize(("asked", "expected"), [c for c in CASES if not c[0].get("files")])
def test_patterns_select_as_huggingface_hub_does(asked: dict[str, list[str]], expected: list[str]) -> None:
    utils = pytest.importorskip("huggingface_hub.utils", reason="huggingface_hub (the test extra) is not installed")
    theirs = list(utils.filter_repo_objects(list(FILES), allow_patterns=asked.get("include"),
                                            ignore_patterns=asked.get("exclude")))
    assert sorted(theirs) == sorted(hubs.filter_paths(FILES, asked.get("include", ()), asked.get("exclude", ())))
    assert sorted(theirs) == expected


def test_named_files_must_exist(hub: Hub, session: requests.Session) -> None:
    hub.commit(REPO, FILES)
    err = failure(lambda: resolve(hub, session, f"hf://{REPO}", Selection(files=("README.md", "nope.bin", "gguf"))))
    assert err.code == "invalid-selection" and "'nope.bin'" in str(err) and "'gguf'" in str(err)
    assert err.context["missing"] == ["nope.bin", "gguf"]  # a folder is not a file
    for patterns in (Selection(include=("",)), Selection(files=("README.md",), exclude=("",)),
                     Selection(files=("README.md",), include=(3,))):  # type: ignore[arg-type]
        err = failure(lambda patterns=patterns: resolve(hub, session, f"hf://{REPO}", patterns))
        assert err.code == "invalid-selection" and "non-empty string" in str(err)


SPLIT = {f"q4/big-q4-0000{i}-of-00003.gguf": payload(1500, seed=20 + i) for i in (1, 2, 3)}
OTHER = {"big-q8-00001-of-00002.gguf": b"q8-1" * 300, "big-q8-00002-of-00002.gguf": b"q8-2" * 300,
         "README.md": b"split\n"}


@pytest.mark.parametrize("written", ["hf://{repo}/q4/big-q4-00002-of-00003.gguf",
                                     "hf://{repo}/q4/big-q4-00001-of-00003.gguf@v2",
                                     "hf://{repo}@v2/q4/big-q4-00003-of-00003.gguf"])
def test_one_shard_stands_for_all_of_them(hub: Hub, session: requests.Session, written: str) -> None:
    sha = hub.commit(REPO, {**SPLIT, **OTHER})
    hub.move(REPO, "v2", sha)
    got = resolve(hub, session, written.format(repo=REPO))
    assert [f.path for f in got.files] == sorted(SPLIT) and got.revision == sha
    with_readme = resolve(hub, session, written.format(repo=REPO), Selection(files=("README.md",)))
    assert [f.path for f in with_readme.files] == ["README.md", *sorted(SPLIT)]


def test_a_missing_shard_is_named(hub: Hub, session: requests.Session) -> None:
    hub.commit(REPO, {k: v for k, v in SPLIT.items() if "00002" not in k})
    err = failure(lambda: resolve(hub, session, f"hf://{REPO}/q4/big-q4-00001-of-00003.gguf"))
    assert err.code == "invalid-selection" and err.context["missing"] == ["q4/big-q4-00002-of-00003.gguf"]
    assert "q4/big-q4-00002-of-00003.gguf" in str(err)


@pytest.mark.parametrize(("entry", "says"), [
    ({"type": "file", "path": "../escape.bin", "size": 1, "oid": "1" * 40}, "unsafe path"),
    ({"type": "file", "path": "/abs.bin", "size": 1, "oid": "1" * 40}, "unsafe path"),
    ({"type": "file", "path": "a//b.bin", "size": 1, "oid": "1" * 40}, "unsafe path"),
    ({"type": "file", "path": "README.md", "size": 1, "oid": "1" * 40}, "'README.md' twice"),
    ({"type": "file", "path": "x.bin", "size": -1, "oid": "1" * 40}, "'x.bin' no size"),
    ({"type": "file", "path": "x.bin", "oid": "1" * 40}, "'x.bin' no size"),  # no size at all
    ({"type": "file", "path": "x.bin", "size": "12", "oid": "1" * 40}, "'x.bin' no size"),
    ({"type": "file", "path": "x.bin", "size": 1, "oid": "not-an-oid"}, "'x.bin' no git blob id"),
    ({"type": "file", "path": "x.bin", "size": 1, "oid": "1" * 40, "lfs": {"oid": "abc", "size": 1}},
     "'x.bin' no LFS SHA-256"),
    ({"type": "symlink", "path": "x.bin"}, "'x.bin' of type 'symlink'"),
    ({"type": "symlink", "path": "x.bin", "size": 1, "oid": "1" * 40}, "'x.bin' of type 'symlink'"),
    ({"path": "x.bin", "size": 1, "oid": "1" * 40}, "'x.bin' of type None"),  # no type at all
    ({"type": "file", "path": "x.bin", "size": 1, "oid": "not-an-oid", "lfs": {"oid": "a" * 64, "size": 1}},
     "'x.bin' no git blob id"),
    ({"type": "file", "path": "x.bin", "size": 1, "oid": "1" * 40, "lfs": {"size": 1}}, "'x.bin' no LFS SHA-256"),
    ({"type": "file", "path": "x.bin", "size": 1, "oid": "1" * 40, "lfs": "a" * 64}, "'x.bin' no LFS SHA-256"),
    ({"path": 3}, "an entry without a path"),
    ("x.bin", "an entry without a path"),  # an entry that is no object at all
])
def test_a_listing_that_cannot_be_a_model_is_refused(hub: Hub, session: requests.Session,
                                                     entry: dict[str, Any], says: str) -> None:
    """A listing with an entry no model's file can be is refused whole (not retried), and
    the message names the entry and what is wrong with it."""
    sha = hub.commit(REPO, {"README.md": b"hi\n"})
    hub.repos[REPO].extra[sha] = [entry]
    err = failure(lambda: resolve(hub, session, f"hf://{REPO}"))
    assert err.code == "invalid-listing" and REPO in str(err) and not err.retryable
    assert says in str(err)


def test_lfs_files_have_the_size_of_their_bytes_and_empty_files_are_files(hub: Hub,
                                                                         session: requests.Session) -> None:
    """An LFS entry's size is its ``lfs.size`` (the bytes the download verifies), not the size
    of its pointer file; without one, the entry's own size. An empty file is a file."""
    sha = hub.commit(REPO, {"README.md": b"hi\n"})
    hub.repos[REPO].extra[sha] = [
        {"type": "file", "path": "pointer-sized.bin", "size": 134, "oid": "1" * 40, "lfs": {"oid": "a" * 64,
                                                                                           "size": 5000}},
        {"type": "file", "path": "no-lfs-size.bin", "size": 77, "oid": "2" * 40, "lfs": {"oid": "b" * 64}},
        {"type": "file", "path": "empty.txt", "size": 0, "oid": git_blob_id(b"")},
    ]
    got = {f.path: f for f in resolve(hub, session, f"hf://{REPO}").files}
    assert (got["pointer-sized.bin"].size, got["pointer-sized.bin"].sha256) == (5000, "a" * 64)
    assert (got["no-lfs-size.bin"].size, got["no-lfs-size.bin"].sha256) == (77, "b" * 64)
    assert (got["empty.txt"].size, got["empty.txt"].git_oid) == (0, git_blob_id(b""))


def test_hub_failures_keep_their_codes(hub: Hub, session: requests.Session) -> None:
    hub.commit(REPO, FILES)
    path = f"/api/models/{REPO}/revision/main"
    hub.api.api = lambda raw, headers: (503, {"Retry-After": "7"}, b"{}") if raw == path else None
    err = failure(lambda: resolve(hub, session, f"hf://{REPO}"))
    assert (err.code, err.retryable, err.retry_after, err.context["http_status"]) == ("http-status", True, 7.0, 503)
    hub.api.api = lambda raw, headers: (200, {}, b"<html>") if raw == path else None
    assert failure(lambda: resolve(hub, session, f"hf://{REPO}")).code == "invalid-listing"
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    err = failure(lambda: hubs.resolve(hubs.parse_repo(f"hf://{REPO}"), Selection(), session, closed, None,
                                       timeout=TIMEOUT))
    assert err.code == "connection-refused" and err.retryable


def test_an_answer_cut_short_is_a_retryable_network_failure(hub: Hub, session: requests.Session) -> None:
    """A connection dropped in the middle of the hub's answer is the network's fault: the
    resolve may be tried again (and then succeeds), it is not a broken listing."""
    sha = hub.commit(REPO, FILES)
    path = f"/api/models/{REPO}/revision/main"
    hub.api.add(path, json.dumps({"id": REPO, "sha": sha}).encode(), drop_after=5)
    answer = hub.api.api
    hub.api.api = lambda raw, headers: None if raw == path else answer(raw, headers)
    err = failure(lambda: resolve(hub, session, f"hf://{REPO}"))
    assert err.code == "network" and err.retryable and REPO in str(err)
    assert resolve(hub, session, f"hf://{REPO}").revision == sha  # the drop was once


def test_https_to_a_hub_that_speaks_no_tls_is_a_tls_failure(hub: Hub, session: requests.Session) -> None:
    """An endpoint whose TLS handshake fails says so (code ``tls``, not retried): asking
    again would fail the same way, and the user must fix the endpoint or its certificate."""
    hub.commit(REPO, FILES)
    endpoint = hub.endpoint.replace("http://", "https://", 1)
    err = failure(lambda: hubs.resolve(hubs.parse_repo(f"hf://{REPO}"), Selection(), session, endpoint, None,
                                       timeout=TIMEOUT))
    assert err.code == "tls" and not err.retryable and REPO in str(err)


@pytest.mark.parametrize(("url", "many"), [
    ("hf://o/r", True), ("hf://o/r@v1", True), ("hf://o/r@refs/pr/1", True), ("hf://o/r@refs%2Fpr%2F1", True),
    ("hf://datasets/o/r", True), ("hf://spaces/o/r@" + "a" * 40, True),
    ("hf://o/r/m-00001-of-00002.gguf", True), ("hf://o/r/sub/m-00002-of-00002.gguf@main", True),
    ("hf://o/r@main/m-00001-of-00002.gguf", True),
    ("hf://o/r/m.gguf", False), ("hf://o/r/m-00001-of-00002.safetensors", False), ("hf://o/r@main/m.gguf", False),
    ("hf://o/r/m-00003-of-00002.gguf", False), ("hf://o/r/../m-00001-of-00002.gguf", False),
    ("hf://o/r/q4/-00001-of-00002.gguf", False),  # a shard's name has a prefix of its own, not its folder's
    ("hf://o", False), ("hf://o/r?x=1", False), ("https://huggingface.co/o/r", False), ("", False),
    (None, False),
])
def test_names_many(url: Any, many: bool) -> None:
    assert hubs.names_many(url) is many


def test_parse_repo() -> None:
    ref = hubs.parse_repo("hf://acme/m@refs%2Fpr%2F3")
    assert (ref.kind, ref.owner, ref.repo, ref.revision, ref.shard_of) == (None, "acme", "m", "refs/pr/3", None)
    assert hubs.parse_repo("hf://acme/m").revision == "main"
    ref = hubs.parse_repo("hf://datasets/acme/d@feature%2Fx")
    assert (ref.kind, ref.revision, ref.shown) == ("datasets", "feature/x", "datasets/acme/d@feature/x")
    ref = hubs.parse_repo("hf://acme/m/a/b-00002-of-00004.gguf@refs/pr/2")
    assert (ref.revision, ref.shard_of) == ("refs/pr/2", "a/b-00002-of-00004.gguf")
    assert hubs.shards(ref.shard_of) == [f"a/b-0000{i}-of-00004.gguf" for i in (1, 2, 3, 4)]
    for no_shard in ("q4/-00001-of-00002.gguf", "a/b.gguf", "b-00001-of-00002.gguf/x"):
        with pytest.raises(InvalidReference):
            hubs.shards(no_shard)
    # Any character but a control one may be in a revision: the hub judges the rest.
    assert hubs.parse_repo("hf://acme/m@a%20b").revision == "a b"
    # A reference is a value: equal for equal text, and usable as a key.
    assert len({hubs.parse_repo("hf://acme/m@v1"), hubs.parse_repo("hf://acme/m@v1")}) == 1
    # A single file is today's one-file form, which parse_hf still reads.
    assert parse_hf("hf://acme/m/b-00002-of-00004.gguf").path == "b-00002-of-00004.gguf"


@pytest.mark.parametrize(("url", "says"), [
    ("https://x/o/r", "not an hf://"), ("hf://o", "OWNER/REPO"), ("hf://datasets/o", "OWNER/REPO"),
    ("hf://o/r@", "revision"), ("hf://o/r@a/../b-00001-of-00002.gguf", "segments"), ("hf://o/r@%2E%2E", "revision"),
    ("hf://o/r@..", "revision"), ("hf://o/r@a%0Ab", "control"), ("hf://o/r@a%1Fb", "control"),
    ("hf://o/r@a%7Fb", "control"), ("hf://-o/r", "hub names"),
    ("hf://o/r r", "hub names"), ("hf://o/r/model.gguf", "one file"), ("hf://o/r/", "segments"),
    ("hf://o/r/%2e%2e/m-00001-of-00002.gguf", "segments"), ("hf://o/r/m-00000-of-00002.gguf", "numbered"),
    ("hf://o/r#x", "fragment"), ("hf://o\\r", "backslash"),
])
def test_parse_repo_refuses(url: str, says: str) -> None:
    with pytest.raises(InvalidReference, match=says):
        hubs.parse_repo(url)
    assert not hubs.names_many(url)



def answer_with(hub: Hub, path: str, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """The hub answers ``path`` (without its query) so from now on; every other path as before."""
    served = hub.api.api
    assert served is not None
    hub.api.api = lambda raw, given: ((status, dict(headers or {}), body) if raw.split("?", 1)[0] == path
                                      else served(raw, given))


@pytest.mark.parametrize("written", ["main", "commit"])
def test_a_revision_answer_that_names_no_commit_or_another_is_refused(hub: Hub, session: requests.Session,
                                                                      written: str) -> None:
    """The commit is what every file's url is pinned to: an answer without one, or one that
    moves a commit id to another commit, would fetch files of a revision nobody asked for."""
    sha = hub.commit(REPO, FILES)
    revision = sha if written == "commit" else "main"
    path = f"/api/models/{REPO}/revision/{revision}"
    for body in ({}, {"sha": None}, {"sha": 42}, {"sha": "abc"}, {"sha": sha.upper()}, [sha]):
        answer_with(hub, path, 200, json.dumps(body).encode())
        err = failure(lambda: resolve(hub, session, f"hf://{REPO}@{revision}"))
        assert err.code == "invalid-listing" and "names no commit" in str(err) and not err.retryable, body
    if written == "commit":
        other = hub.commit(REPO, {"other.bin": b"x"}, branch=None)
        answer_with(hub, path, 200, json.dumps({"sha": other}).encode())
        err = failure(lambda: resolve(hub, session, f"hf://{REPO}@{sha}"))
        assert err.code == "invalid-listing" and other in str(err) and sha in str(err)
    assert not hub.api_requests(REPO, "tree")  # nothing was listed


def test_a_listing_that_is_not_a_list_of_files_is_refused(hub: Hub, session: requests.Session) -> None:
    """A tree page that is not a JSON list (an object, a number, null) is no listing: the
    resolve says so rather than failing on its contents or finding no files in it."""
    sha = hub.commit(REPO, FILES)
    for body in (b"{}", b'{"path": "x.bin"}', b"42", b"null"):
        answer_with(hub, f"/api/models/{REPO}/tree/{sha}", 200, body)
        err = failure(lambda: resolve(hub, session, f"hf://{REPO}"))
        assert err.code == "invalid-listing" and "not a list of files" in str(err), body


def test_a_listing_that_never_ends_is_refused_after_its_last_allowed_page(hub: Hub,
                                                                         session: requests.Session) -> None:
    """A listing whose pages keep linking to new ones is refused once it has shown
    1000 pages (far more than any model has, a bound on what a listing may make the service
    hold); the next one is never asked for."""
    sha = hub.commit(REPO, FILES)
    prefix = f"/api/models/{REPO}/tree/{sha}"
    served = hub.api.api
    assert served is not None

    def endless(raw: str, headers: dict[str, str]) -> Any:
        if not raw.startswith(prefix):
            return served(raw, headers)
        page = int(raw.rpartition("page=")[2]) if "page=" in raw else 0
        entry = {"type": "file", "path": f"part-{page}.bin", "size": 1, "oid": "1" * 40}
        return 200, {"Link": f'<{prefix}?recursive=true&page={page + 1}>; rel="next"'}, json.dumps([entry]).encode()

    hub.api.api = endless
    err = failure(lambda: resolve(hub, session, f"hf://{REPO}"))
    assert err.code == "invalid-listing" and "more than 1000 pages" in str(err)
    assert len(hub.api_requests(REPO, "tree")) == 1000


def test_a_listing_of_more_files_than_any_model_has_is_refused(hub: Hub, session: requests.Session) -> None:
    """A listing may hold 200,000 files and no more: a page that brings it past them
    ends the resolve (invalid-listing), however many pages were fine before."""
    sha = hub.commit(REPO, FILES)
    path = f"/api/models/{REPO}/tree/{sha}"
    entry = json.dumps({"type": "file", "path": "f.bin", "size": 1, "oid": "1" * 40}).encode()
    first = b"[" + b",".join([entry] * 200_000) + b"]"  # refused before the paths are compared
    last = json.dumps([{"type": "file", "path": "one-more", "size": 1, "oid": "1" * 40}]).encode()
    served = hub.api.api
    assert served is not None
    hub.api.api = lambda raw, headers: (
        served(raw, headers) if not raw.startswith(path)
        else (200, {}, last) if "page=2" in raw
        else (200, {"Link": f'<{path}?recursive=true&page=2>; rel="next"'}, first))
    err = failure(lambda: resolve(hub, session, f"hf://{REPO}"))
    assert err.code == "invalid-listing" and "more than 200000 files" in str(err)
    assert len(hub.api_requests(REPO, "tree")) == 2


def test_an_answer_is_read_up_to_its_cap_and_refused_past_it(hub: Hub, session: requests.Session) -> None:
    """An API answer of 64 MiB is read; a larger one is refused as soon as it is
    past the cap, never read to its end (here it claims more than it sends)."""
    sha = hub.commit(REPO, FILES)
    path = f"/api/models/{REPO}/revision/main"
    served = hub.api.api
    assert served is not None
    hub.api.api = lambda raw, headers: None if raw == path else served(raw, headers)
    cap = 64 * 1024 * 1024
    exact = json.dumps({"sha": sha}).encode()
    hub.api.add(path, exact + b" " * (cap - len(exact)))
    assert resolve(hub, session, f"hf://{REPO}").revision == sha
    hub.api.add(path, exact + b" " * (cap + 64 * 1024 - len(exact)), announce_length=2 * cap)
    err = failure(lambda: resolve(hub, session, f"hf://{REPO}"))
    assert err.code == "invalid-listing" and "larger than" in str(err) and not err.retryable


def test_a_redirect_loop_is_too_many_redirects(hub: Hub, session: requests.Session) -> None:
    """An API url that redirects to itself ends with its own code, not as a network failure."""
    hub.commit(REPO, FILES)
    path = f"/api/models/{REPO}/revision/main"
    answer_with(hub, path, 302, b"", {"Location": hub.api.url(path)})
    err = failure(lambda: resolve(hub, session, f"hf://{REPO}"))
    assert err.code == "too-many-redirects" and REPO in str(err)


def test_which_hub_answers_are_worth_asking_again(hub: Hub, session: requests.Session) -> None:
    """408, 429 and every 5xx may pass (retryable, with the hub's Retry-After); any other
    status is the hub's final word: the job must not retry it."""
    hub.commit(REPO, FILES)
    path = f"/api/models/{REPO}/revision/main"
    for status, retryable in ((408, True), (429, True), (500, True), (599, True),
                              (400, False), (407, False), (409, False), (428, False), (499, False), (600, False)):
        answer_with(hub, path, status, b'{"sha": "' + b"a" * 40 + b'"}', {"Retry-After": "3"})
        err = failure(lambda: resolve(hub, session, f"hf://{REPO}"))
        assert (err.code, err.context["http_status"], err.retryable) == ("http-status", status, retryable)
        assert err.retry_after == (3.0 if retryable else None) and f"answered {status}" in str(err)


@pytest.mark.parametrize(("status", "code", "says"), [
    (401, "GatedRepo", "the repository is gated: accept its conditions on the hub"),
    (401, "", "a gated or private repository needs a token (ARW_HF_TOKEN)"),
    (403, "GatedRepo", "the repository is gated: accept its conditions on the hub"),
    (403, "", "the token may not see the repository"),
    (404, "RepoNotFound", "no such repository, or a private one"),
    (404, "RevisionNotFound", "no such revision"),
    (404, "", "no such repository or revision"),
])
def test_a_refusal_says_why_in_the_hubs_words(hub: Hub, session: requests.Session, status: int, code: str,
                                              says: str) -> None:
    """A refused resolve tells the user what to do: accept a gated repository's conditions,
    set a token, or check the name; the hub's X-Error-Code says which, when it is sent."""
    hub.commit(REPO, FILES)
    answer_with(hub, f"/api/models/{REPO}/revision/main", status, b"{}", {"X-Error-Code": code} if code else {})
    err = failure(lambda: resolve(hub, session, f"hf://{REPO}"))
    assert err.code == "http-status" and err.context["http_status"] == status and not err.retryable
    assert f"answered {status} for the revision {REPO}@main: {says}" in str(err)
    assert err.context.get("hub_error") == (code or None)


def test_a_hub_whose_name_does_not_resolve_is_a_dns_error(session: requests.Session) -> None:
    """An endpoint whose host does not resolve says so (``dns-error``, the host named),
    not as a generic network failure. Names under .invalid never resolve."""
    err = failure(lambda: hubs.resolve(hubs.parse_repo(f"hf://{REPO}"), Selection(), session,
                                       "http://hub.example.invalid", None, timeout=TIMEOUT))
    assert err.code == "dns-error" and "hub.example.invalid" in str(err) and err.context["host"] == "hub.example.invalid"
