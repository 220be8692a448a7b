"""The HTTP contract as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

Built here as plain data so that it stays next to the code it describes: the
tests check that every route of the blueprint is in it with its methods, that
the problem codes listed in :data:`PROBLEM_CODES` are the ones the README lists,
and ``make fuzz`` runs schemathesis against a live service with it.

Every problem answer has the one ``Problem`` schema, by reference, so that a
generated client parses each 4xx and 5xx into one typed object; the codes an
operation can answer with are listed on its response (in its description, and as
``x-problem-codes`` for tools and the tests), not as an ``enum``: ``code`` is an
open set, and a client must not break on a code added later.

It is longer than most modules on purpose: it is one document, whose schemas refer
to each other; split by path, each part would have to import the others' schemas.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from .._version import __version__
from ..engine.headers import HEADER_NAME_PATTERN, RESERVED_HEADERS
from ..errors import EVENT_ERROR_CODES
from .problems import PROBLEM_CODES, PROBLEM_TITLES
from .urlschema import url_schema

JOB_STATUSES = ("queued", "started", "resumed", "downloading", "retrying", "verifying", "complete", "error",
                "canceled", "paused", "interrupted", "resumable")

# Any operation may answer it: a failure the service did not foresee.
INTERNAL_ERROR = "internal-error"

ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
EVENT_ID_PATTERN = r"^\s*[0-9]{1,20}\s*$"
# The reserved header names in any case (a JSON Schema pattern has no flags).
_RESERVED_PATTERN = "^(" + "|".join(
    "".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in name)
    for name in sorted(RESERVED_HEADERS)) + ")$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _problems(*codes: str) -> dict[str, dict[str, Any]]:
    """The problem responses of an operation, one per status, each naming its codes."""
    by_status: dict[int, list[str]] = {500: [INTERNAL_ERROR]}
    for code in codes:
        by_status.setdefault(PROBLEM_CODES[code], []).append(code)
    responses: dict[str, dict[str, Any]] = {}
    for status, listed in sorted(by_status.items()):
        response: dict[str, Any] = {
            "description": f"{PROBLEM_TITLES[status]}: " + ", ".join(f"``{c}``" for c in listed),
            "x-problem-codes": listed,
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"required": True, "schema": {"type": "string"},
                                                         "description": 'Bearer realm="arw-models"'}}
        if status == 503 and "too-many-streams" in listed:
            response["headers"] = {"Retry-After": {"schema": {"type": "string"},
                                                   "description": "seconds; sent with ``too-many-streams``"}}
        responses[str(status)] = response
    return responses


SERVICE = ("state-dir-in-use", "state-dir-unsafe")  # any request may meet these
AUTH = ("missing-token", "invalid-token")
BODY = ("invalid-json", "invalid-body", "incomplete-body", "request-timeout", "body-too-large",
        "unsupported-media-type")
ADMIN = [{"adminBearer": []}, {"adminHeader": []}]

_LOCATION = {"Location": {"required": True, "schema": {"type": "string"},
                          "description": "where the job's status is: ``/models/downloads/<id>``"}}


def _id_body(description: str) -> dict[str, Any]:
    return {"required": True, "description": description, "content": {"application/json": {"schema": {
        "type": "object", "required": ["id"], "properties": {"id": _ref("ModelId")}}}}}


def _operation(summary: str, responses: dict[str, Any], *, admin: bool = False, body: dict[str, Any] | None = None,
               parameters: list[dict[str, Any]] | None = None, operation_id: str, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary, **extra}
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    if admin:
        op["security"] = ADMIN
    op["responses"] = responses
    return op


def _paths() -> dict[str, Any]:
    model_id_param = {"name": "model_id", "in": "path", "required": True, "schema": _ref("ModelId")}
    return {
        "/models/download": {"post": _operation(
            "Start, resume or join a download",
            {"200": _json({"anyOf": [_ref("Model"), _ref("DryRun")]},
                          "Already installed from that url (and sha256, or selection): nothing is transferred; or "
                          "the answer of a ``dry_run``"),
             "202": _json(_ref("Job"), "Accepted: the job as it begins (queued, started or resumed), or the "
                          "running job of the same id, url and sha256; ``kept``, ``discarded`` and "
                          "``provisional`` say what becomes of the bytes on disk", _LOCATION),
             **_problems("invalid-id", "invalid-url", "invalid-sha256", "invalid-provider", "invalid-rate-limit",
                         "invalid-headers", "invalid-selection", "resolve-failed", "already-downloading", "download-ending", "shutting-down", *BODY, *AUTH, *SERVICE)},
            admin=True, operation_id="startDownload",
            body={"required": True, "content": {"application/json": {"schema": _ref("DownloadRequest")}}},
            description="Answers at once; the transfer goes on in the background and reports on ``/events``. "
                        "A url that names a model of many files (``hf://OWNER/REPO[@REV]``, ``ollama://``, "
                        "``oci://``) takes ``include``, ``exclude`` or ``files``; with ``dry_run`` the answer "
                        "(200) lists what would be fetched (a ``DryRun``) and nothing starts.",
        )},
        "/models/download/cancel": {"post": _operation(
            "Cancel a download and remove its partial file",
            {"200": _json({"type": "object", "required": ["id", "status"],
                           "properties": {"id": _ref("ModelId"), "status": {"const": "canceled"}}},
                          "Canceled: the transfer has stopped and its partial file is gone"),
             **_problems("invalid-id", "no-active-download", *BODY, *AUTH, *SERVICE)},
            admin=True, operation_id="cancelDownload", body=_id_body("The download to cancel"),
        )},
        "/models/download/pause": {"post": _operation(
            "Pause a running or queued download, keeping its partial file",
            {"200": _json(_ref("Job"), "Paused (status ``paused``): the transfer has stopped"),
             **_problems("invalid-id", "no-active-download", *BODY, *AUTH, *SERVICE)},
            admin=True, operation_id="pauseDownload", body=_id_body("The download to pause"),
        )},
        "/models/download/resume": {"post": _operation(
            "Continue a paused or resumable download",
            {"202": _json(_ref("Job"), "Accepted: the job continues from the bytes on disk (``resumed``, "
                          "``kept``), or starts over (``started``, ``discarded``) when they cannot be kept",
                          _LOCATION),
             **_problems("invalid-id", "no-active-download", "download-ending", "shutting-down", *BODY, *AUTH,
                         *SERVICE)},
            admin=True, operation_id="resumeDownload", body=_id_body("The download to continue"),
        )},
        "/models": {"get": _operation(
            "Installed models",
            {"200": _json(_items("Model"), "Every installed model"), **_problems(*SERVICE)},
            operation_id="listModels",
        )},
        "/models/{model_id}": {"delete": _operation(
            "Remove an installed model and its file",
            {"200": _json({"type": "object", "required": ["id", "status"],
                           "properties": {"id": _ref("ModelId"), "status": {"const": "deleted"}}}, "Removed"),
             **_problems("invalid-id", "unknown-model", "download-in-progress", *AUTH, *SERVICE)},
            admin=True, operation_id="deleteModel", parameters=[model_id_param],
        )},
        "/models/downloads": {"get": _operation(
            "Queued and running jobs, then partial downloads a POST would resume",
            {"200": _json(_items("Job"), "The jobs"), **_problems(*SERVICE)},
            operation_id="listDownloads",
        )},
        "/models/downloads/{model_id}": {"get": _operation(
            "One job, including the last state of a finished one",
            {"200": _json(_ref("Job"), "The job"), **_problems("invalid-id", "unknown-download", *SERVICE)},
            operation_id="getDownload", parameters=[model_id_param],
        )},
        "/events": {"get": _operation(
            "The Server-Sent Events stream",
            {"200": {"description": "A stream of SSE frames that does not end: ``service.connected`` first "
                     "(without an id), then replayed and live events, ``: keep-alive`` comments when idle, "
                     "``bus.gap`` after dropped events. Each frame's ``data`` is an ``EventEnvelope``.",
                     "headers": {"Cache-Control": {"schema": {"const": "no-cache"}},
                                 "X-Accel-Buffering": {"schema": {"const": "no"}}},
                     "content": {"text/event-stream": {
                         "schema": {"type": "string"},
                         "x-events": {kind: _ref(name) for kind, name in EVENT_KINDS.items()}}}},
             **_problems("invalid-event-id", "too-many-streams", "streams-unsupported", *AUTH, *SERVICE)},
            admin=True, operation_id="events",
            parameters=[
                {"name": "after", "in": "query", "schema": {"type": "string", "pattern": EVENT_ID_PATTERN},
                 "description": "replay the buffered events after this id, then continue live"},
                {"name": "replay", "in": "query", "schema": {"type": "string", "pattern": EVENT_ID_PATTERN},
                 "description": "start with the last N events (ignored with ``after`` or Last-Event-ID)"},
                {"name": "prefix", "in": "query", "style": "form", "explode": True,
                 "schema": {"type": "array", "items": {"type": "string"}},
                 "description": "keep only kinds that start with one of these (repeatable)"},
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string", "pattern": EVENT_ID_PATTERN},
                 "description": "sent by a reconnecting browser; wins over ``after``"},
            ],
        )},
        "/probe": {"get": _operation(
            "Where state lives and how the service is set up",
            {"200": _json(_ref("Probe"), "The service's setup"), **_problems(*SERVICE)},
            operation_id="probe",
        )},
        "/healthz": {"get": _operation(
            "Liveness",
            {"200": _json({"type": "object", "required": ["ok"], "properties": {"ok": {"const": True}}}, "Alive"),
             **_problems(*SERVICE)},
            operation_id="healthz",
        )},
        "/settings/rate-limit": {"put": _operation(
            "Set the rate limit of all downloads, at once",
            {"200": _json(_ref("RateLimit"), "The limit now in force"),
             **_problems("invalid-rate-limit", *BODY, *AUTH, *SERVICE)},
            admin=True, operation_id="setRateLimit",
            body={"required": True, "content": {"application/json": {"schema": _ref("RateLimit")}}},
        )},
        "/": {"get": _operation(
            "The web page",
            {"200": {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}},
             **_problems(*SERVICE)},
            operation_id="webPage",
        )},
        "/web/{name}": {"get": _operation(
            "The web page's script or stylesheet",
            {"200": {"description": "app.js or app.css",
                     "content": {"text/javascript": {"schema": {"type": "string"}},
                                 "text/css": {"schema": {"type": "string"}}}},
             **_problems("unknown-asset", *SERVICE)},
            operation_id="webAsset",
            parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        )},
        "/openapi.json": {"get": _operation(
            "This document",
            {"200": _json({"type": "object"}, "The OpenAPI 3.1 document"), **_problems(*SERVICE)},
            operation_id="openapi",
        )},
        "/blobs/sha256/{digest}": {"get": _operation(
            "A blob of the store, by its SHA-256 (for peers: ARW_DL_PEERS)",
            {"200": {"description": "The blob's bytes (HEAD: the same headers, no body)",
                     "headers": {**_BLOB_HEADERS, "Content-Length": {"required": True, "schema": _INT}},
                     "content": {"application/octet-stream": {"schema": {"type": "string"}}}},
             "206": {"description": "The range asked for (``Range``, and ``If-Range`` naming this ETag)",
                     "headers": {**_BLOB_HEADERS, "Content-Range": {"required": True, "schema": {"type": "string"}}},
                     "content": {"application/octet-stream": {"schema": {"type": "string"}}}},
             "304": {"description": "``If-None-Match`` names this ETag", "headers": _BLOB_HEADERS},
             **_problems("unknown-blob", "blobs-not-served", "range-not-satisfiable", *AUTH, *SERVICE)},
            admin=True, operation_id="getBlob",
            description="HEAD answers alike, without the body. Only a verified blob of the store is served, "
                        "opened without following a link; a digest the store does not hold, a malformed one and "
                        "(unless ARW_SERVE_GATED_BLOBS) the blob of a gated download are 404 ``unknown-blob``; "
                        "ARW_SERVE_BLOBS=0 makes every one a 404 ``blobs-not-served``. Needs the admin token "
                        "when ARW_ADMIN_TOKEN is set.",
            parameters=[{"name": "digest", "in": "path", "required": True,
                         "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}],
        )},
        "/metrics": {"get": _operation(
            "Metrics in the Prometheus text format",
            {"200": {"description": "Counters of downloads and bytes, gauges of jobs, event subscribers and "
                     "the rate limit", "content": {"text/plain": {"schema": {"type": "string"}}}},
             **_problems(*SERVICE)},
            operation_id="metrics",
        )},
    }


_BLOB_HEADERS = {
    "ETag": {"required": True, "schema": {"type": "string"}, "description": "the digest, quoted"},
    "Accept-Ranges": {"schema": {"const": "bytes"}},
    "Repr-Digest": {"schema": {"type": "string"}, "description": "``sha-256=:<base64>:`` (RFC 9530)"},
}


def _items(name: str) -> dict[str, Any]:
    return {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": _ref(name)}}}


EVENT_KINDS = {
    "Models.DownloadProgress": "DownloadProgressEvent",
    "Models.Changed": "ModelsChangedEvent",
    "service.connected": "ConnectedEvent",
    "bus.gap": "GapEvent",
}

_INT = {"type": "integer", "minimum": 0}
_OPT_SHA = {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"}


def _progress(status: str, required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": ["id", "status", *required],
            "properties": {"id": _ref("ModelId"), "status": {"const": status}, **properties}}


def _envelope(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["time", "kind", "payload"], "properties": {
        "time": {"type": "string", "description": "UTC, ISO 8601 with milliseconds"},
        "kind": {"const": kind}, "payload": payload}}


def _schemas() -> dict[str, Any]:
    return {
        "ModelId": {"type": "string", "pattern": ID_PATTERN, "minLength": 1, "maxLength": 128,
                    "description": "1-128 characters of A-Z a-z 0-9 . _ -, not starting with a dot"},
        "Problem": {
            "type": "object", "required": ["type", "title", "status", "detail", "code"],
            "description": "An RFC 9457 problem document, the body of every 4xx and 5xx answer. Some carry "
                           "more members: ``job`` (the job in the way) with ``already-downloading`` and "
                           "``download-ending``.",
            "properties": {
                "type": {"type": "string", "description": "``about:blank``: the ``code`` says what happened"},
                "title": {"type": "string", "description": "the status's name"},
                "status": {"type": "integer", "description": "the HTTP status"},
                "detail": {"type": "string", "description": "what went wrong with this request, for people"},
                "code": {"type": "string", "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$",
                         "description": "stable and kebab-case, for programs: an open set (a client must "
                                        "expect codes added later); known today: "
                                        + ", ".join(sorted([*PROBLEM_CODES, INTERNAL_ERROR]))},
                "job": _ref("Job"),
            },
        },
        "DownloadRequest": {
            "type": "object", "required": ["id", "url"],
            "properties": {
                "id": _ref("ModelId"),
                "url": url_schema(),
                "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-fA-F]{64}$",
                           "description": "the expected SHA-256, 64 hex digits in either case"},
                "provider": {"type": ["string", "null"], "minLength": 1, "maxLength": 64,
                             "pattern": "^[ -~]+$", "description": "a short printable label; default ``local``"},
                "rate_limit": {"type": ["integer", "null"], "minimum": 1, "maximum": 10**12,
                               "description": "optional: bytes per second for this download"},
                "headers": {"type": ["object", "null"], "maxProperties": 32,
                            "propertyNames": {"pattern": f"^{HEADER_NAME_PATTERN}$",
                                              "not": {"pattern": _RESERVED_PATTERN}},
                            "additionalProperties": {"type": "string", "maxLength": 8192,
                                                     "pattern": "^[\t\u0020-\u007e\u0080-\u00ff]*$"},
                            "description": "optional request headers for a gated origin (``Authorization``, "
                                           "say): sent only to the url's own host, never shown; values are "
                                           "latin-1 text, and the names the transfer sets itself (Host, Range, "
                                           "Accept-Encoding...) are refused"},
                "include": {"type": ["array", "null"], "items": {"type": "string"}, "maxItems": 256,
                            "description": "a model of many files: glob patterns of the paths to fetch"},
                "exclude": {"type": ["array", "null"], "items": {"type": "string"}, "maxItems": 256,
                            "description": "a model of many files: glob patterns of the paths not to fetch"},
                "files": {"type": ["array", "null"], "items": {"type": "string"}, "maxItems": 256,
                          "description": "a model of many files: the exact paths to fetch"},
                "dry_run": {"type": ["boolean", "null"],
                            "description": "answer with what would be fetched (200, a DryRun); start nothing"},
                "force": {"type": ["boolean", "null"],
                          "description": "fetch again even if installed or in the store"},
                "hf_cache": {"type": ["boolean", "null"],
                             "description": "export to ARW_HF_CACHE for this request (default: when it is set)"},
            },
        },
        "DryRun": {
            "type": "object", "required": ["id", "url", "provider", "revision", "files", "total", "to_fetch"],
            "properties": {
                "id": _ref("ModelId"), "url": {"type": "string"}, "provider": {"type": "string"},
                "revision": {"type": "string"}, "total": _INT, "to_fetch": _INT,
                "files": {"type": "array", "items": {
                    "type": "object", "required": ["path", "bytes", "sha256", "in_store"],
                    "properties": {"path": {"type": "string"}, "bytes": {"type": ["integer", "null"]},
                                   "sha256": _OPT_SHA, "in_store": {"type": "boolean"}}}},
            },
        },
        "Model": {
            "type": "object", "required": ["id", "file", "status"],
            "properties": {
                "id": _ref("ModelId"), "provider": {"type": "string"},
                "status": {"enum": ["available", "missing"]},
                "file": {"type": "string"}, "path": {"type": "string", "description": "the file, in models/"},
                "blob": {"type": "string", "description": "where the store keeps its bytes (the same file as "
                                                          "``path``, a hard link); absent for a model an older "
                                                          "version installed that could not be stored"},
                "sha256": _OPT_SHA,
                "bytes": _INT, "url": {"type": "string", "description": "without credentials"},
                "downloaded_at": {"type": "string"},
                "sha256_source": {"enum": ["request", "origin", "computed"],
                                  "description": "what the file was checked against"},
                "revision": {"type": ["string", "null"], "description": "the revision a model of many files was "
                                                                         "fetched at"},
                "selection": {"type": "object", "description": "the files of a model of many files asked for"},
                "files": {"type": "array", "description": "a model of many files: its files, in the folder "
                                                          "``path``", "items": {
                    "type": "object", "required": ["path", "bytes", "sha256"],
                    "properties": {"path": {"type": "string"}, "bytes": _INT, "sha256": _OPT_SHA,
                                   "git_oid": {"type": "string"}}}},
            },
        },
        "Job": {
            "type": "object", "required": ["id", "status"],
            "description": "A job's snapshot; an ``error`` one carries the failure's ``code``, ``error`` and "
                           "context, a finished one that kept its ``.part`` ``resumable: true``",
            "properties": {
                "id": _ref("ModelId"), "url": {"type": "string"}, "provider": {"type": "string"},
                "sha256": _OPT_SHA, "status": {"enum": list(JOB_STATUSES)}, "retries": _INT,
                "created_at": {"type": "string"}, "finished_at": {"type": "string"},
                "downloaded": _INT, "total": _INT, "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                "revision": {"type": ["string", "null"]}, "files": {"type": "array", "description": "a model of many files: each file's progress",
                          "items": {"type": "object", "required": ["path", "downloaded", "total", "status"],
                                    "properties": {"path": {"type": "string"}, "downloaded": _INT,
                                                   "total": {"type": ["integer", "null"]},
                                                   "status": {"enum": ["queued", "downloading", "verifying",
                                                                       "complete", "stored", "failed"]}}}},
                "offset": _INT, "file": {"type": "string"}, "resumable": {"type": "boolean"},
                "code": {"type": "string"}, "error": {"type": "string"},
                "last_error": {"type": "object", "required": ["code", "error"],
                               "description": "while the job waits to retry (and until bytes flow again): "
                                              "the failure it retries",
                               "properties": {"code": {"enum": list(EVENT_ERROR_CODES)},
                                              "error": {"type": "string"}}},
                "sources": _ref("Sources"),
                "kept": {**_INT, "description": "in a POST's or resume's answer: the bytes on disk that will be "
                                                "continued"},
                "discarded": {**_INT, "description": "in a POST's or resume's answer: the bytes on disk that "
                                                     "will be thrown away as the download starts over"},
                "provisional": {"type": "boolean",
                                "description": "in a POST's or resume's answer: the origin has not yet shown "
                                               "whether it serves ranges, so a resumed download may still start "
                                               "over"},
            },
        },
        "Sources": {
            "type": "array", "description": "With ARW_DL_MIRRORS set: each source asked, in order, and the bytes "
                                            "it sent; a skipped mirror says why",
            "items": {"type": "object", "required": ["source", "bytes"], "properties": {
                "source": {"type": "string", "description": "a mirror's scheme://host:port, or ``origin``"},
                "bytes": _INT, "skipped": {"type": "string"}}},
        },
        "Probe": {
            "type": "object",
            "required": ["service", "version", "state_dir", "models_dir", "store_dir", "store_bytes", "settings",
                         "subscribers", "streams", "last_event_id"],
            "properties": {
                "service": {"const": "arw-models"}, "version": {"type": "string"},
                "state_dir": {"type": "string"}, "models_dir": {"type": "string"},
                "store_dir": {"type": "string", "description": "where the blobs are, by digest"},
                "store_bytes": {**_INT, "description": "the bytes the blobs hold, each once"},
                "settings": {"type": "object", "description": "the effective settings, without the token"},
                "subscribers": _INT, "streams": _INT, "last_event_id": {"type": "integer"},
            },
        },
        "RateLimit": {
            "type": "object", "required": ["bytes_per_sec"],
            "properties": {"bytes_per_sec": {"type": ["integer", "null"], "minimum": 1, "maximum": 10**12,
                                             "description": "bytes per second; null: unlimited"}},
        },
        "EventEnvelope": {
            "type": "object", "required": ["time", "kind", "payload"],
            "description": "The ``data`` of every SSE frame",
            "properties": {"time": {"type": "string"}, "kind": {"type": "string"}, "payload": {"type": "object"}},
        },
        "DownloadProgress": {"oneOf": [
            _progress("queued"),
            _progress("started", total=_INT),
            _progress("resumed", ("offset",), offset=_INT, total=_INT),
            _progress("downloading", ("downloaded",), downloaded=_INT, total=_INT,
                      progress={"type": "integer", "minimum": 0, "maximum": 100},
                      speed={**_INT, "description": "bytes/s over the last few seconds"},
                      eta_s={"type": "number", "minimum": 0}, segments=_INT,
                      sources=_ref("Sources")),
            _progress("retrying", ("attempt", "delay_ms", "code"), attempt=_INT, delay_ms=_INT,
                      code={"enum": list(EVENT_ERROR_CODES)}, error={"type": "string"}, downloaded=_INT),
            _progress("complete", ("file", "provider", "sha256", "bytes"), file={"type": "string"},
                      provider={"type": "string"}, sha256={"type": "string"}, bytes=_INT,
                      sha256_source={"enum": ["request", "origin", "computed"]},
                      deduplicated={"type": "boolean", "description": "linked from a model already installed"},
                      sources=_ref("Sources")),
            _progress("error", ("code", "error"), code={"enum": list(EVENT_ERROR_CODES)}, error={"type": "string"},
                      expected={"type": "string"}, actual={"type": "string"}, http_status={"type": "integer"},
                      sources=_ref("Sources")),
            _progress("canceled"),
            _progress("paused", ("downloaded",), downloaded=_INT),
        ]},
        "DownloadProgressEvent": _envelope("Models.DownloadProgress", _ref("DownloadProgress")),
        "ModelsChangedEvent": _envelope("Models.Changed", {
            "type": "object", "required": ["op", "id"],
            "properties": {"op": {"enum": ["add", "remove"]}, "id": _ref("ModelId")}}),
        "ConnectedEvent": _envelope("service.connected", {
            "type": "object", "properties": {"version": {"type": "string"}, "last_event_id": {"type": "integer"}}}),
        "GapEvent": _envelope("bus.gap", {
            "type": "object", "required": ["missed"],
            "properties": {"missed": {"type": ["integer", "null"],
                                      "description": "events missed; null: unknown (before a restart)"}}}),
    }


@lru_cache(maxsize=1)
def _base() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "arw-models",
            "version": __version__,
            "summary": "Fetch, verify and keep local model files over HTTP, with live progress as "
                       "Server-Sent Events",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "adminBearer": {"type": "http", "scheme": "bearer",
                                "description": "``Authorization: Bearer <ARW_ADMIN_TOKEN>``; needed only when "
                                               "the service has a token"},
                "adminHeader": {"type": "apiKey", "in": "header", "name": "X-ARW-Admin",
                                "description": "the same token in a header of its own"},
            },
        },
    }


def document(server_url: str = "/") -> dict[str, Any]:
    """The OpenAPI document, its paths relative to ``server_url`` (the path where
    the blueprint is mounted, with the app's script root)."""
    doc = copy.deepcopy(_base())
    doc["servers"] = [{"url": server_url or "/", "description": "this service"}]
    return doc


def problem_codes(doc: dict[str, Any]) -> set[str]:
    """Every problem code the document's operations answer with."""
    found: set[str] = set()
    for item in doc["paths"].values():
        for op in item.values():
            for response in op["responses"].values():
                found.update(response.get("x-problem-codes", ()))
    return found
