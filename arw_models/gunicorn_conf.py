"""The name gunicorn is pointed at (``gunicorn -c python:arw_models.gunicorn_conf
wsgi:app``): every setting and hook of :mod:`arw_models.server.gunicorn_conf`, by
name, since gunicorn reads a configuration module's attributes."""

from __future__ import annotations

from .server import gunicorn_conf as _conf
from .server.gunicorn_conf import (
    access_log_format,
    accesslog,
    bind,
    control_socket_disable,
    graceful_timeout,
    keepalive,
    on_starting,
    post_worker_init,
    threads,
    timeout,
    worker_class,
    workers,
)

__all__ = ["access_log_format", "accesslog", "bind", "control_socket_disable", "graceful_timeout", "keepalive",
           "on_starting", "post_worker_init", "threads", "timeout", "worker_class", "workers"]

if hasattr(_conf, "logger_class"):  # set only with ARW_LOG_FORMAT=json
    logger_class = _conf.logger_class
    __all__.append("logger_class")
