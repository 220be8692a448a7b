"""Start-up recovery: what an earlier run left in the state directory.

Temporaries of an interrupted write go; a ``.part`` untouched for longer than
``ARW_DL_STALE_PART_SECS`` goes with its sidecar; a paused one stays paused; the
others are resumed (``ARW_DL_RESUME_ON_START``) as jobs the service started on its
own, so that a request that asks for something else takes them over.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..errors import ArwError
from ..redact import redact_url
from ..store import sidecar as sidecars
from ..store.storage import StateDir
from .submit import asked_with

log = logging.getLogger(__name__)


def recover(settings: Settings, state: StateDir, submit: Callable[..., Any]) -> None:
    """Sweeps stale partial files and resumes the others (through ``submit``, the
    manager's) if so configured."""
    for path in state.sweep_temporaries():
        log.info("removed %s, left by a process that stopped while writing it", path)
    now = time.time()
    for model_id in list(state.partial_ids()):
        paths = [state.part_path(model_id), state.sidecar_path(model_id)]
        mtimes = [os.lstat(p).st_mtime for p in paths if os.path.lexists(p)]
        if mtimes and now - max(mtimes) > settings.stale_part_secs:
            log.info("removing stale partial download %s", model_id)
            state.remove_partial(model_id)
            continue
        sidecar = sidecars.read(state, model_id)
        if sidecar is not None and sidecar.paused:
            log.info("leaving %s paused", model_id)
            continue
        asked = asked_with(sidecar)
        if settings.resume_on_start and asked is not None:
            log.info("resuming %s from %s", model_id, redact_url(asked.url))
            try:
                submit(model_id, asked.url, asked.sha256, asked.provider, auto=True, rate_limit=asked.rate_limit,
                       headers=asked.headers)
            except ArwError as exc:
                log.warning("cannot resume %s: %s", model_id, exc.detail)
