"""What a request may carry: the body read within its limits, and each field of it
checked, with the problem code a bad one gets.

The routes of :mod:`.api` call these on their input before anything reaches the
service; :mod:`.urlschema` writes the same rules for ``url`` as the OpenAPI
document's pattern, and ``tests/test_url_pattern.py`` holds the two together.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Response, after_this_request, current_app, has_app_context, request

from ..engine import oci, references, sources
from ..engine.fileset import Selection, safe_path
from ..engine.headers import (
    HEADER_NAME_PATTERN,
    RESERVED_HEADERS,
    hides_dot_segment,
    without_dot_segments,
)
from ..errors import ArwError, BadRequest, UnsupportedMediaType
from ..store.lock import StateLockError
from ..store.storage import valid_id
from .guards import BodyIncomplete, BodyTimeout, close_after_response, read_body
from .urlschema import MAX_URL

if TYPE_CHECKING:
    from .app import ServiceState

MAX_BODY = 64 * 1024
SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


def service() -> ServiceState:
    state: ServiceState = current_app.extensions["arw_models"]
    try:
        state.start()
    except StateLockError as exc:
        # Another process serves this state directory (say, a host app run with
        # several workers): say so, rather than fail with a bare 500.
        raise ArwError(str(exc), status=503, code="state-dir-in-use", title="Service unavailable") from None
    return state


def json_body() -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ArwError(f"the body is larger than {MAX_BODY} bytes", status=413, code="body-too-large",
                       title="Content too large")
    if not request.is_json:
        raise UnsupportedMediaType("send the body as application/json")
    # Read at most one byte past the limit: a chunked body announces no length.
    timeout = service().settings.body_timeout
    try:
        data = read_body(request.stream, request.environ, limit=MAX_BODY + 1, timeout=timeout,
                         expected=request.content_length)
    except (BodyTimeout, BodyIncomplete) as exc:
        # Where the next request would start on this connection is unknown: it ends here.
        shut = close_after_response(request.environ)

        @after_this_request
        def end_connection(response: Response) -> Response:
            response.call_on_close(shut)
            return response

        if isinstance(exc, BodyTimeout):
            raise ArwError(f"the request body did not arrive within {timeout:g} s", status=408,
                           code="request-timeout", title="Request timeout", headers={"Connection": "close"}) from None
        raise BadRequest(str(exc), code="incomplete-body", headers={"Connection": "close"}) from None
    if len(data) > MAX_BODY:
        raise ArwError(f"the body is larger than {MAX_BODY} bytes", status=413, code="body-too-large",
                       title="Content too large")
    try:
        body = current_app.json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        raise BadRequest("the body is not valid JSON", code="invalid-json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid-body")
    return body


def checked_id(value: Any) -> str:
    if not valid_id(value):
        raise BadRequest(
            "id must be 1-128 characters of A-Z a-z 0-9 . _ - and must not start with '.'",
            code="invalid-id",
        )
    return value


def checked_url(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest("url is required: an http or https URL", code="invalid-url")
    if len(value) > MAX_URL or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise BadRequest("url must be a single http or https URL without spaces", code="invalid-url")
    if any("\ud800" <= ch <= "\udfff" for ch in value):  # JSON's lone surrogates: no url can encode them
        raise BadRequest("url must be valid Unicode", code="invalid-url")
    if oci.names_registry(value):
        try:
            oci.parse(value)
        except sources.InvalidReference as exc:
            raise BadRequest(f"url is not a valid registry reference: {exc}", code="invalid-url") from None
    resolver = service().manager.references if has_app_context() else references
    if resolver.names_many(value):
        return value  # a model of many files: its resolver reads the reference
    if value.startswith(sources.HF_SCHEME):
        try:
            sources.parse_hf(value)
        except sources.InvalidReference as exc:
            raise BadRequest(f"url is not a valid hf:// reference: {exc}", code="invalid-url") from None
        return value
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a malformed port
    except ValueError:
        raise BadRequest("url is not a valid URL", code="invalid-url") from None
    if port == 0:
        # Port 0 means "any port" to a socket API: no origin listens there.
        raise BadRequest("url must not use port 0", code="invalid-url")
    if parts.scheme.lower() not in ("http", "https"):
        raise BadRequest("url must use http or https", code="invalid-url")
    if not parts.hostname:
        raise BadRequest("url must name a host", code="invalid-url")
    if hides_dot_segment(parts.path):
        raise BadRequest("url must not hide a . or .. segment behind an encoded slash or a backslash",
                         code="invalid-url")
    # Resolved once, here: the job, its sidecar, the model entry, the origin and every
    # mirror template see the same path, and a ".." cannot climb out of a mirror's
    # prefix ({path} after "/cache/{host}") once an HTTP client or server resolves it.
    return without_dot_segments(value)


def checked_sha256(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not SHA256_RE.fullmatch(value):
        raise BadRequest("sha256 must be exactly 64 hexadecimal digits", code="invalid-sha256")
    return value.lower()


def checked_rate(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():  # JSON has one kind of number: 5e6 is a whole one
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**12:
        raise BadRequest(f"{name} must be a whole number of bytes per second (1 or more), or null",
                         code="invalid-rate-limit")
    return value


HEADER_NAME = re.compile(HEADER_NAME_PATTERN)
MAX_HEADERS = 32


def checked_headers(value: Any) -> dict[str, str]:
    """Request headers for a gated origin: an object of header names to strings."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_HEADERS:
        raise BadRequest(f"headers must be an object of at most {MAX_HEADERS} header names to string values",
                         code="invalid-headers")
    for name, text in value.items():
        if not HEADER_NAME.fullmatch(name):
            raise BadRequest("a header name must be an HTTP token", code="invalid-headers")
        if name.lower() in RESERVED_HEADERS:
            raise BadRequest(f"the header {name} is set by the service itself", code="invalid-headers")
        # The value is never quoted back: it may be a credential.
        # HTTP sends a field value as latin-1: a character beyond it could not be sent.
        if not isinstance(text, str) or len(text) > 8192 or any(ord(ch) < 32 and ch != "\t" or ord(ch) == 127
                                                                 or ord(ch) > 255 for ch in text):
            raise BadRequest(f"the value of header {name} must be a string of printable characters",
                             code="invalid-headers")
    # One name in two spellings is one field; its lines combine as HTTP combines them.
    fields: dict[str, tuple[str, str]] = {}
    for name, text in value.items():
        if name.lower() in fields:
            first, joined = fields[name.lower()]
            glue = "; " if name.lower() == "cookie" else ", "
            fields[name.lower()] = (first, f"{joined}{glue}{text.strip()}")
        else:
            fields[name.lower()] = (name, text.strip())
    return dict(fields.values())


