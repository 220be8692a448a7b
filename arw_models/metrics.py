"""Metrics in the Prometheus text format, for ``GET /metrics``.

Counters are counted from the ``Models.DownloadProgress`` payloads of the app
(through :class:`~arw_models.observe.Observer`), not by calls in the transfer: the
metrics say what clients were told. Gauges (jobs by state, event stream
subscribers, the rate limit) are read when the metrics are scraped.

Each app has its own :class:`prometheus_client.CollectorRegistry`, never the
process-wide default: several apps in one process (a host with two state
directories, the tests) must not add to one another's counters.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

# The classic text format, which every Prometheus version reads; what
# generate_latest writes, and what prometheus_client answers a scraper that
# asks for nothing else.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

log = logging.getLogger(__name__)

# Statuses of a job that counts as active: it transfers, verifies, or waits to retry.
ACTIVE = frozenset({"started", "resumed", "downloading", "verifying", "retrying"})
# A label value comes from a payload: anything that is not a plain code is "other",
# so that a label cannot grow without bound.
_CODE = re.compile(r"[a-z0-9][a-z0-9-]{0,47}")


@dataclass
class _Track:
    """What the counters remember of one job: the bytes already counted."""

    counted: int = 0
    begun: bool = False


class Metrics:
    """The metrics of one app. ``jobs`` lists the jobs (as ``GET /models/downloads``
    does), ``subscribers`` counts open event subscriptions, ``rate_limit`` is the
    limit in bytes/s (None: unlimited); each is called at scrape time."""

    def __init__(
        self,
        *,
        jobs: Callable[[], Iterable[Mapping[str, Any]]],
        subscribers: Callable[[], int],
        rate_limit: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.started = Counter("arw_downloads_started", "Downloads whose transfer began (once per job, "
                               "whatever its retries)", registry=r)
        self.completed = Counter("arw_downloads_completed", "Downloads verified and installed", registry=r)
        self.failed = Counter("arw_downloads_failed", "Downloads that ended with an error, by its code",
                              ["code"], registry=r)
        self.canceled = Counter("arw_downloads_canceled", "Downloads canceled (their partial file removed)",
                                registry=r)
        self.paused = Counter("arw_downloads_paused", "Downloads paused (their partial file kept)", registry=r)
        self.retries = Counter("arw_download_retries", "Retries of transient failures, by the failure's code",
                               ["code"], registry=r)
        self.bytes = Counter("arw_download_received_bytes", "Bytes received from origins and written to "
                             "partial files (a resume counts only what it fetched)", registry=r)
        r.register(_Snapshot(jobs, subscribers, rate_limit))
        self._lock = threading.Lock()
        self._tracks: dict[str, _Track] = {}

    def observe(self, payload: Mapping[str, Any]) -> None:
        """Counts one ``Models.DownloadProgress`` payload."""
        model_id, status = payload.get("id"), payload.get("status")
        if not isinstance(model_id, str) or not isinstance(status, str):
            return
        with self._lock:
            track = self._tracks.get(model_id)
            if status == "queued" or track is None:
                track = self._tracks[model_id] = _Track()
            if status in ("started", "resumed"):
                if not track.begun:
                    track.begun = True
                    self.started.inc()
                # What is on disk now was counted before, or came from an earlier run.
                track.counted = (_count(payload.get("offset")) or 0) if status == "resumed" else 0
                return
            received = _count(payload.get("bytes" if status == "complete" else "downloaded"))
            if received is not None and track.begun and received > track.counted:
                self.bytes.inc(received - track.counted)
                track.counted = received
            if status == "retrying":
                self.retries.labels(code=_label(payload.get("code"))).inc()
            elif status == "complete":
                self.completed.inc()
            elif status == "error":
                self.failed.labels(code=_label(payload.get("code"))).inc()
            elif status == "canceled":
                self.canceled.inc()
            elif status == "paused":
                self.paused.inc()
            else:
                return
            if status != "retrying":
                del self._tracks[model_id]  # the job is over; the next one of this id is new

    def render(self) -> bytes:
        """The text exposition format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _label(code: Any) -> str:
    return code if isinstance(code, str) and _CODE.fullmatch(code) else "other"


class _Snapshot(Collector):
    """The gauges, read at scrape time."""

    def __init__(self, jobs: Callable[[], Iterable[Mapping[str, Any]]], subscribers: Callable[[], int],
                 rate_limit: Callable[[], int | None]) -> None:
        self._jobs = jobs
        self._subscribers = subscribers
        self._rate_limit = rate_limit

    def describe(self) -> Iterator[Metric]:
        # Names only, without reading the service: registering must not start it.
        yield GaugeMetricFamily("arw_jobs_active", "")
        yield GaugeMetricFamily("arw_jobs_queued", "")
        yield GaugeMetricFamily("arw_jobs_paused", "")
        yield GaugeMetricFamily("arw_sse_subscribers", "")
        yield GaugeMetricFamily("arw_rate_limit_bytes_per_second", "")

    def collect(self) -> Iterator[Metric]:
        try:
            items = list(self._jobs())
        except Exception:  # the state directory unreadable, say: the other metrics still count
            log.exception("metrics: cannot list the jobs")
            items = None
        if items is not None:
            statuses = [str(item.get("status")) for item in items]
            yield GaugeMetricFamily("arw_jobs_active", "Jobs transferring, verifying or waiting to retry",
                                    value=sum(s in ACTIVE for s in statuses))
            yield GaugeMetricFamily("arw_jobs_queued", "Jobs waiting for a transfer slot",
                                    value=statuses.count("queued"))
            yield GaugeMetricFamily("arw_jobs_paused", "Paused downloads (their partial file kept)",
                                    value=statuses.count("paused"))
        yield GaugeMetricFamily("arw_sse_subscribers", "Open event stream subscriptions",
                                value=self._subscribers())
        limit = self._rate_limit()
        yield GaugeMetricFamily("arw_rate_limit_bytes_per_second", "The download rate limit for all "
                                "downloads; 0: unlimited", value=limit or 0)
