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
digest the origin publishes (:mod:`.published`) is offered to the same callback
once its first answer has come, before a byte of the body is read; when no
installed file has it, the sources that name a file by its digest (peers,
``{sha256}`` mirrors: :func:`~.sources.by_digest`) are asked for the body instead,
and held to that digest.

About 440 lines, on purpose: the attempt loop and everything it decides from the
origin's answers (which version, which size was announced, which digest holds and
who vouched for it) read best together; what writes the body lives apart.

The body is written by :class:`~.single.SingleStream` (one stream) or
:class:`~.parallel.ParallelRanges` (ranges over several connections), the two
parts of this class that live in modules of their own. Which thread runs what is
described once in docs/design.rst ("Concurrency").
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from typing import Any, BinaryIO

from ..config import Settings
from ..errors import JobStopped, TransferError
from ..redact import redact_url
from ..store.sidecar import Sidecar
from ..store.storage import StateDir, read_part, sanitize_filename, utcnow
from . import fetch, recheck, sources
from .headers import filename_from_disposition, strong_etag
from .http import socket_hook
from .parallel import ParallelRanges
from .plan import Continuation, Plan, continuation
from .published import take_published
from .result import Result
from .route import Route
from .single import SingleStream
from .transfer import Transfer

log = logging.getLogger(__name__)

HASH_READ = 4 * 1024 * 1024


class _AskNext(Exception):
    """The origin's first answer published the digest: the route has sources by
    digest now, and the attempt asks the first of them (no retry, no backoff)."""


# How a single stream's .part is opened for writing at its end (append) or from byte
# 0: the object has write (which may write short), fileno and close, and is a context
# manager. One that also has bypass_page_cache(required=...) is asked to write past
# the page cache, as ARW_DL_DIRECT_IO says (storage.open_part's PartFile has it).
Opener = Callable[[str, bool], BinaryIO]
# Given the file's size and the bytes kept: refuses (TransferError) a file over the
# size cap or one the disk cannot hold beside the other downloads (the service's).
Budget = Callable[[Transfer, "int | None", int], None]
# Given a SHA-256: puts a link or copy of an installed file with that digest at the
# job's .part (replacing what is there, sidecar included) and returns its size; None,
# touching nothing, when no installed model has it. The manager's, see arw_models.service.dedup.
Adopt = Callable[[str], "int | None"]


def backoff_delay(failures: int, base: float, cap: float, uniform: Callable[[float, float], float] = random.uniform,
                  ) -> float:
    """Jittered exponential backoff: a random delay between half and all of
    base * 2**(n-1), capped."""
    ceiling = min(cap, base * (2 ** max(0, failures - 1)))
    return uniform(ceiling / 2, ceiling)


