"""One HTTP request for the rest of a range, the checks that its answer really
continues the bytes on disk, and the loop that streams its body into the ``.part``.

The hot loop only reads and hands each read on to be written and hashed: no
events, no logging, no clock, no allocation per chunk. A stop is seen between
chunks, and a cancel also shuts the socket down (see :mod:`arw_models.engine.http`), so a
read blocked on a stalled origin returns at once.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any, BinaryIO

import requests
import urllib3.exceptions
from urllib3.exceptions import IncompleteRead

from ..config import Settings
from ..errors import JobStopped, TransferError
from ..redact import redact_text, redact_url
from ..store.partfile import ALIGN
from .failures import failure_of
from .headers import (
    ContentRange,
    content_coded,
    content_length,
    parse_content_range,
    parse_retry_after,
    same_version,
)
from .http import body_reader
from .pipeline import Pipeline
from .sources import Source
from .transfer import Transfer

log = logging.getLogger(__name__)


# A refused connection (nobody listens: a service restarting, a wrong port) or a
# name the resolver says may resolve in a moment is tried again a few times, soon,
# then ends the job: waiting minutes for the ordinary backoff to run out helps
# nobody. The manager holds them to QUICK_RETRIES (see QUICK_CODES).
QUICK_RETRIES = 3
QUICK_RETRY_SECS = 0.25
QUICK_CODES = frozenset({"connection-refused", "dns-error"})


def network_error(exc: BaseException, job: Transfer, where: str,
                  retry_secs: float = QUICK_RETRY_SECS) -> TransferError:
    """The error for what requests or urllib3 raised, with a message written from
    its kind and host (see :func:`arw_models.engine.failures.failure_of`): a name that does
    not resolve is a ``dns-error`` (not retried), a refused connection a
    ``connection-refused`` (retried a few times, ``retry_secs`` apart)."""
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
    failure = failure_of(exc)
    reason = redact_text(failure.reason)
    context = {"url": redact_url(job.url), "received": job.downloaded}
    if failure.kind == "dns":
        return TransferError("dns-error", f"cannot resolve host {failure.host or '?'}: {reason}",
                             retryable=failure.transient, retry_after=retry_secs if failure.transient else None,
                             host=failure.host, **context)
    if failure.kind == "refused":
        return TransferError("connection-refused", f"cannot connect to {failure.address or '?'}: connection refused",
                             retryable=True, retry_after=retry_secs, host=failure.host, **context)
    if failure.kind == "connect-timeout":
        text = f"cannot connect to {failure.address or 'the origin'}: timed out"
    else:
        text = f"{reason} ({failure.address})" if failure.address else reason
    return TransferError("network", f"network error {where}: {text}", retryable=True, **context)


def disk_error(exc: OSError, at: int) -> TransferError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransferError("disk-full", f"the disk is full (at byte {at}); the partial file is kept for a resume",
                             received=at)
    return TransferError("disk-error", f"cannot write the partial file: {exc.strerror or exc}", received=at)


def check_stop(job: Transfer) -> None:
    if job.stop_event.is_set():
        raise JobStopped()


def request(session: requests.Session, job: Transfer, settings: Settings, headers: dict[str, str],
            source: Source) -> Any:
    """Asks ``source`` (with ``headers`` for this request, and the source's own
    headers for its host alone); every failure becomes a :class:`TransferError`."""
    url = redact_url(source.url)
    # The session drops these on a redirect to another host (arw_models.engine.http._Session).
    session.private_headers = frozenset(source.headers)  # type: ignore[attr-defined]
    try:
        response = session.get(source.url, headers={**headers, **source.headers}, stream=True,
                                timeout=source.timeout or (settings.connect_timeout, settings.idle_timeout),
                                allow_redirects=True)
        served = ranges_served(headers, response)
        if served is not None:
            job.accept_ranges = served
        return response
    except requests.exceptions.SSLError as exc:
        check_stop(job)
        failure = failure_of(exc)
        with_host = f" with {failure.address}" if failure.address else ""
        raise TransferError("tls", f"TLS error{with_host}: {redact_text(failure.reason)}", url=url) from None
    except requests.exceptions.TooManyRedirects:
        raise TransferError("too-many-redirects", f"more than {session.max_redirects} redirects", url=url) from None
    except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as exc:
        # The url itself was checked: only a redirect can lead to another scheme.
        raise TransferError("invalid-redirect", f"cannot follow: {redact_text(str(exc))}", url=url) from None
    except requests.exceptions.InvalidURL as exc:
        raise TransferError("invalid-url", f"cannot fetch: {redact_text(str(exc))}", url=url) from None
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        check_stop(job)
        # Soon: no later than the ordinary first retry would be.
        raise network_error(exc, job, "before the response", min(QUICK_RETRY_SECS, settings.backoff)) from None
    except ValueError as exc:
        # A redirect's target that urllib cannot even split (an IPv6 host left open):
        # requests lets its ValueError through, where it would be an internal error.
        raise TransferError("invalid-url", f"cannot fetch: {redact_text(str(exc))}", url=url) from None


def ranges_served(asked: dict[str, str], response: Any) -> bool | None:
    """Whether ``response`` shows that its origin serves byte ranges: a 206 or a 416
    does; a 200 to a ``Range`` it could have served (no ``If-Range``, or one that
    the answer's validator still matches) does not, whatever ``Accept-Ranges``
    claims; otherwise ``Accept-Ranges`` says, if it says anything (None: unknown)."""
    status = response.status_code
    if status in (206, 416):
        return True
    if status == 200 and "Range" in asked:
        if_range = asked.get("If-Range")
        if if_range is None or if_range in (response.headers.get("ETag"), response.headers.get("Last-Modified")):
            return False
    said = {token.strip() for token in response.headers.get("Accept-Ranges", "").lower().split(",")}
    if "bytes" in said:
        return True
    return False if "none" in said else None


class Answer:
    """What an accepted answer means: bytes from ``offset`` of a file of ``total``
    bytes (None: unknown); ``whole`` when a 416 says the ``.part`` is complete."""

    def __init__(self, offset: int, total: int | None, whole: bool = False) -> None:
        self.offset, self.total, self.whole = offset, total, whole


def accept(response: Any, job: Transfer, offset: int, recorded: dict[str, Any],
           truncate: Callable[[], None]) -> Answer:
    """Checks that ``response`` continues the ``offset`` bytes on disk, whose sidecar
    is ``recorded``. An answer that cannot be continued calls ``truncate`` (the bytes
    on disk are of no use with it) and raises a retryable ``resume-invalid``."""
    status = response.status_code
    url = redact_url(job.url)
    expected_total = recorded.get("total")
    if status in (206, 416) and offset:
        _check_version(response, job, offset, recorded, truncate)
    if status == 416 and offset:
        announced = parse_content_range(response.headers.get("Content-Range"))
        origin_total = announced.total if announced else None
        whole = expected_total if expected_total is not None else origin_total
        if whole == offset and (origin_total is None or origin_total == offset):
            return Answer(offset, offset, whole=True)
        if origin_total == offset and expected_total is not None:
            # The origin says its file ends where the .part ends, after announcing a
            # bigger size: its body was short, and fetching it again cannot help.
            raise TransferError("size-mismatch", f"the origin announced {expected_total} bytes but its file has "
                                f"{offset}", keep_part=False, url=url, received=offset,
                                expected_bytes=expected_total)
        truncate()
        raise TransferError("resume-invalid", f"the origin refused the range from byte {offset}"
                            f" (its size: {origin_total}); starting again", retryable=True, url=url)
    if status in (408, 429) or 500 <= status <= 599:
        raise TransferError("http-status", f"the origin answered {status}", retryable=True, url=url,
                            http_status=status, retry_after=parse_retry_after(response.headers.get("Retry-After")))
    if status not in (200, 206):
        raise TransferError("http-status", f"the origin answered {status}", url=url, http_status=status)
    if status == 200:
        if offset:
            # The origin ignored the range, or the file changed (If-Range): start over.
            log.info("download %s: the origin sent the whole file; restarting from byte 0", job.id)
            truncate()
        return Answer(0, file_size(response))
    announced = parse_content_range(response.headers.get("Content-Range"))
    if (
        not offset
        or announced is None
        or announced.start != offset
        or (announced.total is not None and announced.end != announced.total - 1)
        or (expected_total is not None and announced.total is not None and announced.total != expected_total)
    ):
        truncate()
        raise TransferError("resume-invalid",
                            f"the origin sent range {response.headers.get('Content-Range')!r} for a request "
                            f"from byte {offset}; starting again", retryable=True, url=url)
    framing_fault(response, announced, url)
    return Answer(offset, announced.total)


def framing_fault(response: Any, announced: ContentRange, url: str) -> None:
    """Refuses a 206 whose ``Content-Length`` is not the length of its
    ``Content-Range``: one of them is wrong, and which bytes the body holds is then
    anyone's guess. Nothing is read from it; the bytes on disk are not at fault."""
    length = content_length(response.headers)
    if length is None or announced.start is None or announced.end is None or content_coded(response.headers):
        return
    spans = announced.end - announced.start + 1
    if length != spans:
        raise TransferError("size-mismatch", f"the origin's 206 has Content-Length {length} for the {spans} bytes "
                            f"of its Content-Range {response.headers.get('Content-Range')!r}", retryable=True,
                            url=url, expected_bytes=spans, received=0)


def file_size(response: Any) -> int | None:
    """The size of the file an answer is of: a 200's length (unless coded), a 206's
    or 416's Content-Range total; None when it does not say."""
    if response.status_code == 200:
        return None if content_coded(response.headers) else content_length(response.headers)
    announced = parse_content_range(response.headers.get("Content-Range"))
    return announced.total if announced is not None else None


def _check_version(response: Any, job: Transfer, offset: int, recorded: dict[str, Any],
                   truncate: Callable[[], None]) -> None:
    """Refuses an answer of another version of the file than the ``.part``'s: an
    origin that ignores ``If-Range`` answers 206 (or 416) for a file that changed."""
    same = same_version(recorded.get("etag"), recorded.get("last_modified"), response.headers)
    if same:
        return
    if same is None:
        # No validator in the answer: it proves nothing either way. A 416 carries
        # none as a rule; bytes of a 206 are kept only when a sha256 (the request's,
        # or one the origin published for them) will catch a mix.
        if response.status_code == 416 or job.sha256 or recorded.get("published_sha256"):
            return
        why = "without a validator to show they are of the same version"
    else:
        why = "of another version of the file"
    truncate()
    raise TransferError("resume-invalid", f"the origin sent bytes from {offset} {why}; starting again from "
                        "byte 0", retryable=True, url=redact_url(job.url))


def stream(response: Any, job: Transfer, settings: Settings, fh: BinaryIO, offset: int,
           update: Callable[[Any], Any], durable: Callable[[int], None],
           until: Callable[[int], bool] | None = None) -> int:
    """Streams the body into ``fh`` (at ``offset``), hashing with ``update``; calls
    ``durable(n)`` each time the first ``n`` bytes are fsynced. Returns the bytes
    on disk at the end of the body, or as soon as ``until(bytes read so far)``,
    asked after every read, is true (the rest of the body is left unread in
    ``response``); ``job.downloaded`` counts them as they are written.

    This thread only reads, into the buffers of a :class:`~.pipeline.Pipeline`,
    whose threads write and hash each read as it comes (a stall holds back nothing
    received). The buffers line up with the file's blocks (byte ``i`` of a buffer
    is at ``i`` modulo ``ALIGN`` in the file), so that a file bypassing the page
    cache writes them as they are, whatever byte a resume starts from."""
    readinto = body_reader(response)
    stop, max_bytes, bucket = job.stop_event, settings.max_bytes, job.bucket
    received = offset
    size = -(-settings.chunk_bytes // ALIGN) * ALIGN

    def progress(n: int) -> None:
        job.downloaded = n

    with Pipeline(fh, offset, size, update=update, progress=progress, durable=durable,
                  sync_every=settings.fsync_bytes, sync_secs=settings.checkpoint_secs, fail=disk_error,
                  wake=job.interrupt) as pipe:
        buf = pipe.take()
        fill = offset % ALIGN
        while True:
            pipe.check()
            try:
                # Limited, a read takes a slice of the rate at most (ratelimit.Bucket).
                n = readinto(buf[fill:] if not bucket.rate else buf[fill : fill + bucket.read_size(size - fill)])
            except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
                check_stop(job)
                pipe.check()  # a failed write woke this read
                raise network_error(exc, job, f"at byte {received}") from None
            if not n:
                break
            if stop.is_set() or (bucket.rate and not bucket.take(n, stop)):
                raise JobStopped()
            pipe.write(buf, fill, fill + n)
            fill += n
            received += n
            if max_bytes is not None and received > max_bytes:
                raise TransferError("size-limit", f"the file is larger than the limit of {max_bytes} bytes",
                                    keep_part=False, limit=max_bytes)
            if until is not None and until(received - offset):
                break
            if fill == size:
                pipe.give_back(buf)
                buf, fill = pipe.take(), 0
        return pipe.finish()
