"""What the benchmark runs and how it measures one run: the reference programs (curl,
sha256sum, aria2c) as child processes whose CPU time and peak memory come from
``wait4``, and the service as a real gunicorn whose worker is read in ``/proc``.

Each function here measures one transfer and returns a :class:`Run`; choosing
the order, idling between runs and summarizing is :mod:`tools.bench`'s job.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Self

import requests

from tests.support.servers import CONF, GUNICORN, ROOT, free_port
from tests.support.sse import SSEClient

from .bench_trace import Sampler

PROGRESS = "Models.DownloadProgress"
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    secs: float  # wall time of the transfer
    cpu: float  # user + system CPU seconds of the process(es) doing it
    rss: int | None  # peak resident set size, bytes (None: not known)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BenchError(RuntimeError):
    """A run did not do what it was asked (a failed download, a wrong size)."""


# -- child processes --------------------------------------------------------------------


def gnu_time() -> str | None:
    found = shutil.which("time")  # the program, not the shell keyword
    return found if found else ("/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None)


def measured(argv: list[str], capture: bool = False, env: dict[str, str] | None = None,
             watch: str | None = None) -> tuple[Run, str]:
    """Runs ``argv`` to its end: its wall time, its CPU time from ``wait4`` (for that
    child and what it waited for, not for every child this process ever had), and
    its peak RSS as GNU time reports it (None without GNU time). ``watch``: a file
    whose bytes on disk are sampled meanwhile (``extra["trace"]``).

    Not ``wait4``'s peak RSS: Linux carries the high-water mark of the address space
    a child had before ``exec`` into its ``ru_maxrss``, so a child of this process
    would show at least this process's own peak. GNU time is small, and forks the
    program being measured."""
    timer = gnu_time()
    report = os.path.join(tempfile.gettempdir(), f"bench-time-{os.getpid()}.txt")
    command = [timer, "-f", "%M", "-o", report, *argv] if timer else argv
    began = time.perf_counter()
    sampler = Sampler(watch, began) if watch else None
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env,
                                stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Not communicate(): it would reap the child, and wait4 must be the one to do it.
        # The outputs are a line or two, so reading one pipe after the other cannot block.
        out = proc.stdout.read() if proc.stdout else b""
        err = proc.stderr.read() if proc.stderr else b""
        _, status, usage = os.wait4(proc.pid, 0)
        secs = time.perf_counter() - began
    finally:
        trace = sampler.stop(os.path.getsize(watch) if watch and os.path.exists(watch) else 0) if sampler else None
    extra = {"trace": trace} if trace else {}
    for pipe in (proc.stdout, proc.stderr):
        if pipe:
            pipe.close()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    rss = None
    if timer:
        with open(report) as fh:
            lines = fh.read().split()
        os.unlink(report)
        rss = int(lines[-1]) * 1024 if lines and lines[-1].isdigit() else None
    if proc.returncode != 0:
        raise BenchError(f"{argv[0]} exited with {proc.returncode}: {err.decode(errors='replace').strip()}")
    return Run(secs, usage.ru_utime + usage.ru_stime, rss, extra), out.decode()


def _check_size(path: str, size: int, who: str) -> None:
    got = os.path.getsize(path)
    if got != size:
        raise BenchError(f"{who} wrote {got} bytes, not {size}")


def curl(url: str, out: str, size: int, trace: bool = True) -> Run:
    run, _ = measured(["curl", "-s", "-S", "-f", "-o", out, url], watch=out if trace else None)
    _check_size(out, size, "curl")
    return run


def curl_ranges(url: str, out: str, size: int, count: int = 8) -> Run:
    """``count`` curls at once, each fetching one equal range into a file of its own:
    what ``count`` connections of this origin carry, with no request after the first
    and nothing hashed (the bound of any download in ``count`` ranges)."""
    jobs = " ".join(f"curl -s -S -f -r {size * n // count}-{size * (n + 1) // count - 1} "
                    f"-o {shlex.quote(f'{out}.{n}')} {shlex.quote(url)} &" for n in range(count))
    run, _ = measured(["sh", "-c", f"{jobs} wait"])
    got = sum(os.path.getsize(f"{out}.{n}") for n in range(count) if os.path.exists(f"{out}.{n}"))
    if got != size:
        raise BenchError(f"{count} x curl -r wrote {got} bytes, not {size}")
    return run


def curl_pair(urls: list[str], out: str, size: int) -> Run:
    """One curl per url, all at once, each into a file of its own: how far this
    machine lets transfers at once scale, with nothing hashed."""
    jobs = " ".join(f"curl -s -S -f -o {shlex.quote(f'{out}.{n}')} {shlex.quote(url)} &" for n, url in enumerate(urls))
    run, _ = measured(["sh", "-c", f"{jobs} wait"])
    for n in range(len(urls)):
        _check_size(f"{out}.{n}", size, "curl")
    return Run(run.secs, run.cpu, run.rss, {"bytes": size * len(urls)})


def curl_null(url: str, size: int) -> Run:
    """``curl -o /dev/null``: what one connection of this origin carries with no disk."""
    run, printed = measured(["curl", "-s", "-S", "-f", "-o", "/dev/null", "-w", "%{size_download}", url], capture=True)
    if printed.strip() != str(size):
        raise BenchError(f"curl -o /dev/null read {printed.strip()} bytes, not {size}")
    return run


# Hashes ``size`` bytes of a buffer in memory with one core and prints the seconds it
# took: the bound of any verified download on this machine, without the interpreter's
# start or the buffer's making in the figure.
_SHA256_BOUND = """
import hashlib, os, sys, time
size = int(sys.argv[1])
block = os.urandom(16 * 1024 * 1024)
view = memoryview(block)
digest = hashlib.sha256()
began = time.perf_counter(); cpu = time.process_time()
left = size
while left:
    n = min(left, len(block))
    digest.update(view[:n])
    left -= n
