"""The list of equivalent mutants of ``make mutation`` (``tools/mutation_equivalent.txt``),
kept in step with code that moves.

An id (``module:line:column:operator``) names a line, and any change above that line
moves it. So each entry also holds a short hash of the text of its line and one of
that line with its neighbours (``@line/context``): when the id's line no longer has
that text, the entry follows it to the line of the module that has it (the one with
the same neighbours first, then the nearest) where the same column holds the same
operator. Only an entry whose line text is nowhere in the module is gone.
``python -m tools.mutation --fix-equivalent`` writes the list again with the ids and
hashes of now.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .mutants import mutants

_ENTRY = re.compile(r"^(?P<id>\S+)(?:\s+@(?P<line>[0-9a-f]{8})/(?P<context>[0-9a-f]{8}))?\s*(?:#\s?(?P<why>.*))?$")


@dataclass(frozen=True)
class Entry:
    id: str
    why: str = ""
    line_hash: str = ""  # empty: an entry written before the hashes (it holds while its id exists)
    context_hash: str = ""

    @property
    def module(self) -> str:
        return self.id.split(":", 1)[0]

    @property
    def line(self) -> int:
        return int(self.id.split(":")[1])

    def at(self, line: int) -> str:
        """The same id, on another line."""
        module, _, rest = self.id.split(":", 2)
        return f"{module}:{line}:{rest}"

    def render(self) -> str:
        hashes = f"  @{self.line_hash}/{self.context_hash}" if self.line_hash else ""
        return f"{self.id}{hashes}  # {self.why}" if self.why else f"{self.id}{hashes}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def hashes(lines: list[str], line: int) -> tuple[str, str]:
    """The hashes of line ``line`` (from 1) of ``lines``: its text, and its text with
    the lines either side (trailing blanks ignored)."""
    row = line - 1
    around = [lines[i].rstrip() if 0 <= i < len(lines) else "" for i in (row - 1, row, row + 1)]
    return _digest(around[1]), _digest("\n".join(around))


def read(path: Path) -> tuple[list[str | Entry], list[str]]:
    """The file as it is, line by line (comments and blank lines as text), and the
    lines that are neither an entry nor a comment."""
    if not path.exists():
        return [], []
    items: list[str | Entry] = []
    bad = []
    for text in path.read_text().splitlines():
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            items.append(text)
            continue
        match = _ENTRY.match(stripped)
        if match is None or match["id"].count(":") < 3:
            bad.append(text)
            items.append(text)
            continue
        items.append(Entry(match["id"], (match["why"] or "").strip(), match["line"] or "", match["context"] or ""))
    return items, bad


@dataclass
class Resolved:
    ids: set[str]  # the ids of now, of every entry still found
    moved: list[tuple[Entry, str]]  # an entry, and the id its line has now
    gone: list[Entry]  # entries whose line text is nowhere in their module


def resolve(entries: list[Entry], source_of: Callable[[str], str | None]) -> Resolved:
    """Where each entry is now; ``source_of(module)`` is the module's text (None: no such module)."""
    found = Resolved(set(), [], [])
    cache: dict[str, tuple[list[str], set[str]] | None] = {}
    for entry in entries:
        if entry.module not in cache:
            text = source_of(entry.module)
            cache[entry.module] = None if text is None else (
                text.split("\n"), {m.id for m in mutants(entry.module, text)})
        module = cache[entry.module]
        if module is None:
            found.gone.append(entry)
            continue
        lines, ids = module
        now = _follow(entry, lines, ids)
        if now is None:
            found.gone.append(entry)
            continue
        found.ids.add(now)
        if now != entry.id:
            found.moved.append((entry, now))
    return found


def _follow(entry: Entry, lines: list[str], ids: set[str]) -> str | None:
    if not entry.line_hash:
        return entry.id if entry.id in ids else None
    if entry.id in ids and entry.line <= len(lines) and hashes(lines, entry.line)[0] == entry.line_hash:
        return entry.id
    candidates = []
    for line in range(1, len(lines) + 1):
        line_hash, context_hash = hashes(lines, line)
        if line_hash == entry.line_hash and entry.at(line) in ids:
            # Same neighbours first (a line repeated elsewhere, like ``return None``,
            # is told apart by them), then the nearest.
            candidates.append((context_hash != entry.context_hash, abs(line - entry.line), line))
    return entry.at(min(candidates)[2]) if candidates else None


def stamped(entry: Entry, new_id: str, lines: list[str]) -> Entry:
    """``entry`` at ``new_id``, with the hashes of the line it is on now."""
    moved = replace(entry, id=new_id)
    line_hash, context_hash = hashes(lines, moved.line)
    return replace(moved, line_hash=line_hash, context_hash=context_hash)


def rewrite(path: Path, root: Path) -> tuple[Resolved, int]:
    """Writes the list again with the ids and hashes of now (entries that are gone
    are left out); returns what was found and how many entries were written."""
    items, _ = read(path)
    entries = [item for item in items if isinstance(item, Entry)]

    def source_of(module: str) -> str | None:
        file = root / module
        return file.read_text() if file.is_file() else None

    found = resolve(entries, source_of)
    moved = {entry: now for entry, now in found.moved}
    gone = set(found.gone)
    out: list[str] = []
    written = 0
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif item not in gone:
            lines = (root / item.module).read_text().split("\n")
            out.append(stamped(item, moved.get(item, item.id), lines).render())
            written += 1
    path.write_text("\n".join(out) + "\n")
    return found, written
