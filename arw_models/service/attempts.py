"""One attempt of a job, in a slot's thread, holding no lock: what
:class:`~.manager.DownloadManager` gives its :class:`~.slots.Slots` to run.

A job of one file is a :class:`~arw_models.engine.Download` attempt: a failure
the engine calls retryable puts the job back in the slots' timer (its ``.part``
kept, its ranges noted), any other ends it (:mod:`.endings`); a verified result is
installed (:mod:`.install`). A model of many files (:class:`~.models.ModelJob`) is
one attempt of all its files, whose retries are each file's own
(:func:`.models.run`); once every file is in the store it is installed
(:mod:`.model_install`), and a failure ends it with its staging kept
(:func:`.models.failed`).

Each function takes the manager: its seams (``open_part``, ``checkpoint``,
``references``) are read when the attempt runs, so a test that sets one before the
job starts sees it used; the job table and the end of a job stay the manager's
(:meth:`~.manager.DownloadManager._ended`, which its ``_run`` calls after these).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..engine import Download
from ..engine.fetch import QUICK_CODES, QUICK_RETRIES
from ..errors import JobStopped, TransferError
from . import endings, install, model_install, models
from .jobs import DownloadJob, Status

if TYPE_CHECKING:
    from .manager import DownloadManager

log = logging.getLogger(__name__)


def unexpected(exc: Exception) -> TransferError:
    """What a bug ends a job with (visibly, and logged by the caller): only the class,
    as the text of an unexpected error may quote a url with its credentials."""
    return TransferError("internal-error",
                         f"the service failed ({exc.__class__.__name__}); its log has the details")


def run(m: DownloadManager, job: DownloadJob) -> bool:
    """One attempt of ``job``; False when it is not over (a retry is timed)."""
    previous = job.after
    if previous is not None:
        previous.done.wait()  # the job this one takes over has let go of the .part
        job.after = None
    if isinstance(job, models.ModelJob):
        run_model(m, job)
        return True
    return run_file(m, job)


def run_file(m: DownloadManager, job: DownloadJob) -> bool:
    download = None
    try:
        # Inside the try: a job whose transfer cannot even be set up must still end.
        download = m._downloads.get(job)
        if download is None:
            download = m._downloads[job] = Download(
                job, m.settings, m.state, session=m.session, opener=m.open_part, budget=m.check_budget,
                checkpoint=lambda point: m.checkpoint(point, job),
                adopt=None if job.force else lambda digest: m.adopter.adopt(job, digest))
        install_file(m, job, download.attempt())
    except JobStopped:
        endings.stopped(m.state, job)
    except TransferError as err:
        m.checkpoint("failed", job)
        if err.retryable and download is not None and retry_later(m, job, download, err):
            return False  # not ended: its timer will queue it again
        if job.stop_event.is_set():
            endings.stopped(m.state, job)  # the failure is the stop's doing
        else:
            endings.failed(m.state, job, err)
    except Exception as exc:  # a bug must still end the job
        log.exception("download %s failed unexpectedly", job.id)
        endings.failed(m.state, job, unexpected(exc))
    return True


def retry_later(m: DownloadManager, job: DownloadJob, download: Download, err: TransferError) -> bool:
    delay = download.retry_delay(err)
    if delay is None or (err.code in QUICK_CODES and download.failures > QUICK_RETRIES):
        return False
    endings.note_ranges(m.state, job)  # before the timer: the next attempt writes the sidecar
    with m._lock:
        moved = job.transition(Status.RETRYING, unless_stopped=True, deferred=True, attempt=download.failures,
                               delay_ms=int(delay * 1000), code=err.code, error=err.message,
                               downloaded=job.downloaded)
        if moved is None:
            return False
        job.last_error = {"code": err.code, "error": err.message}
        job.retries += 1
        m.slots.wait(job, delay)
    log.info("download %s: %s; retry %d in %.2fs", job.id, err.message, download.failures, delay)
    job.tell()
    return True


def install_file(m: DownloadManager, job: DownloadJob, result: Any) -> None:
    """Moves a verified ``.part`` to its final name and records the model; a
    cancel either lands before the rename (and wins) or finds the job complete."""
    m.checkpoint("verified", job)
    with m._lock:
        done = job.finish(lambda: install.install(m.state, m.registry, job, result,
                                                  gated=install.gated(job.url, job.headers, m.settings.hf_token)))
    if done is None:
        raise JobStopped()
    m.checkpoint("installed", job)


def run_model(m: DownloadManager, job: models.ModelJob) -> None:
    """The whole model, its files' retries its own."""
    try:
        download = models.run(job, m.settings, m.state, m.references, session=m.session, opener=m.open_part,
                              lock=m._lock, budget=m.check_budget, checkpoint=lambda point: m.checkpoint(point, job))
        m.checkpoint("verified", job)
        folder = model_install.hf_cache_dir(m.settings, job.hf_cache)
        with m._lock:
            done = job.finish(lambda: model_install.install(
                m.state, m.registry, job, download, folder,
                gated=install.gated(job.url, job.headers, m.settings.hf_token)))
        if done is None:
            raise JobStopped()
        m.checkpoint("installed", job)
    except JobStopped:
        models.stopped(m.state, job)
    except TransferError as err:
        m.checkpoint("failed", job)
        if job.stop_event.is_set():
            models.stopped(m.state, job)
        else:
            models.failed(m.state, job, err)
    except Exception as exc:  # a bug must still end the job
        log.exception("download %s failed unexpectedly", job.id)
        models.failed(m.state, job, unexpected(exc))
