"""Events: the SSE wire format and the hub that numbers and fans them out (the
streaming response that one subscriber reads is the server's,
:mod:`arw_models.server.stream`).

Concurrency model: publishers (download workers, request threads) call
:meth:`EventHub.publish`, which takes the hub lock, numbers the event, appends it
to the replay ring and offers it to every matching subscriber. Offering never
waits: each subscriber has its own bounded deque, and a full one drops its oldest
event and counts it, so a client that stops reading costs a download nothing. The
subscriber's generator (one request thread per client) drains its deque, turning a
count of dropped events into one ``bus.gap`` frame.

Subscribing takes the hub lock too, so the replayed backlog and the start of the
live queue meet exactly: no event is missed or sent twice in the hand-over.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..store.storage import utcnow

GAP = "bus.gap"
CONNECTED = "service.connected"


class Event:
    """One event; :meth:`encode` is its SSE frame, byte for byte."""

    __slots__ = ("_frame", "id", "kind", "payload", "time")

    def __init__(self, id: int | None, kind: str, payload: dict[str, Any], time: str | None = None) -> None:
        self.id = id
        self.kind = kind
        self.payload = payload
        self.time = time or utcnow()
        self._frame: bytes | None = None

    def envelope(self) -> dict[str, Any]:
        return {"time": self.time, "kind": self.kind, "payload": self.payload}

    def encode(self) -> bytes:
        if self._frame is None:
            data = json.dumps(self.envelope(), separators=(",", ":"), ensure_ascii=False)
            head = f"id: {self.id}\n" if self.id is not None else ""
            # json.dumps escapes newlines inside strings, so data is one line;
            # a kind with a line break would end the field early, so none gets in.
            kind = self.kind.replace("\r", " ").replace("\n", " ")
            self._frame = f"{head}event: {kind}\ndata: {data}\n\n".encode()
        return self._frame

    def __str__(self) -> str:
        return self.encode().decode("utf-8")

    def __repr__(self) -> str:
        return f"Event({self.id!r}, {self.kind!r}, {self.payload!r})"


def gap_event(missed: int | None) -> Event:
    return Event(None, GAP, {"missed": missed})


KEEPALIVE = b": keep-alive\n\n"


class Subscription:
    """One subscriber's bounded queue. Filled by the hub, drained by one reader."""

    def __init__(self, prefixes: Sequence[str], maxsize: int) -> None:
        self.prefixes = tuple(prefixes)
        self._maxsize = max(1, maxsize)
        self._items: deque[Event] = deque()
        self._missed = 0
        self._closed = False
        self._cond = threading.Condition(threading.Lock())

    def matches(self, kind: str) -> bool:
        return not self.prefixes or kind.startswith(self.prefixes)

    def offer(self, event: Event) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._items) >= self._maxsize:
                self._items.popleft()
                self._missed += 1
            self._items.append(event)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self, timeout: float | None) -> list[Event] | None:
        """Everything waiting (a gap first, if events were dropped), ``[]`` after
        ``timeout`` with nothing, ``None`` once the subscription is closed."""
        with self._cond:
            if not self._items and not self._missed and not self._closed:
                self._cond.wait(timeout)
            if self._closed:
                return None
            out: list[Event] = []
            if self._missed:
                out.append(gap_event(self._missed))
                self._missed = 0
            out.extend(self._items)
            self._items.clear()
            return out


class EventHub:
    """Numbers events, keeps the recent ones for replay, fans them out."""

    def __init__(self, replay: int = 4096, queue_size: int = 1024) -> None:
        self._lock = threading.Lock()
        self._buffer: deque[Event] = deque(maxlen=max(1, replay))
        # Ids start from the clock (microseconds) so that they keep growing across
        # restarts, and an id from an earlier run is recognized as older than the ring.
        self.first_id = time.time_ns() // 1000
        self._next_id = self.first_id
        self._queue_size = queue_size
        self._subs: set[Subscription] = set()
        self._closed = False

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def publish(self, kind: str, payload: dict[str, Any]) -> Event:
        with self._lock:
            event = Event(self._next_id, kind, payload)
            self._next_id += 1
            self._buffer.append(event)
            for sub in self._subs:
                if sub.matches(kind):
                    sub.offer(event)
        return event

    def subscribe(
        self,
        prefixes: Sequence[str] = (),
        after: int | None = None,
        replay: int | None = None,
        queue_size: int | None = None,
    ) -> tuple[Subscription, list[Event]]:
        """A new subscription and the backlog to send before its live events."""
        sub = Subscription(prefixes, queue_size or self._queue_size)
        with self._lock:
            backlog: list[Event] = []
            if after is not None and after > self.last_id:
                # An id never given out here: from a run whose clock was ahead, or made
                # up. What the client missed is unknown; all this run has is news to it.
                backlog.append(gap_event(None))
                backlog.extend(e for e in self._buffer if sub.matches(e.kind))
            elif after is not None:
                oldest = self._buffer[0].id if self._buffer else self._next_id
                assert oldest is not None
                if after < oldest - 1:
                    # An id from before this process started cannot be counted.
                    missed = oldest - 1 - after if after >= self.first_id - 1 else None
                    backlog.append(gap_event(missed))
                backlog.extend(e for e in self._buffer if e.id > after and sub.matches(e.kind))  # type: ignore[operator]
            elif replay:
                matching = [e for e in self._buffer if sub.matches(e.kind)]
                backlog.extend(matching[-replay:])
            if self._closed:
                sub.close()
            else:
                self._subs.add(sub)
        return sub, backlog

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        with self._lock:
            self._subs.discard(sub)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subs)

    def close(self) -> None:
        """End every stream (on shutdown); later subscribers end at once."""
        with self._lock:
            self._closed = True
            subs = list(self._subs)
            self._subs.clear()
        for sub in subs:
            sub.close()
