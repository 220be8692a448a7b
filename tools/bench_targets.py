"""The speed targets of arw-models, each read off one ``make bench`` report: the figure
(a ratio to a reference measured in the same run, or a latency), the target, and
whether the figure meets it. A figure whose case did not run is "not measured",
never met.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .bench_table import (
    ALONE,
    ARIA2,
    CURL,
    CURL_NULL,
    CURL_SHA,
    SERVICE,
    SERVICE_SLOW,
    SHA_BOUND,
    TWO,
    rst,
)

_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    case: str
    figure: str  # what is compared with what
    value: float | None  # None: not measured in this run
    op: str  # one of _OPS
    goal: float
    unit: str = "x"  # "x": a ratio; "ms": a latency

    @property
    def met(self) -> bool | None:
        if self.value is None or self.value != self.value:  # not measured, or NaN (no samples)
            return None
        return _OPS[self.op](self.value, self.goal)

    def cells(self) -> list[str]:
        if self.unit == "ms":
            value = "-" if self.met is None else f"{self.value * 1000:.1f} ms"  # type: ignore[operator]
            goal = f"{self.op} {self.goal * 1000:.0f} ms"
        else:
            value = "-" if self.met is None else f"{self.value:.2f}"
            goal = f"{self.op} {self.goal:g}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[self.met]
        return [self.case, self.figure, value, goal, verdict]


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or not b else a / b


def _get(report: dict[str, Any], *keys: str) -> Any:
    """``report[k1][k2]...``, None where a key is missing."""
    value: Any = report
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def targets(report: dict[str, Any]) -> list[Target]:
    def rate(part: str, client: str) -> float | None:
        return _get(report, part, "summary", client, "mib_s")

    bound = [v for v in (rate("fast", SHA_BOUND), rate("fast", CURL_NULL)) if v is not None]
    small_rss = _get(report, "memory", "small", "summary", SERVICE, "peak_rss_mib")
    big_rss = _get(report, "memory", "big", "summary", SERVICE, "peak_rss_mib")
    return [
        Target("throttled origin", f"{SERVICE} ÷ one connection ({CURL})",
               _div(rate("throttled", SERVICE), rate("throttled", CURL)), ">=", 7.5),
        Target("throttled origin", f"{SERVICE} ÷ {ARIA2}",
               _div(rate("throttled", SERVICE), rate("throttled", ARIA2)), ">=", 1.1),
        Target("fast origin, verified", f"{SERVICE} ÷ min({SHA_BOUND}, {CURL_NULL})",
               _div(rate("fast", SERVICE), min(bound)) if bound else None, ">=", 0.85),
        # Same file, same rate elsewhere: the ratio of rates is the inverse ratio of times.
        Target("one connection at a tenth", "time with it ÷ time without",
               _div(rate("throttled", SERVICE), rate("throttled", SERVICE_SLOW)), "<=", 1.25),
        Target("two downloads at once", f"{TWO} ÷ {ALONE}, MiB/s",
               _div(rate("concurrent", TWO), rate("concurrent", ALONE)), ">=", 1.6),
        Target("CPU per verified GiB", f"{SERVICE} ÷ {CURL_SHA}",
               _div(_get(report, "fast", "summary", SERVICE, "cpu_s_per_gib"),
                    _get(report, "fast", "summary", CURL_SHA, "cpu_s_per_gib")), "<=", 1.0),
        Target("latency", "bytes → progress event, p95", _get(report, "latency", "progress", "p95"), "<", 0.3,
               "ms"),
        Target("latency", "cancel → canceled event, p95", _get(report, "latency", "cancel_to_event", "p95"), "<",
               0.2, "ms"),
        Target("peak RSS", "larger file ÷ smaller", _div(big_rss, small_rss), "<=", 1.1),
        Target("many files", "hf download's time ÷ the service's", _get(report, "many", "speedup_vs_hf"), ">=",
               1.5),
    ]


def table(report: dict[str, Any]) -> str:
    rows = [t.cells() for t in targets(report)]
    met = sum(r[-1] == "met" for r in rows)
    measured = sum(r[-1] != "not measured" for r in rows)
    return (f"Targets: {met} of {measured} measured met\n\n"
            + rst(["case", "figure", "value", "target", "verdict"], rows))
