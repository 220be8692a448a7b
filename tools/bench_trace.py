"""Throughput over time, for the figure of ``make bench``: samples of the bytes each
program has on disk during a run, and the PNG drawn from them.

* curl and aria2c: a thread polls the output file every :data:`INTERVAL` seconds and
  records its *allocated* bytes (``st_blocks``), not its size: aria2c writes its
  ranges at their offsets, so the size jumps to the end of the furthest one at once
  while the bytes written so far are what the blocks count (aria2c runs with
  ``--file-allocation=none`` for this; a preallocated file would count every block
  from the start).
* the service: its own ``downloading`` events, each with the bytes it has received,
  at its progress tick (``ARW_DL_PROGRESS_INTERVAL_MS``).

A trace is a list of ``[seconds since the start, bytes]``; the figure plots, for the
median run of each program, the rate between consecutive samples (a run shorter than
the service's tick is one step: its overall rate).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

MiB = 1024 * 1024
INTERVAL = 0.1


def on_disk(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


class Sampler:
    """Polls ``path``'s bytes on disk from ``began`` (a ``time.perf_counter()``) until
    :meth:`stop`, which records a last sample and joins the thread."""

    def __init__(self, path: str, began: float) -> None:
        self.path = path
        self.began = began
        self.trace: list[list[float]] = [[0.0, 0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        self.trace.append([round(time.perf_counter() - self.began, 4), on_disk(self.path)])

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            self._sample()

    def stop(self, size: int | None = None) -> list[list[float]]:
        """The trace; its last sample is ``size`` bytes now (when given: the program
        has ended and written them all, whatever the blocks say yet)."""
        self._stop.set()
        self._thread.join(5)
        self.trace.append([round(time.perf_counter() - self.began, 4), size if size is not None
                           else on_disk(self.path)])
        return self.trace


def rates(trace: list[list[float]]) -> tuple[list[float], list[float]]:
    """(edges, MiB/s): the times of a trace's samples and the rate between each two
    consecutive ones (one value fewer than edges); samples less than a millisecond
    after the one before are merged into the next."""
    if not trace:
        return [], []
    edges = [trace[0][0]]
    values: list[float] = []
    last_b = trace[0][1]
    for t, b in trace[1:]:
        if t - edges[-1] < 0.001:
            continue
        values.append((b - last_b) / (t - edges[-1]) / MiB)
        edges.append(t)
        last_b = b
    return edges, values


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run of median wall time among those with a trace."""
    traced = sorted((r for r in runs if (r.get("extra") or {}).get("trace")), key=lambda r: r["secs"])
    return traced[(len(traced) - 1) // 2] if traced else None


def plot(report: dict[str, Any], path: str) -> str | None:
    """Draws the throttled and fast cases' traces into ``path`` (PNG); None when done,
    else why not (no matplotlib, no traced case)."""
    cases = [(key, title) for key, title in (
        ("throttled", "Throttled origin, {rate} MiB/s per connection, {size} MiB"),
        ("fast", "Fast origin ({origin}), {size} MiB, verified")) if report.get(key)]
    if not cases:
        return "no throttled or fast case ran"
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display: a file only
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    fig, axes = plt.subplots(len(cases), 1, figsize=(9, 3.6 * len(cases)), squeeze=False)
    for ax, (key, title) in zip(axes[:, 0], cases, strict=True):
        part = report[key]
        for client, runs in part["runs"].items():
            run = median_run(runs)
            if run is None:
                continue
            edges, values = rates(run["extra"]["trace"])
            if not values:
                continue
            ax.stairs(values, edges, baseline=None, linewidth=1.5, label=f"{client} ({part['size'] / run['secs'] / MiB:.0f} MiB/s overall)")
        ax.set_title(title.format(rate=part.get("rate_per_connection", 0) // MiB, size=part["size"] // MiB,
                                  origin=report["machine"]["origin"]), fontsize=10)
        ax.set_xlabel("seconds since the start")
        ax.set_ylabel("MiB/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"make bench, {report['date']}, {report['machine']['cores']} cores, median run of "
                 f"{report['args']['runs']} round(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
