"""What the command line's options are made of: a rate as curl writes one, and an
``hf://`` reference pinned to the revision ``--revision`` names."""

from __future__ import annotations

import argparse
import re
from decimal import Decimal, InvalidOperation
from urllib.parse import quote, unquote

# curl's --limit-rate: "The suffixes (k, M, G, T, P) are 1024 based", in either case.
_RATE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)([kmgtp]?)(?:i?b)?", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
HF = "hf://"
_KINDS = ("datasets", "spaces")


def rate(text: str) -> int:
    """Bytes per second from ``5M``, ``500K``, ``1.5M``, ``2G`` or plain ``1000``:
    as curl's ``--limit-rate`` reads them, the suffixes are powers of 1024 (``1K``
    is 1024), ``KiB``/``KB`` and ``MiB``/``MB`` are read as ``K`` and ``M``. A
    fraction of a byte is dropped; less than one byte a second is refused."""
    found = _RATE.fullmatch(text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rate: a number of bytes per second, optionally with K, M, G or T "
            "(powers of 1024, as curl's --limit-rate), e.g. 500K, 1.5M, 2G")
    try:
        value = Decimal(found.group(1)) * 1024 ** _POWERS[found.group(2).lower()]
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is less than one byte per second")
    return int(value)


def pinned(url: str, revision: str) -> str:
    """``url`` pinned to ``revision``: ``hf://OWNER/REPO`` becomes
    ``hf://OWNER/REPO@REV``, a file's ``hf://OWNER/REPO/PATH`` becomes
    ``hf://OWNER/REPO@REV/PATH`` (huggingface_hub's form, a ``/`` in the revision
    written ``%2F``). A reference that already names this revision is left as it
    is; ``ValueError`` for one that names another, and for anything but ``hf://``."""
    if not revision or any(part in ("", ".", "..") for part in revision.split("/")) \
            or any(ch in revision for ch in "@?#\\ ") or not revision.isprintable():
        raise ValueError(f"--revision {revision!r} does not name a branch, tag or commit")
    if not url.startswith(HF):
        raise ValueError("--revision applies to an hf:// reference only (a url of its own names one file "
                         "at one revision already)")
    parts = url[len(HF):].split("/")
    kind = [parts.pop(0)] if parts and parts[0] in _KINDS else []
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError("an hf:// reference is hf://OWNER/REPO[@REVISION] or hf://OWNER/REPO/PATH[@REVISION]")
    owner, repo, path = parts[0], parts[1], "/".join(parts[2:])
    there = None
    if "@" in repo:
        repo, _, there = repo.partition("@")
        there = unquote(there)
    elif "@" in path:
        path, _, there = path.rpartition("@")
    if there is not None and there != revision:
        raise ValueError(f"the url already pins revision {there!r}, and --revision says {revision!r}")
    head = HF + "/".join([*kind, owner, f"{repo}@{quote(revision, safe='')}"])
    return head + ("/" + path if path else "")
