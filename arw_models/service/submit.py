"""What a POST of a download meets: the submit policy.

A request for a model id either starts a new job, joins the one running with the
same url (and digest), takes over one the service resumed on its own at start (its
``.part`` is kept for the new job), or is refused: another url or digest is
downloading, or the previous job's end is decided but not yet done. :func:`verdict`
says which, from the job the table holds; the manager applies it under its lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..engine.fileset import Selection
from ..store import folders
from ..store.registry import Registry
from ..store.sidecar import Sidecar
from ..store.storage import StateDir
from .jobs import DownloadJob


class Verdict(str, Enum):
    NEW = "new"  # no live job: a new one, unless the model is installed as asked
    ENDING = "ending"  # its end is decided but not done: joining it would be a lie
    JOIN = "join"  # the same download: its job answers
    CONFLICT = "conflict"  # another url or sha256 is downloading
    TAKE_OVER = "take-over"  # resumed by the service itself: this request says what is wanted now


def verdict(job: DownloadJob | None, url: str, sha256: str | None, selection: Selection | None = None) -> Verdict:
    if job is None or not job.active:
        return Verdict.NEW
    if job.stop_event.is_set() or job.terminal:
        # Its events and signals are on their way, or its transfer is stopping: a
        # new job now would race it.
        return Verdict.ENDING
    if job.url == url and (sha256 is None or sha256 == job.sha256) and getattr(job, "selection", None) == selection:
        return Verdict.JOIN
    return Verdict.TAKE_OVER if job.auto else Verdict.CONFLICT


def installed_as_asked(registry: Registry, state: StateDir, model_id: str, url: str,
                       sha256: str | None, selection: Selection | None = None) -> dict[str, Any] | None:
    """The installed model, if it is what a POST of ``url`` (and ``sha256``, or the
    ``selection`` of a model of many files) asks for."""
    installed = registry.get(model_id)
    if selection is not None:
        if (installed is not None and installed.get("url") == url and isinstance(installed.get("files"), list)
                and Selection.from_json(installed.get("selection")) == selection
                and folders.is_folder(state, str(installed.get("file")))):
            return installed
        return None
    if (
        installed is not None
        and installed.get("url") == url
        and (sha256 is None or sha256 == installed.get("sha256"))
        and state.has_model_file(installed["file"])
    ):
        return installed
    return None


def unpause(state: StateDir, model_id: str) -> None:
    """A paused download is asked for again: a restart must resume it now."""
    sidecar = state.read_sidecar(model_id)
    if sidecar is not None and sidecar.pop("paused", None):
        state.write_sidecar(model_id, sidecar)


@dataclass
class Asked:
    """What a sidecar says its download was asked with, to submit it again (a
    resume on request, or at start)."""

    url: str
    sha256: str | None
    provider: str
    rate_limit: int | None
    headers: dict[str, str] = field(default_factory=dict)


def asked_with(sidecar: Sidecar | None) -> Asked | None:
    """None for a sidecar without a url (nothing to ask again)."""
    if sidecar is None or sidecar.url is None:
        return None
    return Asked(url=sidecar.url, sha256=sidecar.sha256, provider=sidecar.provider or "local",
                 rate_limit=sidecar.rate_limit, headers=dict(sidecar.headers))
