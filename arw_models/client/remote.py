"""A client of a running service, as the command line uses it: JSON calls that turn
problem documents into :class:`Problem`, and an event stream that outlives dropped
connections.

Everything here runs on the caller's thread and blocks in socket reads with a
timeout, so a Ctrl-C (KeyboardInterrupt in the main thread) ends any wait at once.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import requests
import urllib3.exceptions

CONNECTED = "service.connected"
GAP = "bus.gap"

# Seconds to wait for a connection, and for an answer to a call. A pause or a
# cancel answers once the transfer has stopped, which the service bounds by 10 s.
CONNECT_TIMEOUT = 5.0
CALL_TIMEOUT = 30.0
# Keep-alive comments arrive every 15 s by default; a stream silent for much
# longer than that is dead, and is replaced by a new connection.
STREAM_READ_TIMEOUT = 60.0
# How long a dropped stream keeps trying to reconnect before the service counts
# as gone (a restart under gunicorn takes a few seconds).
RECONNECT_FOR = 30.0
# What a read of an open stream raises when its connection breaks: the stream is
# read through urllib3 directly, whose errors requests does not wrap there.
DROPPED = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


class Unreachable(Exception):
    """No answer from the service: not running, a wrong address, or a dead connection."""


class Problem(Exception):
    """An error answer from the service, as a problem document."""

    def __init__(self, status: int, doc: dict[str, Any]) -> None:
        self.status = status
        self.doc = doc
        self.code = str(doc.get("code") or f"http-{status}")
        self.detail = str(doc.get("detail") or doc.get("title") or f"HTTP {status}")
        super().__init__(f"{self.code}: {self.detail}")


@dataclass
class Frame:
    """One SSE frame; ``data`` parsed as the service's JSON envelope."""

    id: int | None
    event: str
    data: dict[str, Any]

    @property
    def payload(self) -> dict[str, Any]:
        payload = self.data.get("payload")
        return payload if isinstance(payload, dict) else {}


def _why(exc: requests.RequestException) -> str:
    """The useful end of a requests error (its message nests the whole chain)."""
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if found:
        return found.group(1).strip().lower()
    return type(exc).__name__


class Remote:
    """Calls to one service at ``server``, with the admin token when there is one."""

    def __init__(self, server: str, token: str | None = None) -> None:
        # `--server localhost:8090` means what it would mean to curl.
        self.server = (server if "://" in server else "http://" + server).rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def unreachable(self, exc: requests.RequestException) -> Unreachable:
        return Unreachable(f"no arw-models service answers at {self.server} ({_why(exc)}); "
                           "is `arw-models serve` running there?")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """The status and JSON answer of a 2xx; :class:`Problem` for anything else."""
        try:
            response = self.session.request(method, self.server + path, json=body,
                                            timeout=(CONNECT_TIMEOUT, CALL_TIMEOUT))
        except requests.RequestException as exc:
            raise self.unreachable(exc) from None
        with response:
            return response.status_code, answer(response, self.server)

    def events(self, prefixes: Sequence[str] = ()) -> EventStream:
        return EventStream(self, prefixes)


def answer(response: requests.Response, server: str) -> Any:
    """The JSON of a 2xx answer; :class:`Problem` for an error or a body that is not JSON."""
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if response.status_code >= 400:
        if not isinstance(doc, dict):
            reason = response.reason or ""
            doc = {"status": response.status_code, "title": reason,
                   "detail": f"HTTP {response.status_code} {reason}".strip()}
        raise Problem(response.status_code, doc)
    if doc is None:
        raise Problem(response.status_code, {
            "code": "not-json",
            "detail": f"{server} answered {response.status_code} without JSON; is it an arw-models service?",
        })
    return doc


