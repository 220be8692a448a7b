"""What a download hands the manager: a verified ``.part``, ready to install."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """A verified download, ready to install: its ``.part`` holds ``size`` bytes
    whose SHA-256 is ``digest``; ``name`` is the file name it asks for."""

    name: str
    digest: str
    size: int
    # Where the digest the file was checked against came from: the request's
    # sha256, the origin's published one, or none (computed only).
    sha256_source: str = "computed"
    # The file is another model's, linked (or copied), not transferred.
    deduplicated: bool = False
