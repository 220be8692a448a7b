"""Parallel ranges of one download.

Design: the plan's ranges are fetched by up to ``ARW_DL_SEGMENTS`` connections,
each on its own thread with its own session, each writing at its offset
(``os.pwrite``) into one ``.part`` preallocated to the file's size. A connection
that finishes its range claims another, or half of the largest one still running
(:meth:`~arw_models.engine.plan.Plan.claim`), so a slow connection does not hold
the tail. Every answer must be a ``206`` for exactly the range asked, of the
version the plan was made for (its validators are checked, whatever ``If-Range``
did); a ``200`` means ranges are not served after all (:class:`RangesRefused`: the
download goes on as one stream), another version means the file changed (the
bytes on disk are dropped). A range whose connection fails is retried on its own
a few times, and then the attempt ends with that error, keeping what every range
has fetched for the next one. The job's stop wakes every connection. A connection
asks for its next range on the same kept-alive connection when it read the last one
to its end (:func:`~.http.close_response`).

Checkpoints: a thread of the download's own fsyncs the ``.part`` and records each
range's progress in the sidecar every ``ARW_DL_CHECKPOINT_SECS``, or sooner once
``ARW_DL_FSYNC_BYTES`` were written since the last time, so a crash resumes every
range from at most one interval back; no connection waits for an fsync to read on.
Between two fsyncs it starts the writeback of every ``WRITEBACK_BYTES`` written
(``sync_file_range``, not waited for), so that the fsync the end of the download
waits for finds little left to write. The connections only count what they write,
and wake it when the bytes are due.
The end of the ranges, a stop or a failure records everything written.

It is one module of some 400 lines on purpose: the connections, the checkpoint
thread and the cut-off of a range taken over work under one lock on one plan and
its counters; split apart, each part would reach into the others' state.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import requests
import urllib3.exceptions

from ..config import Settings
from ..errors import JobStopped, TransferError
from ..redact import redact_url
from ..store.partfile import start_writeback
from . import fetch
from .headers import parse_content_range, same_version
from .http import body_reader, close_response, socket_hook
from .plan import Plan, Span
from .sources import Source
from .transfer import Transfer
from .verify import PrefixHasher

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# How long a connection fetches a range before its pace counts (Plan.claim).
RATE_SECS = 0.2
# Written bytes after which the checkpoint thread starts their writeback, so that an
# fsync (a checkpoint's, the last one's) finds little left to write.
WRITEBACK_BYTES = 8 * MiB


class RangesRefused(Exception):
    """A range request was answered with the whole file: one stream from byte 0."""


class FileChanged(Exception):
    """A range came from another version of the file than the plan's."""


class _Aborted(Exception):
    """Another connection of the download failed: this one ends too."""


