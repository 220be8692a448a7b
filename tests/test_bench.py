"""The benchmark's own logic (``make bench`` itself is too slow for the suite; docs/
maintainers.rst, "Benchmark"): each target read off a report and judged, the rates of
the throughput figure, and the origins that slow one connection of a run."""

from __future__ import annotations

import math
import os
import time

import requests

from tests.support import debian
from tools import bench_targets
from tools.bench_origin import Origins, PyOrigin
from tools.bench_table import (
    ALONE,
    ARIA2,
    CURL,
    CURL_NULL,
    CURL_SHA,
    SERVICE,
    SERVICE_SLOW,
    SHA_BOUND,
    TWO,
)
from tools.bench_trace import rates

MiB = 1024 * 1024


def _report(**parts: object) -> dict[str, object]:
    return {"date": "2026-12-07", "machine": {"cores": 2, "kernel": "6", "origin": "nginx"}, "args": {"runs": 1},
            "notes": [], **parts}


def _verdicts(report: dict[str, object]) -> dict[str, str]:
    return {f"{t.case}: {t.figure}": t.cells()[-1] for t in bench_targets.targets(report)}


def test_ratios_are_judged_against_their_targets() -> None:
    report = _report(
        throttled={"summary": {SERVICE: {"mib_s": 240.0}, CURL: {"mib_s": 30.0}, ARIA2: {"mib_s": 230.0},
                               SERVICE_SLOW: {"mib_s": 180.0}}},
        fast={"summary": {SERVICE: {"mib_s": 900.0, "cpu_s_per_gib": 1.2}, SHA_BOUND: {"mib_s": 1200.0},
                          CURL_NULL: {"mib_s": 3000.0}, CURL_SHA: {"mib_s": 200.0, "cpu_s_per_gib": 1.0}}},
        concurrent={"summary": {ALONE: {"mib_s": 500.0}, TWO: {"mib_s": 800.0}}},
    )
    found = {t.figure: t for t in bench_targets.targets(report)}
    assert found[f"{SERVICE} ÷ one connection ({CURL})"].value == 8.0
    assert found[f"{SERVICE} ÷ one connection ({CURL})"].met is True
    assert found[f"{SERVICE} ÷ {ARIA2}"].met is False  # 1.04 < 1.1
    # The bound is the smaller of hashing alone and curl to /dev/null: 900 / 1200.
    assert found[f"{SERVICE} ÷ min({SHA_BOUND}, {CURL_NULL})"].value == 0.75
    assert found[f"{SERVICE} ÷ min({SHA_BOUND}, {CURL_NULL})"].met is False
    # A third more time with the slow connection: over 1.25.
    assert math.isclose(found["time with it ÷ time without"].value or 0, 240 / 180)
    assert found["time with it ÷ time without"].met is False
    assert found[f"{TWO} ÷ {ALONE}, MiB/s"].met is True  # exactly 1.6 meets ">= 1.6"
    assert found[f"{SERVICE} ÷ {CURL_SHA}"].met is False  # 1.2 CPU s/GiB against 1.0


def test_a_case_that_did_not_run_is_not_measured_rather_than_met() -> None:
    report = _report(latency={"progress": {"p95": 0.299}, "cancel_to_event": {"p95": math.nan}},
                     memory={"small": {"summary": {SERVICE: {"peak_rss_mib": 40.0}}},
                             "big": {"summary": {SERVICE: {"peak_rss_mib": 48.0}}}},
                     many={"speedup_vs_hf": 1.5})
    verdicts = _verdicts(report)
    assert verdicts["latency: bytes → progress event, p95"] == "met"
    assert verdicts["latency: cancel → canceled event, p95"] == "not measured"  # no samples
    assert verdicts["peak RSS: larger file ÷ smaller"] == "MISSED"  # 1.2: memory grows with the file
    assert verdicts["many files: hf download's time ÷ the service's"] == "met"
    assert verdicts["throttled origin: arw-models ÷ one connection (curl -o)"] == "not measured"
    table = bench_targets.table(report)
    assert table.startswith("Targets: 2 of 3 measured met\n")
    assert "299.0 ms  < 300 ms" in table


def test_rates_are_per_interval_between_samples() -> None:
    trace = [[0.0, 0], [0.5, 10 * MiB], [0.5004, 11 * MiB], [1.0, 20 * MiB]]
    # The sample 0.4 ms after another is merged into the next interval.
    assert rates(trace) == ([0.0, 0.5, 1.0], [20.0, 20.0])
    assert rates([[0.0, 0], [0.25, 64 * MiB]]) == ([0.0, 0.25], [256.0])
    assert rates([]) == ([], [])


def _fetch_times(urls: list[str], size: int) -> list[float]:
    """Each URL on a connection of its own: the seconds each took."""
    times = []
    for url in urls:
        began = time.monotonic()
        answer = requests.get(url, timeout=10)
        times.append(time.monotonic() - began)
        assert answer.status_code == 200 and len(answer.content) == size
    return times


def test_the_python_origin_paces_only_its_nth_connection(tmp_path: object) -> None:
    size = 256 * 1024
    (tmp_path / "f.bin").write_bytes(os.urandom(size))  # type: ignore[operator]
    origin = PyOrigin(str(tmp_path), slow_nth=2, slow_rate=4 * MiB)
    try:
        _fetch_times([origin.url("f.bin")] * 3, size)
        # Only paced writes are logged: the second connection's, every byte of it.
        assert origin.connections == 3
        assert origin.log()[-1][1] == size
    finally:
        origin.close()


def test_nginx_slows_the_nth_connection_of_a_fresh_origin(tmp_path: object) -> None:
    binary = debian.binary("nginx-light", "nginx", "/usr/sbin/nginx")
    # Larger than loopback's socket buffers, which take in what nginx sends before it
    # paces anything.
    size = 4 * MiB
    origins = Origins(os.path.join(str(tmp_path), "origin"), binary, rate=32 * MiB, slow_nth=2)
    try:
        with open(os.path.join(origins.root, "f.bin"), "wb") as fh:
            fh.write(os.urandom(size))
        with origins.one_slow("f.bin") as url:
            first, second, third = _fetch_times([url] * 3, size)
        # The second connection runs at 3.2 MiB/s, the others at ten times that.
        assert second >= 0.3, (first, second, third)
        assert max(first, third) < second / 2, (first, second, third)
    finally:
        origins.close()
