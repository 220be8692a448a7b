"""The blueprint: thin views that check input and hand work to the manager.

About 400 lines, one concern: the HTTP surface, each route beside the checks of
its own input, so that a reader sees a route and what it refuses together.
"""

from __future__ import annotations

import hmac
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    after_this_request,
    current_app,
    has_app_context,
    jsonify,
    request,
    url_for,
)

from .._version import __version__
from ..engine import oci, references, sources
from ..engine.fileset import Selection, safe_path
from ..engine.headers import (
    HEADER_NAME_PATTERN,
    RESERVED_HEADERS,
    hides_dot_segment,
    without_dot_segments,
)
from ..errors import (
    ArwError,
    BadRequest,
    NotFound,
    TransferError,
    Unauthorized,
    UnsupportedMediaType,
)
from ..service.listing import public_model
from ..service.metrics import CONTENT_TYPE
from ..store.blobs import Blobs
from ..store.lock import StateLockError
from ..store.storage import valid_id
from . import hosting, web
from .guards import (
    BodyIncomplete,
    BodyTimeout,
    client_probe,
    close_after_response,
    read_body,
)
from .openapi import document
from .problems import handle_arw_error, handle_unexpected
from .stream import stream_response

if TYPE_CHECKING:
    from .app import ServiceState

bp = Blueprint("arw_models", __name__)
bp.register_error_handler(ArwError, handle_arw_error)
bp.register_error_handler(Exception, handle_unexpected)

MAX_BODY = 64 * 1024
MAX_URL = 8192
SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
EVENT_ID_RE = re.compile(r"[0-9]{1,20}")  # ASCII digits only: str.isdigit() also accepts '²'
PROTECTED_ENDPOINTS = {"arw_models.events"}
# EventSource cannot send headers: a page's stream carries the token in the query,
# on this one read-only route (see "Web page" in the README for why not elsewhere).
QUERY_TOKEN_ENDPOINT = "arw_models.events"
QUERY_TOKEN = "access_token"


def service() -> ServiceState:
    state: ServiceState = current_app.extensions["arw_models"]
    try:
        state.start()
    except StateLockError as exc:
        # Another process serves this state directory (say, a host app run with
        # several workers): say so, rather than fail with a bare 500.
        raise ArwError(str(exc), status=503, code="state-dir-in-use", title="Service unavailable") from None
    return state


