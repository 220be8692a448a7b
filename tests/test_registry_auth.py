"""The authentication a registry asks for, against a local stand-in (a registry and
its token service on one :class:`~tests.support.origin.Origin`) whose answers a test
chooses: tokens kept, dropped and asked for again, the token service's answers read
with care, and credentials sent only where they are meant to go."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
from collections.abc import Callable, Iterator

import pytest
import requests

from arw_models.engine import oci, registry_auth
from arw_models.engine.fileset import RemoteFile
from arw_models.engine.http import new_session
from arw_models.engine.registry_auth import RegistryAuth
from arw_models.errors import TransferError

from .support.helpers import open_files
from .support.origin import Origin
from .support.servers import closed_port
from .support.tokens import basic

PATH = "/v2/team/model/manifests/v1"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "layers": []}).encode()
PASSWORD = basic("someone", "their-password")


@pytest.fixture
def session() -> Iterator[requests.Session]:
    s = new_session("arw-models-test")
    yield s
    s.close()


def host(origin: Origin) -> str:
    return origin.base.removeprefix("http://")


def challenge(origin: Origin, realm: str | None = None) -> dict[str, str]:
    return {"WWW-Authenticate": f'Bearer realm="{realm or origin.url("/token")}",service="standin"'}


def token_answer(token: str = "t1", **more: object) -> bytes:
    return json.dumps({"token": token, "expires_in": 300, **more}).encode()


def registry_auth_for(origin: Origin, session: requests.Session, credentials: str | None = None) -> RegistryAuth:
    return RegistryAuth(host(origin), "team/model", session, (host(origin),), credentials, (5.0, 5.0),
                        f"{host(origin)}/team/model:v1")


def get(auth: RegistryAuth, origin: Origin) -> int:
    with auth.get(origin.url(PATH), "the manifest") as response:
        return response.status_code


def sent(origin: Origin, path: str = PATH) -> list[str | None]:
    """The Authorization of each request for ``path``, in order."""
    return [s.headers.get("authorization") for s in origin.requests_for(path)]


def open_connections_to(port: int) -> int:
    """This process's TCP sockets to ``port`` on loopback that are still open."""
    mine = open_files()
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if int(row[2].rsplit(":", 1)[1], 16) == port and f"socket:[{row[9]}]" in mine)


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A loopback port whose listener's queue is full: the kernel drops every new
    connection's SYN, so a connect waits until its own timeout."""
    with socket.socket() as listener, socket.socket() as held:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        held.connect(listener.getsockname())  # the one place in the queue, never accepted
        yield listener.getsockname()[1]


# -- tokens kept and asked for again ---------------------------------------------

@pytest.mark.parametrize(("answer", "lasts"), [
    (token_answer(expires_in=120), 115),
    (json.dumps({"access_token": "t1"}).encode(), 55),  # OAuth2's name, and no expires_in: 60 s
])
def test_a_token_is_kept_until_shortly_before_it_expires(origin: Origin, session: requests.Session,
                                                         monkeypatch: pytest.MonkeyPatch, answer: bytes,
                                                         lasts: int) -> None:
    """A token serves every request until five seconds before its ``expires_in`` (60
    seconds when the answer does not say, as the token spec has it): never asked for
    on each request, never sent when the registry is about to refuse it."""
    origin.add("/v2/", b"{}", statuses=[(401, challenge(origin))])
    origin.add("/token", answer)
    now = registry_auth.clock()
    monkeypatch.setattr(registry_auth, "clock", lambda: now)
    auth = registry_auth_for(origin, session)
    auth.ping()
    assert auth.headers() == {"Authorization": "Bearer t1"}
    monkeypatch.setattr(registry_auth, "clock", lambda: now + lasts - 1)
    assert auth.headers() == {"Authorization": "Bearer t1"}
    assert len(origin.requests_for("/token")) == 1
    monkeypatch.setattr(registry_auth, "clock", lambda: now + lasts)
    assert auth.headers() == {"Authorization": "Bearer t1"}
    assert len(origin.requests_for("/token")) == 2


