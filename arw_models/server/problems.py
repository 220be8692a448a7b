"""How a domain error becomes an HTTP answer: the one table from problem code to
HTTP status (the OpenAPI document reads it too), and the handlers that turn an
error into an RFC 9457 problem document."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, json
from werkzeug.exceptions import HTTPException

from ..errors import ArwError

log = logging.getLogger(__name__)

PROBLEM_TYPE = "about:blank"

# Every problem code a request can be answered with, and the status it comes with.
PROBLEM_CODES: dict[str, int] = {
    "invalid-id": 400,
    "invalid-url": 400,
    "invalid-sha256": 400,
    "invalid-provider": 400,
    "invalid-rate-limit": 400,
    "invalid-headers": 400,
    "invalid-selection": 400,
    "invalid-json": 400,
    "invalid-body": 400,
    "incomplete-body": 400,
    "invalid-event-id": 400,
    "missing-token": 401,
    "invalid-token": 401,
    "no-active-download": 404,
    "unknown-model": 404,
    "unknown-download": 404,
    "unknown-asset": 404,
    "unknown-blob": 404,
    "blobs-not-served": 404,
    "request-timeout": 408,
    "already-downloading": 409,
    "download-ending": 409,
    "download-in-progress": 409,
    "body-too-large": 413,
    "unsupported-media-type": 415,
    "range-not-satisfiable": 416,
    "resolve-failed": 502,
    "shutting-down": 503,
    "state-dir-in-use": 503,
    "state-dir-unsafe": 503,
    "too-many-streams": 503,
    "streams-unsupported": 503,
}

PROBLEM_TITLES = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 408: "Request timeout",
                  409: "Conflict", 413: "Content too large", 415: "Unsupported media type",
                  416: "Range not satisfiable",
                  500: "Internal error", 502: "Bad gateway", 503: "Service unavailable"}


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
    status = PROBLEM_CODES.get(exc.code, exc.status)
    return problem(status, exc.code, exc.title, exc.detail, exc.headers, **exc.extra)


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
