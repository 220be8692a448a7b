"""A ``.part``'s sidecar (``models/<id>.part.json``) as one typed record.

The sidecar says what the bytes on disk are: where they came from (``url``,
``provider``, the gated origin's ``headers``), the validators they were fetched
under (``etag``, ``last_modified``), the file's ``total`` size and ``filename``,
the digests (``sha256`` asked for, ``published_sha256`` by the origin), the
parallel ``ranges`` done so far, whether the origin serves ranges
(``accept_ranges``), the request's ``rate_limit``, and whether it is ``paused``.

:meth:`Sidecar.from_json` reads what any version wrote and tolerates what it does
not know: a field of the wrong type reads as absent, an unknown field is kept in
:attr:`Sidecar.extra` and written back as it was. It is the owner's alone (0600):
it can hold a url with a token, and headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .storage import StateDir

_TEXT = ("id", "url", "etag", "last_modified", "filename", "sha256", "provider", "created_at", "published_sha256")


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass
class Sidecar:
    id: str | None = None
    url: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    total: int | None = None
    filename: str | None = None
    sha256: str | None = None
    provider: str | None = None
    rate_limit: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    created_at: str | None = None
    # As Plan.to_json wrote it; Plan.from_json says whether it is a sound plan.
    ranges: Any = None
    published_sha256: str | None = None
    paused: bool = False
    accept_ranges: bool | None = None
    # Fields this version does not know, written back as they were read.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> Sidecar | None:
        """The record of a sidecar's JSON; None when it is not an object at all."""
        if not isinstance(data, dict):
            return None
        known = {*_TEXT, "total", "rate_limit", "headers", "ranges", "paused", "accept_ranges"}
        record = cls(extra={k: v for k, v in data.items() if k not in known})
        for name in _TEXT:
            value = data.get(name)
            setattr(record, name, value if isinstance(value, str) else None)
        record.total = _count(data.get("total"))
        rate = _count(data.get("rate_limit"))
        record.rate_limit = rate if rate else None
        headers = data.get("headers")
        if isinstance(headers, dict):
            record.headers = {k: v for k, v in headers.items() if isinstance(k, str) and isinstance(v, str)}
        record.ranges = data.get("ranges")
        record.paused = bool(data.get("paused"))  # as every reader took it: any true value
        accept = data.get("accept_ranges")
        record.accept_ranges = accept if isinstance(accept, bool) else None
        return record

    @classmethod
    def of(cls, data: dict[str, Any]) -> Sidecar:
        """The record of a sidecar the transfer holds as a dict while it runs."""
        return cls.from_json(data) or cls()

    def to_json(self) -> dict[str, Any]:
        """The JSON to write: the fields that say something, and the unknown ones."""
        data: dict[str, Any] = dict(self.extra)
        for name in (*_TEXT, "total", "rate_limit", "ranges", "accept_ranges"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        if self.headers:
            data["headers"] = dict(self.headers)
        if self.paused:
            data["paused"] = True
        return data


def read(state: StateDir, model_id: str) -> Sidecar | None:
    """The sidecar of ``model_id``'s ``.part``; None when there is none, or it is
    unreadable (as if there were none: the bytes cannot be vouched for)."""
    return Sidecar.from_json(state.read_sidecar(model_id))


def write(state: StateDir, model_id: str, record: Sidecar) -> None:
    """Writes the sidecar whole, or not at all (the last one stands)."""
    state.write_sidecar(model_id, record.to_json())
