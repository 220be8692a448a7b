"""The benchmark's report as RST simple tables (readable in a terminal, pasted as they
are into docs/maintainers.rst)."""

from __future__ import annotations

import math
from statistics import median
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bench_run import Run

MiB = 1024 * 1024
GiB = 1024 * MiB
SERVICE, CURL, CURL_SHA, ARIA2 = "arw-models", "curl -o", "curl -o && sha256sum", "aria2c -x8 -s8 -k1M"
CURL_NULL, SHA_BOUND = "curl -o /dev/null", "sha256 in memory, 1 core"
SERVICE_SLOW = "arw-models, 1 slow connection"
CURL_RANGES = "8 x curl -r, one range each"
ALONE, TWO = "one download alone", "two at once"
CURL_TWO = "2 x curl -o, at once"


def rst(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([rule, line(header), rule, *(line(r) for r in rows), rule])


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}"


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _fast(part: dict[str, Any], rounds: int, origin: str) -> str:
    s = part["summary"]
    ref, ref_sha = s.get(CURL, {}), s.get(CURL_SHA, {})
    rows = []
    for client, m in s.items():
        rows.append([client, f"{m['mib_s']:.0f}", ratio(m["mib_s"], ref.get("mib_s")),
                     ratio(m["mib_s"], ref_sha.get("mib_s")), f"{m['cpu_s_per_gib']:.2f}",
                     ratio(m["cpu_s_per_gib"], ref.get("cpu_s_per_gib")),
                     ratio(m["cpu_s_per_gib"], ref_sha.get("cpu_s_per_gib")), fmt(m["peak_rss_mib"], ".0f")])
    title = f"Fast origin ({origin}), {part['size'] // MiB} MiB, median of {rounds} round(s)"
    return title + "\n\n" + rst(["client", "MiB/s", "÷ curl", "÷ curl+sha", "CPU s/GiB", "÷ curl", "÷ curl+sha",
                                 "peak RSS MiB"], rows)


def _throttled(part: dict[str, Any], rounds: int) -> str:
    s = part["summary"]
    ref, aria = s.get(CURL, {}), s.get(ARIA2, {})
    rows = [[client, f"{m['mib_s']:.1f}", ratio(m["mib_s"], ref.get("mib_s")), ratio(m["mib_s"], aria.get("mib_s"))]
            for client, m in s.items()]
    title = (f"Throttled origin, {part['rate_per_connection'] // MiB} MiB/s per connection "
             f"({SERVICE_SLOW}: connection {part['slow_nth']} at a tenth of that), "
             f"{part['size'] // MiB} MiB, median of {rounds} round(s)")
    return title + "\n\n" + rst(["client", "MiB/s", "÷ curl", "÷ aria2c"], rows)


def _memory(small: dict[str, Any] | None, big: dict[str, Any] | None) -> str:
    parts = [p for p in (small, big) if p]
    header = ["peak RSS, MiB", *(f"{p['size'] // MiB} MiB file" for p in parts)]
    if len(parts) == 2:
        header.append("larger ÷ smaller")

    def row(label: str, values: list[float | None]) -> list[str]:
        cells = [label, *("-" if v is None else f"{v:.1f}" for v in values)]
        if len(parts) == 2:
            cells.append(ratio(values[1], values[0]))
        return cells

    def peak(p: dict[str, Any], client: str) -> float | None:
        return p["summary"].get(client, {}).get("peak_rss_mib")

    def idle(p: dict[str, Any]) -> float | None:
        runs = p["runs"].get(SERVICE) or []
        return max((r["extra"]["rss_idle"] / MiB for r in runs), default=None)

    rows = [
        row(SERVICE + " worker", [peak(p, SERVICE) for p in parts]),
        row(SERVICE + " worker, before", [idle(p) for p in parts]),
        row(CURL, [peak(p, CURL) for p in parts]),
    ]
    rows.append(["arw-models ÷ curl", *(ratio(peak(p, SERVICE), peak(p, CURL)) for p in parts)]
                + (["-"] if len(parts) == 2 else []))
    return "Memory (a fresh gunicorn per run)\n\n" + rst(header, rows)


