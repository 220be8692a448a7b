"""Is the file still the version whose bytes are on disk? Asked after the last byte.

Why after: a static file server reads a file as it sends it, and sends its
validators (``ETag``, ``Last-Modified``) first. A file rewritten in place while a
response is in flight (``cp`` over it, ``dd conv=notrunc``) goes on arriving under
the validators of the version it began with: the bytes after the rewrite are the
new version's, and no answer already received can tell. nginx, Apache and lighttpd
all do this (see ``tests/test_rewrite_in_place.py``). Only an answer that begins
after the last byte was received can: if the file still has the validators and the
size the bytes were fetched under, no rewrite happened in between (within what the
validators can see: an ``ETag`` or date that does not change, a rewrite of the same
size within the same second, is beyond them).

:func:`changed` asks the source for one byte, conditionally (``If-Match`` with a
strong ETag, else ``If-Unmodified-Since``), and compares the answer's own
validators and size too, for servers that ignore the condition.
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import Settings
from ..errors import TransferError
from ..redact import redact_url
from . import fetch
from .headers import same_version, strong_etag
from .sources import Source
from .transfer import Transfer

log = logging.getLogger(__name__)


def changed(session: Any, job: Transfer, settings: Settings, source: Source, recorded: dict[str, Any],
            size: int) -> str | None:
    """Why the file at ``source`` is no longer the version the ``.part`` (``size``
    bytes, fetched under the validators ``recorded`` in its sidecar) holds; None
    when it still is, or when nothing recorded could show it. Raises a retryable
    :class:`~arw_models.errors.TransferError` when the source cannot be asked now."""
    etag = strong_etag(recorded.get("etag"))
    modified = recorded.get("last_modified") if isinstance(recorded.get("last_modified"), str) else None
    if not etag and not modified:
        return None  # no validator: the size alone shows nothing about a rewrite in place
    headers = {"Range": "bytes=0-0"}
    if etag:
        headers["If-Match"] = etag
    else:
        headers["If-Unmodified-Since"] = modified or ""
    response = fetch.request(session, job, settings, headers, source)
    try:
        status = response.status_code
        if status == 412:
            return "its validators no longer match (412)"
        if status in (408, 429) or 500 <= status <= 599:
            raise TransferError("http-status", f"the origin answered {status} when asked whether the file "
                                "changed", retryable=True, url=redact_url(job.url), http_status=status)
        if status not in (200, 206):
            # Gone, or refused now (an expired signed url, say): the bytes cannot be
            # shown to be one version, and are kept for a later resume to show it.
            raise TransferError("http-status", f"the origin answered {status} when asked whether the file "
                                "changed; the bytes are kept: the same POST (with a freshly signed url, if "
                                "it expired) finishes without fetching them again", url=redact_url(job.url),
                                http_status=status)
        if same_version(etag, modified, response.headers) is False:
            return "it now has other validators"
        # The size the bytes were fetched under: a .part of another size (a disk that
        # lost writes) is the verification's to refuse, as a size-mismatch.
        total = recorded.get("total")
        expected = total if isinstance(total, int) and not isinstance(total, bool) else size
        now = fetch.file_size(response)
        if now is not None and now != expected:
            return f"it now has {now} bytes, not {expected}"
        return None
    finally:
        response.close()  # a 200 ignoring the range is not read: closing drops its body