print(time.perf_counter() - began, time.process_time() - cpu)
"""


def sha256_bound(size: int) -> Run:
    """SHA-256 of ``size`` bytes in memory, in a child interpreter on one core."""
    run, printed = measured([sys.executable, "-c", _SHA256_BOUND, str(size)], capture=True)
    secs, cpu = (float(v) for v in printed.split())
    return Run(secs, cpu, run.rss)


def curl_sha256sum(url: str, out: str, size: int, sha256: str) -> Run:
    """``curl -o file && sha256sum file``: the same work as the service, in two passes."""
    first = curl(url, out, size, trace=False)
    second, printed = measured(["sha256sum", out], capture=True)
    if printed.split()[0] != sha256:
        raise BenchError(f"sha256sum printed {printed.strip()!r}, expected {sha256}")
    rss = None if first.rss is None or second.rss is None else max(first.rss, second.rss)
    return Run(first.secs + second.secs, first.cpu + second.cpu, rss)


def aria2c(url: str, out: str, size: int) -> Run:
    """``aria2c -x8 -s8 -k1M``; without preallocation, so that the blocks on disk are
    the bytes written (:mod:`tools.bench_trace`): on ext4 preallocating is one
    ``fallocate``, nothing the transfer waits on."""
    run, _ = measured(["aria2c", "-x8", "-s8", "-k1M", "--file-allocation=none", "-q", "--allow-overwrite=true",
                       "--auto-file-renaming=false", "-d", os.path.dirname(out), "-o", os.path.basename(out), url],
                      watch=out)
    _check_size(out, size, "aria2c")
    return run


# -- the service -------------------------------------------------------------------------


def _proc_stat_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14 and 15 of proc(5)


def _proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: look for the parent in every stat
        found = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
        return found


def admin_headers() -> dict[str, str]:
    token = os.environ.get("ARW_ADMIN_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


class Service:
    """``gunicorn -c python:arw_models.gunicorn_conf wsgi:app`` on a free port with a
    fresh state directory, in its own process group. The environment passes through
    as it is (``ARW_DL_SEGMENTS`` and the like), so the benchmark measures whatever
    the service is set to do; only the state directory, address and port are ours."""

    def __init__(self, work: str, name: str, env: dict[str, str] | None = None) -> None:
        """``env``: settings of the run (the hub endpoint of a stand-in), over the environment's."""
        self.state_dir = os.path.join(work, name)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, **(env or {}), ARW_STATE_DIR=self.state_dir, ARW_BIND="127.0.0.1",
                   ARW_PORT=str(self.port), XDG_RUNTIME_DIR=work)
        self.log_path = os.path.join(work, name + ".log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.headers = admin_headers()
        self.session = requests.Session()
        self.proc = subprocess.Popen([GUNICORN, "-c", CONF, "wsgi:app"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.worker = 0

    def output(self) -> str:
        self._log.flush()
        with open(self.log_path, errors="replace") as fh:
            return fh.read()[-4000:]

    def start(self, timeout: float = 30.0) -> Self:
        """Waits for /healthz (a bounded connect-retry), then finds the worker."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"gunicorn exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.session.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening, or its worker still booting
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"gunicorn did not answer within {timeout}s:\n{self.output()}")
            try:
                self.proc.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        workers = _children(self.proc.pid)
        if len(workers) != 1:
            raise BenchError(f"expected one gunicorn worker, found {workers}")
        self.worker = workers[0]
        return self

    def cpu(self) -> float:
        return _proc_stat_cpu(self.worker)

    def peak_rss(self) -> int:
        """VmHWM: the worker's high-water mark over its whole life, hence a fresh
        gunicorn for every size measured."""
        return _proc_status_kib(self.worker, "VmHWM") * 1024

    def rss(self) -> int:
        return _proc_status_kib(self.worker, "VmRSS") * 1024

    def events(self, timeout: float = 60.0) -> SSEClient:
        """A subscriber to the progress events, connected (its first frame read)."""
        client = SSEClient(self.url + "/events", headers=self.headers, timeout=timeout,
                           params={"prefix": PROGRESS})
        try:
            first = client.next()
        except BaseException:
            client.close()
            raise
        if first.event != "service.connected":
            client.close()
            raise BenchError(f"the event stream began with {first.event!r}")
        return client

    def post(self, path: str, body: dict[str, Any]) -> requests.Response:
        return self.session.post(self.url + path, json=body, headers=self.headers, timeout=30)

    def download(self, model_id: str, url: str, size: int, sha256: str) -> Run:
        """POST with ``sha256``, timed until the ``complete`` event reaches a
        subscriber; ``extra["trace"]``: the bytes each ``downloading`` event reported."""
        return self.download_all([(model_id, url, size, sha256)])

    def download_all(self, wanted: list[tuple[str, str, int, str]]) -> Run:
        """Each ``(id, url, size, sha256)`` POSTed at once, timed until the last
        ``complete`` event reaches a subscriber."""
        sizes = {model_id: size for model_id, _, size, _ in wanted}
        got: dict[str, int] = {}
        ended: dict[str, dict[str, Any]] = {}
        trace: list[list[float]] = [[0.0, 0]]

        def seen(frame: Any) -> bool:
            payload = frame.payload
            model_id = payload.get("id")
            if model_id not in sizes:
                return False
            if payload.get("status") == "downloading":
                got[model_id] = payload.get("downloaded") or 0
                trace.append([round(time.perf_counter() - began, 4), sum(got.values())])
            elif payload.get("status") in ("complete", "error", "canceled"):
                ended[model_id] = payload
            return len(ended) == len(sizes)

        with self.events() as events:
            rss_idle = self.rss()
            cpu_before = self.cpu()
            began = time.perf_counter()
            for model_id, url, _, sha256 in wanted:
                answer = self.post("/models/download", {"id": model_id, "url": url, "sha256": sha256})
                if answer.status_code != 202:
                    raise BenchError(f"POST /models/download answered {answer.status_code}: {answer.text}")
            events.until(seen, limit=1_000_000)
            secs = time.perf_counter() - began
            cpu = self.cpu() - cpu_before
        trace.append([round(secs, 4), sum(sizes.values())])
        for model_id, done in ended.items():
            if done["status"] != "complete" or done.get("bytes") != sizes[model_id]:
                raise BenchError(f"the download ended with {done}\n{self.output()}")
        return Run(secs, cpu, self.peak_rss(), {"rss_idle": rss_idle, "trace": trace, "bytes": sum(sizes.values())})

    def download_model(self, model_id: str, url: str, total: int, files: int) -> Run:
        """POST of a many-file reference, timed until the ``complete`` event reaches a
        subscriber; the installed model must hold ``files`` files of ``total`` bytes."""
        with self.events() as events:
            cpu_before = self.cpu()
            began = time.perf_counter()
            answer = self.post("/models/download", {"id": model_id, "url": url})
            if answer.status_code != 202:
                raise BenchError(f"POST /models/download answered {answer.status_code}: {answer.text}")
            done = events.until(lambda f: f.payload.get("id") == model_id and f.payload.get("status") in (
                "complete", "error", "canceled")).payload
            secs = time.perf_counter() - began
            cpu = self.cpu() - cpu_before
        if done["status"] != "complete" or done.get("bytes") != total or len(done.get("files") or ()) != files:
            raise BenchError(f"the download ended with {done}\n{self.output()}")
        return Run(secs, cpu, self.peak_rss())

    def close(self) -> None:
        self.session.close()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        finally:
            self._log.close()
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

