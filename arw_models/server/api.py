"""The blueprint: thin views that check their input (:mod:`.checks`) and hand work
to the manager."""

from __future__ import annotations

import hmac
import re
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from .._version import __version__
from ..errors import ArwError, BadRequest, NotFound, TransferError, Unauthorized
from ..service.listing import public_model
from ..service.metrics import CONTENT_TYPE
from ..store.blobs import Blobs
from . import hosting, web
from .checks import (
    checked_flag,
    checked_headers,
    checked_id,
    checked_provider,
    checked_rate,
    checked_selection,
    checked_sha256,
    checked_url,
    json_body,
    service,
)
from .guards import client_probe
from .openapi import document
from .problems import handle_arw_error, handle_unexpected
from .stream import stream_response

bp = Blueprint("arw_models", __name__)
bp.register_error_handler(ArwError, handle_arw_error)
bp.register_error_handler(Exception, handle_unexpected)

EVENT_ID_RE = re.compile(r"[0-9]{1,20}")  # ASCII digits only: str.isdigit() also accepts '²'
PROTECTED_ENDPOINTS = {"arw_models.events"}
# EventSource cannot send headers: a page's stream carries the token in the query,
# on this one read-only route (see "Web page" in the README for why not elsewhere).
QUERY_TOKEN_ENDPOINT = "arw_models.events"
QUERY_TOKEN = "access_token"


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
