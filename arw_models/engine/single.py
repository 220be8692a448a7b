"""One stream of the body into the ``.part``, and the decision to split it.

:class:`SingleStream` is the part of :class:`~arw_models.engine.download.Download`
that writes one answer's body from its offset to its end, and decides whether a
large file from an origin that serves ranges comes in parallel ranges instead
(:mod:`.parallel`), at once, from that answer's headers. The threads
this runs in are listed once in the design docs (docs/design.rst, "Concurrency").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..errors import TransferError
from ..redact import redact_url
from ..store.sidecar import Sidecar
from . import cpu as cpustat
from . import fetch
from .plan import Plan, validator_of
from .transfer import Transfer
from .verify import sha256_speed

log = logging.getLogger(__name__)

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

# One stream or ranges: a file large enough for ranges begins as one stream, which
# goes on to its end if it is fast enough that ranges would not be faster (they
# cost more CPU per byte: every byte copied into the page cache and read back to
# be hashed), and is split where it stands as soon as it is clearly not. From
# PROBE_GRACE after its first read on it must keep an average of PROBE_EARLY, or
# of the pace to keep if that is lower (an origin that caps each connection shows
# that at once, and so does one far away, its stream still in TCP's slow start,
# where ranges are what helps; a busy machine is not
# mistaken for one, since one stream kept at least twice that under two downloads
# at once); then its pace from PROBE_FROM to PROBE_TO bytes must reach
# ARW_DL_STREAM_KEEP_MB_S (auto: KEEP_OF_SHA256 of one core's SHA-256 speed),
# unless the machine had less than SPARE_CORES of CPU idle meanwhile: then it is
# the CPU that sets the pace, and ranges, which need more of it per byte, would be
# slower still. Measured in docs/design.rst, "One stream or ranges".
MiB = 1024 * 1024
PROBE_GRACE = 0.004
PROBE_EARLY = 200 * 1024 * 1024
PROBE_FROM = 8 * 1024 * 1024
PROBE_TO = 40 * 1024 * 1024
KEEP_OF_SHA256 = 0.45
SPARE_CORES = 0.75


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
        are worth it, parallel ranges, this answer serving the first: at once, or
        once the stream showed that ranges are faster (:class:`Probe`)."""
        if not self._splits(response, answer):
            self._stream(response, answer.offset, answer.total)
            return
        assert answer.total is not None
        offset = answer.offset
        keep = self.s.stream_keep
        if keep != 0 and not self.job.bucket.rate:  # a rate limit, not the origin, sets the pace
            probe = Probe(KEEP_OF_SHA256 * sha256_speed() if keep is None else keep)
            offset = self._stream(response, offset, answer.total, until=probe)
            log.info("download %s: %s", self.job.id, probe.why)
            if not probe.split or offset >= answer.total:  # (told at the read that ended the body: nothing to split)
                return
        # The size, the ranges and a validator are known from this answer (docs/design.rst,
        # "Parallel ranges", for the measurements behind the size rule).
        ranges = Plan.rounds(answer.total, offset, self.s.segments, smallest_piece(response), PIECE)
        first = next(s for s in ranges.spans if s.start == offset)
        first.active = True
        self._segments(ranges, validator_of(Sidecar.of(self._sidecar)), response, first)

    def _stream(self, response: Any, offset: int, total: int | None, until: Probe | None = None) -> int:
        """The body into the ``.part`` from ``offset``, to its end, or until ``until``
        says to split; returns the bytes on disk."""
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
        if until is not None and until.split and (total is None or downloaded < total):
            return downloaded
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


class Probe:
    """Asked after every read of a stream that could be split (``bytes read so
    far``), says when to split it: once it falls below :data:`PROBE_EARLY` (or
    ``keep``, if lower) on average from its first read on, past
    :data:`PROBE_GRACE` (not counting the time its thread waited for a CPU:
    ``waited``, :func:`.cpu.waited`), or when its pace from :data:`PROBE_FROM` to
    :data:`PROBE_TO` falls short of ``keep`` bytes/s while this process could
    have had at least :data:`SPARE_CORES` more CPU (``cpu``:
    :func:`.cpu.reading`: idle CPUs it may run on, within its cgroup's quota).
    After that, or once the stream has proved fast enough, it says no more
    (``split`` tells which)."""

    def __init__(self, keep: float, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], cpustat.Reading | None] | None = None,
                 waited: Callable[[], float | None] | None = None) -> None:
        self.keep = keep
        self.split = False
        self.why = "the stream ended before its pace was known"
        self._clock = clock
        self._cpu = cpustat.reading if cpu is None else cpu
        self._cpu_began = self._cpu()
        self._waited = cpustat.waited if waited is None else waited
        self._waited_first: float | None = None  # this thread's wait for a CPU at the first read
        self._frozen = 0.0  # seconds it waited since, as last read
        self._first: tuple[float, int] | None = None  # when the first read came, and its bytes
        self._decided = False
        self._from: tuple[float, int] | None = None  # when the stream passed PROBE_FROM, and its bytes then

    def __call__(self, got: int) -> bool:
        if self._decided:
            return False
        if self._first is None:  # the time to the first byte is the origin's latency, not its pace
            self._first = (self._clock(), got)
            self._waited_first = self._waited()
        now = self._clock() - self._first[0]
        early = min(PROBE_EARLY, self.keep)
        # Not the time this thread waited for a CPU (a quota spent, other work): no
        # read can come then. What is known of it only grows, so it is read afresh
        # only when it would split.
        if now > PROBE_GRACE and got - self._first[1] < early * (now - PROBE_GRACE - self._frozen):
            self._frozen = frozen = cpustat.held_back(self._waited_first, self._waited())
            if got - self._first[1] < early * (now - PROBE_GRACE - frozen):
                held = f", {frozen * 1000:.1f} ms of them waiting for a CPU" if frozen else ""
                return self._decide(True, f"{got - self._first[1]} bytes in {now * 1000:.1f} ms after the first read "
                                          f"as one stream{held}; ranges from there")
        if got >= PROBE_FROM and self._from is None:
            self._from = (now, got)
        elif got >= PROBE_TO and self._from is not None:
            secs, bytes_then = now - self._from[0], got - self._from[1]
            pace = f"one stream at {bytes_then / max(secs, 1e-9) / MiB:.0f} MiB/s over {bytes_then} bytes"
            if bytes_then >= self.keep * secs:
                return self._decide(False, f"{pace}: it stays one stream")
            spare = self._spare()
            if spare is not None and spare < SPARE_CORES:
                return self._decide(False, f"{pace}, short of {self.keep / MiB:.0f} with {spare:.2f} CPUs idle "
                                           "meanwhile: ranges would not be faster; it stays one stream")
            return self._decide(True, f"{pace}, short of {self.keep / MiB:.0f}; ranges from byte {got}")
        return False

    def _spare(self) -> float | None:
        """How many CPUs this process could have had more, on average, since the
        stream began (None: unknown)."""
        return cpustat.spare(self._cpu_began, self._cpu())

    def _decide(self, split: bool, why: str) -> bool:
        self._decided, self.split, self.why = True, split, why
        return split
