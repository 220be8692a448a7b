"""How the command line shows things to people: sizes, durations, tables, and one
download's progress (a bar redrawn in place on a terminal by tqdm, plain lines
elsewhere). A download of many files (a hub repository, a registry's model) has one
bar for the whole, and a line for each file as its state changes."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from tqdm import tqdm

# Seconds between two plain progress lines: a log or a CI job wants a trace, not
# one line per event.
PLAIN_EVERY = 2.0
# How a job ends: its last event, which the caller reports in its own words.
FINAL = ("complete", "error", "canceled", "paused")
# Columns kept for what follows the bar: " 25.2 MiB/48.0 MiB  7.9 MiB/s  ETA 3s  8 conn".
TAIL_ROOM = 46
# A file of a many-file download is done in one of these states: fetched and
# verified, or found in the store already.
FILE_DONE = ("complete", "stored")
# The states a file starts in: not worth a line each (a repository has hundreds).
FILE_QUIET = ("queued",)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; the columns in ``right`` (numbers) aligned right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = []
    for row in (headers, *rows):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def amount(item: dict[str, Any]) -> str:
    """``downloaded / total`` of a job or an event, or just what came when the total is unknown."""
    done = human_bytes(item.get("downloaded", item.get("offset", 0)) or 0)
    total = item.get("total")
    return f"{done} / {human_bytes(total)}" if isinstance(total, int) else done


def describe(payload: dict[str, Any]) -> str:
    """One job event in words, without the bar."""
    status = str(payload.get("status", "?"))
    if status == "downloading":
        parts = []
        if isinstance(payload.get("progress"), int):
            parts.append(f"{payload['progress']}%")
        parts.append(amount(payload))
        if payload.get("speed") is not None:
            parts.append(f"{human_bytes(payload['speed'])}/s")
        if payload.get("eta_s") is not None:
            parts.append(f"ETA {human_duration(payload['eta_s'])}")
        if (payload.get("segments") or 0) > 1:
            parts.append(f"{payload['segments']} connections")
        if isinstance(payload.get("files"), list) and payload["files"]:
            parts.append(files_done(payload["files"]))
        return "  ".join(parts)
    if status == "started":
        return "started" + (f", {human_bytes(payload['total'])}" if isinstance(payload.get("total"), int) else "")
    if status == "resumed":
        return f"resumed at {human_bytes(payload.get('offset') or 0)}"
    if status == "retrying":
        delay = (payload.get("delay_ms") or 0) / 1000.0
        return f"retrying (attempt {payload.get('attempt', '?')} in {delay:.1f}s: {payload.get('code', '?')})"
    if status == "complete" and isinstance(payload.get("files"), list) and not payload.get("sha256"):
        return (f"complete: {payload.get('file', '?')} ({human_bytes(payload.get('bytes'))}, "
                f"{len(payload['files'])} files" + (f", revision {payload['revision']}" if payload.get("revision")
                                                     else "") + ")")
    if status == "complete":
        sha = str(payload.get("sha256") or "")
        return (f"complete: {payload.get('file', '?')} ({human_bytes(payload.get('bytes'))}"
                + (f", sha256 {sha[:12]}" if sha else "") + ")")
    if status == "error":
        return f"error {payload.get('code', '?')}: {payload.get('error', '')}"
    if status == "paused":
        return f"paused at {human_bytes(payload.get('downloaded') or 0)}"
    return status


def files_done(files: Sequence[dict[str, Any]]) -> str:
    """``3/7 files``: how many of a many-file download's files are done."""
    return f"{sum(1 for f in files if f.get('status') in FILE_DONE)}/{len(files)} files"


def file_line(model_id: str, item: dict[str, Any]) -> str:
    """One file's state, as a line of its own: ``id: path: status (size)``."""
    status = str(item.get("status") or "?")
    size = item.get("total")
    words = {"stored": "already in the store", "failed": "FAILED"}.get(status, status)
    return f"{model_id}: {item.get('path', '?')}: {words}" + (f" ({human_bytes(size)})" if isinstance(size, int)
                                                              else "")


def incomplete(files: Sequence[dict[str, Any]]) -> list[str]:
    """The paths of the files that are not done, each with its state."""
    return [f"{f.get('path', '?')} ({f.get('status') or 'unknown'})" for f in files
            if f.get("status") not in FILE_DONE]


def dry_run(answer: dict[str, Any]) -> str:
    """A dry run's answer for people: what would be fetched, what the store has."""
    files = [f for f in answer.get("files") or [] if isinstance(f, dict)]
    rows = [[str(f.get("path", "")), human_bytes(f.get("bytes")), "in store" if f.get("in_store") else "fetch"]
            for f in files]
    fetch = sum(1 for f in files if not f.get("in_store"))
    head = (f"{answer.get('id', '?')}: {answer.get('url', '?')} ({answer.get('provider') or '?'}"
            + (f", revision {answer['revision']}" if answer.get("revision") else "") + ")")
    foot = (f"{len(files)} files, {human_bytes(answer.get('total'))} in all; {fetch} to fetch, "
            f"{human_bytes(answer.get('to_fetch'))}")
    return "\n".join([head, table(["PATH", "SIZE", "STATE"], rows, right=[1]) if rows else "no files", foot])


