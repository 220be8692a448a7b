"""What the origin's headers say, and the url forms the engine works with (how urls
are shown is :mod:`arw_models.redact`).

Parsing rests on werkzeug's parsers (installed with Flask), which already refuse
what ``int()`` would take and HTTP does not (non-ASCII digits, ``+``, ``_``). Each
function answers None for a malformed value rather than raising: a header is the
origin's input, and a bad one must end in a clean ``resume-invalid`` or a fallback,
never in an exception out of the worker. Where werkzeug is looser or stricter than
what the service needs, the function says so and keeps the tested behaviour.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from werkzeug.http import (
    parse_content_range_header,
    parse_date,
    parse_options_header,
    quote_etag,
    unquote_etag,
)


def _digits(value: str) -> bool:
    # ASCII only: str.isdigit() also takes other scripts' digits and '²'.
    return value.isascii() and value.isdigit()


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:  # over Python's limit on the digits of an int (4300)
        return None


class ContentRange(NamedTuple):
    start: int | None
    end: int | None  # inclusive, as on the wire
    total: int | None


# The characters a range-and-total may hold; checked before werkzeug sees them, since
# its older releases parsed numbers with int() (which takes '²', '+1', '1_0'), and
# its own numbers may be negative (a total of '-0' passes its checks).
_RANGE_CHARS = frozenset("0123456789-/*")


def parse_content_range(value: str | None) -> ContentRange | None:
    """``bytes 10-19/100``, ``bytes 10-19/*`` or ``bytes */100``; None if malformed.

    The unit may be in any case, and blanks of any kind may surround the value and
    separate the unit from the range. werkzeug alone would take any unit and blanks
    inside the range (``0 - 9 / 10``) but no tab after the unit: splitting here keeps
    the stricter shape. A range whose end lies before its start, or whose start lies
    at or past the total, is None (werkzeug's own check), and so are numbers too long
    for an int.
    """
    if not value:
        return None
    words = value.split()
    if len(words) != 2 or words[0].lower() != "bytes":
        return None
    rangedef = words[1]
    positions, _, total = rangedef.partition("/")
    if not set(rangedef) <= _RANGE_CHARS or positions.count("-") > 1 or "-" in total:
        return None
    parsed = parse_content_range_header("bytes " + rangedef)
    if parsed is None:
        return None
    # werkzeug's stop is exclusive.
    end = parsed.stop - 1 if parsed.stop is not None else None
    return ContentRange(parsed.start, end, parsed.length)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date);
    a date in the past is 0, anything else None."""
    if not value:
        return None
    value = value.strip()
    if _digits(value):
        return float(value)  # a huge value is inf, which the caller caps
    try:
        when = parse_date(value)  # a date without a zone is UTC, not local time
        seconds = None if when is None else when.timestamp()
    except (IndexError, OverflowError):  # email.utils' older failures on garbage
        return None
    if seconds is None:
        return None
    return max(0.0, seconds - (time.time() if now is None else now))


def strong_etag(value: str | None) -> str | None:
    """The ETag if it is a strong one: a weak ETag must not be used in ``If-Range``,
    and an unquoted one (which werkzeug's ``unquote_etag`` would take) is no ETag."""
    if not value:
        return None
    value = value.strip()
    tag, weak = unquote_etag(value)
    if weak or tag is None:
        return None
    try:
        # Only a value that quotes back to itself is one entity tag ('"', 'a"b', ... are not).
        return value if quote_etag(tag) == value else None
    except ValueError:  # a '"' inside
        return None


def same_version(recorded_etag: str | None, recorded_modified: str | None,
                 headers: Mapping[str, str]) -> bool | None:
    """Whether an answer that continues a ``.part`` (a 206, a 416) is of the version
    of the file whose bytes the ``.part`` holds, judged by the answer's own
    validators: many origins and CDNs ignore ``If-Range`` and send the range of
    whatever version they have now.

    The recorded strong ETag decides when the answer carries an ETag (a weak one is
    not the same strong one, RFC 9110's strong comparison); without one, the recorded
    Last-Modified decides when the answer carries that. None: the answer carries
    nothing to compare.
    """
    recorded_etag = strong_etag(recorded_etag)
    etag = (headers.get("ETag") or "").strip()
    if recorded_etag and etag:
        return strong_etag(etag) == recorded_etag
    modified = (headers.get("Last-Modified") or "").strip()
    if recorded_modified and modified:
        # Compared as text, not as dates: If-Range asks for an exact match of the
        # HTTP-date (RFC 9110, 13.1.5), and another spelling of it is another answer.
        return modified == recorded_modified.strip()
    return None


def content_coded(headers: Mapping[str, str]) -> bool:
    """Whether the body is sent under a content coding (gzip, br...): its bytes are
    then not the file's, and neither its length nor a digest of the file fits them."""
    return (headers.get("Content-Encoding") or "identity").strip().lower() not in ("", "identity")


def content_length(headers: Mapping[str, str]) -> int | None:
    """The ``Content-Length``, or None when it is absent or not a plain number.
    (werkzeug's ``get_content_length`` answers 0 for a malformed one.)"""
    value = headers.get("Content-Length")
    if value is None:
        return None
    value = value.strip()
    return _int(value) if _digits(value) else None


def filename_from_disposition(header: str | None) -> str | None:
    """The filename of a ``Content-Disposition`` header (RFC 6266), if any.

    werkzeug decodes ``filename*=UTF-8''...`` (RFC 5987; also ISO-8859-1 and ASCII,
    while another charset's bytes stay percent-encoded) and continuations; when both
    ``filename`` and ``filename*`` are given the last one wins, which in the order
    RFC 6266 recommends (the plain fallback first) is ``filename*``. The result is
    the origin's text: the caller makes a safe file name of it.
    """
    if not header:
        return None
    _, options = parse_options_header(header)
    return options.get("filename") or None


# Request headers for a gated origin: names are HTTP tokens, and these are the ones
# the transfer sets itself, or that describe the connection rather than the request.
HEADER_NAME_PATTERN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}"
RESERVED_HEADERS = frozenset({
    "host", "range", "if-range", "accept-encoding", "content-length", "transfer-encoding", "connection",
    "keep-alive", "te", "trailer", "upgrade", "expect", "proxy-connection",
})


