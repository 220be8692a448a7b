"""The name a model's file gets when the one it asks for is taken.

A file system limits one name to ``NAME_MAX`` bytes (255 on Linux), counted in
UTF-8 bytes, not characters. :func:`~arw_models.store.storage.sanitize_filename` keeps a
name from the url or ``Content-Disposition`` within
:data:`~arw_models.store.storage.MAX_NAME_BYTES`, which leaves room for the temporary
names made beside it (``.<name>.<pid>.<thread>.tmp``); a name made for a collision
keeps to the same limit, so it can never fail as too long at the install.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import TransferError
from .storage import MAX_NAME_BYTES

# An "extension" longer than this is part of the stem (sanitize_filename's rule too).
MAX_EXT_BYTES = 16


def fit(text: str, room: int) -> str:
    """The longest prefix of ``text`` of at most ``room`` UTF-8 bytes, cut between
    characters (never inside one)."""
    return text.encode("utf-8")[: max(0, room)].decode("utf-8", "ignore")


def free_name(name: str, model_id: str, taken: Callable[[str], bool], limit: int = MAX_NAME_BYTES) -> str:
    """``name`` if it is free, else ``<stem>-<id><ext>`` (then ``-<id>-2`` ...): the
    extension kept, the stem shortened as much as the suffix needs."""
    if not taken(name):
        return name
    stem, ext = os.path.splitext(name)
    if len(ext.encode("utf-8")) > MAX_EXT_BYTES:
        stem, ext = name, ""
    for n in range(1, 10000):
        tail = (f"-{model_id}" if n == 1 else f"-{model_id}-{n}") + ext
        candidate = fit(stem, limit - len(tail.encode("utf-8"))) + tail
        if not taken(candidate):
            return candidate
    raise TransferError("internal-error", f"no free file name for {name}")
