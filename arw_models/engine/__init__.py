"""One download, attempt by attempt: it never calls the manager.

:meth:`Download.attempt` looks at what is on disk (the ``.part`` and its sidecar),
asks :func:`~arw_models.engine.plan.continuation` what may be kept, requests the
rest (``Range`` + ``If-Range``), checks the answer (:mod:`.fetch`), records the
plan in the sidecar, streams the body while hashing it, and verifies the whole
file. It returns a :class:`Result` (the file's name, digest and size) for the
manager to install, or raises :class:`~arw_models.errors.TransferError` (retryable
or not) or :class:`~arw_models.errors.JobStopped`. Between attempts the
:class:`Download` keeps what the next one can use: the digest of the bytes on disk
and the retry budget; the manager decides when the next attempt runs. Which
source an attempt asks (a mirror, or the origin) is the :class:`~.route.Route`'s
to say: a mirror's failure makes the attempt's error one that moves on at once.

A download whose digest is known (the request's ``sha256``) first asks the
manager's ``adopt`` callback for an installed file with it: when one exists, no
request is made and :meth:`Download.adopted` gives the deduplicated result. A
digest the origin publishes is offered to the same callback once its first
answer has come, before a byte of the body is read. A mirror's never is, nor
does it verify the bytes: a mirror cannot vouch for what it serves (it can only
show, by publishing another digest than the request's, that it serves something
else).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..config import Settings
from ..errors import JobStopped, TransferError
from ..redact import redact_url
from ..store.storage import StateDir, open_part_at, read_part, sanitize_filename, utcnow
from . import digests, fetch, recheck, sources
from .headers import content_coded, filename_from_disposition, strong_etag
from .http import socket_hook
from .plan import Continuation, Plan, Span, continuation, validator_of
from .route import Route
from .segments import PROBE_SECS, FileChanged, RangesRefused, Segments, preallocate
from .transfer import Transfer
from .verify import PrefixHasher

log = logging.getLogger(__name__)

HASH_READ = 4 * 1024 * 1024

# How a single stream's .part is opened for writing at its end (append) or from byte
# 0: the object has write (which may write short), fileno and close, and is a context
# manager. One that also has bypass_page_cache(required=...) is asked to write past
# the page cache, as ARW_DL_DIRECT_IO says (storage.open_part's PartFile has it).
Opener = Callable[[str, bool], BinaryIO]
Limits = Callable[[Transfer, "int | None", int], None]
# Given a SHA-256: puts a link or copy of an installed file with that digest at the
# job's .part (replacing what is there, sidecar included) and returns its size; None,
# touching nothing, when no installed model has it. The manager's, see arw_models.service.dedup.
Adopt = Callable[[str], "int | None"]


@dataclass(frozen=True)
class Result:
    """A verified download, ready to install: its ``.part`` holds ``size`` bytes
    whose SHA-256 is ``digest``; ``name`` is the file name it asks for."""

    name: str
    digest: str
    size: int
    # Where the digest the file was checked against came from: the request's
    # sha256, the origin's published one, or none (computed only).
    sha256_source: str = "computed"
    # The file is another model's, linked (or copied), not transferred.
    deduplicated: bool = False


def backoff_delay(failures: int, base: float, cap: float, uniform: Callable[[float, float], float] = random.uniform,
                  ) -> float:
    """Jittered exponential backoff: a random delay between half and all of
    base * 2**(n-1), capped."""
    ceiling = min(cap, base * (2 ** max(0, failures - 1)))
    return uniform(ceiling / 2, ceiling)


class Download:
    """The transfer of one job, across its attempts."""

    def __init__(self, job: Transfer, settings: Settings, state: StateDir, *,
                 session: Callable[[], Any], opener: Opener, limits: Limits,
                 checkpoint: Callable[[str], None] = lambda point: None,
                 adopt: Adopt | None = None) -> None:
        self.job = job
        self.s = settings
        self.state = state
        self._session = session
        self._open = opener
        self._limits = limits
        self._checkpoint = checkpoint
        self._adopt = adopt
        self._asked_adopt = False
        self.part = state.part_path(job.id)
        self._hasher: Any = None
        self._hashed = 0
        self._filename: str | None = None
        self.failures = 0
        self._reached = 0  # the furthest byte any attempt has reached
        self._plan: Plan | None = None  # the parallel ranges, kept between attempts
        self._no_split = False  # the origin refused a range: one stream from now on
        self._sidecar: dict[str, Any] = {}
        self._published: str | None = None  # the SHA-256 the origin states for the bytes on disk
        self._announced = 0  # the largest size any answer of this job announced
        # Mirrors first, the origin last: the route says which one this attempt asks.
        self.route = Route(job.id, sources.for_job(job.url, job.headers, settings.hf_endpoint, settings.hf_token,
                                                   settings.mirrors), state.part_size(job.id))
        job.sources = self.route

    @property
    def source(self) -> sources.Source:
        return self.route.current

    # -- retries ------------------------------------------------------------------

    def retry_delay(self, err: TransferError) -> float | None:
        """Seconds to wait before the next attempt after ``err``; None when the
        retries are spent. A flaky link that keeps delivering never runs out: only
        bytes beyond the furthest point count, so an origin whose answers make the
        job discard and fetch the same bytes again cannot loop forever. Moving on
        from a mirror to the next source is at once, and the next starts afresh."""
        if err is self.route.moved:
            self.failures = 0
            return 0.0
        downloaded = self.job.downloaded
        if downloaded > self._reached:
            self.failures, self._reached = 1, downloaded
        else:
            self.failures += 1
        if self.failures > self.s.retries:
            if not self.route.exhausted(err):
                return None
            self.failures = 0
            return 0.0
        delay = err.retry_after
        if delay is None:
            delay = backoff_delay(self.failures, self.s.backoff, self.s.backoff_max)
        return min(delay, self.s.backoff_max)

    # -- one attempt ------------------------------------------------------------------

    def attempt(self) -> Result:
        if self.job.sha256 and self._adopt is not None and not self._asked_adopt:
            # The digest asked for is known before any request: an installed model
            # with it makes the transfer needless. Asked once: a copy that failed
            # would fail again on every retry.
            self._asked_adopt = True
            fetch.check_stop(self.job)
            size = self._adopt(self.job.sha256)
            if size is not None:
                return self.adopted(self.job.sha256, "request", size)
        self.route.attempt()
        try:
            session = self._session()
            try:
                with socket_hook(self.job.attach_socket):
                    adopted = self._transfer(session)
                    if adopted is None:
                        self._still_one_version(session)
            finally:
                session.close()
                self.route.settle(self.job.downloaded)
            if adopted is not None:
                return adopted
            self._checkpoint("transferred")
            return self._verify()
        except TransferError as err:
            moved = self.route.failed(err, self._truncate)
            if moved is None:
                raise
            raise moved from None

    def _transfer(self, session: Any) -> Result | None:
        """Fetches what is missing; a Result when an installed file with the digest
        the origin publishes made the rest needless."""
        job, state = self.job, self.state
        fetch.check_stop(job)
        sidecar = state.read_sidecar(job.id)
        plan = continuation(sidecar, state.part_size(job.id), job.url, job.sha256)
        if not plan.resumes and state.part_size(job.id):
            log.info("download %s: starting from byte 0 (%s)", job.id, plan.reason)
            self._truncate()
        if sidecar:
            self._filename = self._filename or sidecar.get("filename")
        if plan.resumes:
            recorded_digest = (sidecar or {}).get("published_sha256")
            self._published = self._published or (recorded_digest if isinstance(recorded_digest, str) else None)
        else:
            self._published = None
        if plan.resumes and sidecar is not None:
            ranges = self._plan or Plan.from_json(sidecar.get("total"), sidecar.get("ranges"))
            if ranges is not None and ranges.segmented and ranges.total:
                # A re-signed url of the same object is the one to ask from now on.
                self._sidecar = {**sidecar, "url": job.url, "sha256": job.sha256}
                self._sidecar.pop("headers", None)
                if job.headers:
                    self._sidecar["headers"] = dict(job.headers)
                self._announced = max(self._announced, ranges.total)
                self._limits(job, ranges.total, ranges.durable)
                job.began(ranges.durable, ranges.total)
                self._segments(ranges, plan.validator)
                return
        headers = {}
        if plan.resumes:
            headers["Range"] = f"bytes={plan.offset}-"
            if plan.validator:
                headers["If-Range"] = plan.validator
        response = fetch.request(session, job, self.s, headers, self.source)
        job.attach_response(response)
        try:
            self._checkpoint("answered")
            fetch.check_stop(job)
            recorded = (sidecar or {}) if plan.resumes else {}
            self.route.check(response, recorded.get("total"))
            answer = fetch.accept(response, job, plan.offset, recorded, self._truncate)
            self._announced = max(self._announced, answer.total or 0)
            self._take_published(response, answer)
            if self._published and not job.sha256 and self._adopt is not None and not self._asked_adopt:
                # Only now is the digest known: the answer's body is left unread.
                self._asked_adopt = True
                size = self._adopt(self._published)
                if size is not None:
                    self._filename = (filename_from_disposition(response.headers.get("Content-Disposition"))
                                      or self._filename)
                    return self.adopted(self._published, "origin", size)
            if answer.whole:
                job.total = job.downloaded = answer.offset
                return  # 416 for a .part that is already whole
            # Before the sidecar is written: a download refused for its size or for the
            # disk leaves no stray sidecar behind (a resumable .part keeps its own).
            self._limits(job, answer.total, answer.offset)
            self._remember(response, answer, plan, sidecar or {})
            job.began(answer.offset, answer.total)
            self._prepare_hash(answer.offset)
            if not self._splits(response, answer):
                self._stream(response, answer.offset, answer.total)
                return
            # One stream for a moment: a fast origin gains nothing from more
            # connections but CPU time, and a slow one gets them all.
            assert answer.total is not None
            started = time.monotonic()
            have = self._stream(response, answer.offset, answer.total,
                                until=lambda n: time.monotonic() - started >= PROBE_SECS)
            rate = (have - answer.offset) / max(1e-6, time.monotonic() - started)
            if have < answer.total and rate >= self.s.split_below:
                self._stream(response, have, answer.total)
            elif have < answer.total:
                ranges = Plan.split(answer.total, have, self.s.segments)
                first = next(s for s in ranges.spans if s.start == have)
                first.active = True
                self._segments(ranges, validator_of(self._sidecar), response, first)
        finally:
            job.attach_response(None)
            response.close()

    def _still_one_version(self, session: Any) -> None:
        """After the last byte: the file must still be the version the bytes on disk
        were fetched under (:mod:`.recheck`), or they may be a mix of two. A digest
        (the request's, or the origin's own) shows a mix by itself."""
        job = self.job
        size = self.state.part_size(job.id) or 0
        if not size and self._announced:
            # Caught between the truncation and the first write of a file being
            # rewritten (cp over it, a shell's >): an empty file is no version of one
            # this job was told has bytes. A file really emptied ends the job when the
            # retries run out; a new POST installs it.
            why = f"it is empty now, after {self._announced} bytes were announced"
        elif job.sha256 or self._published:
            return
        else:
            fetch.check_stop(job)
            why = recheck.changed(session, job, self.s, self.source, self.state.read_sidecar(job.id) or {}, size)
        if why is None:
            return
        log.warning("download %s: the file changed during the download: %s", job.id, why)
        self._truncate()
        raise TransferError("resume-invalid", f"the file changed during the download ({why}); starting again "
                            "from byte 0", retryable=True, url=redact_url(job.url))

    def _take_published(self, response: Any, answer: fetch.Answer) -> None:
        """The SHA-256 the origin publishes (:mod:`arw_models.engine.digests`), checked
        before any byte of the body is read: against the request's, and against
        the one published for the bytes on disk when they are continued."""
        job = self.job
        found = digests.along_chain(response)
        size = digests.linked_size(response)
        if size is not None and answer.total is not None and size != answer.total:
            raise TransferError("size-mismatch", f"the origin states {size} bytes (X-Linked-Size) but serves "
                                f"{answer.total}", expected_bytes=size, received=0, url=redact_url(job.url))
        if size is not None and answer.total is None and not content_coded(response.headers):
            # A body without a length of its own (chunked, or ended by closing the
            # connection) is held to the size the origin states: a cut one is not whole.
            answer.total = size
        if found is None:
            return
        if job.sha256 and found.sha256 != job.sha256:
            # The bytes on disk, if any, may still be right for a request with the right digest.
            raise TransferError("checksum-mismatch", f"the {'mirror' if self.source.mirror else 'origin'} "
                                f"publishes another sha256 ({found.header}) than the request's",
                                expected=job.sha256, actual=found.sha256, published_by=found.header,
                                url=redact_url(job.url))
        if self.source.mirror:
            # A mirror may refuse itself (above), never vouch: its digest neither adopts
            # an installed file nor verifies the bytes. Only the origin's does.
            return
        if answer.offset and self._published and self._published != found.sha256:
            self._truncate()
            raise TransferError("resume-invalid", "the origin now publishes another sha256 for the file: it "
                                "changed; starting again from byte 0", retryable=True, url=redact_url(job.url))
        self._published = found.sha256

    def _stream(self, response: Any, offset: int, total: int | None,
                until: Callable[[int], bool] | None = None) -> int:
        """The body into the ``.part`` from ``offset``, to its end (or until
        ``until`` says so); returns the bytes on disk."""
        job = self.job
        try:
            fh = self._open(self.part, bool(offset))
        except OSError as exc:
            raise fetch.disk_error(exc, offset) from None
        # The default opener's file can write past the page cache; a file from
        # another opener is written as it is.
        bypass = getattr(fh, "bypass_page_cache", None)
        if bypass is not None and self.s.direct_io != "off":
            try:
                bypass(required=self.s.direct_io == "on")
            except OSError as exc:
                fh.close()
                raise fetch.disk_error(exc, offset) from None

        job.segments = 1
        try:
            with fh:
                downloaded = fetch.stream(response, job, self.s, fh, offset, self._hasher.update,
                                          self._record_durable, until)
        finally:
            job.segments = 0
            self._hashed = job.downloaded  # every byte written is hashed, and no other
        fetch.check_stop(job)  # a shut-down socket reads as EOF
        if until is not None and total is not None and downloaded < total:
            return downloaded  # cut short on purpose
        if total is not None and downloaded != total:
            raise TransferError("size-mismatch", f"received {downloaded} bytes, expected {total}",
                                retryable=downloaded < total, keep_part=downloaded < total,
                                received=downloaded, expected_bytes=total, url=redact_url(job.url))
        return downloaded

    # -- parallel ranges -------------------------------------------------------------------

    def _splits(self, response: Any, answer: fetch.Answer) -> bool:
        """Whether the rest of the file is worth fetching in parallel ranges: the
        origin serves ranges (it said so, or it just did), the size is known and
        large enough, and the bytes come as they are (no content coding)."""
        if self.s.segments < 2 or self._no_split or answer.total is None:
            return False
        if answer.total - answer.offset < max(self.s.segment_min_bytes, 1):
            return False
        ranges = response.status_code == 206 or "bytes" in response.headers.get("Accept-Ranges", "").lower()
        return ranges and validator_of(self._sidecar) is not None

    def _segments(self, plan: Plan, validator: str | None, first: Any = None, first_span: Span | None = None) -> None:
        job = self.job
        assert plan.total is not None
        # The ranges go on record before the .part grows to its full size: from then
        # on only they say which bytes are there (its size no longer does).
        self._record_plan(plan)
        try:
            fh = open_part_at(self.part)
        except OSError as exc:
            raise fetch.disk_error(exc, 0) from None
        with fh:
            preallocate(fh, plan.total)
            start = self._hashed if self._hasher is not None and self._hashed <= plan.contiguous() else 0
            hasher = PrefixHasher(fh.fileno(), plan.contiguous, self._hasher if start else None, start)
            self._plan = plan
            transfer = Segments(job, self.s, plan, fh, session=self._session, recorded=self._sidecar,
                                validator=validator, hasher=hasher, durable=self._record_plan,
                                source=self.source, check=self.route.check)
            try:
                transfer.run(first, first_span)
            except RangesRefused:
                hasher.abandon()
                self._fall_back_to_one_stream(fh, plan, hasher)
            except FileChanged:
                hasher.abandon()
                self._truncate()
                raise TransferError("resume-invalid", "the file changed during the download; starting again from "
                                    "byte 0", retryable=True, url=redact_url(job.url)) from None
            except BaseException as exc:
                hasher.abandon()
                self._hasher, self._hashed = hasher.hasher, hasher.hashed
                if isinstance(exc, (JobStopped, TransferError)):
                    self._keep_what_was_written(transfer)
                raise
            self._hasher, self._hashed = hasher.finish(), hasher.hashed
            job.downloaded = plan.durable
        fetch.check_stop(job)

    def _keep_what_was_written(self, transfer: Segments) -> None:
        """A stop or a failure: what every range wrote is fsynced and recorded, so
        a pause or a later attempt fetches none of it again."""
        try:
            transfer.sync()
        except TransferError:
            pass  # the disk refuses even this: the last record stands

    def _fall_back_to_one_stream(self, fh: BinaryIO, plan: Plan, hasher: PrefixHasher) -> None:
        """A range was answered with the whole file: from now on this download is one
        stream. The bytes from 0 up to the first hole stay (their validator still
        vouches for them), the others go."""
        keep = plan.contiguous()
        self.route.cut(self.job.downloaded, keep)
        os.ftruncate(fh.fileno(), keep)
        self._no_split, self._plan = True, None
        self._hasher, self._hashed = hasher.hasher, hasher.hashed
        self._sidecar["ranges"] = Plan.single(plan.total, keep).to_json()
        self._save_sidecar(keep)
        self.job.downloaded = keep
        raise TransferError("resume-invalid", "the origin answered a range with the whole file; going on as one "
                            "stream", retryable=True, retry_after=0, url=redact_url(self.job.url))

    def _record_plan(self, plan: Plan) -> None:
        """The ranges as of the last fsync: what a crash would leave."""
        self._sidecar["ranges"] = plan.to_json()
        self._save_sidecar(plan.durable)

    def _save_sidecar(self, durable: int) -> None:
        """Writes the sidecar (whole, or not at all: the last one stands). A full
        disk is ``disk-full``, as a failed write of the ``.part`` is, which keeps
        the ``.part`` and that last record for a resume."""
        try:
            self.state.write_sidecar(self.job.id, self._sidecar)
        except OSError as exc:
            raise fetch.disk_error(exc, durable) from None

    def _remember(self, response: Any, answer: fetch.Answer, plan: Continuation, previous: dict[str, Any]) -> None:
        """Writes the sidecar: what a later resume must match, and the plan."""
        job = self.job
        if answer.offset:
            # The validators are those of the bytes on disk, set when they began at byte 0.
            etag, modified = previous.get("etag"), previous.get("last_modified")
        else:
            etag = strong_etag(response.headers.get("ETag"))
            modified = response.headers.get("Last-Modified")
        disposition = filename_from_disposition(response.headers.get("Content-Disposition"))
        if disposition:
            self._filename = disposition
        self._sidecar = {
            "id": job.id,
            "url": job.url,
            "etag": etag,
            "last_modified": modified,
            "total": answer.total,
            "filename": self._filename,
            "sha256": job.sha256,
            "provider": job.provider,
            "rate_limit": job.rate_limit,
            # Needed again by a resume after a restart; the sidecar is the owner's alone (0600).
            **({"headers": dict(job.headers)} if job.headers else {}),
            "created_at": previous.get("created_at") or utcnow(),
            "ranges": Plan.single(answer.total, answer.offset).to_json(),
        }
        if self._published:
            self._sidecar["published_sha256"] = self._published
        if self._sidecar != previous:
            self._save_sidecar(answer.offset)

    def _record_durable(self, n: int) -> None:
        """The first ``n`` bytes are fsynced: the sidecar may say so."""
        self._sidecar["ranges"] = Plan.single(self._sidecar["total"], n).to_json()
        self._save_sidecar(n)

    def _truncate(self) -> None:
        self.route.cut(self.job.downloaded, 0)
        self.state.truncate_part(self.job.id)
        self._hasher, self._hashed, self._plan, self._published = None, 0, None, None
        self.job.downloaded = 0

    # -- the digest ----------------------------------------------------------------------

    def _prepare_hash(self, offset: int) -> None:
        if self._hasher is not None and self._hashed == offset:
            return
        self._hasher, self._hashed = hashlib.sha256(), 0
        if offset:
            self._hash_prefix(offset)

    def _hash_prefix(self, length: int) -> None:
        """Hashes the bytes already on disk (a resume), so no second pass is needed."""
        stop = self.job.stop_event
        buf = bytearray(HASH_READ)
        view = memoryview(buf)
        try:
            fh = read_part(self.part)
        except FileNotFoundError:
            raise TransferError("resume-invalid", "the .part disappeared", retryable=True) from None
        with fh:
            while self._hashed < length:
                if stop.is_set():
                    raise JobStopped()
                n = fh.readinto(view[: min(HASH_READ, length - self._hashed)])
                if not n:
                    raise TransferError("resume-invalid", "the .part is shorter than expected", retryable=True)
                self._hasher.update(view[:n])
                self._hashed += n

    def adopted(self, digest: str, source: str, size: int) -> Result:
        """The result of a ``.part`` that the ``adopt`` callback filled with an
        installed file of ``digest`` (``source``: where that digest came from): not
        hashed again, since it was verified when it was installed."""
        job = self.job
        self._hasher, self._hashed, self._plan = None, 0, None  # about bytes no longer there
        # No "started": nothing is transferred (the metrics count no bytes received).
        job.total = job.downloaded = size
        job.verifying()
        return Result(sanitize_filename(self._filename or sources.filename_of(job.url), fallback=job.id), digest,
                      size, sha256_source=source, deduplicated=True)

    def _verify(self) -> Result:
        job, state = self.job, self.state
        job.verifying()
        size = state.part_size(job.id)
        if size is None:
            raise TransferError("resume-invalid", "the partial file disappeared", keep_part=False)
        if self._hasher is None or self._hashed != size:
            self._hasher, self._hashed = hashlib.sha256(), 0
            self._hash_prefix(size)
        fetch.check_stop(job)
        digest = self._hasher.hexdigest()
        if job.total is not None and size != job.total:
            raise TransferError("size-mismatch", f"the file has {size} bytes, expected {job.total}",
                                keep_part=False, received=size, expected_bytes=job.total)
        expected = job.sha256 or self._published
        origin = "request" if job.sha256 else "origin" if self._published else "computed"
        if expected and digest != expected:
            raise TransferError("checksum-mismatch", "checksum mismatch" if job.sha256 else
                                "checksum mismatch: the file is not the one the origin publishes the sha256 of",
                                keep_part=False, expected=expected, actual=digest, sha256_source=origin)
        return Result(sanitize_filename(self._filename or sources.filename_of(job.url), fallback=job.id), digest,
                      size, sha256_source=origin)
