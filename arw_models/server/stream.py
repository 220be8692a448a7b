"""The ``text/event-stream`` response one subscriber reads: the Flask side of the
event hub (:mod:`arw_models.service.events`), which knows nothing of HTTP.

The generator (one request thread per client) drains the subscriber's deque and
writes its frames, a keep-alive when nothing came for a while, and asks whether the
client is still there at least every ``check_interval`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from flask import Response

from ..service.events import CONNECTED, KEEPALIVE, Event, EventHub


def stream_response(
    hub: EventHub,
    *,
    prefixes: Sequence[str] = (),
    after: int | None = None,
    replay: int | None = None,
    keepalive: float = 15.0,
    retry_ms: int = 3000,
    hello: dict[str, Any] | None = None,
    client_gone: Callable[[], bool] | None = None,
    check_interval: float = 1.0,
    on_close: Callable[[], None] | None = None,
) -> Response:
    """The ``text/event-stream`` response for one subscriber.

    ``client_gone`` is asked at least every ``check_interval`` seconds: a server
    notices a departed client only when a write fails, which on an idle stream
    is the next keep-alive, and until then the stream holds a server thread.
    ``on_close`` runs once the server is done with the response.
    """
    sub, backlog = hub.subscribe(prefixes, after=after, replay=replay)

    def frames(events: Iterable[Event]) -> bytes:
        return b"".join(e.encode() for e in events)

    def generate() -> Iterator[bytes]:
        connected = Event(None, CONNECTED, dict(hello or {}, last_event_id=hub.last_id))
        yield f"retry: {retry_ms}\n".encode() + connected.encode() + frames(backlog)
        written = time.monotonic()
        while True:
            wait = keepalive - (time.monotonic() - written)
            if client_gone is not None:
                wait = min(wait, check_interval)
            items = sub.get(timeout=max(0.0, wait))
            if items is None:
                return
            if client_gone is not None and client_gone():
                return
            if items:
                yield frames(items)
            elif time.monotonic() - written >= keepalive:
                yield KEEPALIVE
            else:
                continue
            written = time.monotonic()

    closed = threading.Event()

    def close() -> None:
        if closed.is_set():  # a response closed twice releases once
            return
        closed.set()
        try:
            hub.unsubscribe(sub)
        finally:
            if on_close is not None:
                on_close()

    response = Response(generate(), mimetype="text/event-stream")
    # Runs when the server closes the response, even if it never started it.
    response.call_on_close(close)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response
