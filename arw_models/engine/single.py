"""One stream of the body into the ``.part``, and the decision to split it.

:class:`SingleStream` is the part of :class:`~arw_models.engine.download.Download`
that writes one answer's body from its offset to its end, and decides whether a
large file from an origin that serves ranges comes in parallel ranges instead
(:mod:`.parallel`), at once, from that answer's headers. The threads
this runs in are listed once in the design docs (docs/design.rst, "Concurrency").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..errors import TransferError
from ..redact import redact_url
from ..store.sidecar import Sidecar
from . import fetch
from .plan import Plan, validator_of
from .transfer import Transfer

# A large file is split into ranges of at most this, taken in order by the
# ARW_DL_SEGMENTS connections (more ranges than connections), in rounds that shrink
# towards the end (Plan.rounds): the SHA-256 of the bytes from 0 can only pass the
# end of a range once it is complete, so with one range per connection, all ending
# together, seven eighths of the file would be hashed after its last byte (0.6 s
# for 1 GiB at 1.5 GB/s). Each range costs a request: the smallest ranges are as
# large as this many bytes per second of the first answer's latency (a round trip
# on a real network: 1 MiB at 1 ms, the largest from about 64 ms), so that a
# request costs a small share of a range's time. Measured in docs/design.rst, "Speed".
PIECE = 64 * 1024 * 1024
LEAST_PIECE = 1024 * 1024
PIECE_PER_SEC = 1024 * 1024 * 1024


class SingleStream:
    """A mixin of :class:`~arw_models.engine.download.Download`: what it uses of it
    is declared here."""

    job: Transfer
    s: Settings
    part: str
    _open: Callable[[str, bool], Any]
    _hasher: Any
    _hashed: int
    _no_split: bool
    _sidecar: dict[str, Any]
    _record_durable: Callable[[int], None]
    _segments: Callable[..., None]

    def _one_or_more(self, response: Any, answer: fetch.Answer) -> None:
        """The body of an accepted answer: one stream to its end, or, when ranges
        are worth it, parallel ranges at once, this answer serving the first."""
        if not self._splits(response, answer):
            self._stream(response, answer.offset, answer.total)
            return
        # Split at once: the size, the ranges and a validator are known from this
        # answer, and waiting to see how fast one connection is costs a throttled
        # origin half a second of seven idle connections (docs/design.rst,
        # "Parallel ranges", for the measurements behind the size rule).
        assert answer.total is not None
        ranges = Plan.rounds(answer.total, answer.offset, self.s.segments, smallest_piece(response), PIECE)
        first = next(s for s in ranges.spans if s.start == answer.offset)
        first.active = True
        self._segments(ranges, validator_of(Sidecar.of(self._sidecar)), response, first)

    def _stream(self, response: Any, offset: int, total: int | None) -> int:
        """The body into the ``.part`` from ``offset``, to its end; returns the
        bytes on disk."""
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
                                          self._record_durable)
        finally:
            job.segments = 0
            self._hashed = job.downloaded  # every byte written is hashed, and no other
        fetch.check_stop(job)  # a shut-down socket reads as EOF
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
        return ranges and validator_of(Sidecar.of(self._sidecar)) is not None


def smallest_piece(response: Any) -> int:
    """The size of the last round's ranges (see :data:`PIECE`), from how long the
    first answer took to come (``requests`` measures it: ``elapsed``)."""
    elapsed = getattr(response, "elapsed", None)
    secs = elapsed.total_seconds() if elapsed is not None else 0.0
    return max(LEAST_PIECE, min(PIECE, int(secs * PIECE_PER_SEC)))
