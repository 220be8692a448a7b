"""The sources one download asks, in order, and what each of them served.

Design: a job has one :class:`Route` across its attempts. An attempt asks the
route's current source for everything it fetches, its parallel ranges included:
the sources by digest (peers, ``{sha256}`` templates) when the digest is known,
each mirror of ``ARW_DL_MIRRORS`` in turn, and last the origin. A digest the
origin publishes on its first answer brings the sources by digest in then, before
the origin (:meth:`Route.learn`), and the attempt asks the first of them at once.
A mirror that fails in a way of its own (no answer, a stall, a status other than
200 or 206, a file of another size than the job knows, bytes that do not match the
sha256) is skipped for the rest of the job, and the next source is asked at once;
the origin's failures are retried as they always were. Bytes on disk stay when the next source's answer
vouches for them (the continuation rule and the validator checks decide, as for any
resume), so one file may be assembled from several sources.

What each source served is counted without touching the transfer loops: within an
attempt the job's byte counter only grows from where the source began (the offset
of :meth:`Route.began`), except where the engine cuts the ``.part`` back, and it
says so (:meth:`Route.cut`). The counts are bytes received, kept or not.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import TransferError
from .fetch import file_size
from .sources import Source

log = logging.getLogger(__name__)

# Failures of this host, not of the source: moving to another source cannot mend them.
LOCAL = frozenset({"disk-full", "disk-error", "disk-insufficient", "size-limit", "internal-error"})


@dataclass
class _Use:
    source: Source
    bytes: int = 0
    skipped: str | None = None


class Route:
    """The job's sources (mirrors first, the origin last) and their accounts."""

    def __init__(self, job_id: str, sources: list[Source], on_disk: int | None = None) -> None:
        """``on_disk``: the bytes in the ``.part`` as the job begins (from an earlier
        run or job: who served them is not known)."""
        assert sources and not sources[-1].mirror
        self.job_id = job_id
        self._sources = sources
        self._at = 0
        self._lock = threading.Lock()
        self._uses: dict[int, _Use] = {}  # in the order the sources were first asked
        self._live: int | None = None  # the byte counter when the current source began serving
        self._on_disk: set[int] = set()  # the sources whose bytes the .part holds
        self._earlier = bool(on_disk)  # the .part holds bytes from before this job
        self._total: int | None = None  # the size the sources announce
        self._learned = False  # the sources by digest were added (once per job)
        #: The error a failed attempt was turned into to move on to the next source.
        self.moved: TransferError | None = None

    @property
    def current(self) -> Source:
        return self._sources[self._at]

    @property
    def mirrored(self) -> bool:
        return len(self._sources) > 1

    def learn(self, found: list[Source]) -> bool:
        """The origin's first answer published the file's digest: ``found`` (the
        sources by that digest) go just before the origin, once per job, and become
        the current source; True when there is one to ask now."""
        with self._lock:
            if self._learned or not found or self.current.mirror:
                return False
            self._learned = True
            at = len(self._sources) - 1  # the origin's place: every mirror before it is spent
            shift = len(found)
            self._sources[at:at] = found
            self._uses = {(i + shift if i >= at else i): use for i, use in self._uses.items()}
            self._on_disk = {i + shift if i >= at else i for i in self._on_disk}
            self._at = at
        log.info("download %s: the origin published the sha256; asking %s", self.job_id, found[0].label)
        return True

    # -- the accounts ------------------------------------------------------------------------

    def attempt(self) -> None:
        """An attempt begins: it asks the current source."""
        with self._lock:
            self._uses.setdefault(self._at, _Use(self.current))

    def began(self, offset: int) -> None:
        """The current source's answer was accepted: its bytes follow ``offset``."""
        with self._lock:
            self._live = offset

    def settle(self, downloaded: int) -> None:
        """The attempt's transfer ended at ``downloaded`` bytes."""
        with self._lock:
            self._settle(downloaded)

    def _settle(self, downloaded: int) -> None:
        if self._live is not None:
            served = downloaded - self._live
            if served > 0:
                self._uses[self._at].bytes += served
                self._on_disk.add(self._at)
            self._live = None

    def cut(self, downloaded: int, keep: int) -> None:
        """The ``.part`` holding ``downloaded`` bytes is cut back to its first ``keep``
        (the attempt ends there, or has not begun to receive)."""
        with self._lock:
            self._settle(downloaded)
            if not keep:
                self._on_disk.clear()
                self._earlier = False

    def summary(self, downloaded: int) -> list[dict[str, Any]] | None:
        """``[{"source", "bytes"[, "skipped"]}]`` in the order the sources were
        asked; None for a job without mirrors (the origin served it all)."""
        if not self.mirrored:
            return None
        with self._lock:
            items = []
            for index, use in self._uses.items():
                served = use.bytes
                if index == self._at and self._live is not None:
                    served += downloaded - self._live
                item: dict[str, Any] = {"source": use.source.label, "bytes": served}
                if use.skipped:
                    item["skipped"] = use.skipped
                items.append(item)
            return items

    # -- the checks --------------------------------------------------------------------------

    def check(self, response: Any, known: int | None) -> None:
        """Refuses a mirror's answer for a file of another size than ``known`` (the
        ``.part``'s record, or the plan's) or than an earlier source announced (one
        that failed after its answer: a stall, a drop); the bytes on disk are left
        alone, for the next source to continue."""
        status = response.status_code
        total = file_size(response)
        if status not in (200, 206, 416) or (total is None and status == 416):
            return
        with self._lock:
            expected = known if known is not None else self._total
            # A mirror that does not say its size cannot be held to it: the next source can.
            refused = self.current.mirror and expected is not None and total != expected
            if not refused and self._total is None:
                self._total = total
        if refused:
            has = f"{total} bytes" if total is not None else "a size it does not say"
            raise TransferError("size-mismatch", f"the mirror's file has {has}, not {expected} bytes")

    def failed(self, err: TransferError, truncate: Any) -> TransferError | None:
        """After a failed attempt: the error to raise instead when the job moves on to
        the next source (at once), or None when ``err`` stands as it is. ``truncate``
        drops the bytes on disk."""
        if not self.mirrored:
            return None
        if err.code == "checksum-mismatch" and "published_by" in err.context:
            # Refused before its body: the source states another digest than the request's.
            if not self.current.mirror:
                return None
            why = "it published another sha256 than the request's"
            self._skip(self._at, why)
            return self._move_on(err, why)
        if err.code == "checksum-mismatch":
            with self._lock:
                culprits = sorted(i for i in self._on_disk if self._sources[i].mirror)
                earlier = self._earlier
            if not culprits and not earlier:
                return None  # the origin's own bytes: it fails as always
            why = "its bytes did not match the sha256" if culprits else "the bytes on disk did not match the sha256"
            truncate()
            with self._lock:
                self._total = None  # announced by the sources that sent the wrong bytes, perhaps
            for index in culprits:
                self._skip(index, why)
            return self._move_on(err, why)
        if not self.current.mirror or err.code in LOCAL or err.code == "resume-invalid":
            return None
        why = _why(err)
        if not err.keep_part:
            truncate()
        self._skip(self._at, why)
        return self._move_on(err, why)

    def exhausted(self, err: TransferError) -> bool:
        """The retries are spent: a mirror is skipped (True), the origin is not."""
        if not self.current.mirror:
            return False
        self._skip(self._at, _why(err))
        return True

    def _skip(self, index: int, why: str) -> None:
        source = self._sources[index]
        with self._lock:
            self._uses.setdefault(index, _Use(source)).skipped = why
            # The first source not skipped: the origin, at the latest (never skipped).
            self._at = next(i for i in range(len(self._sources)) if i not in self._uses or not self._uses[i].skipped)
        log.warning("download %s: mirror %s skipped: %s", self.job_id, source.label, why)

    def _move_on(self, err: TransferError, why: str) -> TransferError:
        self.moved = TransferError(err.code, f"a mirror was skipped ({why}); asking {self.current.label}",
                                   retryable=True)
        return self.moved


def _why(err: TransferError) -> str:
    status = err.context.get("http_status")
    return f"it answered {status}" if status else err.message