class Segments:
    def __init__(self, job: Transfer, settings: Settings, plan: Plan, fh: BinaryIO, *,
                 session: Callable[[], Any], recorded: dict[str, Any], validator: str | None,
                 hasher: PrefixHasher, durable: Callable[[Plan], None], source: Source,
                 check: Callable[[Any, int | None], None] = lambda response, total: None) -> None:
        self.job = job
        self.source = source
        self._check = check  # refuses an answer of the source before it is read (engine.route)
        self.s = settings
        self.plan = plan
        self.fd = fh.fileno()
        self._session = session
        self._recorded = recorded
        self._validator = validator
        self._hasher = hasher
        self._durable = durable
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._unsynced = 0
        self._unflushed = 0  # written since the checkpoint thread last started a writeback
        self._wake_checkpoint = threading.Event()  # the bytes are due, or the connections are done
        self._done = False
        self._abort = threading.Event()
        self._errors: list[BaseException] = []
        self._connections = 0
        # A range is split in two (at its connection's pace, Plan.claim) when the tail
        # taken is at least this, or when that ends the download sooner than a new
        # request costs; smaller, a new request is not worth it.
        self.least = max(4 * MiB, 2 * settings.chunk_bytes)
        # Per range being fetched (by id): when its connection began, the bytes it
        # had then, and the answer it reads (a range taken over whole is cut off).
        self._began: dict[int, tuple[float, int]] = {}
        self._reading: dict[int, Any] = {}
        self._paces: dict[int, float] = {}  # per connection (thread): its pace on its last range

    # -- the connections ----------------------------------------------------------------

    def run(self, first: Any = None, first_span: Span | None = None) -> None:
        """Fetches every range; ``first``, an answer already accepted for
        ``first_span``, is read on one of the connections."""
        count = max(1, min(self.s.segments, len([s for s in self.plan.spans if s.remaining])))
        threads = []
        for n in range(count):
            args = (first, first_span) if n == 0 and first is not None else ()
            thread = threading.Thread(target=self._connection, args=args, daemon=True,
                                      name=f"arw-segment-{self.job.id}-{n}")
            threads.append(thread)
            thread.start()
        checkpoints = threading.Thread(target=self._checkpoints, daemon=True,
                                       name=f"arw-checkpoint-{self.job.id}")
        checkpoints.start()
        try:
            for thread in threads:
                thread.join()
        finally:
            self._done = True
            self._wake_checkpoint.set()
            checkpoints.join()
        if self._errors:
            # A stop first (it explains the others), then what says the most.
            for kind in (JobStopped, FileChanged, RangesRefused):
                for err in self._errors:
                    if isinstance(err, kind):
                        raise err
            raise self._errors[0]
        self.sync()

    def _connection(self, response: Any = None, span: Span | None = None) -> None:
        session = self._session()
        failures = 0
        with self._lock:
            self._connections += 1
            self.job.segments = self._connections
        try:
            with socket_hook(self.job.attach_socket):
                rate: float | None = None  # of this connection, on its last range
                while not self._abort.is_set():
                    if span is None:
                        with self._lock:
                            span, victim = self._claim(rate)
                        if victim is not None:
                            self._cut_off(victim)
                        if span is None:
                            return
                    before = span.done
                    try:
                        self._fetch(session, span, response)
                        failures = 0
                    except TransferError as err:
                        if self._abort.is_set():
                            raise _Aborted() from None
                        with self._lock:
                            taken = span.remaining == 0  # taken over whole by another connection: done
                        if not taken:
                            # A mirror's range is not asked again: the next source takes it over.
                            if not err.retryable or self.source.mirror:
                                raise
                            failures = 0 if span.done > before else failures + 1
                            if failures > self.s.retries:
                                raise
                            log.info("download %s: range from %d: %s; trying it again", self.job.id,
                                     span.position, err.message)
                            if self.job.stop_event.wait(min(self.s.backoff * failures, self.s.backoff_max)):
                                raise JobStopped() from None
                            response = None
                            continue  # the same range, from where it got to
                    finally:
                        response = None
                    with self._lock:
                        rate = self._pace(span, rate)
                        if rate is not None:
                            self._paces[threading.get_ident()] = rate
                        span.active = False
                        self._began.pop(id(span), None)
                    span = None
        except _Aborted:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to run(), in the job's thread
            self._fail(exc)
        finally:
            with self._lock:
                if span is not None:
                    span.active, span.writing = False, 0
                    self._began.pop(id(span), None)
                self._connections -= 1
                self.job.segments = self._connections
            session.close()

    def _claim(self, rate: float | None) -> tuple[Span | None, Span | None]:
        """(Under the lock.) A range for a free connection whose last range came at
        ``rate``, and the range it was taken from when nothing of that one is left
        to its own connection (which is then cut off)."""
        paces = sorted(self._paces.values())
        ranges = len(self.plan.spans)
        span = self.plan.claim(self.least, self._rate, rate, paces[len(paces) // 2] if paces else None)
        if span is None or span.start == 0 or len(self.plan.spans) == ranges:
            return span, None  # (a range nobody fetched: none was taken from, whatever ends where it begins)
        victim = next((s for s in self.plan.spans if s.end == span.start and s is not span and s.active), None)
        if victim is not None and victim.remaining == 0 and not victim.writing:
            return span, victim
        return span, None

    def _rate(self, span: Span) -> float | None:
        """(Under the lock.) Bytes per second of the connection fetching ``span``,
        since it began; None before it has had a moment to show."""
        began = self._began.get(id(span))
        if began is None:
            return None
        secs = time.monotonic() - began[0]
        return (span.done - began[1]) / secs if secs >= RATE_SECS else None

    def _pace(self, span: Span, before: float | None) -> float | None:
        """(Under the lock.) The pace of a connection that has just fetched
        ``span``: over that range, unless it was too short to say more than
        ``before`` (its pace on the ranges before)."""
        began = self._began[id(span)]  # set by _fetch before its first request for the range
        secs = time.monotonic() - began[0]
        if secs <= 0 or (secs < RATE_SECS and before is not None):
            return before
        return (span.done - began[1]) / secs

    def _cut_off(self, victim: Span) -> None:
        """Ends the read of a connection whose range was taken over whole: its
        bytes in flight are not wanted, and a stalled one would wait for its
        timeout. (A read of an answer closed meanwhile is not affected.)"""
        with self._lock:
            response = self._reading.get(id(victim))
        if response is not None:
            try:
                response.raw.shutdown()
            except (AttributeError, ValueError, RuntimeError, OSError):
                pass

    def _fail(self, exc: BaseException) -> None:
        self._errors.append(exc)
        self._abort.set()
        self.job.interrupt()  # wakes the connections

    def _checkpoints(self) -> None:
        """The checkpoint thread: makes what was written durable every interval,
        or as soon as a connection says enough bytes are due."""
        wake, interval = self._wake_checkpoint, self.s.checkpoint_secs
        sync_at = time.monotonic() + interval
        while True:
            wake.wait(max(0.0, sync_at - time.monotonic()))
            wake.clear()
            if self._done or self._abort.is_set():
                return  # run() or the failure makes the last record
            now = time.monotonic()
            if self._unsynced >= self.s.fsync_bytes or (now >= sync_at and self._unsynced):
                try:
                    self.sync()
                except BaseException as exc:  # noqa: BLE001 - handed to run(), in the job's thread
                    self._fail(exc)
                    return
                sync_at = time.monotonic() + interval
            elif self._unflushed >= WRITEBACK_BYTES:
                with self._lock:
                    self._unflushed = 0
                start_writeback(self.fd)
            if now >= sync_at:
                sync_at = now + interval

    def _fetch(self, session: Any, span: Span, response: Any) -> None:
        job = self.job
        assert span.end is not None
        if response is None:
            headers = {"Range": f"bytes={span.position}-{span.end - 1}"}
            if self._validator:
                headers["If-Range"] = self._validator
            with self._lock:
                self._began.setdefault(id(span), (time.monotonic(), span.done))
            response = fetch.request(session, job, self.s, headers, self.source)
            job.attach_response(response)
            try:
                self._check(response, self.plan.total)
                self._accept(response, span)
                self._read(response, span)
            finally:
                job.attach_response(None)
                close_response(response)  # kept alive for the next range when read to its end
        else:
            with self._lock:
                self._began.setdefault(id(span), (time.monotonic(), span.done))
            # The first answer, accepted already, is of the whole rest of the file: once
            # its range is read, the origin need not go on sending into the socket.
            try:
                self._read(response, span)
            finally:
                response.close()  # (its caller closes it too, whatever happened here)

    def _read(self, response: Any, span: Span) -> None:
        with self._lock:
            self._reading[id(span)] = response
        try:
            self._stream(response, span)
        finally:
            with self._lock:
                self._reading.pop(id(span), None)

    def _accept(self, response: Any, span: Span) -> None:
        url = redact_url(self.job.url)
        status = response.status_code
        fetch.check_stop(self.job)
        if status == 200:
            raise RangesRefused()
        if status in (408, 429) or 500 <= status <= 599:
            raise TransferError("http-status", f"the origin answered {status}", retryable=True, url=url,
                                http_status=status)
        if status != 206:
            raise TransferError("http-status", f"the origin answered {status}", url=url, http_status=status)
        if same_version(self._recorded.get("etag"), self._recorded.get("last_modified"), response.headers) is False:
            raise FileChanged()
        announced = parse_content_range(response.headers.get("Content-Range"))
        if announced is None or announced.start != span.position or announced.total != self.plan.total:
            raise TransferError("resume-invalid", f"the origin sent range {response.headers.get('Content-Range')!r} "
                                f"for a request from byte {span.position}", retryable=True, url=url)
        fetch.framing_fault(response, announced, url)

    def _stream(self, response: Any, span: Span) -> None:
        job, fd, lock = self.job, self.fd, self._lock
        # Straight from the socket into one buffer, reused for every read of the range.
        readinto = body_reader(response)
        chunk, abort, stop, bucket = self.s.chunk_bytes, self._abort, job.stop_event, job.bucket
        view = memoryview(bytearray(chunk))
        fsync_bytes, wake = self.s.fsync_bytes, self._wake_checkpoint
        assert span.end is not None
        while True:
            with lock:
                want = span.end - span.position  # a steal may have shortened the range
            if want <= 0:
                return
            try:
                got = readinto(view[: min(bucket.read_size(chunk), want)])
            except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
                fetch.check_stop(job)
                if abort.is_set():
                    raise _Aborted() from None
                raise fetch.network_error(exc, job, f"at byte {span.position}") from None
            if stop.is_set() or (got and bucket.rate and not bucket.take(got, stop)):
                raise JobStopped()
            if abort.is_set():
                raise _Aborted()
            if not got:
                fetch.check_stop(job)  # a shut-down socket reads as EOF
                if abort.is_set():
                    raise _Aborted()
                raise TransferError("size-mismatch", f"the origin closed the range early at byte {span.position}",
                                    retryable=True, url=redact_url(job.url), received=span.position)
            with lock:
                n = min(got, span.end - span.position)
                at = span.position
                span.writing = n  # no split may fall among these bytes (Plan.claim)
            try:
                written = os.pwrite(fd, view[:n], at)
                while written < n:  # a short write: the disk is filling up
                    written += os.pwrite(fd, view[written:n], at + written)
            except OSError as exc:
                raise fetch.disk_error(exc, at) from None
            with lock:
                span.done += n
                span.writing = 0
                self._unsynced += n
                self._unflushed += n
                job.downloaded = self.plan.durable
                due = self._unsynced >= fsync_bytes or self._unflushed >= WRITEBACK_BYTES
            if at <= self._hasher.hashed:
                self._hasher.poke()
            if due and not wake.is_set():
                wake.set()  # the checkpoint thread fsyncs; this connection reads on

    def sync(self) -> None:
        """fsyncs the ``.part``; the ranges as they were before it are durable, and
        recorded (``durable``). Raises a ``disk-full`` or ``disk-error``
        :class:`TransferError` when either fails."""
        with self._sync_lock:
            with self._lock:
                snapshot = Plan(self.plan.total, [Span(s.start, s.end, s.done) for s in self.plan.spans])
                self._unsynced = self._unflushed = 0
            try:
                os.fsync(self.fd)
            except OSError as exc:
                raise fetch.disk_error(exc, snapshot.durable) from None
            self._durable(snapshot)


def preallocate(fh: BinaryIO, size: int) -> None:
    """Reserves the whole file (so a full disk shows at once), or makes it sparse
    where the file system cannot."""
    fd = fh.fileno()
    if os.fstat(fd).st_size >= size:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise fetch.disk_error(exc, 0) from None
        os.ftruncate(fd, size)
