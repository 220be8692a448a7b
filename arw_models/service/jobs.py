"""A download job, its status and the one place that changes it.

Design: a job's status moves only through :meth:`DownloadJob.transition`, under the
job's lock. The move is checked against :data:`MOVES` (a terminal status never
changes), and the event is published in the same critical section, so every
subscriber sees a job's events in the order its status changed and ``complete``,
``error`` and ``canceled`` come at most once. Stop requests (cancel, shutdown, a
newer request that takes the job over) take the same lock, so a stop racing the
install is decided here: :meth:`DownloadJob.finish` runs the install only if no
stop came first, and a stop after it finds the job terminal.

The events are told to :attr:`DownloadJob.notify` (the host's receivers, the
observer) by :meth:`DownloadJob.tell`, in the same order, with no lock held. The
threads and locks involved are described once in docs/design.rst ("Concurrency").

The transfer threads only write the byte counters (``downloaded``, ``total``);
the manager's ticker reads them to publish progress. What the engine reads and
writes is the job's :class:`arw_models.engine.transfer.Transfer` part; the two moves
it reports (:meth:`DownloadJob.began`, :meth:`DownloadJob.verifying`) are status
changes here.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any

from ..engine.transfer import Transfer
from ..store.storage import utcnow
from .speed import Speed


class Status(str, Enum):
    QUEUED = "queued"
    STARTED = "started"
    RESUMED = "resumed"
    DOWNLOADING = "downloading"
    RETRYING = "retrying"
    VERIFYING = "verifying"
    COMPLETE = "complete"
    ERROR = "error"
    CANCELED = "canceled"
    # Stopped on request, keeping the .part and its sidecar for a later resume.
    PAUSED = "paused"
    # Stopped by a shutdown, or taken over by a newer request: the .part stays, and
    # no terminal event is sent (the download goes on later, or under a new job).
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({Status.COMPLETE, Status.ERROR, Status.CANCELED, Status.PAUSED, Status.INTERRUPTED})
# Statuses in which a job holds a transfer slot.
RUNNING = frozenset({Status.STARTED, Status.RESUMED, Status.DOWNLOADING, Status.VERIFYING})
_ENDS = {Status.ERROR, Status.CANCELED, Status.PAUSED, Status.INTERRUPTED}
_BEGINS = {Status.STARTED, Status.RESUMED}

MOVES: dict[Status, frozenset[Status]] = {
    # VERIFYING straight from QUEUED: the origin says (416) the .part is whole already.
    Status.QUEUED: frozenset(_BEGINS | {Status.RETRYING, Status.VERIFYING} | _ENDS),
    # Started or resumed again: an attempt that restarts from byte 0, or that the
    # origin lets continue after all.
    Status.STARTED: frozenset(_BEGINS | {Status.DOWNLOADING, Status.RETRYING, Status.VERIFYING} | _ENDS),
    Status.RESUMED: frozenset(_BEGINS | {Status.DOWNLOADING, Status.RETRYING, Status.VERIFYING} | _ENDS),
    Status.DOWNLOADING: frozenset(_BEGINS | {Status.DOWNLOADING, Status.RETRYING, Status.VERIFYING} | _ENDS),
    # A retry that waits, fires, and waits again (the origin still refuses).
    Status.RETRYING: frozenset(_BEGINS | {Status.RETRYING, Status.VERIFYING} | _ENDS),
    # The .part vanished or is short while it is hashed: another attempt.
    Status.VERIFYING: frozenset({Status.COMPLETE, Status.RETRYING} | _ENDS),
    Status.COMPLETE: frozenset(),
    Status.ERROR: frozenset(),
    Status.CANCELED: frozenset(),
    Status.PAUSED: frozenset(),
    Status.INTERRUPTED: frozenset(),
}

Publish = Callable[[dict[str, Any]], None]
_quietly: Publish = lambda payload: None


class DownloadJob(Transfer):
    """The state of one download, shared by its transfer, the manager and the API:
    its status machine. Its speed is its :class:`~arw_models.service.speed.Speed`'s
    to tell; what the API shows of it, :func:`arw_models.service.listing.snapshot`'s."""

    def __init__(self, model_id: str, url: str, sha256: str | None, provider: str,
                 publish: Publish = _quietly, notify: Publish = _quietly, *, auto: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(model_id, url, sha256, provider, clock=clock)
        # What the answer to the POST said of the bytes on disk (kept, discarded,
        # provisional), as a repeated POST repeats it until the origin has answered.
        self.prospect: dict[str, Any] = {}
        # Resumed by the service itself at start: a POST that differs takes it over.
        self.auto = auto
        # Asked to fetch again what is installed or in the store (no deduplication).
        self.force = False
        self._status = Status.QUEUED
        # publish (the event hub, which never blocks) runs under the job's lock, so
        # events keep the order of the moves; notify (the host's signal receivers and
        # the service's observer, which may call back into the service) runs from
        # tell(), with no lock of ours held, in the same order.
        self._publish = publish
        self.notify = notify
        self._outbox: deque[dict[str, Any]] = deque()
        self._telling = False
        self.retries = 0
        self.error: dict[str, Any] | None = None
        # While the job waits to retry, and until the origin's next answer is
        # accepted: the failure it retries ({"code", "error"}), for the listings.
        self.last_error: dict[str, Any] | None = None
        self.file: str | None = None
        self.created_at = utcnow()
        self.finished_at: str | None = None
        self.stop_reason: str | None = None
        self.done = threading.Event()
        self._final: dict[str, Any] | None = None
        # The job this one takes over: it must have let go of the .part first.
        self.after: DownloadJob | None = None
        self.speed = Speed()
        # The bytes the last progress event showed; None until the origin's answer
        # was accepted (before it, the counters say nothing about this attempt).
        self._published: int | None = None

    # -- the status -------------------------------------------------------------------

    @property
    def status(self) -> Status:
        return self._status

    @property
    def active(self) -> bool:
        return not self.done.is_set()

    @property
    def terminal(self) -> bool:
        return self._status in TERMINAL

    @property
    def answered(self) -> bool:
        """An answer of the origin was accepted in this job: its counters are of it."""
        return self._published is not None

    def transition(self, to: Status, *, quiet: bool = False, unless_stopped: bool = False,
                   deferred: bool = False, **fields: Any) -> dict[str, Any] | None:
        """Moves to ``to`` and publishes the event (its payload: id, status and
        ``fields``) unless ``quiet``; returns the payload, or None, changing nothing,
        if the move is not allowed from the present status (or, with
        ``unless_stopped``, a stop was asked for). With ``deferred`` the caller
        calls :meth:`tell` itself, once it holds no lock."""
        with self._lock:
            if to not in MOVES[self._status] or (unless_stopped and self.stop_event.is_set()):
                return None
            self._status = to
            if to is Status.ERROR:
                self.error = dict(fields)
            if to in TERMINAL:
                self.last_error = None  # an error tells its own code; any other end mends it
            payload = {"id": self.id, "status": to.value, **fields}
            if to in TERMINAL:
                # Told by close(), once the job is over: a client that acts on
                # "complete" (a new POST, say) finds the job done, not ending.
                self._final = None if quiet else payload
                return payload
            if not quiet:
                self._publish(payload)
                self._outbox.append(payload)
        if not quiet and not deferred:
            self.tell()
        return payload

    def close(self) -> dict[str, Any] | None:
        """Marks the job done and publishes its terminal event, if it has one to
        tell (and returns it); the caller calls :meth:`tell` once it holds no lock."""
        with self._lock:
            self.done.set()
            final, self._final = self._final, None
            if final is not None:
                self._publish(final)
                self._outbox.append(final)
        return final

    def announce(self) -> None:
        """Publishes the present status without a move (``queued``, when the job
        has to wait for a slot); the caller calls :meth:`tell` once it holds no lock."""
        with self._lock:
            payload = {"id": self.id, "status": self._status.value}
            self._publish(payload)
            self._outbox.append(payload)

    def tell(self) -> None:
        """Hands the published events not yet told to :attr:`notify`, in order, with
        no lock held. Called by whoever published them once it holds no lock; if
        another thread is telling this job's events already, that one tells these
        too (after its own): receivers never see one job's events out of order,
        nor two at once."""
        while True:
            with self._lock:
                if self._telling or not self._outbox:
                    return
                self._telling = True
                payload = self._outbox.popleft()
            try:
                self.notify(payload)
            finally:
                with self._lock:
                    self._telling = False

    def finish(self, install: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Runs ``install`` and completes the job, unless a stop came first (then
        None, and nothing is installed). ``install`` returns the event's fields,
        published by :meth:`close`."""
        with self._lock:
            if self.stop_event.is_set() or Status.COMPLETE not in MOVES[self._status]:
                return None
            fields = install()
            sources = self.served()
            if sources is not None:
                fields["sources"] = sources
            return self.transition(Status.COMPLETE, **fields)

    def stop(self, reason: str) -> bool:
        """Asks the transfer to stop and wakes it if it is blocked on the network;
        False if the job has already ended (or its install has begun)."""
        with self._lock:
            if self._status in TERMINAL:
                return False
            if self.stop_reason is None:
                self.stop_reason = reason  # the first reason wins: a cancel stays a cancel
            self.stop_event.set()
        self.interrupt()
        return True

    # -- progress --------------------------------------------------------------------------

    def progress_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"downloaded": self.downloaded}
        if self.total:
            fields["total"] = self.total
            fields["progress"] = min(100, self.downloaded * 100 // self.total)
        elif self.total == 0:
            fields["total"] = 0
        return fields

    def tick(self, now: float) -> dict[str, Any] | None:
        """Called by the ticker each interval: samples the byte counter, and returns
        the progress event's fields if bytes arrived since the last one."""
        downloaded = self.downloaded
        self.speed.sample(now, downloaded)
        if self._published is None or downloaded == self._published or self._status not in (
                Status.STARTED, Status.RESUMED, Status.DOWNLOADING):
            return None
        self._published = downloaded
        fields = self.progress_fields()
        speed = self.speed.rate(now, downloaded)
        fields["speed"] = max(0, int(speed))
        if self.total and speed > 0:
            fields["eta_s"] = round(max(0, self.total - downloaded) / speed, 1)
        fields["segments"] = self.segments
        sources = self.served()
        if sources is not None:
            fields["sources"] = sources
        return fields

    def served(self) -> list[dict[str, Any]] | None:
        """What each source served, for a job with mirrors (None without)."""
        return None if self.sources is None else self.sources.summary(self.downloaded)

    def began(self, offset: int, total: int | None) -> None:
        """The origin's answer was accepted: from ``offset`` of ``total`` bytes."""
        super().began(offset, total)
        self.speed.restart(self.clock(), offset)
        self._published = offset
        self.last_error = None  # bytes flow again
        extra = {} if total is None else {"total": total}
        if offset:
            self.transition(Status.RESUMED, offset=offset, **extra)
        else:
            self.transition(Status.STARTED, **extra)

    def verifying(self) -> None:
        self.transition(Status.VERIFYING, quiet=True)