class _Bar(tqdm):  # type: ignore[type-arg]
    """tqdm drawing a line whose numbers are the service's (its speed, its ETA,
    from its events), not tqdm's own estimates: ``tail`` and ``percent`` are
    fields a ``bar_format`` can name."""

    # No monitor thread: the bar is redrawn on each event, and nothing is left
    # running when the command ends.
    monitor_interval = 0

    def __init__(self, tail: str, percent: int, **kwargs: Any) -> None:
        # Set before tqdm's first draw, which happens as it is built.
        self.tail = tail
        self.percent = percent
        super().__init__(**kwargs)

    @property
    def format_dict(self) -> dict[str, Any]:
        return {**super().format_dict, "tail": self.tail, "pct": self.percent}


# A thread lock: tqdm's default one is a multiprocessing lock too, which a
# command line with one bar has no use for.
_Bar.set_lock(threading.RLock())


class Progress:
    """One download's progress on ``out``.

    On a terminal, one line redrawn in place by tqdm: percent, bar, bytes, speed,
    ETA. Elsewhere (a pipe, a log file), plain lines with no control characters:
    each change of status, and the progress every ``PLAIN_EVERY`` seconds.
    ``width`` (the terminal's columns) and ``clock`` are seams for tests.
    """

    def __init__(self, out: TextIO, model_id: str, terminal: bool,
                 width: Callable[[], int] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.id = model_id
        self.terminal = terminal
        self._width = width or (lambda: shutil.get_terminal_size((80, 24)).columns)
        self._clock = clock
        self._bar: _Bar | None = None
        self._last_status: str | None = None
        self._last_plain = float("-inf")
        self._last: dict[str, Any] = {}
        self.files: dict[str, dict[str, Any]] = {}  # a many-file download's files, by path, as last seen
        encoding = getattr(out, "encoding", None) or "ascii"
        try:
            "█░".encode(encoding)
            self._charset = "░█"  # tqdm's order: empty, then full
        except (UnicodeEncodeError, LookupError):
            self._charset = "-#"

    def update(self, payload: dict[str, Any]) -> None:
        status = str(payload.get("status", ""))
        self._files(payload.get("files"))
        if status in ("downloading", "started", "resumed") or not self._last:
            # What the bar shows: the last known numbers, whatever event brought them.
            self._last = {**self._last, **{k: v for k, v in payload.items() if k != "status"}}
        if self.terminal:
            self._draw(payload)
        elif status not in FINAL:
            now = self._clock()
            if status != self._last_status or now - self._last_plain >= PLAIN_EVERY:
                self._line(f"{self.id}: {describe(payload)}")
                self._last_plain = now
        self._last_status = status

    def end(self, message: str | None = None) -> None:
        """Leaves the bar where it is and moves on to a new line (then ``message``)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if message is not None:
            self.out.write(message + "\n")
        self.out.flush()

    def _line(self, text: str) -> None:
        if self._bar is not None:
            # Above the bar, which is drawn again below the line.
            self._bar.clear()
            self.out.write(text + "\n")
            self._bar.refresh()
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def _files(self, files: Any) -> None:
        """A line for each file whose state changed (none for the queued ones)."""
        if not isinstance(files, list):
            return
        for item in files:
            if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                continue
            before = self.files.get(item["path"], {})
            self.files[item["path"]] = {**before, **item}
            status = item.get("status")
            if status != before.get("status") and status not in FILE_QUIET:
                self._line(file_line(self.id, self.files[item["path"]]))

    def _draw(self, payload: dict[str, Any]) -> None:
        status = str(payload.get("status", ""))
        known = self._last
        total = known.get("total") if isinstance(known.get("total"), int) and known["total"] > 0 else None
        done = known.get("downloaded", known.get("offset", 0)) or 0
        if status == "complete" and isinstance(payload.get("bytes"), int):
            total = done = payload["bytes"]
        tail = []
        if total:
            tail.append(f" {human_bytes(done)}/{human_bytes(total)}")
        else:
            tail.append(f" {human_bytes(done)}")
        if status == "downloading":
            if known.get("speed") is not None:
                tail.append(f"{human_bytes(known['speed'])}/s")
            if known.get("eta_s") is not None:
                tail.append(f"ETA {human_duration(known['eta_s'])}")
            if (known.get("segments") or 0) > 1:
                tail.append(f"{known['segments']} conn")
            if self.files:
                tail.append(files_done(list(self.files.values())))
        elif status:
            tail.append(status if status != "retrying" else describe(payload))
        right = "  ".join(tail)
        width = max(20, self._width() - 1)  # never the last column: some terminals wrap there
        percent = 0
        if total:
            percent = 100 if status == "complete" else min(100, done * 100 // total)
            # Sized for a typical tail rather than this one, so that the bar does
            # not jump as the numbers change length.
            room = width - len(self.id) - len("  100% ||") - TAIL_ROOM
            bar_width = max(0, min(30, room))
            bar = f"|{{bar:{bar_width}}}|" if bar_width >= 5 else ""
            line_format = "{desc} {pct:3d}% " + bar + "{tail}"
        else:
            line_format, right = "{desc} {tail}", right.lstrip()
        bar_ = self._bar
        if bar_ is None:
            bar_ = self._bar = _Bar(right, percent, total=total, initial=min(done, total or done), file=self.out,
                                    desc=self.id, ncols=width, bar_format=line_format, ascii=self._charset,
                                    disable=False, leave=True, dynamic_ncols=False, mininterval=0)
            return
        bar_.tail, bar_.percent, bar_.ncols, bar_.bar_format = right, percent, width, line_format
        bar_.total = total
        # Never past the total: tqdm would take the total for unknown.
        bar_.n = min(done, total) if total else done
        bar_.refresh()
