"""``make bench``: arw-models against the download tools its users would compare it
with, on the same files from the same origins, in one run, and against the speed
targets the project set itself (:mod:`tools.bench_targets`).

Every figure is a ratio to a reference measured in the same run (curl, mostly), so
that numbers from two machines can be compared. The runs of the tools being
compared alternate (the order rotates from one round to the next), and each
measured run starts after the disk is synced and the machine has idled a few
seconds, because the cost of writing depends on what was written just before.

* fast origin (nginx with ``sendfile``; a Python ``sendfile`` origin without nginx):
  the service (a real gunicorn, ``POST`` with ``sha256``, until the ``complete``
  event reaches a subscriber), ``curl -o /dev/null``, ``curl -o``, ``curl -o &&
  sha256sum``, ``aria2c -x8 -s8 -k1M`` and one core's SHA-256 over a buffer in
  memory: throughput, CPU seconds per GiB, peak RSS;
* throttled origin (a rate limit per connection, ``limit_rate`` in nginx): the
  service against one curl connection and against aria2c, and the service again on
  an origin where one of its connections runs at a tenth of the rate;
* two downloads at once on the fast origin, against one alone;
* memory: peak RSS of the service's worker (``VmHWM``, a fresh gunicorn per run) at
  1 GiB and at a four times larger file, against curl's;
* latency, from :mod:`tools.bench_latency`: bytes to progress event, cancel to
  ``canceled`` event, each against a ``/healthz`` round trip;
* many files, from :mod:`tools.bench_many`: a hub repository, against ``hf download``.

The benchmark asserts nothing on time; it measures, prints RST tables (the last one:
each target, its figure and whether it is met), writes every run to ``--json``
(default ``bench-report.json`` at the top of the repository) and draws the
throughput over time of the throttled and fast cases into ``--png``.
``--quick`` runs it small, once, as a smoke check.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support import debian
from tests.support.servers import ROOT

from . import bench_latency, bench_many, bench_run, bench_targets, bench_trace
from .bench_origin import Origins, PyOrigin, write_file
from .bench_run import BenchError, Run, Service
from .bench_table import (
    ALONE,
    ARIA2,
    CURL,
    CURL_NULL,
    CURL_RANGES,
    CURL_SHA,
    CURL_TWO,
    SERVICE,
    SERVICE_SLOW,
    SHA_BOUND,
    TWO,
    summarize,
    tables,
)

MiB = 1024 * 1024
FULL = {"size_mb": 512, "throttled_mb": 192, "mem_mb": 1024, "big_mb": 4096, "runs": 3, "idle": 3.0,
        "cancels": 20, "latency_secs": 10.0, "many_files": 8, "many_mb": 128,
        "png": str(ROOT / "docs" / "images" / "bench-throughput.png")}
QUICK = {"size_mb": 64, "throttled_mb": 64, "mem_mb": 64, "big_mb": 256, "runs": 1, "idle": 1.0, "cancels": 5,
         "latency_secs": 3.0, "many_files": 4, "many_mb": 16, "png": str(ROOT / "bench-throughput.png")}
PARTS = ("fast", "throttled", "concurrent", "memory", "latency", "many")
LATENCY_RATE = 4 * MiB  # per connection: far below what any client takes in, so bytes arrive as sent
MARGIN = 256 * MiB  # free space left over beyond the files and the service's own reserve


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small files, one round: a smoke check")
    parser.add_argument("--size-mb", type=int,
                        help="file from the fast origin, and each of the two at once (512; quick 64)")
    parser.add_argument("--throttled-mb", type=int, help="file from the throttled origin (192; quick 64)")
    parser.add_argument("--mem-mb", type=int, help="the smaller file of the memory figure (1024; quick 64)")
    parser.add_argument("--big-mb", type=int, help="the larger file of the memory figure (4096; quick 256)")
    parser.add_argument("--runs", type=int, help="rounds of each comparison (3; quick 1)")
    parser.add_argument("--idle", type=float, help="seconds idle before each measured run (3; quick 1)")
    parser.add_argument("--cancels", type=int, help="cancels timed (20; quick 5)")
    parser.add_argument("--latency-secs", type=float, help="length of the progress-latency download (10; quick 3)")
    parser.add_argument("--many-files", type=int, help="files of the hub repository (8; quick 4)")
    parser.add_argument("--many-mb", type=int, help="size of each of its files, MiB (128; quick 16)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"which parts to run, comma separated (all: {','.join(PARTS)})")
    parser.add_argument("--rate-mb", type=int, default=30, help="throttle per connection, MiB/s (30)")
    parser.add_argument("--slow-nth", type=int, default=2,
                        help="which connection of a run (from 1) the one-slow-connection origin slows (2)")
    parser.add_argument("--origin", choices=("nginx", "python"), default="nginx",
                        help="nginx (the Python origin when nginx cannot be had), or the Python origin")
    parser.add_argument("--dir", default=None, help="where the temporary files go (default: $TMPDIR)")
    parser.add_argument("--json", default=str(ROOT / "bench-report.json"), help="report file")
    parser.add_argument("--png", help="the throughput figure (docs/images/bench-throughput.png; quick: "
                                      "bench-throughput.png here, so that a smoke run leaves the docs alone)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return ((done.stdout or done.stderr).strip().splitlines() or ["?"])[0]


class Bench:
    """One benchmark run: its origins, its work directory (the origin's files, the
    service's state directories and the other programs' output, all on one file
    system) and what it found."""

    def __init__(self, args: argparse.Namespace, work: str) -> None:
        self.args = args
        self.work = work
        self.out_dir = os.path.join(work, "out")
        os.makedirs(self.out_dir)
        self.notes: list[str] = []
        self.report: dict[str, Any] = {}
        self.services = 0
        self.second: tuple[str, str, int, str] | None = None  # the other file of two downloads at once
        self.origins: Origins | None = None
        self.nginx_binary = ""
        self.aria2 = self._tool("aria2", "aria2c")
        if not self._tool("time", "time", "/usr/bin/time"):
            self.note("the peak RSS of the programs compared is unknown without GNU time")
        self.origin_name = "python sendfile origin"

    def note(self, text: str) -> None:
        self.notes.append(text)
        say("note: " + text)

    def _tool(self, package: str, name: str, *places: str) -> bool:
        try:
            debian.binary(package, name, *places)
            return True
        except pytest.skip.Exception as exc:
            self.note(f"no {ARIA2 if name == 'aria2c' else name}: {exc.msg}")
            return False

    def start_origins(self) -> None:
        binary = None
        if self.args.origin != "python":
            try:
                binary = debian.binary("nginx-light", "nginx", "/usr/sbin/nginx")
            except pytest.skip.Exception as exc:
                self.note(f"the Python origin stands in for nginx: {exc.msg}")
        self.origins = Origins(os.path.join(self.work, "origin"), binary, self.args.rate_mb * MiB,
                               self.args.slow_nth)
        if binary:
            self.nginx_binary = binary
            self.origin_name = version([binary, "-v"]).replace("nginx version: ", "") + ", sendfile"

    @property
    def root(self) -> str:
        return self.origins.root  # type: ignore[union-attr]

    def close(self) -> None:
        if self.origins is not None:
            self.origins.close()

    # -- one measured run ------------------------------------------------------------------

    def fit(self, want_mb: int, label: str, copies: int = 2) -> int:
        """The size in bytes that leaves room for ``copies`` files on the disk of the
        work directory (0: none fits), saying so when it is less than asked."""
        reserve = float(os.environ.get("ARW_MODELS_DISK_RESERVE_MB") or 256) * MiB + MARGIN
        free = shutil.disk_usage(self.work).free
        room = int((free - reserve) // copies) // (16 * MiB) * 16 * MiB
        if room >= want_mb * MiB:
            return want_mb * MiB
        if room < 16 * MiB:
            self.note(f"{label}: skipped, {free // MiB} MiB free on {self.work}")
            return 0
        self.note(f"{label}: {room // MiB} MiB instead of {want_mb} MiB, to fit in the "
                  f"{free // MiB} MiB free on {self.work}")
        return room

    def idle(self) -> None:
        os.sync()  # what earlier runs wrote goes to disk now, not during the next run
        time.sleep(self.args.idle)

    def measure(self, client: str, url: str, size: int, sha256: str) -> Run:
        out = os.path.join(self.out_dir, "model.bin")
        if client in (SERVICE, SERVICE_SLOW, ALONE, TWO):
            self.services += 1
            service = Service(self.work, f"state-{self.services}")  # a fresh worker: VmHWM is for its life
            try:
                service.start()
                if client != SERVICE_SLOW:
                    self.idle()
                    return service.download_all([("bench", url, size, sha256)]
                                                + ([self.second] if client == TWO else []))
                with self.origins.one_slow(url.rsplit("/", 1)[1]) as slow_url:  # type: ignore[union-attr]
                    self.idle()
                    return service.download("bench", slow_url, size, sha256)
            finally:
                service.close()
        self.idle()
        try:
            if client == SHA_BOUND:
                return bench_run.sha256_bound(size)
            if client == CURL_NULL:
                return bench_run.curl_null(url, size)
            if client == CURL_RANGES:
                return bench_run.curl_ranges(url, out, size)
            if client == CURL_TWO:
                assert self.second is not None
                return bench_run.curl_pair([url, self.second[1]], out, size)
            if client == CURL:
                return bench_run.curl(url, out, size)
            if client == CURL_SHA:
                return bench_run.curl_sha256sum(url, out, size, sha256)
            return bench_run.aria2c(url, out, size)
        finally:
            for leftover in os.listdir(self.out_dir):
                os.unlink(os.path.join(self.out_dir, leftover))

    def compare(self, label: str, clients: list[str], url_of: Callable[[str], str], size: int,
                runs: int, name: str = "") -> dict[str, list[Run]]:
        """``runs`` rounds; in each, every client once, the order rotating by one, on a
        file ``name`` (default: the label's first word) written for them."""
        name = name or label.split()[0] + ".bin"
        path = os.path.join(self.root, name)
        say(f"{label}: writing {size // MiB} MiB")
        sha256 = write_file(path, size)
        results: dict[str, list[Run]] = {c: [] for c in clients}
        try:
            for r in range(runs):
                for client in clients[r % len(clients):] + clients[: r % len(clients)]:
                    run = self.measure(client, url_of(name), size, sha256)
                    results[client].append(run)
                    rss = "?" if run.rss is None else f"{run.rss / MiB:.1f}"
                    moved = run.extra.get("bytes", size)
                    say(f"{label}, round {r + 1}/{runs}: {client:22} {moved / run.secs / MiB:8.1f} MiB/s  "
                        f"cpu {run.cpu:6.2f} s  peak rss {rss} MiB")
        finally:
            os.unlink(path)
        return results

    # -- the parts --------------------------------------------------------------------

    def fast(self) -> None:
        size = self.fit(self.args.size_mb, "fast origin")
        if not size:
            return
        clients = [SERVICE, SHA_BOUND, CURL_NULL, CURL, CURL_SHA] + ([ARIA2] if self.aria2 else [])
        results = self.compare("fast origin", clients, self.origins.fast_url, size,  # type: ignore[union-attr]
                               self.args.runs)
        self.report["fast"] = {"size": size, "runs": {c: [r.as_dict() for r in rs] for c, rs in results.items()},
                               "summary": summarize(results, size)}

    def throttled(self) -> None:
        size = self.fit(self.args.throttled_mb, "throttled origin")
        if not size:
            return
        clients = [SERVICE, CURL, CURL_RANGES] + ([ARIA2] if self.aria2 else []) + [SERVICE_SLOW]
        results = self.compare("throttled origin", clients, self.origins.slow_url, size,  # type: ignore[union-attr]
                               self.args.runs)
        self.report["throttled"] = {"size": size, "rate_per_connection": self.args.rate_mb * MiB,
                                    "slow_nth": self.args.slow_nth,
                                    "runs": {c: [r.as_dict() for r in rs] for c, rs in results.items()},
                                    "summary": summarize(results, size)}

    def concurrent(self) -> None:
        """The fast origin's file and a second one of other bytes (the same bytes would
        be one blob to the service) at once, against the first alone; and the same
        two with curl, against one curl: how far two transfers scale on this machine."""
        size = self.fit(self.args.size_mb, "two downloads at once", copies=4)
        if not size:
            return
        say(f"two downloads at once: writing a second file of {size // MiB} MiB")
        path = os.path.join(self.root, "second.bin")
        self.second = ("bench-2", self.origins.fast_url("second.bin"), size,  # type: ignore[union-attr]
                       write_file(path, size))
        try:
            results = self.compare("two downloads at once", [ALONE, TWO, CURL, CURL_TWO],
                                   self.origins.fast_url, size, self.args.runs, "first.bin")  # type: ignore[union-attr]
        finally:
            os.unlink(path)
        self.report["concurrent"] = {"size": size, "summary": summarize(results, size),
                                     "runs": {c: [r.as_dict() for r in rs] for c, rs in results.items()}}

    def memory(self) -> None:
        parts = {}
        for key, want in (("small", self.args.mem_mb), ("big", self.args.big_mb)):
            size = self.fit(want, f"memory, {want} MiB file")
            if not size:
                continue
            results = self.compare(f"memory, {size // MiB} MiB file", [SERVICE, CURL],
                                   self.origins.fast_url, size, 1, f"memory-{key}.bin")  # type: ignore[union-attr]
            parts[key] = {"size": size, "runs": {c: [r.as_dict() for r in rs] for c, rs in results.items()},
                          "summary": summarize(results, size)}
        if parts:
            self.report["memory"] = parts

    def latency(self) -> None:
        size = int(LATENCY_RATE * self.args.latency_secs)
        if not self.fit(size // MiB + 1, "latency", copies=3):
            return
        root = os.path.join(self.work, "paced")
        os.makedirs(root)
        write_file(os.path.join(root, "paced.bin"), size)
        origin = PyOrigin(root, rate=LATENCY_RATE)
        service = Service(self.work, "state-latency")
        try:
            service.start()
            self.idle()
            say(f"latency: one download at {LATENCY_RATE // MiB} MiB/s per connection, then {self.args.cancels} "
                "cancels")
            progress = bench_latency.progress_latency(service, origin, origin.url("paced.bin"))
            to_event, to_answer = bench_latency.cancel_latency(service, origin.url("paced.bin"), self.args.cancels)
            rtt = bench_latency.round_trips(service, 50)
            interval = service.session.get(service.url + "/probe", timeout=10).json()["settings"].get(
                "progress_interval_ms")
        finally:
            service.close()
            origin.close()
            shutil.rmtree(root, ignore_errors=True)
        self.report["latency"] = {
            "rate_per_connection": LATENCY_RATE, "progress_interval_ms": interval,
            "progress": bench_latency.summary(progress), "cancel_to_event": bench_latency.summary(to_event),
            "cancel_to_answer": bench_latency.summary(to_answer), "healthz": bench_latency.summary(rtt),
            "samples": {"progress": progress, "cancel_to_event": to_event, "cancel_to_answer": to_answer},
        }


    def many(self) -> None:
        files, size = self.args.many_files, self.args.many_mb * MiB
        if not self.fit(files * self.args.many_mb, "many files", copies=3):
            return
        if not self.nginx_binary:
            self.note("many files: skipped, it needs nginx")
            return
        try:
            self.report["many"] = bench_many.many_files(
                self.work, self.nginx_binary, files, size, self.args.rate_mb, self.args.runs, write_file, self.idle,
                say)
        except BenchError as exc:
            self.note(f"many files: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        debian.binary("curl", "curl")
    except pytest.skip.Exception as exc:
        say(f"curl is the reference and cannot be had: {exc.msg}")
        return 2
    work = tempfile.mkdtemp(prefix="arw-bench-", dir=args.dir)
    began = time.monotonic()
    bench = Bench(args, work)
    try:
        bench.start_origins()
        for part in args.parts.split(","):
            if part not in PARTS:
                say(f"no part {part!r}: the parts are {', '.join(PARTS)}")
                return 2
            getattr(bench, part)()
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "origin": bench.origin_name, "curl": version(["curl", "--version"]),
                    "aria2c": version(["aria2c", "--version"]) if bench.aria2 else None},
        "args": vars(args), "env": {k: v for k, v in os.environ.items() if k.startswith("ARW_") and "TOKEN" not in k},
        "notes": bench.notes, "seconds": round(time.monotonic() - began, 1), **bench.report,
    }
    why_not = bench_trace.plot(report, args.png)
    if why_not:
        report["notes"].append(f"no figure: {why_not}")
    print(tables(report) + "\n\n" + bench_targets.table(report))
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=2)
    say(f"report written to {args.json}" + ("" if why_not else f", figure to {args.png}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
