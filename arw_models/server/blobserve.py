"""``GET /blobs/sha256/<digest>``: the store's verified bytes, for other services.

A service whose ``ARW_DL_PEERS`` names this one asks here for a file by its
SHA-256 before it asks a mirror or the origin (see :mod:`arw_models.engine.sources`).
Only store blobs are served (``{state}/blobs/sha256/<digest>``, opened through
:class:`~arw_models.store.blobs.Blobs` without following a link): never a
``.part``, never a name a client makes up (a digest is 64 lower-case hex digits,
nothing else reaches the file system). The answer is werkzeug's conditional
response on the open file: ``ETag`` is the digest (quoted, strong: the bytes are
the digest's), ``Range`` with ``If-Range`` and ``If-None-Match`` work, ``HEAD``
gives the size; the body is streamed in bounded reads. ``Repr-Digest`` states the
digest, so a peer can refuse another file before its body.

When ``ARW_ADMIN_TOKEN`` is set the endpoint needs it (it lists what the store
holds, and serves it); ``ARW_SERVE_BLOBS=0`` turns it off (404, code
``blobs-not-served``); the blob of a gated download (recorded in its manifest, see
:meth:`~arw_models.store.manifests.Manifests.gated`) is a 404 like one the store does
not hold, unless ``ARW_SERVE_GATED_BLOBS``: its licence may not allow passing it on,
and a peer need not learn that it is here.
"""

from __future__ import annotations

import base64
import os

from flask import Response, request
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.wsgi import FileWrapper

from ..errors import NotFound
from ..store.blobs import Blobs, valid_digest
from ..store.manifests import Manifests
from .api import PROTECTED_ENDPOINTS, bp
from .checks import service
from .problems import problem

# Each read of the body: bounded, whatever the blob's size.
READ_BYTES = 256 * 1024
ENDPOINT = "blob"

PROTECTED_ENDPOINTS.add(f"{bp.name}.{ENDPOINT}")


def _unknown(digest: str) -> NotFound:
    return NotFound(f"this service holds no blob sha256:{digest[:80]}", code="unknown-blob")


@bp.route("/blobs/sha256/<digest>", methods=["GET", "HEAD"], endpoint=ENDPOINT)
def blob(digest: str) -> Response:
    state = service()
    settings = state.settings
    if not settings.serve_blobs:
        raise NotFound("this service does not serve blobs (ARW_SERVE_BLOBS=0)", code="blobs-not-served")
    if not valid_digest(digest):
        raise _unknown(digest)
    fd = Blobs(state.dirs).open(digest)
    if fd is None:
        raise _unknown(digest)
    fh = os.fdopen(fd, "rb")
    # Only for a blob the store holds: an unknown digest reads no manifest.
    if not settings.serve_gated_blobs and Manifests(state.dirs).gated(digest):
        fh.close()
        raise _unknown(digest)
    # What werkzeug's send_file does for a path, on the file already open: it cannot
    # be given the path (it would follow a link there), and for a file object it
    # knows no size, so it would serve no range.
    try:
        st = os.fstat(fh.fileno())
        response = Response(FileWrapper(fh, READ_BYTES), mimetype="application/octet-stream",
                            direct_passthrough=True)
        response.content_length = st.st_size
        response.last_modified = st.st_mtime  # type: ignore[assignment]
        response.set_etag(digest)
        response.headers["Repr-Digest"] = f"sha-256=:{base64.b64encode(bytes.fromhex(digest)).decode()}:"
        response.headers["Cache-Control"] = "private, no-transform"
        return response.make_conditional(request.environ, accept_ranges=True, complete_length=st.st_size)
    except RequestedRangeNotSatisfiable:
        fh.close()
        return problem(416, "range-not-satisfiable", "Range not satisfiable",
                       f"the blob has {st.st_size} bytes", {"Content-Range": f"bytes */{st.st_size}"})
    except BaseException:
        fh.close()
        raise