def test_a_token_the_registry_refused_is_not_sent_again(origin: Origin, session: requests.Session) -> None:
    """A 401 to a request with a token drops that token: when asking for a new one
    fails, the next request asks the token service again instead of sending the
    token the registry refused."""
    manifest = origin.add(PATH, MANIFEST, statuses=[(401, challenge(origin))])
    token = origin.add("/token", token_answer("first"))
    auth = registry_auth_for(origin, session)
    assert get(auth, origin) == 200
    manifest.statuses.append((401, challenge(origin)))  # the registry refuses "first"...
    token.statuses.append((503, {}))  # ...and the token service fails once
    with pytest.raises(TransferError) as caught:
        get(auth, origin)
    assert caught.value.code == "http-status" and caught.value.retryable and "token service" in caught.value.message
    token.replace(token_answer("second"))
    assert get(auth, origin) == 200
    assert sent(origin) == [None, "Bearer first", "Bearer first", "Bearer second"]


def test_a_bare_401_asks_again_with_a_new_token(origin: Origin, session: requests.Session) -> None:
    """A registry may refuse a token with a 401 that repeats no challenge: the request
    is asked again once, with a new token for the challenge learnt before."""
    manifest = origin.add(PATH, MANIFEST, statuses=[(401, challenge(origin))])
    token = origin.add("/token", token_answer("first"))
    auth = registry_auth_for(origin, session)
    assert get(auth, origin) == 200
    manifest.statuses.append((401, {}))
    token.replace(token_answer("second"))
    assert get(auth, origin) == 200
    assert sent(origin) == [None, "Bearer first", "Bearer first", "Bearer second"]


@pytest.mark.parametrize("challenged", [False, True])
def test_an_authorizer_checks_the_registry_once(origin: Origin, session: requests.Session, challenged: bool) -> None:
    """The blobs of a model, however many, cost one ``GET /v2/`` (the check that
    learns what the registry asks for) and, if it asks for a token, one token."""
    origin.add("/v2/", b"{}", statuses=[(401, challenge(origin))] if challenged else [])
    origin.add("/token", token_answer())
    authorize = oci.authorizer(oci.parse(f"oci://{host(origin)}/team/model:v1"), session, (host(origin),))
    files = [RemoteFile(f"f{i}", origin.url(f"/v2/team/model/blobs/sha256:{i:064x}"), 1, sha256=f"{i:064x}")
             for i in range(3)]
    expected = {"Authorization": "Bearer t1"} if challenged else {}
    assert [authorize(f, False) for f in files] == [expected] * 3
    assert sent(origin, "/v2/") == [None]
    assert len(origin.requests_for("/token")) == (1 if challenged else 0)


# -- credentials, where they go ---------------------------------------------------

def test_basic_credentials_go_to_the_token_service_alone(origin: Origin, session: requests.Session) -> None:
    """With a Bearer challenge the user's password goes only to the token service
    that asks for it; the registry sees the token, never the password, not even
    before it has said what it wants."""
    origin.add(PATH, MANIFEST, statuses=[(401, challenge(origin))])
    origin.add("/token", token_answer())
    assert get(registry_auth_for(origin, session, PASSWORD), origin) == 200
    assert sent(origin) == [None, "Bearer t1"]
    assert sent(origin, "/token") == [PASSWORD]


def test_a_token_given_as_credentials_is_sent_as_it_is(origin: Origin, session: requests.Session) -> None:
    """``Bearer <token>`` credentials (a token had elsewhere) go to the registry as
    they are, from the first request; they are not a password, so no token service
    ever sees them."""
    manifest = origin.add(PATH, MANIFEST)
    origin.add("/token", token_answer())
    auth = registry_auth_for(origin, session, "Bearer given")
    assert get(auth, origin) == 200
    manifest.statuses.append((401, challenge(origin)))  # refused: the registry's own token then
    assert get(auth, origin) == 200
    assert sent(origin) == ["Bearer given", "Bearer given", "Bearer t1"]
    assert sent(origin, "/token") == [None]


