"""The version, on its own so that any layer (and setup.cfg) can read it without
importing the rest of the package."""

from __future__ import annotations

__version__ = "0.1.0"
