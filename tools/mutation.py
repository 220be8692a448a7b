"""``make mutation``: how many injected faults the test suite catches.

Each mutant (one small fault at one site, see :mod:`tools.mutants`) is written into
a fresh copy of the package, the tests and these tools in a temporary directory, and the tests
chosen for its module run there with ``pytest -x``: ``PYTHONPATH`` and the working
directory point at the copy, so the processes the tests start (gunicorn, ``python
-c``) import the mutated code too. The working tree is never written to.

Only a failing test kills a mutant (pytest's exit status 1), a test that hangs
included: each test has a time limit of its own (pytest-timeout), past which it
fails and is named. A mutant *survives* when the tests pass (status 0). Any other
status (2 interrupted or a collection error, 3 internal error, 4 usage, 5 no tests)
is an ``error``: the run proves nothing either way. The whole run has a limit too,
a safety net: a run past it is run again once with a longer one, and if that one
runs past too it is a ``timeout``. Errors and timeouts are listed, loudly, and left
out of the score: killed / (killed + survived). Ids listed in
``tools/mutation_equivalent.txt`` (mutants that change nothing a test could
observe, see :mod:`tools.equivalent`) are not run.

Every process a run starts carries a marker in its environment; when pytest ends,
or is stopped at the timeout, whatever still carries that marker is killed, even
servers started in a session of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from . import equivalent as eq
from .mutants import Mutant, is_valid, mutants, show

ROOT = Path(__file__).resolve().parent.parent

# What is mutated when no module is named: the download engine, the manager, the
# event hub and its stream. Paths from the repository root; any module of the package will do.
DEFAULT_TARGETS = [
    "arw_models/engine/download.py",
    "arw_models/engine/single.py",
    "arw_models/engine/cpu.py",
    "arw_models/engine/parallel.py",
    "arw_models/engine/published.py",
    "arw_models/engine/plan.py",
    "arw_models/engine/fetch.py",
    "arw_models/engine/segments.py",
    "arw_models/engine/verify.py",
    "arw_models/engine/transfer.py",
    "arw_models/service/jobs.py",
    "arw_models/service/speed.py",
    "arw_models/service/listing.py",
    "arw_models/service/slots.py",
    "arw_models/service/manager.py",
    "arw_models/service/submit.py",
    "arw_models/service/install.py",
    "arw_models/service/budget.py",
    "arw_models/service/endings.py",
    "arw_models/service/recovery.py",
    "arw_models/service/events.py",
    "arw_models/server/stream.py",
    "arw_models/engine/route.py",
    "arw_models/engine/sources.py",
    "arw_models/engine/digests.py",
    "arw_models/service/dedup.py",
    "arw_models/store/sidecar.py",
    "arw_models/store/blobs.py",
    "arw_models/store/manifests.py",
    "arw_models/store/migrate.py",
    "arw_models/store/gc.py",
    # Models of many files, their sources, and the peers' endpoint.
    "arw_models/engine/model.py",
    "arw_models/engine/references.py",
    "arw_models/engine/hub.py",
    "arw_models/engine/hubapi.py",
    "arw_models/engine/oci.py",
    "arw_models/engine/registry_auth.py",
    "arw_models/service/attempts.py",
    "arw_models/service/models.py",
    "arw_models/service/model_install.py",
    "arw_models/store/staging.py",
    "arw_models/store/folders.py",
    "arw_models/store/hfcache.py",
    "arw_models/server/blobserve.py",
]

# The tests run against the mutants of each target: the modules that exercise it,
# the fastest and most direct first (with -x, an early failure ends the run). A
# smaller set makes each mutant cheaper but lets through faults that only another
# module's tests would catch; ``--tests`` overrides the map for one run.
_ENGINE_TESTS = ["tests/test_engine.py", "tests/test_records.py", "tests/test_downloads.py",
                 "tests/test_resume_validators.py", "tests/test_scheduling.py", "tests/test_segments.py",
                 "tests/test_segment_faults.py", "tests/test_pause.py", "tests/test_ratelimit.py",
                 "tests/test_direct_io.py", "tests/test_retries.py", "tests/test_stalls.py",
                 "tests/test_content_range.py", "tests/test_whole_file.py", "tests/test_size_cap.py",
                 "tests/test_disk_full.py", "tests/test_durability.py", "tests/test_restart.py",
                 "tests/test_end_races.py", "tests/test_symlinks.py", "tests/test_digests.py", "tests/test_dedup.py", "tests/test_mirrors.py",
                 "tests/test_hub.py", "tests/test_gated.py", "tests/test_resume_answer.py",
                 "tests/test_dns_errors.py", "tests/test_checkpoints.py", "tests/test_range_framing.py",
                 "tests/test_url_redaction.py", "tests/test_split_at_once.py", "tests/test_steal.py",
                 "tests/test_peers.py"]
_MODEL_TESTS = ["tests/test_many_files.py", "tests/test_many_files_resume.py", "tests/test_many_files_sources.py",
                "tests/test_many_files_kill.py"]
# Not tests/test_rewrite_in_place.py: it drives real nginx, Apache and lighttpd and
# takes about a minute, too long to run against every mutant; name it with --tests.
DEFAULT_TESTS = {
    "arw_models/engine/download.py": [*_ENGINE_TESTS, "tests/test_names.py", "tests/test_url_normalization.py"],
    "arw_models/engine/single.py": ["tests/test_segments.py", "tests/test_cpu.py", *_ENGINE_TESTS],
    "arw_models/engine/cpu.py": ["tests/test_cpu.py", "tests/test_split_at_once.py"],
    "arw_models/engine/parallel.py": ["tests/test_segments.py", "tests/test_segment_faults.py", *_ENGINE_TESTS],
    "arw_models/engine/published.py": ["tests/test_digests.py", "tests/test_hub.py", *_ENGINE_TESTS],
    "arw_models/engine/plan.py": ["tests/test_engine.py", "tests/test_segments.py", *_ENGINE_TESTS[1:]],
    "arw_models/engine/fetch.py": _ENGINE_TESTS,
    "arw_models/engine/segments.py": ["tests/test_segments.py", *_ENGINE_TESTS],
    "arw_models/engine/verify.py": ["tests/test_prefix_hash.py", "tests/test_segments.py", *_ENGINE_TESTS],
    "arw_models/engine/transfer.py": ["tests/test_engine.py", "tests/test_scheduling.py", *_ENGINE_TESTS[1:],
                                      "tests/test_api.py", "tests/test_events.py"],
    "arw_models/service/jobs.py": ["tests/test_engine.py", "tests/test_scheduling.py", *_ENGINE_TESTS[1:],
                                   "tests/test_api.py", "tests/test_events.py"],
    "arw_models/service/speed.py": ["tests/test_engine.py", "tests/test_scheduling.py"],
    "arw_models/service/listing.py": ["tests/test_api.py", "tests/test_pause.py", "tests/test_events.py",
                                      *_ENGINE_TESTS, "tests/test_migration.py"],
    "arw_models/service/slots.py": ["tests/test_scheduling.py", *_ENGINE_TESTS, "tests/test_one_process.py"],
    "arw_models/service/manager.py": ["tests/test_api.py", "tests/test_scheduling.py", *_ENGINE_TESTS,
                                      "tests/test_many_files.py", "tests/test_many_files_resume.py",
                                      "tests/test_many_files_sources.py", "tests/test_one_process.py",
                                      "tests/test_signals.py"],
    "arw_models/service/submit.py": ["tests/test_api.py", "tests/test_pause.py", "tests/test_scheduling.py",
                                     *_ENGINE_TESTS, "tests/test_many_files.py", "tests/test_many_files_resume.py",
                                     "tests/test_one_process.py", "tests/test_names.py",
                                     "tests/test_url_normalization.py"],
    "arw_models/service/install.py": ["tests/test_api.py", "tests/test_store.py", "tests/test_gc.py",
                                      "tests/test_file_modes.py", "tests/test_blob_endpoint.py", *_ENGINE_TESTS,
                                      "tests/test_names.py"],
    "arw_models/service/budget.py": ["tests/test_disk_full.py", "tests/test_api.py", *_ENGINE_TESTS],
    "arw_models/service/endings.py": ["tests/test_pause.py", "tests/test_api.py", "tests/test_scheduling.py",
                                      *_ENGINE_TESTS],
    "arw_models/service/recovery.py": ["tests/test_pause.py", "tests/test_one_process.py", "tests/test_api.py",
                                       *_ENGINE_TESTS],
    "arw_models/engine/route.py": ["tests/test_mirrors.py", "tests/test_fleet.py", "tests/test_digests.py",
                                   "tests/test_url_normalization.py", "tests/test_peers.py"],
    "arw_models/engine/sources.py": ["tests/test_sources.py", "tests/test_mirrors.py", "tests/test_hub.py",
                                     "tests/test_gated.py", "tests/test_url_normalization.py", "tests/test_peers.py"],
    "arw_models/engine/digests.py": ["tests/test_digests.py", "tests/test_hub.py"],
    "arw_models/service/dedup.py": ["tests/test_dedup.py", "tests/test_store.py", "tests/test_digests.py"],
    "arw_models/store/blobs.py": ["tests/test_store.py", "tests/test_dedup.py", "tests/test_gc.py",
                                  "tests/test_migration.py", "tests/test_file_modes.py", "tests/test_symlinks.py"],
    "arw_models/store/manifests.py": ["tests/test_store.py", "tests/test_gc.py", "tests/test_migration.py",
                                      "tests/test_blob_endpoint.py"],
    "arw_models/store/migrate.py": ["tests/test_migration.py", "tests/test_gc.py", "tests/test_symlinks.py",
                                    "tests/test_store.py"],
    "arw_models/store/gc.py": ["tests/test_gc.py", "tests/test_store.py", "tests/test_migration.py",
                               "tests/test_dedup.py", *_MODEL_TESTS],
    "arw_models/engine/model.py": _MODEL_TESTS,
    "arw_models/engine/references.py": [*_MODEL_TESTS, "tests/test_url_pattern.py"],
    "arw_models/engine/hub.py": ["tests/test_hub_repos.py", "tests/test_many_files_sources.py",
                                "tests/test_cli_hub.py"],
    "arw_models/engine/hubapi.py": ["tests/test_hub_repos.py", "tests/test_many_files_sources.py"],
    "arw_models/engine/oci.py": ["tests/test_registry_auth.py", "tests/test_registries.py",
                                 "tests/test_many_files_sources.py"],
    "arw_models/engine/registry_auth.py": ["tests/test_registry_auth.py", "tests/test_registries.py",
                                           "tests/test_many_files_sources.py"],
    "arw_models/service/attempts.py": [*_MODEL_TESTS, *_ENGINE_TESTS],
    "arw_models/service/models.py": ["tests/test_pause.py", *_MODEL_TESTS, "tests/test_cli_hub.py", "tests/test_metrics.py"],
    "arw_models/service/model_install.py": [*_MODEL_TESTS, "tests/test_metrics.py"],
    "arw_models/store/staging.py": ["tests/test_staging.py", *_MODEL_TESTS, "tests/test_gc.py"],
    "arw_models/store/folders.py": [*_MODEL_TESTS, "tests/test_store.py"],
    "arw_models/store/hfcache.py": ["tests/test_hf_cache.py", "tests/test_many_files_sources.py"],
    "arw_models/server/blobserve.py": ["tests/test_blob_endpoint.py", "tests/test_peers.py"],
    "arw_models/store/sidecar.py": ["tests/test_records.py", "tests/test_engine.py", "tests/test_pause.py",
                                    *_ENGINE_TESTS],
    "arw_models/service/events.py": ["tests/test_events.py", "tests/test_end_races.py", "tests/test_api.py",
                                     "tests/test_records.py"],
    "arw_models/server/stream.py": ["tests/test_events.py", "tests/test_guards.py", "tests/test_api.py",
                                    "tests/test_records.py"],
}
DEFAULT_TESTS = {target: list(dict.fromkeys(tests)) for target, tests in DEFAULT_TESTS.items()}  # each once

# A target not in the map gets every test module but these, which start real
# servers and take most of the suite's time (they do run the mutated code when named
# with --tests).
PROCESS_TESTS = ["tests/test_gunicorn.py", "tests/test_state_lock.py", "tests/test_one_process.py"]

SEED = 20261126
EQUIVALENT_FILE = ROOT / "tools" / "mutation_equivalent.txt"
MARKER = "MUTATION_RUN"  # not ARW_*: tests/support/servers.py drops those from a server's environment
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider"]
EXIT_PLUGIN = "arw_mutation_exit"  # tools/pytest_exit.py: pytest's status as soon as it has reported
TEST_TIMEOUT = 30.0  # seconds a single test may take under a mutant (pytest-timeout); --test-timeout
RERUN_FACTOR = 3  # a run past the whole-run limit is run again with this many times the limit

# pytest's exit status: what a mutant's run means. Only failing tests kill it.
EXIT_STATUS = {0: "survived", 1: "killed"}
EXIT_NAMES = {2: "interrupted (a collection error?)", 3: "internal error", 4: "usage error", 5: "no tests collected"}


@dataclass
class Result:
    mutant: Mutant
    status: str  # killed, survived, error, timeout, equivalent, invalid, stopped
    seconds: float = 0.0
    detail: str = ""  # the first failing test of a killed mutant; what went wrong for an error or a timeout


def classify(returncode: int | None) -> str:
    """What a run's exit status says of its mutant (None: the run went past its limit)."""
    if returncode is None:
        return "timeout"
    return EXIT_STATUS.get(returncode, "error")


