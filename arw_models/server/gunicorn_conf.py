"""gunicorn settings for arw-models: ``gunicorn -c python:arw_models.gunicorn_conf wsgi:app``
(``arw_models/gunicorn_conf.py`` re-exports this module, the one gunicorn is pointed at).

Design: one process (downloads, the job table and every event subscriber live in
it), many threads (gthread): each open ``/events`` stream holds one thread for as
long as the client listens, so ``threads`` bounds subscribers plus concurrent
requests, and the app caps streams below it (ARW_EVENTS_MAX_STREAMS) to keep a
reserve of threads for everything else. The worker starts the service right
after it boots, so downloads left by an earlier run resume without waiting for a
first request, and a second process on the same state directory fails at once.

Every setting can still be overridden on the command line.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
from typing import Any

from ..config import SERVER_THREADS, env_setting

worker_class = "gthread"
workers = 1
threads = env_setting("ARW_THREADS") or SERVER_THREADS  # each open event stream holds one
bind = [f"{env_setting('ARW_BIND')}:{env_setting('ARW_PORT')}"]
# Streams and transfers end within a second of SIGTERM; this bounds the rest.
graceful_timeout = 10
timeout = 60
keepalive = 5
# Recent gunicorn (27 here) opens a control socket by default, at one path per user
# ($XDG_RUNTIME_DIR or ~/.gunicorn/gunicorn.ctl): a second instance (another state
# directory, or one refused by the lock) takes it over and unlinks it, and its
# "worker add" spawns a second worker, which cannot take the state lock and so
# halts the whole server. Older gunicorns ignore this name.
control_socket_disable = True
accesslog = "-"
# Never log query strings or headers: a token may travel in either.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(D)sus'
if (env_setting("ARW_LOG_FORMAT") or "").strip().lower() == "json":
    # gunicorn's error and access lines as JSON objects too (the access line's
    # fields by name, never a query string or a header): one format on the stream.
    logger_class = "arw_models.server.gunicorn_log.JsonLogger"


def _is_loopback(address: str) -> bool:
    if address.startswith("unix:"):
        return True
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def on_starting(server: Any) -> None:
    if server.cfg.workers != 1:
        # Every worker would need the state directory's lock: the second could never
        # serve. Refuse before binding, with the reason, whatever the command line said.
        state_dir = os.path.abspath(env_setting("ARW_STATE_DIR"))
        sys.stderr.write(
            f"arw-models: refusing to start {server.cfg.workers} workers on one state directory "
            f"({state_dir}, lock {os.path.join(state_dir, 'arw-models.lock')}): one process serves it, "
            "with --threads for concurrency; run one worker (-w 1), or one instance per ARW_STATE_DIR\n"
        )
        sys.exit(2)
    addresses = server.cfg.bind or []
    remote = [a for a in addresses if not _is_loopback(a)]
    allowed = env_setting("ARW_ALLOW_REMOTE")
    token = (env_setting("ARW_ADMIN_TOKEN") or "").strip()  # as the app reads it: blank is no token
    if remote and not token and not allowed:
        sys.stderr.write(
            f"arw-models: refusing to listen on {', '.join(remote)} without ARW_ADMIN_TOKEN; "
            "set a token, or ARW_ALLOW_REMOTE=1 to serve the network without one\n"
        )
        sys.exit(2)


def post_worker_init(worker: Any) -> None:
    from ..store.lock import StateLockError
    from ..store.storage import StateDirError

    app = worker.wsgi
    state = app.extensions["arw_models"]
    # The real thread count (the command line may have overridden ours): the
    # default cap on event streams leaves a reserve of these for other requests.
    app.config["ARW_THREADS"] = worker.cfg.threads
    try:
        state.claim()  # waits for a predecessor that is still exiting
        state.start()
    except (StateLockError, StateDirError) as exc:
        worker.log.error("%s", exc)
        sys.exit(3)  # gunicorn's "worker failed to boot": the arbiter stops too

    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        # Stop transfers (their .part stays resumable) and end event streams, so
        # that the graceful shutdown has no long-lived request left to wait for.
        # The service notices a stop without this handler too (hosting.StopWatch,
        # under any command line); here it is at once rather than within a tick.
        state.shutdown(wait=False)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
