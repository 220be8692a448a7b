"""Logs: one line per change of a download's state, and the ``ARW_LOG_FORMAT``
handler that writes the package's log as text or as JSON lines.

:class:`JobLog` reads the same ``Models.DownloadProgress`` payloads that clients
get (through :class:`~arw_models.service.observe.Observer`), so the log tells what the
events told, with the bytes and the time each job took; it never reaches into a
transfer. Progress (``downloading``) is not logged: it only updates the bytes
that the next line reports.

Logging is the host's business: with ``ARW_LOG_FORMAT`` unset the records go
wherever the host's root logging sends them; only when nothing at all is configured
(no handler on the root logger, as under gunicorn or a bare script) does the package
logger get a text handler on stderr, so that a warning says when, how bad and from
where (Python's last-resort handler prints the bare message). It steps aside as soon
as the host configures the root logger. Set, ``ARW_LOG_FORMAT`` gives the
``arw_models`` logger (and no other) a handler of its own on stderr.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pythonjsonlogger import json as jsonlogger

PACKAGE_LOGGER = "arw_models"
log = logging.getLogger("arw_models.downloads")

# A job's lines end with one of these; each carries the outcome and the duration.
OUTCOMES = ("complete", "error", "canceled", "paused")


class JobLog:
    """Turns each download event other than ``downloading`` into one log line.

    Every line carries, as the record's ``arw`` attribute (fields of a JSON line):
    ``id``, ``status``, ``bytes`` where known, ``duration_s`` since the job's first
    event, and on the last line of a job its ``outcome``."""

    def __init__(self, logger: logging.Logger = log, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.clock = clock
        self._lock = threading.Lock()
        self._began: dict[str, float] = {}
        self._bytes: dict[str, int] = {}

    def observe(self, payload: dict[str, Any]) -> None:
        model_id, status = payload.get("id"), payload.get("status")
        if not isinstance(model_id, str) or not isinstance(status, str):
            return
        now = self.clock()
        with self._lock:
            began = self._began.setdefault(model_id, now)
            seen = _int(payload.get("downloaded"))
            if status == "resumed":
                seen = _int(payload.get("offset"))
            elif status == "started":
                seen = 0
            elif status == "complete":
                seen = _int(payload.get("bytes"))
            elif status == "error" and seen is None:
                # An event without the job's count: what the failed check found.
                seen = _int(payload.get("received"))
            if seen is not None:
                self._bytes[model_id] = seen
            done = self._bytes.get(model_id)
            if status in OUTCOMES:
                # Forget the job: the next one of this id starts its own clock.
                self._began.pop(model_id, None)
                self._bytes.pop(model_id, None)
        if status == "downloading":
            return
        fields: dict[str, Any] = {"id": model_id, "status": status, "duration_s": round(now - began, 3)}
        if done is not None:
            fields["bytes"] = done
        for key in ("total", "expected_bytes", "offset", "attempt", "delay_ms", "code", "http_status", "file",
                "sha256"):
            if payload.get(key) is not None:
                fields[key] = payload[key]
        if status in OUTCOMES:
            fields["outcome"] = status
        level = logging.WARNING if status == "error" else logging.INFO
        self.logger.log(level, "download %s: %s", model_id, _describe(status, payload, fields),
                        extra={"arw": fields})

    def forget(self) -> None:
        with self._lock:
            self._began.clear()
            self._bytes.clear()


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _describe(status: str, payload: dict[str, Any], fields: dict[str, Any]) -> str:
    size = fields.get("bytes")
    took = f"{fields['duration_s']:.3f} s"
    of = f" of {payload['total']}" if isinstance(payload.get("total"), int) else ""
    if status == "queued":
        return "queued, waiting for a transfer slot"
    if status == "started":
        return f"started from byte 0{of}"
    if status == "resumed":
        return f"resumed from byte {payload.get('offset', 0)}{of}"
    if status == "retrying":
        return (f"retry {payload.get('attempt')} in {payload.get('delay_ms')} ms after {payload.get('code')}: "
                f"{payload.get('error')}; {size if size is not None else 0} bytes on disk")
    if status == "complete":
        return f"complete, {size} bytes in {took} ({payload.get('file')})"
    if status == "error":
        expected = payload.get("expected_bytes", payload.get("total"))
        of = f" of {expected}" if isinstance(expected, int) else ""
        return f"failed ({payload.get('code')}) after {took}, {size or 0}{of} bytes: {payload.get('error')}"
    if status == "canceled":
        return f"canceled after {took}, {size or 0} bytes downloaded and discarded"
    if status == "paused":
        return f"paused after {took} at byte {size or 0}"
    return f"{status} after {took}"


# A record's attributes by the names a JSON line gives them.
FIELD_NAMES = {"asctime": "time", "levelname": "level", "name": "logger", "exc_info": "exc",
               "stack_info": "stack"}


class JsonFormatter(jsonlogger.JsonFormatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, then the record's ``arw`` fields (and anything else a caller passed
    as ``extra``), and ``exc`` for a traceback, ``stack`` for a stack.

    python-json-logger writes the object; what is ours is the names of the fields
    and the ``arw`` fields spread at the top level, never over the four above."""

    # The time as the text format has it, but in UTC and ISO 8601: 2024-05-01T12:00:00.123Z.
    converter = time.gmtime
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"

    def __init__(self) -> None:
        # ASCII only (the library's default): a line separator inside a string
        # (U+2028) must not split the line.
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s", json_ensure_ascii=True,
                         rename_fields=FIELD_NAMES)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        fields = log_data.pop("arw", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                log_data.setdefault(key, value)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record, so that a
    replaced stderr (a test's capture, a daemon's redirect) is followed."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


# The handlers installed by the apps of this process, newest last. Only the newest
# is attached, so that two apps in one process do not write every line twice.
_installed: list[logging.Handler] = []
_saved: dict[str, Any] = {}
_install_lock = threading.Lock()


class _Fallback(_StderrHandler):
    """The text handler of a process whose logging nobody configured: it writes
    only while the root logger has no handler, so a host that sets up logging
    later (``basicConfig``, ``dictConfig``), or an app with ``ARW_LOG_FORMAT``, gets
    each line once, in its format."""

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if logging.getLogger().handlers or len(logging.getLogger(PACKAGE_LOGGER).handlers) > 1:
            return False  # the host's handlers, or an ARW_LOG_FORMAT handler, write it
        return bool(super().handle(record))


_fallback = _Fallback()
_fallback.setFormatter(logging.Formatter(TEXT_FORMAT))
_fallback_users: list[object] = []


def _use_fallback() -> Callable[[], None] | None:
    """Attaches :data:`_fallback` when neither the root nor the package logger has
    a handler; returns what detaches it (once the last app that asked lets go)."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    token = object()
    with _install_lock:
        if not _fallback_users and (logging.getLogger().handlers or logger.handlers):
            return None  # the host configured logging: its setup decides
        if not _fallback_users:
            logger.addHandler(_fallback)
        _fallback_users.append(token)

    def undo() -> None:
        with _install_lock:
            if token in _fallback_users:
                _fallback_users.remove(token)
                if not _fallback_users:
                    logger.removeHandler(_fallback)

    return undo


def configure(log_format: str | None) -> Callable[[], None] | None:
    """Gives the package's logger a stderr handler in ``log_format`` ("text" or
    "json"); returns what undoes it. Only the ``arw_models`` logger is touched: it
    stops propagating (its lines would otherwise be written again by the root's
    handlers), and logs INFO unless a level was set on it. With ``log_format``
    None, the package logger gets a text handler only if the process has no
    logging configured at all (see :class:`_Fallback`); None when nothing changed."""
    if log_format is None:
        return _use_fallback()
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logger = logging.getLogger(PACKAGE_LOGGER)
    with _install_lock:
        if not _installed:
            _saved.update(propagate=logger.propagate, level=logger.level)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)
            logger.propagate = False
        else:
            logger.removeHandler(_installed[-1])
        _installed.append(handler)
        logger.addHandler(handler)

    def undo() -> None:
        with _install_lock:
            if handler not in _installed:
                return
            newest = _installed[-1] is handler
            _installed.remove(handler)
            if not newest:
                return
            logger.removeHandler(handler)
            if _installed:
                logger.addHandler(_installed[-1])
            else:
                logger.propagate = _saved.pop("propagate", True)
                logger.setLevel(_saved.pop("level", logging.NOTSET))

    return undo