def test_a_challenge_that_cannot_be_answered_leaves_no_connection_open(origin: Origin,
                                                                        session: requests.Session) -> None:
    """The error of a challenge naming no realm may be kept (a job's last error, with
    its traceback): the answer it came with is closed, not held open along with it."""
    origin.add(PATH, MANIFEST, statuses=[(401, {"WWW-Authenticate": 'Bearer service="standin"'})])
    with pytest.raises(TransferError) as caught:
        get(registry_auth_for(origin, session), origin)
    assert caught.value.code == "registry-auth" and "no realm" in caught.value.message
    assert open_connections_to(int(host(origin).rsplit(":", 1)[1])) == 0


# -- the token service's answers ---------------------------------------------------

def test_a_token_answer_of_64_kib_is_read_and_one_byte_more_is_refused(origin: Origin,
                                                                       session: requests.Session) -> None:
    """The token service's answer is read up to 64 KiB (a token with many claims
    fits); a longer one is refused rather than read without end."""
    limit = 64 * 1024
    short = token_answer(pad="")
    origin.add(PATH, MANIFEST, statuses=[(401, challenge(origin))])
    token = origin.add("/token", token_answer(pad="x" * (limit - len(short))))
    assert len(token.data) == limit
    assert get(registry_auth_for(origin, session), origin) == 200
    token.replace(short + b" " * (limit + 1 - len(short)))  # still JSON, one byte too long
    origin.add(PATH, MANIFEST, statuses=[(401, challenge(origin))])
    with pytest.raises(TransferError) as caught:
        get(registry_auth_for(origin, session), origin)
    assert caught.value.code == "registry-auth" and "without a usable token" in caught.value.message


@pytest.mark.parametrize("answer", [
    b'{"expires_in": 300}', b'{"token": ""}', b'{"token": 5}', b'{"token": "a\\r\\nX-Injected: 1"}',
    b'{"token": "t1", "expires_in": "soon"}', b"[1]", b"<html>not json</html>",
], ids=["none", "empty", "number", "crlf", "bad-expiry", "array", "html"])
def test_a_token_answer_without_a_usable_token_is_refused(origin: Origin, session: requests.Session,
                                                          answer: bytes) -> None:
    """An answer with no token, a token that is not a header's worth of text, or
    that is not a JSON object, is the token service's fault, named so: nothing is
    sent to the registry with it."""
    origin.add(PATH, MANIFEST, statuses=[(401, challenge(origin))])
    origin.add("/token", answer)
    with pytest.raises(TransferError) as caught:
        get(registry_auth_for(origin, session), origin)
    assert caught.value.code == "registry-auth" and "without a usable token" in caught.value.message
    assert sent(origin) == [None]


@pytest.mark.parametrize(("credentials", "status", "blamed", "retryable"), [
    (PASSWORD, 401, True, False), (PASSWORD, 403, True, False), (PASSWORD, 503, False, True),
    (None, 403, False, False),
])
def test_a_token_service_refusal_blames_the_credentials_only_when_they_were_refused(
        origin: Origin, session: requests.Session, credentials: str | None, status: int, blamed: bool,
        retryable: bool) -> None:
    """A 401 or 403 to credentials says they were refused; a server error is passing
    trouble, tried again, and an anonymous refusal is not about credentials."""
    origin.add(PATH, MANIFEST, statuses=[(401, challenge(origin))])
    origin.add("/token", token_answer(), statuses=[(status, {})])
    with pytest.raises(TransferError) as caught:
        get(registry_auth_for(origin, session, credentials), origin)
    error = caught.value
    assert error.code == "http-status" and error.context["http_status"] == status
    assert error.retryable == retryable and ("credentials were refused" in error.message) == blamed
    assert f"the token service http://{host(origin)}" in error.message and "their-password" not in error.message


