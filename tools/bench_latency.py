"""Latencies as a subscriber to ``/events`` sees them, against the benchmark's paced
origin (:class:`tools.bench_origin.PyOrigin`, in this process, on the same clock).

* bytes to progress event: for every ``downloading`` event, the time it reached the
  subscriber minus the time the origin had sent the ``downloaded`` bytes it reports.
  On loopback, at a rate far below what the service can take in, bytes arrive when
  they are sent, so this is the delay a progress bar shows; it includes the wait for
  the service's next progress tick (``ARW_DL_PROGRESS_INTERVAL_MS``).
* cancel to ``canceled``: from sending ``POST /models/download/cancel`` for a transfer
  that is receiving bytes to the ``canceled`` event at the subscriber.
* the reference for both: the round trip of ``GET /healthz`` to the same service.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from typing import Any

from .bench_origin import PyOrigin
from .bench_run import BenchError, Service

TERMINAL = ("complete", "error", "canceled")


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: a value that was measured, never one interpolated between two."""
    if not values:
        return math.nan
    ranked = sorted(values)
    return ranked[max(0, math.ceil(p / 100 * len(ranked)) - 1)]


def summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "max": max(values, default=math.nan)}


def round_trips(service: Service, n: int) -> list[float]:
    """``GET /healthz`` on a kept-alive connection, ``n`` times."""
    times = []
    for _ in range(n):
        began = time.monotonic()
        service.session.get(service.url + "/healthz", timeout=10).raise_for_status()
        times.append(time.monotonic() - began)
    return times


def progress_latency(service: Service, origin: PyOrigin, url: str) -> list[float]:
    """One download from the paced origin; a latency per ``downloading`` event."""
    origin.reset_log()
    arrivals: list[tuple[float, int]] = []
    with service.events() as events:
        answer = service.post("/models/download", {"id": "latency", "url": url})
        if answer.status_code != 202:
            raise BenchError(f"POST /models/download answered {answer.status_code}: {answer.text}")
        while True:
            frame = events.next()
            seen = time.monotonic()
            payload = frame.payload
            if payload.get("id") != "latency":
                continue
            if payload["status"] == "downloading":
                arrivals.append((seen, payload["downloaded"]))
            elif payload["status"] in TERMINAL:
                break
    if payload["status"] != "complete":
        raise BenchError(f"the latency download ended with {payload}")
    log = origin.log()
    totals = [total for _, total in log]
    latencies = []
    for seen, downloaded in arrivals:
        i = bisect.bisect_left(totals, downloaded)  # the first write after which that many bytes were out
        if i < len(log):
            latencies.append(seen - log[i][0])
    return latencies


def _cancel(service: Service, model_id: str, sent: dict[str, Any]) -> None:
    sent["began"] = time.monotonic()
    try:
        answer = service.post("/models/download/cancel", {"id": model_id})
        if answer.status_code != 200:
            raise BenchError(f"answered {answer.status_code}: {answer.text}")
    except Exception as exc:  # noqa: BLE001 - reported by the thread that waits for it
        sent["error"] = exc
    sent["answered"] = time.monotonic()


def cancel_latency(service: Service, url: str, repeats: int) -> tuple[list[float], list[float]]:
    """``repeats`` transfers, each canceled once bytes flow: the time to the
    ``canceled`` event at the subscriber, and the time to the POST's answer."""
    to_event, to_answer = [], []
    with service.events() as events:
        for n in range(repeats):
            model_id = f"cancel-{n}"
            answer = service.post("/models/download", {"id": model_id, "url": url})
            if answer.status_code != 202:
                raise BenchError(f"POST /models/download answered {answer.status_code}: {answer.text}")
            events.until(lambda f, m=model_id: f.payload.get("id") == m and f.payload["status"] == "downloading")
            # The POST from another thread: this one stays on the stream, so the event
            # is timed when it arrives, even when it comes before the POST's answer.
            sent: dict[str, Any] = {}
            poster = threading.Thread(target=_cancel, args=(service, model_id, sent), name="bench-cancel")
            poster.start()
            try:
                end = events.until(lambda f, m=model_id: f.payload.get("id") == m and f.payload["status"] in TERMINAL)
                seen = time.monotonic()
            finally:
                poster.join(30)
            if "error" in sent:
                raise BenchError(f"POST /models/download/cancel failed: {sent['error']}")
            if end.payload["status"] != "canceled":
                raise BenchError(f"the canceled download ended with {end.payload}")
            to_event.append(seen - sent["began"])
            to_answer.append(sent["answered"] - sent["began"])
    return to_event, to_answer
