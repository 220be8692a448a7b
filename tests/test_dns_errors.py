"""Failures to reach a host: a name that does not resolve ends the job at once
(``dns-error``), a refused connection is tried again a few times, soon, and ends as
``connection-refused``; messages say what happened to which host in words, never
with a repr of a urllib3 object; a job waiting to retry shows what it retries.

Names under ``.invalid`` (RFC 6761) never resolve and never leave the machine; a
closed loopback port refuses at once."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from arw_models import ArwModels

from .support.app import Service, post_download
from .support.helpers import listing
from .support.origin import Origin, payload

KiB = 1024
MiB = 1024 * KiB

# The ordinary backoff, as deployed: a retried failure would take seconds to end.
ORDINARY = {"ARW_DL_RETRY_BACKOFF_MS": 500, "ARW_DL_RETRY_BACKOFF_MAX_MS": 30_000}
PRIVATE = ("_Tracked", "ConnectionPool(", "Connection(host", "object at 0x", "MaxRetryError", "NewConnectionError",
           "NameResolutionError")


@pytest.fixture
def refused_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


def no_private_names(*texts: Any) -> None:
    for text in texts:
        assert not any(name in str(text) for name in PRIVATE), text


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_name_that_does_not_resolve_fails_at_once(service: Service, scheme: str) -> None:
    app, client, watch = service(**ORDINARY)
    t0 = time.monotonic()
    post_download(client, "d", f"{scheme}://model.example.invalid/m.gguf")
    done = watch.terminal("d")
    assert time.monotonic() - t0 < 3
    assert done["status"] == "error" and done["code"] == "dns-error", done
    assert done["error"].startswith("cannot resolve host model.example.invalid: "), done
    assert "retrying" not in watch.statuses("d")
    item = client.get("/models/downloads/d").json
    assert (item["status"], item["code"], item["error"]) == ("error", "dns-error", done["error"])
    no_private_names(done, item)
    assert listing(app) == []


def test_a_refused_connection_is_retried_a_few_times_soon_then_ends(service: Service, refused_port: int) -> None:
    _, client, watch = service(**ORDINARY)
    t0 = time.monotonic()
    post_download(client, "r", f"http://127.0.0.1:{refused_port}/m.gguf")
    done = watch.terminal("r")
    elapsed = time.monotonic() - t0
    assert done["status"] == "error" and done["code"] == "connection-refused", done
    assert done["error"] == f"cannot connect to 127.0.0.1:{refused_port}: connection refused"
    retries = [p for p in watch.payloads("r") if p["status"] == "retrying"]
    assert [p["attempt"] for p in retries] == [1, 2, 3]
    assert all(p["code"] == "connection-refused" and p["delay_ms"] <= 250 for p in retries)
    assert elapsed < 3, elapsed  # the ordinary backoff would take about a minute
    no_private_names(done, *retries, client.get("/models/downloads/r").json)


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A loopback port whose listener's queue is full: the kernel drops every new
    connection's SYN, so a connect waits until its own timeout (as to a host that is
    down behind a firewall that drops)."""
    with socket.socket() as listener, socket.socket() as held:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        held.connect(listener.getsockname())  # the one place in the queue, never accepted
        yield listener.getsockname()[1]


def test_a_connect_that_times_out_is_retried_then_ends_in_words(service: Service, unanswered_port: int) -> None:
    _, client, watch = service(ARW_DL_CONNECT_TIMEOUT_SECS=0.2, ARW_DL_RETRIES=1)
    post_download(client, "t", f"http://127.0.0.1:{unanswered_port}/m.gguf")
    done = watch.terminal("t")
    assert done["status"] == "error" and done["code"] == "network", done
    assert done["error"] == f"network error before the response: cannot connect to 127.0.0.1:{unanswered_port}: " \
                            "timed out"
    retries = [p for p in watch.payloads("t") if p["status"] == "retrying"]
    assert [(p["attempt"], p["code"]) for p in retries] == [(1, "network")]
    no_private_names(done, *retries)


def test_a_stall_is_told_in_words(service: Service, origin: Origin) -> None:
    _, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=0.3, ARW_DL_RETRIES=0)
    res = origin.add("/s.gguf", payload(MiB, seed=601), stall_after=64 * KiB)
    post_download(client, "s", origin.url("/s.gguf"))
    done = watch.terminal("s")
    res.release.set()
    assert done["code"] == "network", done
    assert done["error"] == f"network error at byte {64 * KiB}: no data arrived within the idle timeout"
    no_private_names(done)


def test_the_listing_shows_the_error_a_job_retries_until_bytes_flow_again(service: Service,
                                                                           origin: Origin) -> None:
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/l.gguf", payload(MiB, seed=602), statuses=[(503, {})], stall_after=100 * KiB)
    manager = ArwModels.state(app).manager
    seen: list[tuple[dict[str, Any] | None, list[dict[str, Any]]]] = []

    def checkpoint(point: str, job: Any) -> None:
        # In the job's thread, as each answer comes: the second one is the retry's.
        if point == "answered":
            seen.append((manager.job("l"), [i for i in manager.jobs() if i["id"] == "l"]))

    manager.checkpoint = checkpoint
    post_download(client, "l", origin.url("/l.gguf"))
    assert res.stalled.wait(5)
    watch.status("l", "downloading")
    (first, _), (one, [listed]) = seen
    assert first is not None and "last_error" not in first
    expected = {"code": "http-status", "error": "the origin answered 503"}
    assert one is not None and one["status"] == "retrying" and one["last_error"] == expected
    assert listed["last_error"] == expected
    now = client.get("/models/downloads/l").json
    assert now["status"] == "downloading" and "last_error" not in now
    res.release.set()
    assert watch.terminal("l")["status"] == "complete"


def test_a_tls_failure_is_told_in_words(service: Service, origin: Origin) -> None:
    _, client, watch = service()
    origin.add("/t.gguf", payload(KiB, seed=603))
    host = origin.base.split("//", 1)[1]
    post_download(client, "t", f"https://{host}/t.gguf")  # a plain HTTP origin: no TLS there
    done = watch.terminal("t")
    assert done["code"] == "tls", done
    assert done["error"].startswith(f"TLS error with {host}: "), done
    no_private_names(done)
