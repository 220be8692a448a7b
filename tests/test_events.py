"""The event stream through a real socket, the hub's guarantees (ids, replay, the
ring, a subscription taken while events are published) and the exact bytes of a frame."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import requests

from arw_models import ArwModels
from arw_models.server.stream import stream_response
from arw_models.service.events import KEEPALIVE, Event, EventHub

from .support.app import LiveServer
from .support.origin import payload
from .support.sse import SSEClient

MiB = 1024 * 1024


def test_stream_over_a_socket_shows_connected_progress_and_one_complete(live: Any, origin: Any) -> None:
    res = origin.add("/s.gguf", payload(2 * MiB), throttle=8 * MiB)
    with SSEClient(live.url + "/events") as sse:
        assert sse.response.status_code == 200
        assert sse.response.headers["Content-Type"].startswith("text/event-stream")
        assert sse.response.headers["Cache-Control"] == "no-cache"
        assert sse.response.headers["X-Accel-Buffering"] == "no"
        first = sse.next()
        assert first.event == "service.connected" and first.id is None and first.retry is not None
        r = requests.post(live.url + "/models/download", json={"id": "s", "url": origin.url("/s.gguf"),
                                                               "sha256": res.sha256}, timeout=5)
        assert r.status_code == 202
        frames = []
        while True:
            frame = sse.next()
            frames.append(frame)
            if frame.event == "Models.DownloadProgress" and frame.payload["status"] in ("complete", "error"):
                break
        statuses = [f.payload["status"] for f in frames if f.event == "Models.DownloadProgress"]
        assert statuses[0] == "started" and statuses[-1] == "complete"
        assert "downloading" in statuses
        assert statuses.count("complete") == 1
        ids = [int(f.id) for f in frames]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        envelope = frames[-1].json
        assert set(envelope) == {"time", "kind", "payload"} and envelope["kind"] == "Models.DownloadProgress"
        assert envelope["time"].endswith("Z")
        assert envelope["payload"]["sha256"] == res.sha256
        changed = sse.next()
        assert changed.event == "Models.Changed" and changed.payload == {"op": "add", "id": "s"}


def read_through_complete(sse: SSEClient, model_id: str) -> list[Any]:
    frames = []
    while True:
        frame = sse.next()
        frames.append(frame)
        if frame.event == "Models.DownloadProgress" and frame.payload["id"] == model_id \
                and frame.payload["status"] in ("complete", "error", "canceled"):
            return frames


def test_reconnect_in_the_middle_of_a_download_replays_what_a_continuous_client_saw(
    make_app: Any, origin: Any,
) -> None:
    server = LiveServer(make_app(ARW_DL_PROGRESS_INTERVAL_MS=5))
    res = origin.add("/m.gguf", payload(2 * MiB, seed=3), throttle=4 * MiB)
    try:
        with SSEClient(server.url + "/events") as steady:
            assert steady.next().event == "service.connected"
            r = requests.post(server.url + "/models/download", json={"id": "m", "url": origin.url("/m.gguf"),
                                                                        "sha256": res.sha256}, timeout=5)
            assert r.status_code == 202
            before = steady.until(lambda f: f.event == "Models.DownloadProgress"
                                  and f.payload.get("downloaded", 0) >= 512 * 1024)
            assert before.payload["status"] == "downloading"
            # A page reload: a new client with the last id it had seen, while bytes keep flowing.
            with SSEClient(server.url + "/events", headers={"Last-Event-ID": before.id}) as again:
                assert again.next().event == "service.connected"
                replayed = read_through_complete(again, "m")
            continued = read_through_complete(steady, "m")
        key = [(f.id, f.event, f.data) for f in continued]
        assert [(f.id, f.event, f.data) for f in replayed] == key
        assert len(key) > 2 and int(key[0][0]) == int(before.id) + 1
        assert continued[-1].payload["status"] == "complete"
    finally:
        server.close()


def test_a_client_that_stops_reading_slows_neither_a_download_nor_other_clients(
    make_app: Any, origin: Any,
) -> None:
    app = make_app(ARW_EVENTS_QUEUE=512, ARW_DL_PROGRESS_INTERVAL_MS=5)
    server = LiveServer(app)
    hub = ArwModels.state(app).hub
    # Fast, yet long enough for a stream of progress events (one each 5 ms).
    res = origin.add("/f.gguf", payload(16 * MiB, seed=4), throttle=64 * MiB)
    stuck = socket.create_connection(("127.0.0.1", server.server.server_port), timeout=5)
    try:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
        seen = b""
        while b"service.connected" not in seen:
            seen += stuck.recv(4096)
        # More than the socket buffers hold (the server's send buffer grows to 4 MiB at
        # most): its stream is now blocked in a write.
        filler = "x" * 1024
        for n in range(10_000):
            hub.publish("Test.Filler", {"n": n, "pad": filler})
        with SSEClient(server.url + "/events") as reader:
            assert reader.next().event == "service.connected"
            r = requests.post(server.url + "/models/download",
                              json={"id": "f", "url": origin.url("/f.gguf"), "sha256": res.sha256}, timeout=5)
            assert r.status_code == 202
            frames = read_through_complete(reader, "f")
        ids = [int(f.id) for f in frames]
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # every event, in order, none missing
        statuses = [f.payload["status"] for f in frames if f.event == "Models.DownloadProgress"]
        assert statuses[0] == "started" and statuses[-1] == "complete" and statuses.count("downloading") > 8
        # The stuck client, reading at last (with a window wide enough to do so fast),
        # is told what it missed.
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        tail = b""
        while b"event: bus.gap" not in tail:
            data = stuck.recv(1 << 20)
            assert data, "the stream ended without a gap"
            tail = tail[-64:] + data
    finally:
        stuck.close()
        server.close()


def test_replay_after_an_id_then_live_without_gap_or_duplicate(app: Any, live: Any) -> None:
    hub = ArwModels.state(app).hub
    ids = [hub.publish("Test.Event", {"n": n}).id for n in range(10)]
    with SSEClient(live.url + "/events", headers={"Last-Event-ID": str(ids[3])}) as sse:
        assert sse.next().event == "service.connected"
        got = [sse.next() for _ in range(6)]
        assert [int(f.id) for f in got] == ids[4:]
        hub.publish("Test.Event", {"n": 10})
        assert sse.next().payload == {"n": 10}
    with SSEClient(live.url + "/events", params={"after": str(ids[7])}) as sse:
        sse.next()
        assert [sse.next().payload["n"] for _ in range(3)] == [8, 9, 10]


def test_replay_last_n_and_prefix_filters(app: Any, live: Any) -> None:
    hub = ArwModels.state(app).hub
    for n in range(5):
        hub.publish("Models.DownloadProgress", {"n": n})
        hub.publish("Other.Thing", {"n": n})
    params = [("replay", "3"), ("prefix", "Models."), ("prefix", "Nope.")]
    with SSEClient(live.url + "/events", params=params) as sse:
        sse.next()
        assert [sse.next().payload["n"] for _ in range(3)] == [2, 3, 4]
        hub.publish("Other.Thing", {"n": 99})
        hub.publish("Models.Changed", {"n": 100})
        live_frame = sse.next()
        assert live_frame.event == "Models.Changed" and live_frame.payload == {"n": 100}


def test_keep_alive_comment_on_an_idle_stream(make_app: Any) -> None:
    app = make_app(ARW_EVENTS_KEEPALIVE_SECS=0.05)
    server = LiveServer(app)
    try:
        with SSEClient(server.url + "/events") as sse:
            sse.next()
            frame = sse.next(keep_comments=True)
            assert frame.comments == ["keep-alive"] and frame.data == ""
    finally:
        server.close()


def test_old_last_event_id_gets_a_gap_first() -> None:
    hub = EventHub(replay=3)
    ids = [hub.publish("k", {"n": n}).id for n in range(6)]
    _, backlog = hub.subscribe(after=ids[0])
    assert backlog[0].kind == "bus.gap" and backlog[0].payload == {"missed": 2}
    assert [e.payload["n"] for e in backlog[1:]] == [3, 4, 5]
    _, backlog2 = hub.subscribe(after=hub.first_id - 100)
    assert backlog2[0].kind == "bus.gap" and backlog2[0].payload == {"missed": None}
    hub.close()


def test_an_id_newer_than_any_given_out_gets_an_unknown_gap_and_the_whole_buffer() -> None:
    # A browser's Last-Event-ID from a run whose clock was ahead of this one's.
    hub = EventHub(replay=10)
    ids = [hub.publish("k", {"n": n}).id for n in range(3)]
    _, backlog = hub.subscribe(after=ids[-1] + 10**9)
    assert backlog[0].kind == "bus.gap" and backlog[0].payload == {"missed": None}
    assert [e.id for e in backlog[1:]] == ids
    hub.close()


def test_an_up_to_date_client_gets_no_replay_even_when_it_asks_for_one() -> None:
    hub = EventHub(replay=10)
    last = [hub.publish("k", {"n": n}).id for n in range(3)][-1]
    _, backlog = hub.subscribe(after=last, replay=5)  # Last-Event-ID wins over ?replay=
    assert backlog == []
    hub.close()


def test_a_subscriber_that_never_reads_gets_a_gap_and_blocks_nobody() -> None:
    hub = EventHub(replay=10, queue_size=4)
    stuck, _ = hub.subscribe()
    reader, _ = hub.subscribe(queue_size=1000)
    for n in range(100):
        hub.publish("k", {"n": n})  # returns at once although `stuck` reads nothing
    items = stuck.get(timeout=0)
    assert items is not None
    assert items[0].kind == "bus.gap" and items[0].payload == {"missed": 96}
    assert [e.payload["n"] for e in items[1:]] == [96, 97, 98, 99]
    all_items = reader.get(timeout=0)
    assert all_items is not None and [e.payload["n"] for e in all_items] == list(range(100))
    # A gap is told once: the next event comes alone, and a later overflow is counted afresh.
    hub.publish("k", {"n": 100})
    assert [(e.kind, e.payload) for e in stuck.get(timeout=0) or []] == [("k", {"n": 100})]
    for n in range(101, 107):
        hub.publish("k", {"n": n})
    items = stuck.get(timeout=0)
    assert items is not None and items[0].payload == {"missed": 2}
    assert [e.payload["n"] for e in items[1:]] == [103, 104, 105, 106]
    hub.close()
    assert stuck.get(timeout=0) is None


def test_subscribe_during_publishing_has_no_gap_or_duplicate() -> None:
    hub = EventHub(replay=100_000, queue_size=100_000)
    first = hub.publish("k", {"n": -1}).id
    stop = threading.Event()

    def publisher() -> None:
        n = 0
        while not stop.is_set() and n < 20_000:
            hub.publish("k", {"n": n})
            n += 1

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        subs = [hub.subscribe(after=first) for _ in range(20)]
    finally:
        stop.set()
        thread.join()
    total = hub.last_id
    for sub, backlog in subs:
        live = sub.get(timeout=0) or []
        ids = [e.id for e in backlog + live]
        assert ids == list(range(first + 1, total + 1))
    hub.close()


def test_a_response_closed_twice_releases_once() -> None:
    hub = EventHub()
    released: list[int] = []
    response = stream_response(hub, on_close=lambda: released.append(1))
    assert hub.subscriber_count == 1
    response.close()
    response.close()
    assert released == [1] and hub.subscriber_count == 0


def test_an_idle_stream_sleeps_between_its_checks_and_its_keepalives() -> None:
    """An idle stream holds a server thread but must not spin: it asks whether its
    client is gone about once per check interval, and writes one keep-alive per
    interval, each counted from the last write."""
    hub = EventHub()
    asked: list[float] = []

    def gone() -> bool:
        asked.append(time.monotonic())
        return False

    response = stream_response(hub, keepalive=0.3, client_gone=gone, check_interval=0.1)
    frames = iter(response.response)
    next(frames)  # the hello
    started = time.monotonic()
    assert next(frames) == KEEPALIVE
    first = time.monotonic()
    assert next(frames) == KEEPALIVE
    second = time.monotonic()
    assert first - started >= 0.25 and second - first >= 0.25
    assert len(asked) <= 20  # about three an interval, not a busy loop
    response.close()
    assert hub.subscriber_count == 0


def test_checks_for_a_departed_client_do_not_delay_the_keepalive() -> None:
    """The checks come between the keep-alives: with checks almost as far apart as the
    keep-alives, the wait after a check is what is left of the keep-alive's
    interval, so the keep-alive still comes on time."""
    hub = EventHub()
    response = stream_response(hub, keepalive=1.0, client_gone=lambda: False, check_interval=0.9)
    frames = iter(response.response)
    next(frames)  # the hello
    started = time.monotonic()
    assert next(frames) == KEEPALIVE
    assert 0.95 <= time.monotonic() - started < 1.6
    response.close()


def _reader_waits(sub: Any) -> None:
    """Until a thread waits in ``sub.get`` (on its condition): then what wakes it is
    what the test does next, not the order the threads happened to run in."""
    deadline = time.monotonic() + 5
    while not sub._cond._waiters:  # CPython's Condition keeps its waiters' locks here
        assert time.monotonic() < deadline, "the reader never waited"
        time.sleep(0.001)


def test_a_waiting_reader_wakes_at_once_for_an_event_and_for_the_end() -> None:
    """A stream's reader waits with a long timeout: an event, or the end of its
    subscription, wakes it at once, not at its next timeout; events already there
    are taken without waiting at all."""
    hub = EventHub()
    sub, _ = hub.subscribe()
    got: list[Any] = []

    def read_twice() -> None:
        got.append(sub.get(timeout=5))
        got.append(sub.get(timeout=5))

    reader = threading.Thread(target=read_twice)
    reader.start()
    started = time.monotonic()
    _reader_waits(sub)
    hub.publish("Test.Now", {})
    while not got:
        assert time.monotonic() - started < 2, "the event did not wake the reader"
        time.sleep(0.001)
    _reader_waits(sub)
    hub.unsubscribe(sub)
    reader.join(5)
    assert time.monotonic() - started < 2
    assert [e.kind for e in got[0]] == ["Test.Now"] and got[1] is None
    sub, _ = hub.subscribe()
    hub.publish("Test.Ready", {})
    started = time.monotonic()
    ready = sub.get(timeout=5)
    assert ready is not None and [e.kind for e in ready] == ["Test.Ready"]
    assert time.monotonic() - started < 1
    hub.unsubscribe(sub)


def test_a_queue_of_no_size_still_holds_one_event() -> None:
    hub = EventHub(queue_size=0)
    sub, _ = hub.subscribe()
    hub.publish("Test.One", {})
    got = sub.get(timeout=0)
    assert got is not None and [e.kind for e in got] == ["Test.One"]
    hub.unsubscribe(sub)


def test_a_queue_of_one_keeps_the_newest_event_and_counts_the_one_dropped() -> None:
    """A subscriber's queue holds what it was sized for, and no more: past it the
    oldest goes, and the reader is told how many it missed."""
    for size in (0, 1):
        hub = EventHub(queue_size=size)
        sub, _ = hub.subscribe()
        hub.publish("Test.One", {})
        hub.publish("Test.Two", {})
        got = sub.get(timeout=0)
        assert got is not None and [(e.kind, e.payload) for e in got] == [("bus.gap", {"missed": 1}), ("Test.Two", {})]
        hub.unsubscribe(sub)


def test_an_open_subscription_waits_for_events() -> None:
    hub = EventHub()
    sub, _ = hub.subscribe()
    started = time.monotonic()
    assert sub.get(timeout=0.2) == []
    assert time.monotonic() - started >= 0.15  # it waited, it did not spin
    hub.unsubscribe(sub)


def test_after_the_id_just_before_the_ring_is_no_gap() -> None:
    hub = EventHub(replay=3)
    ids = [hub.publish("k", {"n": n}).id for n in range(6)]
    _, backlog = hub.subscribe(after=ids[2])
    assert [(e.kind, e.id) for e in backlog] == [("k", ids[3]), ("k", ids[4]), ("k", ids[5])]
    hub.close()


def test_after_the_id_before_this_process_counts_the_missed_events() -> None:
    """``after == first_id - 1`` means "from this process's
    first event"; what fell out of the ring can be counted."""
    hub = EventHub(replay=3)
    for n in range(6):
        hub.publish("k", {"n": n})
    _, backlog = hub.subscribe(after=hub.first_id - 1)
    assert backlog[0].kind == "bus.gap" and backlog[0].payload == {"missed": 3}
    assert [e.payload["n"] for e in backlog[1:]] == [3, 4, 5]
    hub.close()


