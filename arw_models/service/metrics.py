"""Metrics in the Prometheus text format, for ``GET /metrics``.

Counters and the duration histogram are counted from the
``Models.DownloadProgress`` payloads of the app (through
:class:`~arw_models.service.observe.Observer`), not by calls in the transfer: the metrics
say what clients were told. Gauges (jobs by state, event stream subscribers, the
rate limit, the disk and what the store holds on it) are read when the metrics
are scraped. The failure counter has a series at zero for every stable error code
from the start, so that a dashboard's rate() sees the first failure.

Each app has its own :class:`prometheus_client.CollectorRegistry`, never the
process-wide default: several apps in one process (a host with two state
directories, the tests) must not add to one another's counters.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import EVENT_ERROR_CODES
from ..store.blobs import Blobs
from ..store.registry import Registry
from ..store.staging import Staging, staged_ids
from ..store.storage import PART_SUFFIX, StateDir, disk_free

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
# Every stable code an error event may carry, each a series from the start.
ERROR_CODES = tuple(dict.fromkeys((*EVENT_ERROR_CODES, "dns-error", "connection-refused")))
# How a job that ran ended, as the duration histogram labels it.
DURATION_OUTCOMES = ("complete", "error", "canceled")
# Seconds, from a small file on a LAN to a large one over a slow link.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, float("inf"))


@dataclass
class _Track:
    """What the counters remember of one job: the bytes already counted."""

    counted: int = 0
    begun: bool = False
    since: float = 0.0


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
        store: Callable[[], Mapping[str, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.clock = clock
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
        self.durations = Histogram("arw_download_duration_seconds", "Seconds from a job's first event (its "
                                   "request) to its end, by outcome", ["outcome"], buckets=DURATION_BUCKETS,
                                   registry=r)
        for code in ERROR_CODES:
            self.failed.labels(code=code)
        for outcome in DURATION_OUTCOMES:
            self.durations.labels(outcome=outcome)
        r.register(_Snapshot(jobs, subscribers, rate_limit, store))
        # The process's own series (CPU, memory, descriptors, GC, Python version), on
        # this registry: the process-wide one is never used.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
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
                track = self._tracks[model_id] = _Track(since=self.clock())
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
                if status in DURATION_OUTCOMES:
                    self.durations.labels(outcome=status).observe(max(0.0, self.clock() - track.since))
                del self._tracks[model_id]  # the job is over; the next one of this id is new

    def render(self) -> bytes:
        """The text exposition format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _label(code: Any) -> str:
    return code if isinstance(code, str) and _CODE.fullmatch(code) else "other"


def store_usage(state: StateDir, registry: Registry) -> dict[str, int]:
    """What the store holds on its disk now: ``free`` (bytes free on the state
    directory's file system), ``models`` (the blobs, each once however many
    models name it, and the model files that are no link of one: copies where the
    file system makes no link, files an older version left unstored), ``installed`` (how many models have
    their file, or their folder for a model of many files), ``partial`` (the ``.part`` files, those in
    the staging folders of models of many files too)."""
    seen: set[tuple[int, int]] = set()
    models = installed = partial = 0
    blobs = Blobs(state)
    for digest in blobs.digests():  # each blob once, whatever number of models name it
        st = blobs.stat(digest)
        if st is not None and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            models += st.st_size
    for entry in registry.all():
        try:
            st = os.lstat(state.model_path(str(entry.get("file") or "")))
        except (OSError, ValueError):
            continue  # missing, or a name that is not ours: not installed
        if stat.S_ISDIR(st.st_mode):  # a model of many files: its folder's files are links of blobs
            installed += 1
            for file_st in _files_under(state.model_path(str(entry["file"]))):
                if (file_st.st_dev, file_st.st_ino) not in seen:  # a copy, where no link could be made
                    seen.add((file_st.st_dev, file_st.st_ino))
                    models += file_st.st_size
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        installed += 1
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            models += st.st_size
    # The .part files of single downloads, and those of the files of models being
    # fetched in their staging folders.
    folders = [state.models_dir, *(Staging(state, model_id).dir for model_id in staged_ids(state))]
    for folder in folders:
        for st in _files_under(folder, recurse=False):
            partial += st.st_size if st.name.endswith(PART_SUFFIX) else 0
    return {"free": disk_free(state.root), "models": models, "installed": installed, "partial": partial}


@dataclass
class _File:
    name: str
    st_size: int
    st_dev: int
    st_ino: int


def _files_under(top: str, recurse: bool = True) -> Iterator[_File]:
    """The regular files under ``top`` (never through a link), as lstat sees them."""
    for folder, dirs, names in os.walk(top):
        if not recurse:
            dirs.clear()
        for name in names:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield _File(name, st.st_size, st.st_dev, st.st_ino)


class _Snapshot(Collector):
    """The gauges, read at scrape time."""

    def __init__(self, jobs: Callable[[], Iterable[Mapping[str, Any]]], subscribers: Callable[[], int],
                 rate_limit: Callable[[], int | None], store: Callable[[], Mapping[str, int]] | None) -> None:
        self._jobs = jobs
        self._subscribers = subscribers
        self._rate_limit = rate_limit
        self._store = store

    def describe(self) -> Iterator[Metric]:
        # Names only, without reading the service: registering must not start it.
        yield GaugeMetricFamily("arw_jobs_active", "")
        yield GaugeMetricFamily("arw_jobs_queued", "")
        yield GaugeMetricFamily("arw_jobs_paused", "")
        yield GaugeMetricFamily("arw_sse_subscribers", "")
        yield GaugeMetricFamily("arw_rate_limit_bytes_per_second", "")
        if self._store is not None:
            for name in (*STORE_GAUGES, "arw_store_used_bytes"):
                yield GaugeMetricFamily(name, "")

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
        if self._store is None:
            return
        try:
            usage = self._store()
        except Exception:  # the disk gone, say: the other metrics still count
            log.exception("metrics: cannot read the state directory's disk usage")
            return
        for name, (key, text) in STORE_GAUGES.items():
            yield GaugeMetricFamily(name, text, value=usage[key])
        yield GaugeMetricFamily("arw_store_used_bytes", "Bytes the store uses on its disk: installed model "
                                "files and partial files", value=usage["models"] + usage["partial"])


STORE_GAUGES = {
    "arw_disk_free_bytes": ("free", "Bytes free on the state directory's file system"),
    "arw_models_installed_bytes": ("models", "Bytes of the installed model files (each file once)"),
    "arw_models_installed": ("installed", "Installed models whose file is there"),
    "arw_partial_bytes": ("partial", "Bytes of the partial files of downloads in progress, paused or left"),
}