def remove_dot_segments(path: str) -> str:
    """RFC 3986's remove_dot_segments (5.2.4) for an absolute path: ``.`` segments
    go, ``..`` takes the one before it, and one that would climb above the root stays
    at the root (as browsers do). ``%2e`` counts as a dot in either case: servers
    and caches decode it before they resolve."""
    segments = path.split("/")
    kept: list[str] = []
    for n, segment in enumerate(segments):
        dots = segment.lower().replace("%2e", ".")
        if dots in (".", ".."):
            if dots == ".." and len(kept) > 1:
                kept.pop()
            if n == len(segments) - 1:
                kept.append("")  # "/a/b/.." is the directory "/a/", with its slash
            continue
        kept.append(segment)
    return "/".join(kept)


_ENCODED_SLASH = re.compile(r"%2f|%5c|\\", re.IGNORECASE)


def hides_dot_segment(path: str) -> bool:
    """Whether a segment holds a ``.`` or ``..`` behind an encoded slash or a
    backslash (``..%2f..``): servers that decode ``%2f`` (lighttpd by default) or
    take ``\\`` for ``/`` resolve it after this service has, and climb. An encoded
    slash between names (``group%2Fproject``) is the name's own and stays."""
    for segment in path.split("/"):
        pieces = _ENCODED_SLASH.split(segment)
        if len(pieces) > 1 and any(p.lower().replace("%2e", ".") in (".", "..") for p in pieces):
            return True
    return False


def without_dot_segments(url: str) -> str:
    """``url`` with the dot segments of its path resolved, byte for byte the same
    otherwise (its query and fragment untouched: they are not path)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    path = remove_dot_segments(parts.path)
    if path == parts.path or "//" not in url:
        return url
    # The path is the raw text right after "//netloc" (urlsplit decodes nothing).
    start = url.index("//") + 2 + len(parts.netloc)
    return url[:start] + path + url[start + len(parts.path):]


def url_filename(url: str) -> str:
    """The last path segment, without its parameters (``f.bin;token=...`` is ``f.bin``)."""
    path = urlsplit(url).path
    return unquote(path.rstrip("/").rsplit("/", 1)[-1].split(";", 1)[0]) if path else ""