def test_one_event_missed_is_counted_and_an_id_from_before_this_process_is_not() -> None:
    """The ring lost exactly one event the client had not seen: it is told of one
    missed. A client whose last id is from before this process started (one below its
    first) missed an unknown number: the gap says so rather than count."""
    hub = EventHub(replay=3)
    for n in range(4):
        hub.publish("k", {"n": n})
    _, backlog = hub.subscribe(after=hub.first_id - 1)
    assert [(e.kind, e.payload) for e in backlog[:2]] == [("bus.gap", {"missed": 1}), ("k", {"n": 1})]
    _, backlog = hub.subscribe(after=hub.first_id - 2)
    assert backlog[0].kind == "bus.gap" and backlog[0].payload == {"missed": None}
    assert [e.payload["n"] for e in backlog[1:]] == [1, 2, 3]
    hub.close()


def test_replay_after_an_id_honours_the_prefix_filter() -> None:
    hub = EventHub(replay=100)
    first = hub.publish("Models.X", {"n": -1}).id
    for n in range(3):
        hub.publish("Models.X", {"n": n})
        hub.publish("Other.Y", {"n": n})
    _, backlog = hub.subscribe(prefixes=("Models.",), after=first)
    assert [(e.kind, e.payload["n"]) for e in backlog] == [("Models.X", 0), ("Models.X", 1), ("Models.X", 2)]
    hub.close()