def error_detail(returncode: int, output: str) -> str:
    """Why a run proves nothing: pytest's status and the error it reported."""
    what = EXIT_NAMES.get(returncode, f"killed by signal {-returncode}" if returncode < 0 else "unknown")
    found = first_failure(output)
    if not found:
        where = [line.strip("_ ") for line in output.splitlines() if " ERROR collecting " in line]
        error = [line[1:].strip() for line in output.splitlines() if line.startswith("E   ")]
        found = " - ".join([*where[:1], *error[:1]])[:200]
    return f"pytest exit status {returncode}, {what}" + (f": {found}" if found else "")


def tests_for(target: str, override: list[str] | None) -> list[str]:
    if override:
        return override
    mapped = [t for t in DEFAULT_TESTS.get(target, []) if (ROOT / t.split("::")[0]).exists()]
    if mapped:
        return mapped
    return [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py"))
            if str(p.relative_to(ROOT)) not in PROCESS_TESTS]


def read_equivalent(path: Path) -> set[str]:
    """The ids the list holds, as written (see :func:`tools.equivalent.resolve` for where they are now)."""
    items, _ = eq.read(path)
    return {item.id for item in items if isinstance(item, eq.Entry)}


def sample(found: dict[str, list[Mutant]], n: int, seed: int) -> list[Mutant]:
    """``n`` mutants spread over the modules in proportion to how many each has,
    the same ones for the same seed and code."""
    total = sum(len(v) for v in found.values())
    if n >= total:
        return [m for v in found.values() for m in v]
    quotas = {module: n * len(v) / total for module, v in found.items()}
    counts = {module: int(q) for module, q in quotas.items()}
    # Largest remainders first, ties in target order, until the counts add up to n.
    for module in sorted(quotas, key=lambda m: -(quotas[m] - counts[m]))[: n - sum(counts.values())]:
        counts[module] += 1
    chosen = []
    for module, items in found.items():
        picked = set(random.Random(f"{seed}:{module}").sample(range(len(items)), counts[module]))
        chosen += [m for i, m in enumerate(items) if i in picked]
    return chosen


