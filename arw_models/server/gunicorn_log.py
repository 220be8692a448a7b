"""gunicorn's own log lines as JSON objects, for ``ARW_LOG_FORMAT=json`` under the
bundled configuration (its ``logger_class``), so that one stream of JSON lines
holds the service's log, gunicorn's errors and the access log.

An access line carries the fields of ``access_log_format`` (the remote address,
method, path, protocol, status, bytes and duration there), by name, beside
``time``, ``level``, ``logger`` and ``message``. Atoms that hold a query string,
a request line or headers are never written, whatever the format asks, neither
as fields nor in the message: a token may travel in any of them.

python-json-logger writes the objects (through
:class:`~arw_models.service.logs.JsonFormatter`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

from gunicorn.glogging import Logger

from ..service.logs import JsonFormatter

# gunicorn's atoms (see its access_log_format setting) by the names a line gives them.
ATOM_NAMES = {
    "h": "remote", "l": "ident", "u": "user", "t": "request_time", "m": "method", "U": "path",
    "H": "protocol", "s": "status", "B": "bytes", "b": "bytes", "T": "duration_s", "D": "duration_us",
    "M": "duration_ms", "L": "duration", "p": "pid",
}
# The request line and the query string may carry a token; so may any header
# (%({name}i)s and the like), the referer and the user agent.
SECRET_ATOMS = frozenset({"r", "q", "f", "a"})
_ATOM = re.compile(r"%\(([^)]+)\)s")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def access_fields(access_log_format: str, atoms: Any) -> dict[str, Any]:
    """The fields of one access line: each atom of ``access_log_format`` that can
    hold no secret, under its name in :data:`ATOM_NAMES`; numbers as numbers."""
    fields: dict[str, Any] = {}
    for atom in _ATOM.findall(access_log_format):
        if atom in SECRET_ATOMS or atom.startswith("{"):
            continue
        try:
            value = atoms[atom]
        except (KeyError, TypeError):
            continue
        if isinstance(value, str) and _NUMBER.fullmatch(value):
            value = float(value) if "." in value else int(value)
        fields[ATOM_NAMES.get(atom, atom)] = value
    return fields


class _Redacted(Mapping[str, Any]):
    """gunicorn's atoms with those that may hold a secret read as "-"."""

    def __init__(self, atoms: Mapping[str, Any]) -> None:
        self.atoms = atoms

    def __getitem__(self, atom: str) -> Any:
        if atom in SECRET_ATOMS or atom.startswith("{"):
            return "-"
        try:
            return self.atoms[atom]
        except KeyError:
            return "-"  # as gunicorn has it for an atom it does not know

    def __iter__(self) -> Iterator[str]:
        return iter(self.atoms)

    def __len__(self) -> int:
        return len(self.atoms)


class AccessJsonFormatter(JsonFormatter):
    """An access record (gunicorn logs it with the atoms as its argument) as one
    JSON object; any other record as :class:`~arw_models.service.logs.JsonFormatter` does."""

    def __init__(self, access_log_format: str) -> None:
        super().__init__()
        self.access_log_format = access_log_format

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        if isinstance(record.args, Mapping):
            # The message too is the format filled in, so a format that asks for
            # the query or a header gets "-" there.
            log_data["message"] = self.access_log_format % _Redacted(record.args)
            # Beside the line's own fields, never over them (the record is shared
            # with every other handler: it is left as it came).
            for key, value in access_fields(self.access_log_format, record.args).items():
                log_data.setdefault(key, value)


class JsonLogger(Logger):
    """gunicorn's logger with every handler it sets up (error log, access log)
    writing JSON lines."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())
        for handler in self.access_log.handlers:
            handler.setFormatter(AccessJsonFormatter(cfg.access_log_format))