def test_subscribing_to_a_closed_hub_ends_at_once() -> None:
    hub = EventHub()
    hub.publish("k", {})
    live, _ = hub.subscribe()
    hub.close()
    assert live.get(timeout=0) is None  # a stream open at the shutdown ends too
    sub, _ = hub.subscribe()
    assert sub.get(timeout=0) is None
    assert hub.subscriber_count == 0


def test_an_event_published_while_subscribing_is_neither_lost_nor_doubled() -> None:
    """The backlog and the live registration must be one
    step under the hub lock. If the registration happens outside the lock, a publisher
    can run in between; this test makes that interleaving happen (deterministically)."""
    hub = EventHub(replay=100)
    first = hub.publish("k", {"n": 0}).id
    hub.publish("k", {"n": 1})

    class Interleaving(set):  # type: ignore[type-arg]
        def add(self, sub: Any) -> None:
            if not hub._lock.locked():  # a publisher could run here: let one run
                hub.publish("k", {"n": "window"})
            super().add(sub)

    hub._subs = Interleaving()
    sub, backlog = hub.subscribe(after=first)
    hub.publish("k", {"n": 2})
    live = sub.get(timeout=0) or []
    ids = [e.id for e in backlog + live]
    assert ids == list(range(first + 1, hub.last_id + 1))
    hub.close()