def kill_marked(value: str, exact: bool = True) -> int:
    """SIGKILL every process whose environment has ``MUTATION_RUN=value`` (or one
    starting with ``value`` unless ``exact``); rescans until none is left, so a
    child forked meanwhile is found too."""
    needle = f"\0{MARKER}={value}" + ("\0" if exact else "")
    killed: set[int] = set()  # a process killed is still listed until it has exited: count it once
    for _ in range(100):
        found = []
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if needle.encode() in b"\0" + fh.read():
                        found.append(int(entry))
            except OSError:
                continue
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.01)  # let the kills land before the next scan (not a synchronization)
    return len(killed)


class Runner:
    """Runs the tests in copies of ``root`` (the repository; a test points it at a
    tiny project of its own), each test limited to ``test_timeout`` seconds."""

    def __init__(self, workdir: Path, packages: list[str], python: str = sys.executable, root: Path = ROOT,
                 test_timeout: float = TEST_TIMEOUT) -> None:
        self.workdir = workdir
        self.packages = packages
        self.python = python
        self.root = root
        self.test_timeout = test_timeout
        self.stopping = threading.Event()
        self._count = 0
        self._lock = threading.Lock()

    def _copy(self, dest: Path) -> None:
        ignore_names = ("__pycache__", "*.pyc")
        ignore = shutil.ignore_patterns(*ignore_names)
        for name in [*self.packages, "tests"]:
            shutil.copytree(self.root / name, dest / name, ignore=ignore)
        if (self.root / "tools").is_dir():  # some tests test these tools (test_mutation, test_url_pattern)
            shutil.copytree(self.root / "tools", dest / "tools", ignore=ignore)
        if (self.root / "docs").is_dir():  # tests read the pages (settings, problem codes, examples)
            shutil.copytree(self.root / "docs", dest / "docs", ignore=shutil.ignore_patterns("_build", *ignore_names))
        for path in self.root.iterdir():  # wsgi.py, setup.cfg (pytest's settings), ...
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, dest / path.name)

    def run(self, tests: list[str], timeout: float, mutant: Mutant | None = None,
            text: str = "", extra: tuple[str, ...] = ()) -> tuple[int | None, float, str]:
        """One pytest run in a fresh copy (``extra``: more pytest options); returns
        (exit status, None past ``timeout``; seconds; output)."""
        with self._lock:
            self._count += 1
            name = f"{os.getpid()}-{self._count}"
        base = self.workdir / name
        copy, tmp = base / "src", base / "tmp"
        self._copy(copy)
        tmp.mkdir()
        if mutant is not None:
            (copy / mutant.module).write_text(mutant.apply(text))
        plugins = base / "plugins"  # tools/pytest_exit.py, where the copy's tests cannot shadow it
        plugins.mkdir()
        shutil.copy2(Path(__file__).with_name("pytest_exit.py"), plugins / f"{EXIT_PLUGIN}.py")
        env = dict(os.environ, PYTHONPATH=f"{copy}{os.pathsep}{plugins}", TMPDIR=str(tmp), **{MARKER: name})
        cmd = [self.python, "-m", "pytest", *PYTEST_ARGS, "-p", EXIT_PLUGIN, "-p", "timeout",
               "-o", f"timeout={self.test_timeout:g}",
               "-o", "timeout_method=signal", f"--basetemp={tmp / 'pytest'}", *extra, *tests]
        log = base / "pytest.log"
        started = time.monotonic()
        try:
            with open(log, "wb") as out:
                proc = subprocess.Popen(cmd, cwd=copy, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                if self.stopping.is_set():  # a Ctrl-C swept the processes just before this one
                    _killpg(proc.pid)
                try:
                    status: int | None = proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    status = None
                finally:
                    _killpg(proc.pid)
                    kill_marked(name)
                    proc.wait()
            seconds = time.monotonic() - started
            return status, seconds, log.read_text(errors="replace")
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def judge(self, tests: list[str], timeout: float, mutant: Mutant | None = None,
              text: str = "") -> tuple[str, float, str]:
        """Runs the tests against ``mutant`` and says what became of it: (status,
        seconds, detail). A run past ``timeout`` is run once more with a longer limit
        (a machine busy for a moment is no verdict); past that too, it is a timeout."""
        returncode, seconds, output = self.run(tests, timeout, mutant, text)
        if returncode is None:
            returncode, seconds, output = self.run(tests, timeout * RERUN_FACTOR, mutant, text)
        status = classify(returncode)
        if status == "killed":
            return status, seconds, first_failure(output)
        if status == "timeout":
            return status, seconds, f"still running after {timeout:.0f}s, and after {timeout * RERUN_FACTOR:.0f}s"
        if status == "error":
            assert returncode is not None
            return status, seconds, error_detail(returncode, output)
        return status, seconds, ""

    def check_imports(self) -> None:
        """Refuse to run if a process started the way the tests start them would
        import the package from anywhere but the copy."""
        base = self.workdir / "imports"
        self._copy(base)
        probe = ("import arw_models, tests, tools, wsgi; "
                 "print(arw_models.__file__, tests.__file__, tools.__file__, wsgi.__file__)")
        env = dict(os.environ, PYTHONPATH=str(base))
        # From a directory that holds neither copy: PYTHONPATH alone must win over the
        # editable install, as it must for a server a test starts from anywhere.
        out = subprocess.run([self.python, "-c", probe], cwd=self.workdir, env=env, capture_output=True,
                             text=True, timeout=60, check=False)
        shutil.rmtree(base, ignore_errors=True)
        if out.returncode != 0 or any(not p.startswith(str(base)) for p in out.stdout.split()):
            raise SystemExit(f"mutation: the copy is not what gets imported:\n{out.stdout}{out.stderr}")


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s (?:setup|call|teardown)\s+(\S+)", re.MULTILINE)


def durations(output: str) -> dict[str, float]:
    """Seconds per test node id (setup, call and teardown added up) from the table
    of ``pytest --durations=0 --durations-min=0``."""
    found: dict[str, float] = {}
    for seconds, node in DURATION.findall(output):
        found[node] = found.get(node, 0.0) + float(seconds)
    return found


def selection_seconds(tests: tuple[str, ...], times: dict[str, float], overhead: float) -> float:
    """How long a run of ``tests`` (files or node ids) takes: its tests' time from
    the baseline, plus pytest's own start (imports, collection)."""
    def within(node: str, item: str) -> bool:
        return node == item or node.startswith((item + "::", item + "["))
    return overhead + sum(t for node, t in times.items() if any(within(node, item) for item in tests))


def baseline(runner: Runner, selections: list[tuple[str, ...]], jobs: int) -> dict[tuple[str, ...], float] | str:
    """Runs every test of ``selections`` on the unmutated copy, once, in ``jobs``
    pytest runs side by side, and gives each selection the time a run of it takes
    (from each test's own time; many targets share most of their tests, so this is
    one run of the union instead of one run per target). A failure is a message
    instead: nothing can be judged against tests that fail without a mutant."""
    files = list(dict.fromkeys(item for tests in selections for item in tests))
    if not files:
        return {}
    chunks = [files[i::jobs] for i in range(min(jobs, len(files)))]
    extra = ("--durations=0", "--durations-min=0")
    with ThreadPoolExecutor(len(chunks)) as pool:
        runs = list(pool.map(lambda chunk: runner.run(chunk, timeout=1200, extra=extra), chunks))
    times: dict[str, float] = {}
    overhead = 0.0
    for chunk, (returncode, seconds, output) in zip(chunks, runs):
        if returncode != 0:
            # Once more, alone: a test that failed only on a machine busy for a moment
            # is no reason to refuse the run, but one that fails again is.
            print(f"mutation: a baseline run failed ({first_failure(output) or f'status {returncode}'}); "
                  "running it once more", flush=True)
            returncode, seconds, output = runner.run(chunk, timeout=1200, extra=extra)
        if returncode != 0:
            return (f"{output[-4000:]}\nmutation: the tests fail without any mutant (pytest exit status "
                    f"{returncode}: {' '.join(chunk)}); fix that first")
        found = durations(output)
        times.update(found)
        overhead = max(overhead, seconds - sum(found.values()))
    return {tests: selection_seconds(tests, times, overhead) for tests in selections}


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def first_failure(output: str) -> str:
    """The first failing test named in pytest's short summary (log lines above it
    may start with ERROR too)."""
    summary = output.rpartition(" short test summary info ")[2]
    for line in summary.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" ", 1)[1][:200]
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", default=DEFAULT_TARGETS, help="modules to mutate")
    parser.add_argument("--sample", type=int, default=150, help="mutants to run (default 150)")
    parser.add_argument("--all", action="store_true", help="run every mutant")
    parser.add_argument("--seed", type=int, default=SEED, help="which sample")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--id", action="append", default=[], help="run this mutant only (repeatable)")
    parser.add_argument("--tests", nargs="+", help="test modules (or node ids) for every target")
    parser.add_argument("--jobs", type=int, default=2, help="mutants at once (default 2)")
    parser.add_argument("--timeout", type=float,
                        help="seconds for one mutant's whole run (default 4x the baseline, 10 at least, plus the "
                             "--test-timeout); past it, the run is tried once more with 3x as long")
    parser.add_argument("--test-timeout", type=float, default=TEST_TIMEOUT,
                        help=f"seconds one test may take before it fails (default {TEST_TIMEOUT:g})")
    parser.add_argument("--fix-equivalent", action="store_true",
                        help=f"write {EQUIVALENT_FILE.name} again with the ids and line hashes of now, run nothing")
    parser.add_argument("--json", default=str(ROOT / "mutation-report.json"), help="where the report goes")
    args = parser.parse_args(argv)
    if args.fix_equivalent:
        return fix_equivalent(EQUIVALENT_FILE)

    missing = [m for m in args.modules if not Path(m).resolve().is_relative_to(ROOT) or not Path(m).is_file()]
    if missing:
        parser.error(f"no such module here: {', '.join(missing)} (the defaults are at the top of {__file__})")
    targets = [Path(m).resolve().relative_to(ROOT).as_posix() for m in args.modules]
    sources = {t: (ROOT / t).read_text() for t in targets}
    found = {t: mutants(t, sources[t]) for t in targets}
    known = {m.id for v in found.values() for m in v}
    equivalent = current_equivalent(EQUIVALENT_FILE, targets, sources)
    if args.id:
        chosen = [m for v in found.values() for m in v if m.id in args.id]
        if unknown := set(args.id) - {m.id for m in chosen}:
            parser.error(f"no such mutant in {' '.join(targets)}: {', '.join(sorted(unknown))}")
    else:
        chosen = sample(found, len(known) if args.all else args.sample, args.seed)
    if args.list:
        for m in chosen:
            before, after = show(m, sources[m.module])
            print(f"{m.id}{'  (equivalent)' if m.id in equivalent else ''}\n    - {before}\n    + {after}")
        print(f"{len(chosen)} of {len(known)} mutants")
        return 0
    selections = {t: tests_for(t, args.tests) for t in targets}
    workdir = Path(tempfile.mkdtemp(prefix="arw-mutation-"))
    runner = Runner(workdir, sorted({t.split("/")[0] for t in targets if "/" in t}), test_timeout=args.test_timeout)
    results: list[Result] = []
    try:
        runner.check_imports()
        # Only the test lists of mutants that will run need a baseline, and one run of
        # all their tests at once gives each list its time (see baseline()).
        to_run = [m for m in chosen if (args.id or m.id not in equivalent)
                  and is_valid(m.apply(sources[m.module]), sources[m.module])]
        needed = list(dict.fromkeys(tuple(selections[m.module]) for m in to_run))
        found_times = baseline(runner, needed, max(1, args.jobs))
        if isinstance(found_times, str):
            print(found_times)
            return 2
        timeouts = {}
        for tests, seconds in found_times.items():
            # Past this, a hanging test would have failed at its own limit already.
            timeouts[tests] = args.timeout or max(10.0, 4 * seconds) + args.test_timeout
            print(f"baseline {seconds:.1f}s, timeout {timeouts[tests]:.0f}s a run, {args.test_timeout:g}s a test: "
                  f"{' '.join(tests)}")

        def one(m: Mutant) -> Result:
            if m.id in equivalent and not args.id:  # one named is run all the same: to check the listing
                return Result(m, "equivalent")
            if not is_valid(m.apply(sources[m.module]), sources[m.module]):
                return Result(m, "invalid")
            if runner.stopping.is_set():
                return Result(m, "stopped")
            tests = tuple(selections[m.module])
            return Result(m, *runner.judge(list(tests), timeouts[tests], m, sources[m.module]))

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            futures = [pool.submit(one, m) for m in chosen]
            try:
                for done, future in enumerate(as_completed(futures), 1):
                    r = future.result()
                    results.append(r)
                    print(f"[{done}/{len(chosen)}] {r.status:<10} {r.mutant.id}  {r.seconds:.1f}s  {r.detail}",
                          flush=True)
            except KeyboardInterrupt:
                runner.stopping.set()
                for f in futures:
                    f.cancel()
                kill_marked(f"{os.getpid()}-", exact=False)
                raise
    finally:
        kill_marked(f"{os.getpid()}-", exact=False)
        shutil.rmtree(workdir, ignore_errors=True)
    return report(results, chosen, sum(map(len, found.values())), args, targets, selections, sources)