# Our own client rather than a library's. requests-sse (0.5) doubles the pause
# before every reconnect, so the service's `retry:` is never waited as asked; it
# counts attempts instead of bounding the time, ends the stream on a 502/503 from
# a restarting proxy, and takes the last event id only when it is built, so a
# drop before the first job event could not ask for the events since
# `service.connected`; and it reads through iter_lines, which on a stream that
# is not chunked (behind some proxies) holds lines until 512 bytes have come.
# sseclient-py (1.9) only parses: no reconnect, no Last-Event-ID.
class EventStream:
    """``GET /events`` that survives dropped connections.

    :meth:`open` subscribes and returns the ``service.connected`` payload; from
    then on nothing published is missed: after a drop the stream reconnects with
    ``Last-Event-ID`` (the last id seen, or the service's last id at the first
    connection), so the service replays what happened in between, or says
    ``bus.gap`` when it no longer has it.
    """

    def __init__(self, remote: Remote, prefixes: Sequence[str] = ()) -> None:
        self.remote = remote
        self.prefixes = list(prefixes)
        self.last_id: int | None = None
        self.retry = 3.0
        self._response: requests.Response | None = None
        self._lines: Iterator[bytes] | None = None

    def open(self) -> dict[str, Any]:
        self._connect()
        try:
            frame = self._next()
        except DROPPED as exc:
            self.close()
            raise Unreachable(f"the event stream of {self.remote.server} broke at once ({exc})") from None
        if frame is None or frame.event != CONNECTED:
            self.close()
            raise Unreachable(f"{self.remote.server}/events did not start with {CONNECTED}")
        if self.last_id is None and isinstance(frame.payload.get("last_event_id"), int):
            self.last_id = frame.payload["last_event_id"]
        return frame.payload

    def frames(self) -> Iterator[Frame]:
        """Every frame after ``service.connected``, across reconnections, until
        :meth:`close`; :class:`Unreachable` once the service stays away."""
        while True:
            try:
                frame = self._next()
            except DROPPED:
                frame = None
            if frame is not None:
                if frame.id is not None:
                    self.last_id = frame.id
                yield frame
                continue
            if self._response is None:
                return  # closed
            self._reconnect()

    def _reconnect(self) -> None:
        self._drop()
        deadline = time.monotonic() + RECONNECT_FOR
        while True:
            # The pause the service asked for (its `retry:` field), as browsers do.
            time.sleep(min(self.retry, max(0.0, deadline - time.monotonic())))
            try:
                self._connect()
                frame = self._next()
                if frame is not None and frame.event == CONNECTED:
                    return
                self._drop()
            except (Unreachable, *DROPPED):
                self._drop()
            except Problem as exc:
                self._drop()
                if exc.status in (401, 403):
                    raise
            if time.monotonic() >= deadline:
                raise Unreachable(f"the event stream of {self.remote.server} ended and did not come back "
                                  f"within {RECONNECT_FOR:g} s")

    def _connect(self) -> None:
        headers = {"Accept": "text/event-stream"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        try:
            response = self.remote.session.get(
                self.remote.server + "/events", params={"prefix": self.prefixes}, headers=headers,
                stream=True, timeout=(CONNECT_TIMEOUT, STREAM_READ_TIMEOUT))
        except requests.RequestException as exc:
            raise self.remote.unreachable(exc) from None
        if response.status_code != 200:
            with response:
                answer(response, self.remote.server)  # raises the problem, if it is one
            raise Problem(response.status_code, {"detail": "the event stream was refused"})
        self._response = response
        self._lines = _lines(response)

    def _next(self) -> Frame | None:
        """The next frame, or None when the connection ended."""
        assert self._lines is not None
        event, data, id_ = "message", [], None
        for line in self._lines:
            if not line:
                if data or event != "message":
                    return self._frame(id_, event, data)
                event, data, id_ = "message", [], None
                continue
            if line.startswith(b":"):
                continue  # a keep-alive
            name, _, value = line.decode("utf-8", "replace").partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
            elif name == "id":
                id_ = value
            elif name == "retry" and value.isdigit():
                self.retry = int(value) / 1000.0
        return None

    @staticmethod
    def _frame(id_: str | None, event: str, data: list[str]) -> Frame:
        try:
            parsed = json.loads("\n".join(data)) if data else {}
        except ValueError:
            parsed = {"raw": "\n".join(data)}
        number = int(id_) if id_ is not None and id_.isascii() and id_.isdigit() else None
        return Frame(number, event, parsed if isinstance(parsed, dict) else {"data": parsed})

    def _drop(self) -> None:
        if self._response is not None:
            self._response.close()
        self._lines = iter(())

    def close(self) -> None:
        self._drop()
        self._response = None


def _lines(response: requests.Response) -> Iterator[bytes]:
    """The stream's lines as they arrive: ``read1`` returns whatever bytes are
    there, where ``iter_lines`` would wait for a whole chunk of its size."""
    raw = response.raw
    pending = b""
    while True:
        data = raw.read1(65536)
        if not data:
            if pending:
                yield pending
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.removesuffix(b"\r")
