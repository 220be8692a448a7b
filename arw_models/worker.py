"""One download from start to finish, run on an executor thread.

A job is a loop of attempts. Each attempt looks at what is on disk (``.part`` and
sidecar), asks the origin for the rest (``Range`` + ``If-Range``), checks that the
answer really continues the bytes it has (status, ``Content-Range``, total), and
streams the body into the ``.part`` while hashing it. Transient failures end an
attempt with a retryable :class:`TransferError`; the loop waits (capped exponential
backoff with jitter, or ``Retry-After``) and tries again from the bytes on disk.
When the body is whole, the file is verified, fsynced and renamed into place, and
the registry gains its entry; only then is the job ``complete``.

The stop event is checked between chunks; a cancel also shuts the socket down
(see :mod:`arw_models.transfer`), so a read blocked on a stalled origin returns
at once.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import shutil
import time
from typing import TYPE_CHECKING, Any, BinaryIO

import requests
import urllib3.exceptions
from urllib3.exceptions import IncompleteRead

from . import storage
from .headers import (
    content_length,
    filename_from_disposition,
    parse_content_range,
    parse_retry_after,
    redact_text,
    redact_url,
    same_version,
    strong_etag,
    url_filename,
)
from .http import socket_hook
from .storage import read_part, sanitize_filename, utcnow

if TYPE_CHECKING:
    from .downloads import DownloadJob, DownloadManager

log = logging.getLogger(__name__)

HASH_READ = 4 * 1024 * 1024


class JobStopped(Exception):
    """The job was canceled or the service is shutting down."""


class TransferError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        keep_part: bool = True,
        retry_after: float | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.keep_part = keep_part
        self.retry_after = retry_after
        self.context = context


def open_part(path: str, append: bool) -> BinaryIO:
    """Opens a ``.part`` for writing (see :func:`arw_models.storage.open_part`);
    a seam for tests of disk errors."""
    return storage.open_part(path, append)


def disk_free(path: str) -> int:
    return shutil.disk_usage(path).free


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff: a random delay up to base * 2**(n-1), capped."""
    ceiling = min(cap, base * (2 ** max(0, failures - 1)))
    return random.uniform(ceiling / 2, ceiling)


def _network_error(exc: BaseException, job: DownloadJob, where: str) -> TransferError:
    short = isinstance(exc, IncompleteRead) or any(isinstance(a, IncompleteRead) for a in exc.args)
    if short:
        return TransferError(
            "size-mismatch",
            f"the origin closed the connection early {where} "
            f"({job.downloaded} of {job.total if job.total is not None else '?'} bytes)",
            retryable=True,
            url=redact_url(job.url),
            received=job.downloaded,
            expected_bytes=job.total,
        )
    return TransferError(
        "network",
        f"network error {where}: {exc.__class__.__name__}: {redact_text(str(exc))}",
        retryable=True,
        url=redact_url(job.url),
        received=job.downloaded,
    )