def test_event_frame_is_exact_bytes() -> None:
    event = Event(42, "Models.DownloadProgress", {"id": "m", "status": "queued"}, time="2026-11-25T19:20:00.123Z")
    assert event.encode() == (
        b"id: 42\n"
        b"event: Models.DownloadProgress\n"
        b'data: {"time":"2026-11-25T19:20:00.123Z","kind":"Models.DownloadProgress",'
        b'"payload":{"id":"m","status":"queued"}}\n'
        b"\n"
    )
    assert str(event) == event.encode().decode()


def test_an_event_carries_no_instance_dict() -> None:
    """The replay ring holds thousands of events (ARW_EVENTS_REPLAY) for as long as the
    service runs: each is its fields and its encoded frame, with no per-instance dict."""
    event = Event(1, "Test.Small", {})
    assert not hasattr(event, "__dict__")


def test_event_frame_without_id_and_with_newlines_in_data() -> None:
    event = Event(None, "service.connected", {"note": "a\nb\r\nc"}, time="2026-11-25T19:20:00.000Z")
    frame = event.encode()
    assert frame.startswith(b"event: service.connected\ndata: {")
    assert b"id:" not in frame
    # One data line, whatever the payload holds: the frame ends at the first blank line.
    assert frame.count(b"\n") == 3 and frame.endswith(b"\n\n")
    assert b'"a\\nb\\r\\nc"' in frame


def test_event_frame_keeps_unicode_as_utf8() -> None:
    frame = Event(1, "k", {"file": "modèle.gguf"}, time="t").encode()
    assert "modèle".encode() in frame


def test_a_hub_with_no_replay_still_keeps_the_last_event() -> None:
    """A replay ring of no size still holds the newest event (a client reconnecting
    with its id is then told of a gap, not of nothing), and no more."""
    hub = EventHub(replay=0)
    hub.publish("Test.One", {})
    hub.publish("Test.Two", {})
    sub, backlog = hub.subscribe(replay=5)
    assert [e.kind for e in backlog] == ["Test.Two"]
    hub.unsubscribe(sub)


def test_hub_ids_increase_and_start_from_the_clock() -> None:
    import time

    before = time.time_ns() // 1000
    hub = EventHub(replay=10)
    after = time.time_ns() // 1000
    ids = [hub.publish("k", {"n": n}).id for n in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert before <= ids[0] <= after  # microseconds of the clock, the unit a later run counts in too
    # A second hub (a restart) numbers after the first one's events.
    assert EventHub().first_id > ids[-1]