def report(results: list[Result], chosen: list[Mutant], total_found: int, args: argparse.Namespace,
           targets: list[str], selections: dict[str, list[str]], sources: dict[str, str]) -> int:
    order = {m.id: i for i, m in enumerate(chosen)}
    results.sort(key=lambda r: order[r.mutant.id])
    count = {s: sum(r.status == s for r in results) for s in STATUSES}
    # Only a failing test or passing tests say anything of a mutant: an error or a
    # timeout is neither a kill nor a survivor.
    scored = count["killed"] + count["survived"]
    score = count["killed"] / scored if scored else 1.0
    survivors = [r for r in results if r.status == "survived"]
    if survivors:
        print("\nsurvivors (id, original, mutated):")
    rows = []
    for r in results:
        before, after = show(r.mutant, sources[r.mutant.module])
        rows.append({"id": r.mutant.id, "status": r.status, "seconds": round(r.seconds, 2),
                     "killed_by": r.detail if r.status == "killed" else "", "detail": r.detail,
                     "original": before, "mutated": after})
        if r.status == "survived":
            print(f"  {r.mutant.id}\n      - {before}\n      + {after}")
    unjudged = [r for r in results if r.status in ("error", "timeout", "stopped")]
    if unjudged:
        print(f"\nNOT IN THE SCORE: {count['error']} error, {count['timeout']} timeout, {count['stopped']} stopped "
              "(neither killed nor survived; an error usually means the tool or the tests broke, not the mutant):")
        for r in unjudged:
            print(f"  {r.status:<8} {r.mutant.id}  {r.detail}")
    print(f"\nmutation score {score:.1%}: {count['killed']} killed of {scored} ({count['killed']} killed, "
          f"{count['survived']} survived; {count['error']} error and {count['timeout']} timeout left out); "
          f"{count['equivalent']} equivalent excluded; {len(results)} run of {total_found} mutants "
          f"in {len(targets)} modules, seed {args.seed}")
    document = {"score": round(score, 4), "counts": count, "scored": scored, "mutants_in_targets": total_found,
                "seed": args.seed, "sample": None if args.all or args.id else args.sample, "targets": targets,
                "tests": selections, "mutants": rows}
    Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    print(f"report: {args.json}")
    return 0


