"""The SHA-256 an origin publishes for a whole file, read from its answer.

Four forms are understood, each only where it covers the whole file as sent
without a content coding:

- ``X-Linked-Etag: "<64 hex>"``: the Hugging Face hub's large (LFS) files. The hub
  sends it (with ``X-Linked-Size``) on its redirect answer, not on the CDN's that
  follows, so the whole redirect chain is read. A 40-hex value is a git blob id,
  not a SHA-256 of the file, and is ignored.
- ``Repr-Digest: sha-256=:<base64>:`` (RFC 9530): the digest of the selected
  representation, which a 206 carries for the whole file too.
- ``Digest: SHA-256=<base64>`` (RFC 3230): the instance digest, likewise.
- ``x-amz-checksum-sha256: <base64>``: S3's, when it is a full-object checksum (not
  a composite of parts, written ``<base64>-<parts>`` or typed ``COMPOSITE``).

Nothing here trusts a digest more than the bytes: the transfer still hashes
every byte and compares.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ..errors import JobStopped
from ..store.storage import read_part
from .headers import content_coded

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class Published(NamedTuple):
    sha256: str  # lower-case hex
    header: str  # the header it came from, as named in messages


def _b64_sha256(text: str) -> str | None:
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def _members(value: str) -> Iterable[tuple[str, str]]:
    """``key=value`` members of a comma-separated list, parameters (``;...``) dropped."""
    for member in value.split(","):
        key, eq, item = member.partition("=")
        if eq:
            yield key.strip().lower(), item.split(";", 1)[0].strip()


def linked_etag(headers: Mapping[str, str]) -> str | None:
    # A weak tag (W/"...") names no bytes, and is no 64 hex digits in quotes.
    value = (headers.get("X-Linked-Etag") or "").strip().strip('"')
    return value.lower() if _HEX64.fullmatch(value) else None


def repr_digest(headers: Mapping[str, str]) -> str | None:
    for key, item in _members(headers.get("Repr-Digest") or ""):
        if key == "sha-256" and len(item) > 2 and item.startswith(":") and item.endswith(":"):
            return _b64_sha256(item[1:-1])
    return None


def instance_digest(headers: Mapping[str, str]) -> str | None:
    for key, item in _members(headers.get("Digest") or ""):
        if key == "sha-256":
            return _b64_sha256(item)
    return None


def amz_checksum(headers: Mapping[str, str]) -> str | None:
    # A checksum of the parts' checksums, "<base64>-<parts>", is no base64: refused as such.
    if (headers.get("x-amz-checksum-type") or "FULL_OBJECT").strip().upper() != "FULL_OBJECT":
        return None
    return _b64_sha256((headers.get("x-amz-checksum-sha256") or "").strip())


def published(headers: Mapping[str, str], final: bool = True) -> Published | None:
    """The whole file's SHA-256 as one answer states it. ``final``: the answer
    whose body is the file (a redirect's only vouches with ``X-Linked-Etag``)."""
    if final and content_coded(headers):
        return None  # the bytes as sent are not the file any digest describes
    found = linked_etag(headers)
    if found:
        return Published(found, "X-Linked-Etag")
    if not final:
        return None
    for name, read in (("Repr-Digest", repr_digest), ("Digest", instance_digest),
                       ("x-amz-checksum-sha256", amz_checksum)):
        found = read(headers)
        if found:
            return Published(found, name)
    return None


def along_chain(response: Any) -> Published | None:
    """The digest the answer, or a redirect that led to it, publishes: the final
    answer's first, then the redirects' from the last to the first."""
    if content_coded(response.headers):
        return None
    found = published(response.headers)
    if found:
        return found
    for hop in reversed(getattr(response, "history", None) or []):
        found = published(hop.headers, final=False)
        if found:
            return found
    return None


def linked_size(response: Any) -> int | None:
    """``X-Linked-Size`` along the chain: the hub's size of an LFS file."""
    for hop in [response, *reversed(getattr(response, "history", None) or [])]:
        value = (hop.headers.get("X-Linked-Size") or "").strip()
        if value.isdigit():
            return int(value)
    return None


def git_blob_id(path: str, size: int, stop: Any = None) -> str:
    """The git blob id of the file at ``path`` (``size`` bytes): the SHA-1 of
    ``blob <size>\\0`` and its content, what a hub's listing gives for a small
    (not LFS) file. ``stop``: an event that ends the read (``JobStopped``)."""
    hasher = hashlib.sha1(f"blob {size}\0".encode("ascii"), usedforsecurity=False)
    with read_part(path) as fh:
        while True:
            if stop is not None and stop.is_set():
                raise JobStopped()
            chunk = fh.read(4 * 1024 * 1024)
            if not chunk:
                break
            hasher.update(chunk)
    return hasher.hexdigest()
