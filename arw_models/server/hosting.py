"""What the service learns of the server that hosts it, under any command line.

Three things depend on the server and cannot wait for a configuration file to say
them: how many requests it serves at once (the cap on event streams follows it),
whether an event stream would hold its only request thread (then streams are
refused), and when it stops (then transfers must stop too, whatever signal
handlers the server has).

Design of the stop: the slots' threads are plain non-daemon threads, so nothing
joins them before the main thread has finished (``concurrent.futures`` joins its
own threads in a ``threading`` exit hook that runs *before* the main thread is
marked finished, which would let a transfer run to its end). One watcher thread per
process, started with the first service and ended with the last, looks every
``TICK`` seconds at two things: whether the main thread has finished (a server's
main loop returned, ``flask run`` interrupted, a script's end), and, under
gunicorn, whether the worker was told to stop (its ``alive`` flag, which SIGTERM
clears long before the main loop returns: a gthread worker waits up to its
graceful timeout for open streams). Either way it shuts the services down, which
stops their transfers (each ``.part`` stays resumable) and ends their streams. It
is non-daemon, so the interpreter's exit waits for it.
"""

from __future__ import annotations

import inspect
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Worker classes that serve more than one request at a time, for the detail of a refusal.
STREAM_WORKERS = "gthread (-k gthread --threads N), gevent or eventlet"


def gunicorn_worker() -> Any | None:
    """The gunicorn worker on the calling thread's stack, or None.

    gunicorn gives the app no handle on its worker, yet the worker's ``cfg`` holds
    the settings as gunicorn resolved them (configuration file, command line,
    ``GUNICORN_CMD_ARGS``, in gunicorn's own order), which no re-parsing of the
    command line can match. Every worker class calls the app, and its boot hooks,
    from a method of the worker, so during a request (or in ``post_worker_init``)
    the worker is a ``self`` a few frames up. Outside those calls, or under
    another server, this finds nothing."""
    base = sys.modules.get("gunicorn.workers.base")
    if base is None:
        return None
    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, base.Worker):
                return candidate
            frame = frame.f_back
        return None
    finally:
        del frame  # a frame kept in a local would keep every caller's locals alive


@dataclass(frozen=True)
class Capacity:
    """How many requests the server serves at once, and what sets that number."""

    count: int
    source: str


def worker_capacity(worker: Any) -> Capacity | None:
    """The capacity of a gunicorn worker: its threads (gthread), its connections
    (gevent and the other asynchronous workers), or None (sync: one at a time)."""
    gthread = sys.modules.get("gunicorn.workers.gthread")
    if gthread is not None and isinstance(worker, gthread.ThreadWorker):
        return Capacity(int(worker.cfg.threads), "gunicorn --threads")
    base_async = sys.modules.get("gunicorn.workers.base_async")
    if base_async is not None and isinstance(worker, base_async.AsyncWorker):
        return Capacity(int(worker.cfg.worker_connections), "gunicorn --worker-connections")
    return None


def _cooperative() -> bool:
    """Whether threads are green here (gevent or eventlet patched ``threading``):
    then a waiting stream yields to every other request."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("threading"):
        return True
    eventlet_patcher = sys.modules.get("eventlet.patcher")
    return eventlet_patcher is not None and bool(eventlet_patcher.is_monkey_patched("thread"))


def streams_unsupported(environ: Mapping[str, Any]) -> str | None:
    """Why this request's server cannot hold an event stream, or None when it can.

    A stream holds its request's thread for as long as the client listens. A server
    that serves one request at a time per process says so in ``wsgi.multithread``
    (False): gunicorn's sync worker (and its tornado worker), werkzeug's server
    without threads, CGI. Servers that run many requests at once say True
    (gunicorn's gthread and gevent workers, werkzeug's threaded server, waitress),
    except gevent's own server, which says False although each request has a
    greenlet of its own. An environ that names no server (a test client, which
    calls the app in-process) holds no server thread at all."""
    if environ.get("wsgi.multithread", False):
        return None
    software = str(environ.get("SERVER_SOFTWARE", ""))
    if not software or software.lower().startswith(("gevent", "eventlet")) or _cooperative():
        return None
    return (f"this server ({software.split()[0]}) serves one request at a time, and an event stream would "
            f"hold it for as long as the client listens; run it with a worker class that serves "
            f"streams: {STREAM_WORKERS}")


class StopWatch:
    """The one watcher of a process: calls each watched service's stop when the
    main thread finishes or its gunicorn worker is told to stop (see the module)."""

    TICK = 0.2

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        # Weak: a service that is dropped without a shutdown is not kept alive by this.
        self._watched: dict[int, tuple[weakref.WeakMethod[Callable[[], None]], Any | None]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None

    def watch(self, stop: Callable[[], None], worker: Any | None = None) -> Callable[[], None]:
        """Calls the bound method ``stop`` once, on the process's stop; returns
        what ends the watch (call it when the service stops by itself)."""
        with self._cond:
            key = self._next
            self._next += 1
            self._watched[key] = (weakref.WeakMethod(stop), worker)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="arw-stop-watch")
                self._thread.start()

        def unwatch() -> None:
            with self._cond:
                if self._watched.pop(key, None) is not None:
                    self._cond.notify_all()

        return unwatch

    def _run(self) -> None:
        main = threading.main_thread()
        while True:
            with self._cond:
                while True:
                    for key in [k for k, (ref, _) in self._watched.items() if ref() is None]:
                        del self._watched[key]
                    if not self._watched:
                        self._thread = None
                        return
                    ended = not main.is_alive()
                    due = [k for k, (_, worker) in self._watched.items()
                           if ended or (worker is not None and not getattr(worker, "alive", True))]
                    if due:
                        stops = [self._watched.pop(k)[0]() for k in due]
                        break
                    self._cond.wait(self.TICK)
            for stop in stops:  # outside the lock: a stop unwatches, and may take a while
                if stop is not None:
                    stop()


STOPS = StopWatch()