def _concurrent(part: dict[str, Any], rounds: int) -> str:
    s = part["summary"]
    # Each pair against its own one alone: the service's two against its one, and
    # curl's two against one curl (how far this machine lets two transfers scale).
    alone = {ALONE: ALONE, TWO: ALONE, CURL: CURL, CURL_TWO: CURL}
    rows = [[client, f"{m['mib_s']:.0f}", f"{m['secs']:.2f}",
             ratio(m["mib_s"], s.get(alone.get(client, ALONE), {}).get("mib_s"))]
            for client, m in s.items()]
    title = (f"Two downloads at once, fast origin, {part['size'] // MiB} MiB each (MiB/s: every byte over the "
             f"time to the last complete event), median of {rounds} round(s)")
    return title + "\n\n" + rst(["client", "MiB/s", "seconds", "÷ alone"], rows)


def _latency(part: dict[str, Any]) -> str:
    ref = part["healthz"]["p50"]
    rows = [[label, f"{s['p50'] * 1000:.1f}", f"{s['p95'] * 1000:.1f}", str(s["n"]), ratio(s["p50"], ref),
             ratio(s["p95"], ref)]
            for label, s in (("bytes → progress event", part["progress"]),
                             ("cancel → canceled event", part["cancel_to_event"]),
                             ("cancel → POST answer", part["cancel_to_answer"]),
                             ("GET /healthz (reference)", part["healthz"]))]
    interval = part["progress_interval_ms"]
    title = (f"Latency at a subscriber ({part['rate_per_connection'] // MiB} MiB/s paced origin, "
             f"progress tick {fmt(interval, '.0f')} ms)")
    return title + "\n\n" + rst(["measure", "p50 ms", "p95 ms", "n", "p50 ÷ /healthz p50", "p95 ÷ /healthz p50"],
                                 rows)


def _many(part: dict[str, Any], rounds: int) -> str:
    s = part["summary"]
    hf = s.get("hf download", {})
    rows = [[client, f"{m['mib_s']:.1f}", f"{m['secs']:.2f}", ratio(hf.get("secs"), m["secs"])]
            for client, m in s.items()]
    title = (f"Many files: a hub repository of {part['files']} x {part['size'] // MiB} MiB, "
             f"{part['rate_per_connection'] // MiB} MiB/s per connection, every file verified by the service, "
             f"median of {rounds} round(s) ({part['hf_version']})")
    return title + "\n\n" + rst(["client", "MiB/s", "seconds", "hf download's time ÷ this"], rows)


def summarize(results: dict[str, list[Run]], size: int) -> dict[str, dict[str, float]]:
    """Per client: the median run's rate (over every byte it moved: ``extra["bytes"]``,
    else ``size``) and CPU (per GiB), and the highest peak RSS."""
    return {client: {"mib_s": runs[0].extra.get("bytes", size) / median(r.secs for r in runs) / MiB,
                     "secs": median(r.secs for r in runs),
                     "cpu_s_per_gib": median(r.cpu for r in runs) / (runs[0].extra.get("bytes", size) / GiB),
                     "peak_rss_mib": None if any(r.rss is None for r in runs) else max(r.rss for r in runs) / MiB}
            for client, runs in results.items() if runs}


def tables(report: dict[str, Any]) -> str:
    rounds = report["args"]["runs"]
    out = [f"{report['date']}, {report['machine']['cores']} cores, Linux {report['machine']['kernel']}"]
    if report.get("fast"):
        out.append(_fast(report["fast"], rounds, report["machine"]["origin"]))
    if report.get("throttled"):
        out.append(_throttled(report["throttled"], rounds))
    if report.get("concurrent"):
        out.append(_concurrent(report["concurrent"], rounds))
    if report.get("memory"):
        out.append(_memory(report["memory"].get("small"), report["memory"].get("big")))
    if report.get("latency"):
        out.append(_latency(report["latency"]))
    if report.get("many"):
        out.append(_many(report["many"], rounds))
    if report["notes"]:
        out.append("\n".join("note: " + n for n in report["notes"]))
    return "\n\n".join(out)
