"""Cross-origin access for pages served elsewhere (``ARW_CORS_ORIGINS``), with
flask-cors, on the blueprint's routes only: a host app's own routes get no CORS
headers from this package, and with the setting unset nothing is added at all.

flask-cors matches requests by path, not by blueprint, so the blueprint's routes
(as registered, under whatever ``url_prefix``) become its resource patterns."""

from __future__ import annotations

import re
from collections.abc import Iterable

from flask import Flask
from flask_cors import CORS

# What a page of another origin needs: the token and JSON bodies go up, and it
# may read where a new job lives, when to retry and why it was refused.
ALLOW_HEADERS = ["Authorization", "Content-Type", "Last-Event-ID", "X-ARW-Admin"]
EXPOSE_HEADERS = ["Location", "Retry-After", "WWW-Authenticate"]
MAX_AGE = 600


def _path_pattern(rule: str) -> str:
    """A werkzeug rule (``/ai/models/<model_id>``) as an anchored regex of its paths."""
    parts = re.split(r"(<[^>]*>)", rule)
    out = []
    for part in parts:
        if part.startswith("<") and part.endswith(">"):
            out.append(".+" if part[1:].startswith("path:") else "[^/]+")
        else:
            out.append(re.escape(part))
    return "^" + "".join(out) + "$"


def enable(app: Flask, origins: Iterable[str], blueprint: str) -> None:
    """Adds CORS headers for ``origins`` to the responses of ``blueprint``'s routes
    (call it once the blueprint is registered). Every option is given here, so a
    host app's own ``CORS_*`` config does not leak into ours."""
    origins = list(origins)
    if not origins:
        return
    rules = [r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith(blueprint + ".")]
    CORS(
        app,
        resources={re.compile(_path_pattern(rule)): {} for rule in rules},
        origins=origins,
        methods=["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=ALLOW_HEADERS,
        expose_headers=EXPOSE_HEADERS,
        # The token travels in a header, never in a cookie: no credentialed requests.
        supports_credentials=False,
        max_age=MAX_AGE,
        send_wildcard=False,
        vary_header=True,
        always_send=False,  # no Origin, no CORS headers: a same-origin page or curl
        automatic_options=True,
        # The blueprint's error handlers answer every error, and those responses go
        # through after_request like any other: no need to wrap the host app's handlers.
        intercept_exceptions=False,
        allow_private_network=False,
    )