STATUSES = ("killed", "survived", "error", "timeout", "equivalent", "invalid", "stopped")


def current_equivalent(path: Path, targets: list[str], sources: dict[str, str]) -> set[str]:
    """The ids of now of the listed equivalent mutants of ``targets``; says which
    moved (to where) and which are gone."""
    items, bad = eq.read(path)
    for line in bad:
        print(f"note: {path.name}: not an entry: {line!r}")
    entries = [item for item in items if isinstance(item, eq.Entry) and item.module in targets]
    found = eq.resolve(entries, sources.get)
    for entry, now in found.moved:
        print(f"note: {path.name}: {entry.id} has moved to {now} (--fix-equivalent writes that)")
    for entry in found.gone:
        print(f"note: {path.name}: {entry.id} is gone: its line is nowhere in {entry.module}")
    return found.ids


def fix_equivalent(path: Path, root: Path = ROOT) -> int:
    found, written = eq.rewrite(path, root)
    for entry, now in found.moved:
        print(f"moved: {entry.id} -> {now}")
    for entry in found.gone:
        print(f"gone (left out): {entry.id}  # {entry.why}")
    print(f"{path.name}: {written} entries written, {len(found.moved)} moved, {len(found.gone)} gone")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the processes and the copies are gone already
        sys.exit("mutation: interrupted")
