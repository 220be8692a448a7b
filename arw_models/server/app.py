"""The app factory and the Flask extension (re-exported as ``arw_models.create_app``
and ``arw_models.ArwModels``).

Standalone::

    from arw_models import create_app
    app = create_app()

Inside a host app::

    from arw_models import ArwModels
    ArwModels(app, url_prefix="/ai")
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, current_app
from werkzeug.exceptions import HTTPException

from ..config import DEFAULTS, Settings, describe_stream_cap, from_env, parse_origins
from ..service import signals
from ..service.events import EventHub
from ..service.logs import JobLog
from ..service.logs import configure as configure_logging
from ..service.manager import PROGRESS, DownloadManager
from ..service.metrics import Metrics, store_usage
from ..service.observe import Observer
from ..store.lock import StateLock, StateLockError
from ..store.migrate import upgrade
from ..store.registry import Registry
from ..store.storage import StateDir, StateDirError
from . import hosting
from .guards import StreamSlots
from .problems import handle_http_exception

__all__ = ["ArwModels", "ServiceState", "StateDirError", "StateLockError", "create_app"]

log = logging.getLogger(__name__)
EXTENSION = "arw_models"


class ServiceState:
    """Everything one app's service owns. Built on first use, not in ``init_app``,
    so that importing, ``init_app`` and ``gunicorn --preload`` start no threads and
    take no lock; the first request (or :meth:`start`) does both."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self.settings: Settings
        self.dirs: StateDir
        self.registry: Registry
        self.hub: EventHub
        self.manager: DownloadManager
        self.streams: StreamSlots
        self.metrics: Metrics
        self.observer: Observer
        self._undo_logging: Callable[[], None] | None = None
        self._unwatch: Callable[[], None] | None = None
        self._state_lock: StateLock | None = None
        # Set in a process that claimed the lock and then forked before serving
        # (gunicorn --preload): each child, not the parent, takes the lock.
        self._children_claim = False
        self._fork_hooks = False

    @property
    def started(self) -> bool:
        return self._started

    def start(self) -> ServiceState:
        """Reads the settings, locks the state directory, resumes what was left."""
        if self._started:
            return self
        with self._lock:
            if self._started:
                return self
            # Under gunicorn, its real capacity, whatever the command line said: the
            # cap on event streams follows it.
            worker = hosting.gunicorn_worker()
            capacity = hosting.worker_capacity(worker) if worker is not None else None
            config: Mapping[str, Any] = self.app.config
            threads_from = "ARW_THREADS"
            if capacity is not None:
                config = {**config, "ARW_THREADS": capacity.count}
                threads_from = capacity.source
            settings = Settings.from_config(config)
            dirs = StateDir(settings.state_dir, settings.models_mode)
            dirs.ensure()
            if self._state_lock is None:
                lock = StateLock(dirs)
                lock.acquire()  # a request must not wait: the holder is alive, or it is a 503
                self._state_lock = lock
            self.settings, self.dirs = settings, dirs
            self.registry = Registry(dirs)
            # Before anything reads the registry, under the state lock: the blob
            # store's layout, from an older one or after a crash.
            upgrade(dirs, self.registry)
            self.hub = EventHub(settings.events_replay, settings.events_queue)
            self.streams = StreamSlots(settings.max_streams, describe_stream_cap(
                settings.max_streams, settings.threads, threads_from,
                explicit=config.get("ARW_EVENTS_MAX_STREAMS") not in (None, "")))
            self.metrics = Metrics(jobs=lambda: self.manager.jobs(), subscribers=lambda: self.hub.subscriber_count,
                                   rate_limit=lambda: self.manager.rate_limit,
                                   store=lambda: store_usage(self.dirs, self.registry))
            self.observer = Observer([self.metrics.observe, JobLog().observe])
            self._undo_logging = configure_logging(settings.log_format)
            self.manager = DownloadManager(settings, dirs, self.registry, self.hub, notify=self._notify)
            self._started = True
            ref = weakref.ref(self)
            atexit.register(lambda: (s := ref()) is not None and s.shutdown())
            # The server's own stop, whatever its signal handlers: see hosting.
            self._unwatch = hosting.STOPS.watch(self._stop_with_the_server, worker)
        self.manager.start()
        return self

    def claim(self) -> None:
        """Takes the state directory's lock now, starting nothing, waiting up to
        ``ARW_LOCK_WAIT_SECS`` for a process that is still exiting.

        For a server process at boot: a second worker (``gunicorn -w 2``) then fails
        to boot, instead of answering ``503 state-dir-in-use`` to its share of the
        requests. If this process forks before it serves (``--preload``), the lock
        goes to the child: see :meth:`_after_fork_in_child`."""
        with self._lock:
            if self._state_lock is not None or self._started:
                return
            settings = Settings.from_config(self.app.config)
            lock = StateLock(StateDir(settings.state_dir, settings.models_mode))
            lock.acquire(settings.lock_wait)
            self._state_lock = lock
            if not self._fork_hooks:
                self._fork_hooks = True
                ref = weakref.ref(self)
                os.register_at_fork(
                    after_in_parent=lambda: (s := ref()) is not None and s._after_fork_in_parent(),
                    after_in_child=lambda: (s := ref()) is not None and s._after_fork_in_child(),
                )

    def _after_fork_in_parent(self) -> None:
        # A process that loaded the app and forks before serving is a server's master
        # (gunicorn --preload): its workers serve, so the lock is theirs to take.
        if self._state_lock is not None and not self._started:
            self._state_lock.release()
            self._state_lock = None
            self._children_claim = True

    def _after_fork_in_child(self) -> None:
        if self._started:
            return
        if self._state_lock is not None:
            # The inherited descriptor shares the parent's lock; once both copies are
            # closed the lock is free, and this process takes its own.
            self._state_lock.release()
            self._state_lock = None
            self._children_claim = True
        if self._children_claim:
            self._children_claim = False
            try:
                self.claim()
            except StateLockError as exc:
                # Exceptions raised here are ignored by os.fork; exit code 3 is
                # gunicorn's "worker failed to boot", on which the whole server stops.
                sys.stderr.write(f"arw-models: {exc}\n")
                sys.stderr.flush()
                os._exit(3)

    def _notify(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == PROGRESS:
            self.observer.take(payload)  # the metrics and the job log, whatever the host's signals
        signal = signals.BY_STATUS.get(payload.get("status", "")) if kind == PROGRESS else signals.models_changed
        if signal is None or not signal.receivers or getattr(signal, "is_muted", False):
            return
        # Each receiver on its own: Signal.send stops at the first that raises,
        # and the others (in no defined order) would silently miss the event.
        for receiver in signal.receivers_for(self.app):
            try:
                receiver(self.app, payload=payload)
            except Exception:  # a host's receiver must not break a download, nor another receiver
                log.exception("a receiver of %s failed", signal.name)

    def _stop_with_the_server(self) -> None:
        # Transfers are told to stop and streams end now; the interpreter's exit
        # waits for the slots' threads, which finish within a chunk.
        self.shutdown(wait=False)

    def shutdown(self, wait: bool = True) -> None:
        """Stops transfers (their ``.part`` stays resumable), ends every event
        stream and releases the state directory. Safe to call twice."""
        with self._lock:
            if not self._started:
                if self._state_lock is not None:  # claimed at boot, never served
                    self._state_lock.release()
                    self._state_lock = None
                return
            if self._stopped:
                return
            self._stopped = True
        if self._unwatch is not None:
            self._unwatch()
        self.manager.shutdown(wait=wait)
        self.hub.close()
        if self._undo_logging is not None:
            self._undo_logging()
        if self._state_lock is not None:
            self._state_lock.release()


class ArwModels:
    """The Flask extension: ``ArwModels(app)`` or ``ext.init_app(app)``."""

    def __init__(self, app: Flask | None = None, url_prefix: str | None = None) -> None:
        self.url_prefix = url_prefix
        if app is not None:
            self.init_app(app, url_prefix=url_prefix)

    def init_app(self, app: Flask, url_prefix: str | None = None) -> None:
        from . import blobserve, cors  # noqa: F401 - blobserve puts its route on the blueprint
        from .api import bp

        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        if EXTENSION in app.extensions:
            raise RuntimeError("arw_models is already set up on this app")
        # Read now, unlike the other settings: response hooks must be in place before
        # the first request.
        origins = parse_origins(app.config.get("ARW_CORS_ORIGINS"))
        app.extensions[EXTENSION] = ServiceState(app)
        prefix = url_prefix if url_prefix is not None else self.url_prefix
        app.register_blueprint(bp, url_prefix=prefix.rstrip("/") if prefix else None)
        cors.enable(app, origins, bp.name)

    @staticmethod
    def claim(app: Flask) -> None:
        """Takes ``app``'s state directory lock now; call it where a server loads your
        app, so that a second worker on the same directory fails at boot. Raises
        :class:`StateLockError`."""
        app.extensions[EXTENSION].claim()

    @staticmethod
    def state(app: Flask | None = None) -> ServiceState:
        """The started service of ``app`` (default: the current app)."""
        target = app if app is not None else current_app
        return target.extensions[EXTENSION].start()  # type: ignore[no-any-return]


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """The standalone app: settings from ``ARW_*`` environment variables, then
    ``test_config`` on top."""
    # Named after the package, not this module: the app's name (and its logger's)
    # and its root path stay those of ``arw_models``.
    app = Flask("arw_models")
    app.config.from_mapping(from_env(os.environ))
    if test_config:
        app.config.from_mapping(test_config)
    if "ARW_STATE_DIR" in app.config:
        app.config["ARW_STATE_DIR"] = os.fspath(app.config["ARW_STATE_DIR"])
    ArwModels(app)
    # The standalone app answers its own 404 and 405 as problem documents too.
    app.register_error_handler(HTTPException, handle_http_exception)
    if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
        _claim_at_boot(app)
    return app


def _claim_at_boot(app: Flask) -> None:
    """Under a gunicorn server, whatever its command line: the process that loads the
    app takes the state lock now, so that a second worker fails to boot and the
    server stops with the reason, rather than serving half its requests as 503."""
    try:
        app.extensions[EXTENSION].claim()
    except (StateLockError, StateDirError) as exc:
        sys.stderr.write(f"arw-models: {exc}\n")
        sys.stderr.flush()
        # gunicorn passes SystemExit through; 3 is its "worker failed to boot".
        raise SystemExit(3) from None