class Worker:
    """Runs one job; owns its ``.part`` while it runs."""

    def __init__(self, manager: DownloadManager, job: DownloadJob) -> None:
        self.m = manager
        self.s = manager.settings
        self.state = manager.state
        self.job = job
        self.part = self.state.part_path(job.id)
        self._hasher: Any = None
        self._hashed = 0
        self._filename: str | None = None

    # -- the retry loop ---------------------------------------------------------

    def run(self) -> None:
        job = self.job
        failures = 0
        reached = job.downloaded  # the furthest byte any attempt has reached
        session = self.m.new_session()
        try:
            with socket_hook(job.attach_socket):
                while True:
                    self._check_stop()
                    try:
                        self._attempt(session)
                        break
                    except TransferError as err:
                        if not err.retryable:
                            raise
                        self._check_stop()
                        # A flaky link that keeps delivering never runs out of retries. Only
                        # bytes beyond the furthest point count: an origin whose answers make
                        # the worker discard and fetch the same bytes again (a bad 206, a 416,
                        # a body cut at the same place) must not loop forever.
                        if job.downloaded > reached:
                            failures, reached = 1, job.downloaded
                        else:
                            failures += 1
                        if failures > self.s.retries:
                            raise
                        delay = err.retry_after
                        if delay is None:
                            delay = backoff_delay(failures, self.s.backoff, self.s.backoff_max)
                        delay = min(delay, self.s.backoff_max)
                        job.retries += 1
                        log.info("download %s: %s; retry %d in %.2fs", job.id, err.message, failures, delay)
                        self.m.emit(job, "retrying", attempt=failures, delay_ms=int(delay * 1000),
                                    code=err.code, error=err.message, downloaded=job.downloaded)
                        if job.stop_event.wait(delay):
                            raise JobStopped()
        finally:
            session.close()
        self._finalize()

    def _check_stop(self) -> None:
        if self.job.stop_event.is_set():
            raise JobStopped()

    # -- one attempt ------------------------------------------------------------

    def _attempt(self, session: requests.Session) -> None:
        job, state = self.job, self.state
        sidecar = state.read_sidecar(job.id)
        offset = state.part_size(job.id) or 0
        if offset and (sidecar is None or sidecar.get("url") != job.url):
            # Bytes of another url, or of an unknown origin: never glue onto them.
            state.remove_partial(job.id)
            sidecar, offset = None, 0
        validator = None
        if sidecar:
            validator = strong_etag(sidecar.get("etag")) or sidecar.get("last_modified")
            self._filename = self._filename or sidecar.get("filename")
        if offset and not validator and not job.sha256:
            # Without a validator or a digest a changed origin file would go unnoticed.
            self._truncate()
            offset = 0
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if validator:
                headers["If-Range"] = validator

        try:
            response = session.get(
                job.url,
                headers=headers,
                stream=True,
                timeout=(self.s.connect_timeout, self.s.idle_timeout),
                allow_redirects=True,
            )
        except requests.exceptions.SSLError as exc:
            self._check_stop()
            raise TransferError("tls", f"TLS error: {redact_text(str(exc))}", url=redact_url(job.url)) from None
        except requests.exceptions.TooManyRedirects:
            raise TransferError("too-many-redirects", f"more than {session.max_redirects} redirects",
                                url=redact_url(job.url)) from None
        except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as exc:
            # The url itself was checked: only a redirect can lead to another scheme.
            raise TransferError("invalid-redirect", f"cannot follow: {redact_text(str(exc))}",
                                url=redact_url(job.url)) from None
        except requests.exceptions.InvalidURL as exc:
            raise TransferError("invalid-url", f"cannot fetch: {redact_text(str(exc))}", url=redact_url(job.url)) from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._check_stop()
            raise _network_error(exc, job, "before the response") from None
        job.attach_response(response)
        try:
            self._check_stop()
            offset, total = self._accept(response, offset, sidecar or {})
            if offset is None:
                return  # 416 for a .part that is already whole
            # Before the sidecar is written: a download refused for its size or for the
            # disk leaves no stray sidecar behind (a resumable .part keeps its own).
            self.m.check_limits(job, total, offset)
            self._remember(response, total)
            job.total = total
            job.offset = offset
            job.downloaded = offset
            if offset:
                self.m.emit(job, "resumed", offset=offset, **({"total": total} if total is not None else {}))
            else:
                self.m.emit(job, "started", **({"total": total} if total is not None else {}))
            self._prepare_hash(offset)
            self._stream(response, offset, total)
        finally:
            job.attach_response(None)
            response.close()

    def _accept(self, response: requests.Response, offset: int, recorded: dict[str, Any]) -> tuple[int | None, int | None]:
        """Checks that the answer continues the bytes on disk (``recorded``: their
        sidecar); returns (offset, total)."""
        job, status = self.job, response.status_code
        url = redact_url(job.url)
        expected_total = recorded.get("total")
        if status in (206, 416) and offset:
            self._check_version(response, offset, recorded)
        if status == 416 and offset:
            announced = parse_content_range(response.headers.get("Content-Range"))
            origin_total = announced.total if announced else None
            whole = expected_total if expected_total is not None else origin_total
            if whole == offset and (origin_total is None or origin_total == offset):
                job.total = job.downloaded = offset
                return None, offset
            if origin_total == offset and expected_total is not None:
                # The origin says its file ends where the .part ends, after announcing a
                # bigger size: its body was short, and fetching it again cannot help.
                raise TransferError("size-mismatch", f"the origin announced {expected_total} bytes but its file has "
                                    f"{offset}", keep_part=False, url=url, received=offset,
                                    expected_bytes=expected_total)
            self._truncate()
            raise TransferError("resume-invalid", f"the origin refused the range from byte {offset}"
                                f" (its size: {origin_total}); starting again", retryable=True, url=url)
        if status in (408, 429) or 500 <= status <= 599:
            raise TransferError("http-status", f"the origin answered {status}", retryable=True, url=url,
                                http_status=status,
                                retry_after=parse_retry_after(response.headers.get("Retry-After")))
        if status not in (200, 206):
            raise TransferError("http-status", f"the origin answered {status}", url=url, http_status=status)
        if status == 200:
            if offset:
                # The origin ignored the range, or the file changed (If-Range): start over.
                log.info("download %s: origin sent the whole file; restarting from 0", job.id)
                self._truncate()
            encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
            return 0, None if encoded else content_length(response.headers)
        announced = parse_content_range(response.headers.get("Content-Range"))
        if (
            not offset
            or announced is None
            or announced.start != offset
            or (announced.total is not None and announced.end != announced.total - 1)
            or (expected_total is not None and announced.total is not None and announced.total != expected_total)
        ):
            self._truncate()
            raise TransferError("resume-invalid",
                                f"the origin sent range {response.headers.get('Content-Range')!r} for a request "
                                f"from byte {offset}; starting again", retryable=True, url=url)
        return offset, announced.total

    def _check_version(self, response: requests.Response, offset: int, recorded: dict[str, Any]) -> None:
        """Refuses an answer of another version of the file than the ``.part``'s: an
        origin that ignores ``If-Range`` answers 206 (or 416) for a file that changed."""
        same = same_version(recorded.get("etag"), recorded.get("last_modified"), response.headers)
        if same:
            return
        if same is None:
            # No validator in the answer: it proves nothing either way. A 416 carries
            # none as a rule; bytes of a 206 are kept only when a sha256 will catch a mix.
            if response.status_code == 416 or self.job.sha256:
                return
            why = "without a validator to show they are of the same version"
        else:
            why = "of another version of the file"
        self._truncate()
        raise TransferError("resume-invalid", f"the origin sent bytes from {offset} {why}; starting again from "
                            "byte 0", retryable=True, url=redact_url(self.job.url))

    def _remember(self, response: requests.Response, total: int | None) -> None:
        """Writes the sidecar: what a later resume must match."""
        job = self.job
        previous = self.state.read_sidecar(job.id) or {}
        if response.status_code == 206:
            # The validators are those of the bytes on disk, set when they began at byte 0.
            etag, modified = previous.get("etag"), previous.get("last_modified")
        else:
            etag = strong_etag(response.headers.get("ETag"))
            modified = response.headers.get("Last-Modified")
        disposition = filename_from_disposition(response.headers.get("Content-Disposition"))
        if disposition:
            self._filename = disposition
        sidecar = {
            "id": job.id,
            "url": job.url,
            "etag": etag,
            "last_modified": modified,
            "total": total,
            "filename": self._filename,
            "sha256": job.sha256,
            "provider": job.provider,
            "created_at": previous.get("created_at") or utcnow(),
        }
        if sidecar != previous:
            self.state.write_sidecar(job.id, sidecar)

    def _truncate(self) -> None:
        self.state.truncate_part(self.job.id)
        self._hasher, self._hashed = None, 0
        self.job.downloaded = 0

    # -- hashing ----------------------------------------------------------------

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

    # -- the hot loop -----------------------------------------------------------

    def _stream(self, response: requests.Response, offset: int, total: int | None) -> None:
        job, s = self.job, self.s
        raw = response.raw
        read = getattr(raw, "read1", raw.read)
        chunk, stop, update = s.chunk_bytes, job.stop_event, self._hasher.update
        max_bytes, fsync_every, interval = s.max_bytes, s.fsync_bytes, s.progress_interval
        monotonic = time.monotonic
        downloaded = offset
        unsynced = 0
        next_progress = monotonic() + interval
        try:
            fh = open_part(self.part, append=bool(offset))
        except OSError as exc:
            raise self._disk_error(exc, downloaded) from None
        with fh:
            write = fh.write
            while True:
                try:
                    buf = read(chunk, decode_content=False)
                except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
                    self._check_stop()
                    raise _network_error(exc, job, f"at byte {downloaded}") from None
                if not buf:
                    break
                if stop.is_set():
                    raise JobStopped()
                try:
                    written = write(buf)
                    while written < len(buf):  # a short write: the disk is filling up
                        written += write(memoryview(buf)[written:])
                except OSError as exc:
                    raise self._disk_error(exc, downloaded) from None
                update(buf)
                downloaded += len(buf)
                job.downloaded = self._hashed = downloaded
                if max_bytes is not None and downloaded > max_bytes:
                    raise TransferError("size-limit", f"the file is larger than the limit of {max_bytes} bytes",
                                        keep_part=False, limit=max_bytes)
                unsynced += len(buf)
                if unsynced >= fsync_every:
                    self._sync(fh, downloaded)
                    unsynced = 0
                now = monotonic()
                if now >= next_progress:
                    next_progress = now + interval
                    self.m.progress(job)
            self._sync(fh, downloaded)
        self._check_stop()  # a shut-down socket reads as EOF
        if total is not None and downloaded != total:
            raise TransferError("size-mismatch", f"received {downloaded} bytes, expected {total}",
                                retryable=downloaded < total, keep_part=downloaded < total,
                                received=downloaded, expected_bytes=total, url=redact_url(job.url))

    def _sync(self, fh: BinaryIO, at: int) -> None:
        try:
            os.fsync(fh.fileno())
        except OSError as exc:
            raise self._disk_error(exc, at) from None

    def _disk_error(self, exc: OSError, at: int) -> TransferError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return TransferError("disk-full", f"the disk is full (at byte {at}); the partial file is kept for a resume",
                                 received=at)
        return TransferError("disk-error", f"cannot write the partial file: {exc.strerror or exc}", received=at)

    # -- the end ----------------------------------------------------------------

    def _finalize(self) -> None:
        job, state = self.job, self.state
        job.status = "verifying"
        size = state.part_size(job.id)
        if size is None:
            raise TransferError("resume-invalid", "the partial file disappeared", keep_part=False)
        if self._hasher is None or self._hashed != size:
            self._hasher, self._hashed = hashlib.sha256(), 0
            self._hash_prefix(size)
        self._check_stop()
        digest = self._hasher.hexdigest()
        if job.total is not None and size != job.total:
            raise TransferError("size-mismatch", f"the file has {size} bytes, expected {job.total}",
                                keep_part=False, received=size, expected_bytes=job.total)
        if job.sha256 and digest != job.sha256:
            raise TransferError("checksum-mismatch", "checksum mismatch", keep_part=False,
                                expected=job.sha256, actual=digest)
        name = sanitize_filename(self._filename or url_filename(job.url), fallback=job.id)
        self.m.install(job, name, digest, size)
