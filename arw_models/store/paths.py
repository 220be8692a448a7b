"""Paths that a source's listing gives, checked before any becomes a file name.

A hub repository or a registry names a model's files itself; a name such as
``../../etc/x`` or ``/etc/x`` must never leave the folder it is put in. The rule is
the store's, since the store is what writes such names (a model's folder, the
Hugging Face cache export of :mod:`.hfcache`); the engine checks a resolved listing
with the same function (:mod:`arw_models.engine.fileset`).
"""

from __future__ import annotations


def safe_path(path: object) -> bool:
    """Whether ``path`` may name a file inside a model's folder: a non-empty
    relative, ``/``-separated string, with no empty, ``.`` or ``..`` segment, no
    backslash, no NUL, no control character."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        return False
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in path):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))
