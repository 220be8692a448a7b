"""The SHA-256 an origin publishes for the file, checked before any byte of its body
is read.

A digest the origin publishes (:mod:`.digests`) must agree with the request's, and,
when the bytes on disk are continued, with the one published for them; once taken,
it verifies the whole file and is offered to the manager's ``adopt`` callback (an
installed model with it makes the transfer needless). A mirror's digest never is:
a mirror cannot vouch for what it serves (it can only show, by publishing another
digest than the request's, that it serves something else).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import TransferError
from ..redact import redact_url
from . import digests, fetch
from .headers import content_coded
from .sources import Source
from .transfer import Transfer


def take_published(response: Any, answer: fetch.Answer, job: Transfer, source: Source, published: str | None,
                   truncate: Callable[[], None]) -> str | None:
    """The digest to hold the file to from now on (``published``: the one held so
    far, for the bytes on disk); sets ``answer.total`` from ``X-Linked-Size`` for a
    body without a length of its own. Raises when the answer contradicts the request
    or the bytes on disk (then, via ``truncate``, those bytes go)."""
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
        return published
    if job.sha256 and found.sha256 != job.sha256:
        # The bytes on disk, if any, may still be right for a request with the right digest.
        raise TransferError("checksum-mismatch", f"the {'mirror' if source.mirror else 'origin'} "
                            f"publishes another sha256 ({found.header}) than the request's",
                            expected=job.sha256, actual=found.sha256, published_by=found.header,
                            url=redact_url(job.url))
    if source.mirror:
        # A mirror may refuse itself (above), never vouch: its digest neither adopts
        # an installed file nor verifies the bytes. Only the origin's does.
        return published
    if answer.offset and published and published != found.sha256:
        truncate()
        raise TransferError("resume-invalid", "the origin now publishes another sha256 for the file: it "
                            "changed; starting again from byte 0", retryable=True, url=redact_url(job.url))
    return found.sha256
