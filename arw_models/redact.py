"""Urls and messages as they may be shown: without the parts that may carry
credentials (userinfo, query strings, path parameters, fragments).

Part of the shared kernel (like :mod:`arw_models.config` and :mod:`arw_models.errors`):
the settings, the engine and the service all redact, so this imports nothing of ours.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """The url as shown to clients and in logs: without userinfo, query string, path
    parameters (``;token=...`` in any segment) or fragment, any of which may carry
    credentials."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port else "")
    if parts.username is not None or parts.password is not None:
        netloc = "***@" + netloc
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, _PARAMS.sub(r"\1;***", parts.path), query, ""))


# The characters that end a url quoted in a message: urllib3 and requests put urls and
# request targets between quotes or before " (Caused by ...)".
_QUERY = re.compile(r"\?[^\s'\"()]*")
_USERINFO = re.compile(r"//[^/\s'\"@]*@")
# A ';' counts only inside a path (after a '/' with no space between): prose keeps its semicolons.
_PARAMS = re.compile(r"(/[^\s'\"()/;?#]*);[^\s'\"()/?#]*")
_FRAGMENT = re.compile(r"(/[^\s'\"()#]*)#[^\s'\"()]*")


def redact_text(text: str) -> str:
    """A message (an exception's, say) without the query strings, path parameters,
    fragments or userinfo of the urls it quotes: urllib3 quotes the request target,
    and urls often carry credentials there."""
    text = _FRAGMENT.sub(r"\1#***", text)
    text = _QUERY.sub("?***", text)
    return _USERINFO.sub("//***@", _PARAMS.sub(r"\1;***", text))
