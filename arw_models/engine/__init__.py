"""One download, attempt by attempt: it never calls the manager.

The names the service imports, from the modules that hold them by concern:
:mod:`.download` (the attempt loop, the retry budget, the final digest),
:mod:`.single` (one stream, and the decision to split into ranges), :mod:`.parallel`
and :mod:`.segments` (parallel ranges), :mod:`.published` (the digest the origin
publishes), :mod:`.result` (what the manager installs).
"""

from __future__ import annotations

from .download import Adopt, Budget, Download, Opener, backoff_delay
from .result import Result

__all__ = ["Adopt", "Budget", "Download", "Opener", "Result", "backoff_delay"]
