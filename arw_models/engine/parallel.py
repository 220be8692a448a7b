"""Parallel ranges for one download: the ``.part`` at its full size, the ranges on
record, and the fallback to one stream when the origin refuses a range.

:class:`ParallelRanges` is the part of :class:`~arw_models.engine.download.Download`
that hands a :class:`~.plan.Plan` to :class:`~.segments.Segments` (one connection
thread per range) and a :class:`~.verify.PrefixHasher`, and keeps between attempts
what they leave. The threads and locks involved are described once in the design
docs (docs/design.rst, "Concurrency").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, BinaryIO

from ..config import Settings
from ..errors import JobStopped, TransferError
from ..redact import redact_url
from ..store.storage import open_part_at
from . import fetch
from .plan import Plan, Span
from .route import Route
from .segments import FileChanged, RangesRefused, Segments, preallocate
from .transfer import Transfer
from .verify import PrefixHasher


class ParallelRanges:
    """A mixin of :class:`~arw_models.engine.download.Download`: what it uses of it
    is declared here."""

    job: Transfer
    s: Settings
    part: str
    route: Route
    source: Any
    _session: Callable[[], Any]
    _hasher: Any
    _hashed: int
    _plan: Plan | None
    _no_split: bool
    _sidecar: dict[str, Any]
    _truncate: Callable[[], None]
    _save_sidecar: Callable[[int], None]

    def _segments(self, plan: Plan, validator: str | None, first: Any = None, first_span: Span | None = None) -> None:
        job = self.job
        assert plan.total is not None
        # The ranges go on record before the .part grows to its full size: from then
        # on only they say which bytes are there (its size no longer does).
        self._record_plan(plan)
        try:
            fh = open_part_at(self.part)
        except OSError as exc:
            raise fetch.disk_error(exc, 0) from None
        with fh:
            preallocate(fh, plan.total)
            start = self._hashed if self._hasher is not None and self._hashed <= plan.contiguous() else 0
            hasher = PrefixHasher(fh.fileno(), plan.contiguous, self._hasher if start else None, start)
            self._plan = plan
            transfer = Segments(job, self.s, plan, fh, session=self._session, recorded=self._sidecar,
                                validator=validator, hasher=hasher, durable=self._record_plan,
                                source=self.source, check=self.route.check)
            try:
                transfer.run(first, first_span)
            except RangesRefused:
                hasher.abandon()
                self._fall_back_to_one_stream(fh, plan, hasher)
            except FileChanged:
                hasher.abandon()
                self._truncate()
                raise TransferError("resume-invalid", "the file changed during the download; starting again from "
                                    "byte 0", retryable=True, url=redact_url(job.url)) from None
            except BaseException as exc:
                hasher.abandon()
                self._hasher, self._hashed = hasher.hasher, hasher.hashed
                if isinstance(exc, (JobStopped, TransferError)):
                    self._keep_what_was_written(transfer)
                raise
            self._hasher, self._hashed = hasher.finish(), hasher.hashed
            job.downloaded = plan.durable
        fetch.check_stop(job)

    def _keep_what_was_written(self, transfer: Segments) -> None:
        """A stop or a failure: what every range wrote is fsynced and recorded, so
        a pause or a later attempt fetches none of it again."""
        try:
            transfer.sync()
        except TransferError:
            pass  # the disk refuses even this: the last record stands

    def _fall_back_to_one_stream(self, fh: BinaryIO, plan: Plan, hasher: PrefixHasher) -> None:
        """A range was answered with the whole file: from now on this download is one
        stream. The bytes from 0 up to the first hole stay (their validator still
        vouches for them), the others go."""
        keep = plan.contiguous()
        self.route.cut(self.job.downloaded, keep)
        # First a record that holds for the .part at either length (no range done
        # past the hole), so that a crash or a failed write after the cut leaves no
        # range on record over bytes that are gone.
        self._sidecar["ranges"] = plan.up_to(keep).to_json()
        self._save_sidecar(keep)
        os.ftruncate(fh.fileno(), keep)
        self._no_split, self._plan = True, None
        self._hasher, self._hashed = hasher.hasher, hasher.hashed
        self._sidecar["ranges"] = Plan.single(plan.total, keep).to_json()
        self._save_sidecar(keep)
        self.job.downloaded = keep
        raise TransferError("resume-invalid", "the origin answered a range with the whole file; going on as one "
                            "stream", retryable=True, retry_after=0, url=redact_url(self.job.url))

    def _record_plan(self, plan: Plan) -> None:
        """The ranges as of the last fsync: what a crash would leave."""
        self._sidecar["ranges"] = plan.to_json()
        self._save_sidecar(plan.durable)
