"""The domain errors: one root exception for everything a client can be told (a
stable kebab-case ``code``, a title and a detail), a download's failure and its
stop, as plain exceptions.

Part of the shared kernel: every layer raises these, so this imports nothing of
ours and nothing of Flask. How each becomes an HTTP answer (its status, its RFC 9457
problem document) is the server's, in :mod:`arw_models.server.problems`."""

from __future__ import annotations

from typing import Any

# The ``code`` of an ``error`` event (a failed download), not of an HTTP answer.
EVENT_ERROR_CODES = (
    "checksum-mismatch", "size-mismatch", "http-status", "network", "dns-error", "connection-refused", "tls",
    "resume-invalid", "invalid-manifest", "registry-auth",
    "disk-insufficient", "disk-full", "disk-error", "size-limit", "too-many-redirects",
    "invalid-redirect", "invalid-url", "internal-error",
    # A model of many files whose reference cannot be resolved here, whose listing is no
    # model, or whose selection picks nothing or names a file the listing lacks.
    "unsupported-reference", "invalid-listing", "invalid-selection",
)


class ArwError(Exception):
    """An error a client is told of, with a stable kebab-case ``code``. ``status`` is
    the HTTP status for a code the server's table
    (:data:`arw_models.server.problems.PROBLEM_CODES`) does not list."""

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
