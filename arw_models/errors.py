"""One root exception for everything a client can be told, and the handlers that
turn it into an RFC 9457 problem document."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, json
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_TYPE = "about:blank"


class ArwError(Exception):
    """An error with an HTTP status and a stable kebab-case ``code``."""

    status = 400
    code = "bad-request"
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if title is not None:
            self.title = title
        self.headers = headers or {}
        self.extra = extra


class BadRequest(ArwError):
    pass


class Unauthorized(ArwError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class NotFound(ArwError):
    status = 404
    code = "not-found"
    title = "Not found"


class Conflict(ArwError):
    status = 409
    code = "conflict"
    title = "Conflict"


class UnsupportedMediaType(ArwError):
    status = 415
    code = "unsupported-media-type"
    title = "Unsupported media type"


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = {"type": PROBLEM_TYPE, "title": title, "status": status, "detail": detail, "code": code}
    body.update(extra)
    response = Response(
        json.dumps(body), status=status, mimetype="application/problem+json"
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def handle_arw_error(exc: ArwError) -> Response:
    return problem(exc.status, exc.code, exc.title, exc.detail, exc.headers, **exc.extra)


def handle_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    name = exc.name or "Error"
    code = "-".join(name.lower().split())
    response = problem(status, code, name, exc.description or name)
    if status == 405 and exc.response is None:
        allowed = getattr(exc, "valid_methods", None)
        if allowed:
            response.headers["Allow"] = ", ".join(allowed)
    return response


def handle_unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return handle_http_exception(exc)
    log.exception("unhandled error")
    return problem(500, "internal-error", "Internal error", "the service failed to handle this request")


class JobStopped(Exception):
    """The job was asked to stop (a cancel, a shutdown, a newer request)."""


class TransferError(Exception):
    """One download failed: a stable ``code`` for the error event, whether another
    attempt may mend it, whether the ``.part`` is worth keeping, and context
    (url, offset, bytes expected and received) for the event and the log."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        keep_part: bool = True,
        retry_after: float | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.keep_part = keep_part
        self.retry_after = retry_after
        self.context = context