def checked_provider(value: Any) -> str:
    if value is None:
        return "local"
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isprintable():
        raise BadRequest("provider must be a short printable string", code="invalid-provider")
    return value


MAX_PATTERNS = 256


def checked_selection(body: dict[str, Any], many: bool) -> Selection | None:
    """``include``, ``exclude`` and ``files``: lists of strings, for a url that
    names many files (None for one that names one file)."""
    given = {k: body.get(k) for k in ("include", "exclude", "files") if body.get(k) is not None}
    if not many:
        if given:
            raise BadRequest(f"{', '.join(sorted(given))} select files of a model of many files; this url names "
                             "one file", code="invalid-selection")
        return None
    for key, value in given.items():
        if (not isinstance(value, list) or len(value) > MAX_PATTERNS
                or not all(isinstance(v, str) and 0 < len(v) <= 1024 and v.isprintable() for v in value)):
            raise BadRequest(f"{key} must be a list of at most {MAX_PATTERNS} non-empty strings",
                             code="invalid-selection")
    if given.get("files") and (given.get("include") or given.get("exclude")):
        raise BadRequest("files names the files exactly: it goes without include and exclude",
                         code="invalid-selection")
    if any(not safe_path(p) for p in given.get("files") or ()):
        raise BadRequest("files must be paths inside the repository (no leading /, no . or .. segment)",
                         code="invalid-selection")
    return Selection(tuple(given.get("include") or ()), tuple(given.get("exclude") or ()),
                     tuple(given.get("files") or ()))


def checked_flag(value: Any, name: str, default: bool | None = False) -> bool | None:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false", code="invalid-body")
    return value
