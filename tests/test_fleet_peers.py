"""A fleet without a cache: real services (gunicorn) that fetch a model from each
other (ARW_DL_PEERS, with the admin token as the peers' token), or from an
S3-compatible bucket keyed by digest (moto's server, a ``{sha256}`` mirror), so the
origin sends the model's body once; and, with the peer that has it stopped, from the
origin again.

The origin is the real test origin, which counts every body byte it writes; each
download gives its ``sha256``, and each installed file is hashed again here."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from .support.origin import Origin, payload
from .support.servers import Gunicorn, free_port
from .support.sse import SSEClient, is_status, read_frames_until

MiB = 1024 * 1024
SIZE = 64 * MiB
PATH = "/org/fleet/peer-64m.gguf"
TOKEN = "fleet-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(host: Gunicorn, model_id: str, url: str, sha256: str) -> dict[str, Any]:
    """POSTs the download to ``host`` with its event stream open; its last event."""
    with SSEClient(host.url + "/events", headers=AUTH, params={"prefix": "Models."}, timeout=30) as sse:
        assert sse.response.status_code == 200, sse.response.text
        assert sse.next().event == "service.connected"
        answer = requests.post(host.url + "/models/download", json={"id": model_id, "url": url, "sha256": sha256},
                               headers=AUTH, timeout=5)
        assert answer.status_code == 202, answer.text
        done = read_frames_until(sse, is_status(model_id, "complete", "error", "canceled"))[-1].payload
    assert done["status"] == "complete", done
    return dict(done)


# Threads for the event stream of each download (the last one's may not be noticed
# gone yet) and for the peers' requests, beside this test's own.
THREADS = {"ARW_THREADS": "8", "ARW_EVENTS_MAX_STREAMS": "4"}
# What a peer costs when it is slow is tests/test_peers.py's; here a loaded machine
# must not turn a peer's 404 into a timeout.
PATIENT = {"ARW_DL_PEER_TIMEOUT_SECS": "10"}


def fleet(gunicorns: Callable[..., Gunicorn], tmp_path: Path, n: int, **env: str) -> list[Gunicorn]:
    """``n`` services, each with the others as its peers, all ready."""
    ports = [free_port() for _ in range(n)]
    hosts = []
    for i, port in enumerate(ports):
        others = ",".join(f"http://127.0.0.1:{p}" for j, p in enumerate(ports) if j != i)
        g = gunicorns(f"host{i}", tmp_path / f"host{i}", ARW_PORT=str(port), ARW_ADMIN_TOKEN=TOKEN,
                      ARW_PEERS_TOKEN=TOKEN, ARW_DL_PEERS=others, **THREADS, **PATIENT, **env)
        g.port, g.url = port, f"http://127.0.0.1:{port}"
        hosts.append(g)
    for g in hosts:
        g.wait_ready()
    return hosts


def installed(tmp_path: Path, host: int, name: str = "peer-64m.gguf") -> Path:
    return tmp_path / f"host{host}" / "models" / name


def test_three_services_fetch_from_each_other_and_from_the_origin_when_the_peer_is_gone(
        gunicorns: Callable[..., Gunicorn], tmp_path: Path, origin: Origin) -> None:
    res = origin.add(PATH, payload(SIZE, seed=131))
    url = origin.url(PATH)
    hosts = fleet(gunicorns, tmp_path, 3)

    # The first: its peers hold nothing (a 404 each), so the origin sends the file.
    first = fetch(hosts[0], "m", url, res.sha256)
    assert [(s["source"], s.get("skipped"), s["bytes"]) for s in first["sources"]] == [
        (hosts[1].url, "it answered 404", 0), (hosts[2].url, "it answered 404", 0), ("origin", None, SIZE)]
    # At least one copy: a split download closes its first answer once its own range is
    # in, and what the origin had already pushed into the socket counts as sent.
    first_sent = origin.bytes_sent(PATH)
    assert SIZE <= first_sent < 2 * SIZE

    # The other two: every byte from the first, none from the origin.
    for i in (1, 2):
        done = fetch(hosts[i], "m", url, res.sha256)
        assert done["sources"] == [{"source": hosts[0].url, "bytes": SIZE}], done
        assert done["sha256"] == res.sha256 and done["sha256_source"] == "request"
        assert sha256_of(installed(tmp_path, i)) == res.sha256
    assert origin.bytes_sent(PATH) == first_sent  # not one body byte more
    assert origin.requests_for(PATH) and all(s.sent for s in origin.requests_for(PATH))  # the first's alone

    # The first stopped, and the others without the model: the origin again, after one
    # refused connection and one 404.
    hosts[0].close()
    for i in (1, 2):
        assert requests.delete(f"{hosts[i].url}/models/m", headers=AUTH, timeout=5).status_code == 200
    for i, other in ((1, 2), (2, 1)):
        sent = origin.bytes_sent(PATH)
        done = fetch(hosts[i], "m", url, res.sha256)
        skipped = [(s["source"], s.get("skipped", "")[:14]) for s in done["sources"][:-1]]
        assert skipped == [(hosts[0].url, "cannot connect"), (hosts[other].url, "it answered 40")], done
        assert done["sources"][-1] == {"source": "origin", "bytes": SIZE}
        assert sent + SIZE <= origin.bytes_sent(PATH) < sent + 2 * SIZE
        assert sha256_of(installed(tmp_path, i)) == res.sha256
        assert requests.delete(f"{hosts[i].url}/models/m", headers=AUTH, timeout=5).status_code == 200


# -- a bucket keyed by digest ----------------------------------------------------------------


class Moto:
    """moto's S3 server on a loopback port, in a process of its own."""

    def __init__(self, tmp_path: Path) -> None:
        binary = Path(sys.executable).parent / "moto_server"
        if not binary.exists():
            found = shutil.which("moto_server")
            if found is None:
                pytest.skip("moto[server] is not installed (pip install -e '.[test]')")
            binary = Path(found)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(tmp_path / "moto.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
        deadline = time.monotonic() + 20
        while True:  # a bounded connect-retry: the server is ready when it answers
            if self.proc.poll() is not None:
                self.close()
                raise AssertionError(f"moto_server exited: {(tmp_path / 'moto.log').read_text()}")
            try:
                requests.get(self.url, timeout=5)
                return
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still starting
                if time.monotonic() > deadline:
                    self.close()
                    raise AssertionError("moto_server did not answer") from None
                try:
                    self.proc.wait(0.05)
                except subprocess.TimeoutExpired:
                    pass

    def client(self) -> Any:
        import boto3  # comes with moto

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[Moto]:
    server = Moto(tmp_path)
    yield server
    server.close()


def test_services_fetch_from_a_bucket_keyed_by_digest(gunicorns: Callable[..., Gunicorn], tmp_path: Path,
                                                      origin: Origin, moto: Moto) -> None:
    data = payload(SIZE, seed=132)
    res = origin.add(PATH, data)
    s3 = moto.client()
    s3.create_bucket(Bucket="models", ACL="public-read")
    s3.put_object(Bucket="models", Key=f"sha256/{res.sha256}", Body=data, ACL="public-read")
    # Anyone may read it: the services send no credentials to a mirror.
    assert requests.head(f"{moto.url}/models/sha256/{res.sha256}", timeout=5).status_code == 200
    hosts = []
    for i in range(2):
        g = gunicorns(f"host{i}", tmp_path / f"host{i}", ARW_ADMIN_TOKEN=TOKEN,
                      ARW_DL_MIRRORS=moto.url + "/models/sha256/{sha256}", **THREADS)
        hosts.append(g)
    for g in hosts:
        g.wait_ready()
    for i, g in enumerate(hosts):
        done = fetch(g, "m", origin.url(PATH), res.sha256)
        assert done["sources"] == [{"source": moto.url, "bytes": SIZE}], done
        assert sha256_of(installed(tmp_path, i)) == res.sha256
    assert origin.requests_for(PATH) == []  # not even an answer: the digest was known before the first byte

    # A digest the bucket does not hold: a 404 there, then the origin.
    other = origin.add("/org/fleet/other.gguf", payload(2 * MiB, seed=133))
    done = fetch(hosts[0], "o", origin.url("/org/fleet/other.gguf"), other.sha256)
    assert [(s["source"], s.get("skipped")) for s in done["sources"]] == [
        (moto.url, "it answered 404"), ("origin", None)]
    assert origin.bytes_sent("/org/fleet/other.gguf") == len(other.data)


def test_the_deployment_page_shows_the_settings_these_tests_run() -> None:
    from arw_models.config import BY_KEY

    text = (Path(__file__).resolve().parent.parent / "docs" / "deployment.rst").read_text()
    section = text[text.index("Peers: hosts fetch from each other\n"):]
    for key in ("ARW_DL_PEERS", "ARW_PEERS_TOKEN", "ARW_ADMIN_TOKEN", "ARW_DL_PEER_TIMEOUT_SECS",
                "ARW_SERVE_BLOBS", "ARW_SERVE_GATED_BLOBS"):
        assert key in section and key in BY_KEY, key
    assert "ARW_DL_MIRRORS=https://models.s3.example/sha256/{sha256}" in section