def test_an_unreachable_token_service_is_a_connection_failure(origin: Origin, session: requests.Session) -> None:
    """A token service that refuses connections is passing trouble, tried again, and
    the message names the token service, not the registry."""
    realm = f"http://127.0.0.1:{closed_port()}/token"
    origin.add(PATH, MANIFEST, statuses=[(401, challenge(origin, realm))])
    auth = RegistryAuth(host(origin), "team/model", session, (host(origin), realm.split("/")[2]), None, (5.0, 5.0),
                        "standin")
    with pytest.raises(TransferError) as caught:
        get(auth, origin)
    assert caught.value.code == "connection-refused" and caught.value.retryable
    assert "the token service" in caught.value.message


@pytest.mark.parametrize("realm", ["ftp://127.0.0.1/token", "/token"])
def test_a_realm_that_is_not_an_http_url_is_refused(origin: Origin, session: requests.Session, realm: str) -> None:
    """A challenge's realm must be an absolute http(s) url: anything else is the
    registry's fault, told as such, and nothing is asked of it."""
    origin.add(PATH, MANIFEST, statuses=[(401, challenge(origin, realm))])
    with pytest.raises(TransferError) as caught:
        get(registry_auth_for(origin, session), origin)
    assert caught.value.code == "registry-auth" and "not an http(s) url" in caught.value.message


def test_compressed_answers_are_read_decoded(origin: Origin, session: requests.Session) -> None:
    """A registry or token service behind a proxy may gzip its answer though identity
    was asked for: the manifest and the token are read decoded, and the manifest's
    digest is that of its own bytes."""
    gz = {"Content-Encoding": "gzip"}
    origin.add(PATH, gzip.compress(MANIFEST), headers=gz, statuses=[(401, challenge(origin))])
    origin.add("/token", gzip.compress(token_answer()), headers=gz)
    fs = oci.resolve(oci.parse(f"oci://{host(origin)}/team/model:v1"), session, (host(origin),))
    assert fs.revision == "sha256:" + hashlib.sha256(MANIFEST).hexdigest() and fs.inline["manifest.json"] == MANIFEST
    assert sent(origin) == [None, "Bearer t1"]


def test_a_manifest_redirected_to_another_host_is_followed_without_the_token(
        origin: Origin, servers: Callable[[], Origin], session: requests.Session) -> None:
    """A registry may answer a manifest with a redirect to a storage host: it is
    followed, and the registry's token stays with the registry."""
    other = servers()
    other.add("/stored", MANIFEST)
    origin.add(PATH, b"", statuses=[(401, challenge(origin)), (307, {"Location": other.url("/stored")})])
    origin.add("/token", token_answer())
    fs = oci.resolve(oci.parse(f"oci://{host(origin)}/team/model:v1"), session, (host(origin),))
    assert fs.revision == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
    assert sent(origin) == [None, "Bearer t1"] and sent(other, "/stored") == [None]


# -- failures to reach the registry ------------------------------------------------

def test_a_registry_that_does_not_resolve_or_answer_is_named_in_words(session: requests.Session,
                                                                      unanswered_port: int) -> None:
    """A registry host that does not resolve is a DNS error naming it; one whose
    connect times out is a network failure, tried again, saying so."""
    with pytest.raises(TransferError) as caught:
        oci.resolve(oci.parse("oci://registry.example.invalid/team/model:v1"), session, connect_timeout=2)
    assert caught.value.code == "dns-error"
    assert caught.value.message.startswith("cannot resolve host registry.example.invalid (")
    address = f"127.0.0.1:{unanswered_port}"
    with pytest.raises(TransferError) as caught:
        oci.resolve(oci.parse(f"oci://{address}/team/model:v1"), session, (address,), connect_timeout=0.2)
    assert caught.value.code == "network" and caught.value.retryable
    assert caught.value.message.endswith(f": cannot connect to {address}: timed out")


def test_challenges_are_read_in_either_form() -> None:
    """Parameters come quoted or bare, and the Bearer or Basic challenge is found
    among others a registry lists first."""
    assert registry_auth.parse_challenge("Bearer realm=https://auth.example/token,service=reg") == (
        "bearer", {"realm": "https://auth.example/token", "service": "reg"})
    assert registry_auth.parse_challenge('Negotiate abc, Basic realm="a \\"b\\""') == ("basic", {"realm": 'a "b"'})
