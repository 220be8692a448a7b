"""The web page: one static HTML page, its stylesheet and its script, shipped in
the package and served by the blueprint (``GET /`` and ``GET /web/<name>``).

Nothing is rendered into the page: it finds the API relative to its own url, so
the same files work at ``/``, under any ``url_prefix`` of a host app, and behind a
proxy that mounts the service on a sub-path."""

from __future__ import annotations

import os

from flask import Response, send_from_directory

from ...errors import NotFound

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = "index.html"
# Only these are served: the package directory also holds Python files.
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}

# Everything the page loads comes from the service itself; no inline script or
# style, no frames. connect-src 'self' covers fetch and EventSource.
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _secure(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    # Revalidated on every load (an ETag answers 304), so an upgrade shows at once.
    response.headers["Cache-Control"] = "no-cache"
    return response


def page() -> Response:
    """``GET /``: the page."""
    response = send_from_directory(HERE, PAGE, mimetype="text/html")
    response.headers["Content-Security-Policy"] = POLICY
    return _secure(response)


def asset(name: str) -> Response:
    """``GET /web/<name>``: the page's script or stylesheet."""
    mimetype = ASSETS.get(name)
    if mimetype is None:
        raise NotFound(f"no web asset is called {name!r}", code="unknown-asset")
    return _secure(send_from_directory(HERE, name, mimetype=mimetype))
