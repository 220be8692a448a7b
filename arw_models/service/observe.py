"""The service's own listener to its download events: it feeds the metrics and the
job log.

The service hands it every ``Models.DownloadProgress`` payload at the point where
it sends the blinker signals of :mod:`arw_models.service.signals` (after the hub has
published the event, in the thread that produced it: a transfer, the ticker, a
request), so it sees exactly what clients and signal receivers see. It is not a
receiver of those signals itself: a host's muted or disconnected signals do not
stop the metrics, and the signals' receiver lists stay the host's own. It adds no
thread and no event subscriber. Handlers run with no lock of the service held
(docs/design.rst, "Concurrency"), but in the thread of a transfer or a request:
they must be quick.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], None]

# How many (id, status) tallies are kept, the newest: one per job and status would
# otherwise grow with every id the service is ever asked for.
TALLIES = 4096


class Observer:
    """Passes each download event to every handler, in order."""

    def __init__(self, handlers: Iterable[Handler]) -> None:
        self.handlers = list(handlers)
        self._cond = threading.Condition()
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()

    def take(self, payload: dict[str, Any]) -> None:
        for handler in self.handlers:
            try:
                handler(payload)
            except Exception:  # one broken handler must not cost the others, nor the download
                log.exception("a handler of download events failed")
        status = payload.get("status")
        if status == "downloading":
            return  # nobody waits for progress; it would only grow the tally
        key = (str(payload.get("id")), str(status))
        with self._cond:
            self._seen[key] = self._seen.get(key, 0) + 1
            self._seen.move_to_end(key)
            while len(self._seen) > TALLIES:
                self._seen.popitem(last=False)
            self._cond.notify_all()

    def wait_for(self, model_id: str, status: str, count: int = 1, timeout: float = 10.0) -> bool:
        """True once every handler has taken ``count`` events of ``model_id`` with
        ``status`` (not ``downloading``); False after ``timeout``. A terminal event
        reaches the handlers just after the hub has published it: who acts on the
        event and then reads the metrics or the log waits here first. Only the
        newest :data:`TALLIES` ids and statuses are remembered."""
        with self._cond:
            return self._cond.wait_for(lambda: self._seen.get((model_id, status), 0) >= count, timeout)
