"""What is on disk, what may be kept, and what is still to fetch.

:func:`continuation` is the one rule for "may these bytes on disk be continued":
the POST answer (``started`` or ``resumed``) and the transfer both ask it. A
:class:`Plan` is the file as byte ranges (:class:`Span`), each with the bytes
already made durable; the sidecar records it, so a restart resumes every range.
A single stream is a plan of one range from byte 0. A range names no source:
the plan says what to fetch, not from where.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..store.sidecar import Sidecar
from .headers import strong_etag

# A range is split for a free connection, below the least size worth a new
# request, when that ends the download at least this much sooner.
STEAL_GAIN_SECS = 0.05
# A connection this many times slower than a free one gives up all of its range.
SLOWER = 4
# While ranges nobody fetches yet are left, a range is split only if it would end
# this many times later than all that is left, shared at the connections' paces
# (at 1.5, one connection left alone with all of a slow one's range held the end of
# a 192 MiB download by a tenth of a second).
LATE = 1.0
# Each round of ranges before the last is this many times larger than the next
# (Plan.rounds): hashing a round (SHA-256 on one core, about six times an origin of
# 30 MB/s on each of eight connections) takes less than fetching the rounds after it.
SHRINK = 4


@dataclass(eq=False)
class Span:
    """Bytes ``[start, end)`` of the file (``end`` None: up to an unknown end), of
    which the first ``done`` are on disk (and, in a recorded plan, durable).
    ``active`` while a connection fetches it; ``writing``: the bytes from its
    position that its connection is writing right now (no split may fall among
    them). Neither is recorded."""

    start: int
    end: int | None
    done: int = 0
    active: bool = False
    writing: int = 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Span) and self.to_json() == other.to_json()

    @property
    def position(self) -> int:
        return self.start + self.done

    @property
    def remaining(self) -> int | None:
        return None if self.end is None else self.end - self.position

    def to_json(self) -> list[int | None]:
        return [self.start, self.end, self.done]


@dataclass
class Plan:
    total: int | None
    spans: list[Span] = field(default_factory=list)

    @classmethod
    def single(cls, total: int | None, have: int = 0) -> Plan:
        """One stream: the whole file, of which the first ``have`` bytes are on disk."""
        return cls(total, [Span(0, total, have)])

    @classmethod
    def rounds(cls, total: int, have: int, connections: int, smallest: int, largest: int) -> Plan:
        """The ranges of ``[have, total)`` in the order ``connections`` connections
        take them, in rounds that shrink towards the end: the last round is
        ``connections`` ranges of ``smallest``, each round before it :data:`SHRINK`
        times larger (at most ``largest``), and the first is what is left, in
        ``connections`` equal ranges or as many of at most ``largest`` as it takes.
        Equal ranges all end together, so the hash of the bytes from 0, which can
        only pass the end of a range once it is whole, would have most of the file
        left when its last byte lands; these end nearly in order, and the last
        round, small, is all that is left to hash."""
        spans = [Span(0, have, have)] if have else []
        left, size, later = total - have, smallest, []
        while size < largest and left >= 2 * connections * size:
            later.append(size)
            left -= connections * size
            size = min(size * SHRINK, largest)
        count = max(connections, -(-left // largest))
        at = have
        for n in range(count):
            end = have + left * (n + 1) // count
            if end > at:
                spans.append(Span(at, end))
            at = end
        for size in reversed(later):
            for _ in range(connections):
                spans.append(Span(at, at + size))
                at += size
        return cls(total, spans)

    @property
    def durable(self) -> int:
        return sum(s.done for s in self.spans)

    def up_to(self, keep: int) -> Plan:
        """The same ranges with nothing done from byte ``keep`` on."""
        return Plan(self.total, [Span(s.start, s.end, max(0, min(s.done, keep - s.start))) for s in self.spans])

    @property
    def segmented(self) -> bool:
        return len(self.spans) > 1

    def finished(self) -> bool:
        return all(s.remaining == 0 for s in self.spans)

    def contiguous(self) -> int:
        """Where the bytes on disk from byte 0 first have a hole."""
        at = 0
        for span in sorted(self.spans, key=lambda s: s.start):
            if span.start > at:
                break
            at = max(at, span.position)
            if span.remaining:
                break
        return at

    def claim(self, least: int, rate_of: Callable[[Span], float | None] = lambda span: None,
              rate: float | None = None, typical: float | None = None) -> Span | None:
        """A range for a free connection (which brought ``rate`` bytes/s on its last
        range; None: unknown): one nobody fetches yet, else the tail of the range
        that would end last (as aria2 does), so that one slow connection does not
        hold the end of the download; that tail first, while there are ranges
        nobody fetches yet, if that range would end far after them
        (:meth:`_tail`). ``rate_of`` says how fast a range's connection has been
        (None: too soon to say; it is then taken to go at ``typical``, by default
        the median of those known).

        The tail taken is what makes both end together at those paces (half
        between two alike), or all of a range whose connection is more than
        :data:`SLOWER` times slower (that connection then stops, its bytes in
        flight dropped: the other free connections share the rest as they come,
        instead of waiting for it at the end). It is taken when it is worth
        ``least`` bytes, or when it ends the download at least
        :data:`STEAL_GAIN_SECS` sooner; None otherwise."""
        idle = [s for s in self.spans if not s.active and s.remaining]
        busy = [s for s in self.spans if s.active and s.remaining]
        taken = self._tail(busy, idle, least, rate_of, rate, typical) if busy else None
        if taken is None and idle:
            taken = min(idle, key=lambda s: s.start)
            taken.active = True
        return taken

    def _tail(self, busy: list[Span], idle: list[Span], least: int, rate_of: Callable[[Span], float | None],
              rate: float | None, typical: float | None) -> Span | None:
        """The tail of the busy range that would end last, as :meth:`claim` says;
        while ranges nobody fetches yet are ``idle``, only if that range would end
        more than :data:`STEAL_GAIN_SECS` after :data:`LATE` times the time all
        that is left takes, shared among the connections at their paces (one far
        slower than the others, or one that took all of such a range over: the
        free connections share it at once, and the idle ranges, smaller and later
        in the file, even out the end)."""
        rates = {id(s): rate_of(s) for s in busy}
        known = sorted(r for r in rates.values() if r is not None)
        typical = typical or (known[len(known) // 2] if known else None)
        mine = rate or typical

        def pace(span: Span) -> float | None:
            found = rates[id(span)]
            return typical if found is None else found

        def left(span: Span) -> float:
            """Seconds its connection still needs (bytes, when no pace is known at all)."""
            speed, remaining = pace(span), span.remaining or 0
            if speed is None:
                return float(remaining)
            return remaining / speed if speed > 0 else math.inf

        victim = max(busy, key=left)
        assert victim.end is not None
        if idle:
            speeds = [pace(s) for s in busy] + [mine]
            if any(speed is None for speed in speeds):
                return None
            moving = sum(speed for speed in speeds if speed > 0)  # a stalled one adds none
            left_bytes = sum(s.remaining or 0 for s in busy + idle)
            if moving <= 0 or left(victim) <= LATE * left_bytes / moving + STEAL_GAIN_SECS:
                return None
        free = victim.position + victim.writing  # the first byte no write is under way to
        share = victim.end - free
        if share <= 0:
            return None
        theirs = pace(victim)
        if theirs is not None and mine and theirs * SLOWER < mine:
            # Far slower: all of it, the other free connections will share it.
            keep, gain = 0, left(victim) - share / mine
        elif theirs is not None and mine:
            keep = int(share * theirs / (theirs + mine))
            gain = left(victim) - max(keep / theirs if keep else 0.0, (share - keep) / mine)
        else:
            keep, gain = share // 2, 0.0
        stolen = share - keep
        if stolen < least and (gain < STEAL_GAIN_SECS or stolen < 64 * 1024):
            return None
        middle = free + keep
        taken = Span(middle, victim.end, active=True)
        victim.end = middle
        self.spans.append(taken)
        return taken

    def to_json(self) -> list[list[int | None]]:
        return [s.to_json() for s in self.spans]

    @classmethod
    def from_json(cls, total: int | None, data: Any) -> Plan | None:
        """The plan a sidecar recorded, or None if it is not a sound one."""
        if not isinstance(data, list) or not data:
            return None
        spans = []
        for item in data:
            if (not isinstance(item, list) or len(item) != 3
                    or not all(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
                               for v in item)
                    or item[0] is None or item[2] is None):
                return None
            start, end, done = item
            if end is not None and start + done > end:
                return None
            spans.append(Span(start, end, done))
        return cls(total, spans)


@dataclass(frozen=True)
class Continuation:
    """What to do with the bytes on disk: keep the first ``offset`` (0: start over),
    asking the origin with ``If-Range: validator``; ``reason`` says why."""

    offset: int
    validator: str | None
    reason: str

    @property
    def resumes(self) -> bool:
        return self.offset > 0


def same_object(url: str, recorded: str) -> bool:
    """Whether two urls differ at most in their query string: a freshly signed url
    of the same object (signed CDN urls expire within hours)."""
    try:
        a, b = urlsplit(url), urlsplit(recorded)
    except ValueError:
        return False
    return (a.scheme.lower(), a.netloc.lower(), a.path) == (b.scheme.lower(), b.netloc.lower(), b.path)


def validator_of(sidecar: Sidecar) -> str | None:
    """The validator the ``.part``'s bytes were fetched under: a strong ETag, else a
    Last-Modified date (weak ETags never identify bytes)."""
    return strong_etag(sidecar.etag) or sidecar.last_modified or None


def continuation(sidecar: Sidecar | None, part_size: int | None, url: str,
                 sha256: str | None) -> Continuation:
    """The continuation rule. Bytes on disk are kept only when something will show
    whether the origin still serves the same bytes:

    - the same url, with a validator (the answer's own validators are compared
      with it, see :func:`arw_models.engine.headers.same_version`) or a digest;
    - a url that differs only in its query, with a strong ETag (a re-signed url of
      the same object: the answer must carry the same ETag);
    - any url, when the request's ``sha256`` will verify the whole file.
    """
    if not part_size:
        return Continuation(0, None, "nothing on disk")
    if sidecar is None or sidecar.url is None:
        return Continuation(0, None, "no record of where the bytes on disk came from")
    validator = validator_of(sidecar)
    recorded = sidecar.url
    total = sidecar.total
    if total is not None and part_size > total:
        return Continuation(0, None, "more bytes on disk than the file has")
    if url == recorded:
        if validator or sha256:
            return Continuation(part_size, validator, "the same url")
        return Continuation(0, None, "no validator or digest would catch a changed file")
    if same_object(url, recorded) and strong_etag(sidecar.etag):
        return Continuation(part_size, strong_etag(sidecar.etag), "the same object under a new query")
    if sha256:
        return Continuation(part_size, validator, "the request's sha256 verifies the whole file")
    return Continuation(0, None, "bytes of another url")