@bp.before_request
def require_token() -> None:
    token = service().settings.admin_token
    # A CORS preflight never carries credentials, whatever the route.
    if not token or request.method == "OPTIONS" or (
            request.method in ("GET", "HEAD") and request.endpoint not in PROTECTED_ENDPOINTS):
        return
    given = request.headers.get("X-ARW-Admin")
    auth = request.headers.get("Authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if given is None and request.method == "GET" and request.endpoint == QUERY_TOKEN_ENDPOINT:
        given = request.args.get(QUERY_TOKEN)
    if given is None or not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
        raise Unauthorized(
            "this endpoint needs the admin token (Authorization: Bearer <token> or X-ARW-Admin: <token>)",
            code="invalid-token" if given is not None else "missing-token",
            headers={"WWW-Authenticate": 'Bearer realm="arw-models"'},
        )


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


@bp.post("/models/download")
def download() -> Response | tuple[Response, int]:
    body = json_body()
    model_id = checked_id(body.get("id"))
    url = checked_url(body.get("url"))
    manager = service().manager
    selection = checked_selection(body, manager.references.names_many(url))
    sha256 = checked_sha256(body.get("sha256"))
    if selection is not None and sha256 is not None:
        raise BadRequest("sha256 is one file's digest; a model of many files has its listing's",
                         code="invalid-sha256")
    provider = checked_provider(body.get("provider"))
    rate_limit = checked_rate(body.get("rate_limit"), "rate_limit")
    headers = checked_headers(body.get("headers"))
    dry_run = checked_flag(body.get("dry_run"), "dry_run")
    force = bool(checked_flag(body.get("force"), "force"))
    hf_cache = checked_flag(body.get("hf_cache"), "hf_cache", None)
    if dry_run:
        if selection is None:
            raise BadRequest("dry_run answers for a model of many files; this url names one file",
                             code="invalid-selection")
        try:
            return jsonify(manager.dry_run(model_id, url, selection, headers))
        except TransferError as err:
            raise ArwError(f"the reference cannot be resolved ({err.code}): {err.message}", status=502,
                           code="resolve-failed", title="Bad gateway") from None
    status, item = manager.submit(model_id, url, sha256, provider, rate_limit=rate_limit, headers=headers,
                                  selection=selection, force=force, hf_cache=hf_cache)
    return _job_answer(status, item, model_id)


@bp.put("/settings/rate-limit")
def rate_limit() -> Response:
    body = json_body()
    if "bytes_per_sec" not in body:
        raise BadRequest("bytes_per_sec is required: a number of bytes per second, or null for no limit",
                         code="invalid-rate-limit")
    limit = checked_rate(body["bytes_per_sec"], "bytes_per_sec")
    service().manager.set_rate_limit(limit)
    return jsonify({"bytes_per_sec": limit})


@bp.post("/models/download/cancel")
def cancel() -> Response:
    body = json_body()
    model_id = checked_id(body.get("id"))
    return jsonify(service().manager.cancel(model_id))


@bp.post("/models/download/pause")
def pause() -> Response:
    body = json_body()
    return jsonify(service().manager.pause(checked_id(body.get("id"))))


@bp.post("/models/download/resume")
def resume() -> Response:
    body = json_body()
    model_id = checked_id(body.get("id"))
    status, item = service().manager.resume(model_id)
    return _job_answer(status, item, model_id)


def _job_answer(status: int, item: dict[str, Any], model_id: str) -> Response:
    """A started (202, with where to follow it) or an installed (200) download."""
    response = jsonify(item)
    response.status_code = status
    if status == 202:
        response.headers["Location"] = url_for(".download_status", model_id=model_id)
    return response


@bp.get("/models")
def models() -> Response:
    state = service()
    return jsonify({"items": [public_model(m, state.dirs) for m in state.registry.all()]})


@bp.delete("/models/<model_id>")
def delete_model(model_id: str) -> Response:
    return jsonify(service().manager.delete(checked_id(model_id)))


@bp.get("/models/downloads")
def downloads() -> Response:
    return jsonify({"items": service().manager.jobs()})


@bp.get("/models/downloads/<model_id>")
def download_status(model_id: str) -> Response:
    item = service().manager.job(checked_id(model_id))
    if item is None:
        raise NotFound(f"no download of {model_id} is known", code="unknown-download")
    return jsonify(item)


def _event_id(value: str | None, name: str) -> int | None:
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if not EVENT_ID_RE.fullmatch(value):
        raise BadRequest(f"{name} must be a non-negative integer event id", code="invalid-event-id")
    return int(value)


@bp.get("/events")
def events() -> Response:
    state = service()
    after = _event_id(request.args.get("after"), "after")
    header = _event_id(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    if header is not None:
        after = header  # a reconnecting browser knows best where it stopped
    replay = _event_id(request.args.get("replay"), "replay")
    prefixes = [p for p in request.args.getlist("prefix") if p]
    unsupported = hosting.streams_unsupported(request.environ)
    if unsupported is not None:
        # The stream would hold the server's only thread until the client leaves,
        # and every other request (the host app's too) would wait. No Retry-After:
        # waiting does not change the server.
        raise ArwError(unsupported, status=503, code="streams-unsupported", title="Service unavailable")
    release = state.streams.acquire()
    if release is None:
        # Each stream holds a server thread: past the cap, the threads left over
        # stay free for every other request.
        retry_after = max(1, -(-state.settings.retry_ms // 1000))
        raise ArwError(f"{state.streams.limit} event streams are open, the most this service allows "
                       f"({state.streams.why}); try again later. To allow more, set ARW_EVENTS_MAX_STREAMS, "
                       "or give the server more threads (gunicorn --threads N, and ARW_THREADS=N under a "
                       "server whose thread count the service cannot read)",
                       status=503, code="too-many-streams", title="Service unavailable",
                       headers={"Retry-After": str(retry_after)})
    try:
        return stream_response(
            state.hub,
            prefixes=prefixes,
            after=after,
            replay=replay,
            keepalive=state.settings.keepalive,
            retry_ms=state.settings.retry_ms,
            hello={"version": __version__},
            client_gone=client_probe(request.environ),
            on_close=release,
        )
    except BaseException:
        release()
        raise


@bp.get("/probe")
def probe() -> Response:
    state = service()
    return jsonify({
        "service": "arw-models",
        "version": __version__,
        "state_dir": state.dirs.root,
        "models_dir": state.dirs.models_dir,
        "store_dir": state.dirs.store_dir,
        "store_bytes": Blobs(state.dirs).total_bytes(),
        "settings": state.settings.public(),
        "subscribers": state.hub.subscriber_count,
        "streams": state.streams.in_use,
        "last_event_id": state.hub.last_id,
    })


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"ok": True})


@bp.get("/")
def index() -> Response:
    return web.page()


@bp.get("/web/<name>")
def web_asset(name: str) -> Response:
    return web.asset(name)


@bp.get("/metrics")
def metrics() -> Response:
    return Response(service().metrics.render(), content_type=CONTENT_TYPE)


@bp.get("/openapi.json")
def openapi() -> Response:
    # Where the blueprint is mounted (script root and url_prefix): the document's paths hang below it.
    here = url_for(".openapi")
    return jsonify(document(here[: -len("/openapi.json")] or "/"))