class Download(SingleStream, ParallelRanges):
    """The transfer of one job, across its attempts."""

    def __init__(self, job: Transfer, settings: Settings, state: StateDir, *,
                 session: Callable[[], Any], opener: Opener, budget: Budget,
                 checkpoint: Callable[[str], None] = lambda point: None,
                 adopt: Adopt | None = None) -> None:
        self.job = job
        self.s = settings
        self.state = state
        self._session = session
        self._open = opener
        self._budget = budget
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
        # The SHA-256 the origin published on its first answer, which the sources by
        # digest were asked for: it holds their bytes to it, across attempts.
        self._learned: str | None = None
        # The largest size the origin announced for the version it says it serves
        # (its validator): a new version's answer sets it afresh, one of the same
        # version (or of none) only raises it.
        self._announced = 0
        self._announced_by: str | None = None
        self._announced_ever = 0  # the largest size it announced for any version
        # Mirrors first, the origin last: the route says which one this attempt asks.
        self._fleet = sources.fleet_of(settings.mirrors, settings.peers, settings.peers_token, settings.peer_timeout)
        self.route = Route(job.id, sources.for_job(job.url, job.headers, settings.hf_endpoint, settings.hf_token,
                                                   settings.mirrors, self._fleet, job.sha256, job.size),
                           state.part_size(job.id))
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
                    while True:
                        try:
                            adopted = self._transfer(session)
                            break
                        except _AskNext:
                            self.route.attempt()
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
        plan = continuation(Sidecar.from_json(sidecar), state.part_size(job.id), job.url, job.sha256)
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
                self._announce(plan.validator, ranges.total)
                self._budget(job, ranges.total, ranges.durable)
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
            if not self.source.mirror:  # a mirror's size binds no other source (engine.route)
                headers = response.headers
                self._announce(strong_etag(headers.get("ETag")) or headers.get("Last-Modified"), answer.total or 0)
            self._published = take_published(response, answer, job, self.source, self._published, self._truncate)
            if self._published and not job.sha256 and self._adopt is not None and not self._asked_adopt:
                # Only now is the digest known: the answer's body is left unread.
                self._asked_adopt = True
                size = self._adopt(self._published)
                if size is not None:
                    self._filename = (filename_from_disposition(response.headers.get("Content-Disposition"))
                                      or self._filename)
                    return self.adopted(self._published, "origin", size)
            if self._ask_by_digest(answer):
                raise _AskNext()
            if answer.whole:
                job.total = job.downloaded = answer.offset
                return  # 416 for a .part that is already whole
            # Before the sidecar is written: a download refused for its size or for the
            # disk leaves no stray sidecar behind (a resumable .part keeps its own).
            self._budget(job, answer.total, answer.offset)
            self._remember(response, answer, plan, sidecar or {})
            job.began(answer.offset, answer.total)
            self._prepare_hash(answer.offset)
            self._one_or_more(response, answer)
        finally:
            job.attach_response(None)
            response.close()

    def _ask_by_digest(self, answer: fetch.Answer) -> bool:
        """Whether the origin's first answer (of the whole file: nothing on disk is
        kept) published the digest the sources by digest can now be asked for; the
        body is left unread then."""
        if (self._published is None or self.job.sha256 or self.source.mirror or answer.offset or answer.whole
                or self._fleet.empty or self._learned is not None):
            return False
        found = sources.by_digest(self._fleet, self.source.url, self._published, answer.total)
        if not self.route.learn(found):
            return False
        self._learned = self._published
        return True

    def _announce(self, validator: str | None, size: int) -> None:
        """The origin says the file has ``size`` bytes, in an answer that carries
        ``validator`` (or none: a 416 as a rule)."""
        self._announced_ever = max(self._announced_ever, size)
        if validator and validator != self._announced_by:
            self._announced, self._announced_by = size, validator  # another version, with a size of its own
        else:
            self._announced = max(self._announced, size)

    def _still_one_version(self, session: Any) -> None:
        """After the last byte: the file must still be the version the bytes on disk
        were fetched under (:mod:`.recheck`), or they may be a mix of two. A digest
        (the request's, or the origin's own) shows a mix by itself."""
        job = self.job
        size = self.state.part_size(job.id) or 0
        # What this job received (a disk that lost writes leaves the .part shorter
        # still: the verification's size-mismatch says so).
        if job.downloaded < self._announced or (not job.downloaded and self._announced_ever):
            # Caught while the file was being rewritten (cp over it: truncated, then
            # written; a shell's >), or served cut short by a server whose cached
            # metadata still vouches for the whole file (lighttpd's stat cache): bytes
            # fewer than the origin announced for that version are no version of the
            # file. A file that really shrank comes with validators of its own, and its
            # own size (see _announce); an empty one is no version of a file this job
            # was told has bytes, whatever its validators (a truncation changes them).
            now = "it is empty now" if not job.downloaded else f"it has {job.downloaded} bytes now"
            why = f"{now}, after {max(self._announced, self._announced_ever)} bytes were announced"
        elif job.sha256 or self._published or self._learned or not size:
            # A digest shows a mix by itself; an empty .part has no bytes of two
            # versions (and a range of it cannot be asked for: a 416).
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
        if self._published or self._learned:
            self._sidecar["published_sha256"] = self._published or self._learned
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
        expected = job.sha256 or self._published or self._learned
        origin = "request" if job.sha256 else "origin" if expected else "computed"
        if expected and digest != expected:
            raise TransferError("checksum-mismatch", "checksum mismatch" if job.sha256 else
                                "checksum mismatch: the file is not the one the origin publishes the sha256 of",
                                keep_part=False, expected=expected, actual=digest, sha256_source=origin)
        return Result(sanitize_filename(self._filename or sources.filename_of(job.url), fallback=job.id), digest,
                      size, sha256_source=origin)
