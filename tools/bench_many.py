"""The many-file case of ``make bench``: a hub repository of several large files, the
service (``POST hf://OWNER/REPO``, every file verified by its SHA-256, until
``complete``) against ``hf download`` (huggingface_hub's command line, its default
workers) on the same nginx stand-in of the hub (:mod:`tools.bench_hub`), each
connection capped alike. The figure is ``hf download``'s time divided by the
service's, both measured in the same run, the order alternating by round.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from statistics import median
from typing import Any

from .bench_hub import OWNER, REPO, NginxHub
from .bench_run import BenchError, Run, Service, measured

MiB = 1024 * 1024
SERVICE, HF = "arw-models", "hf download"


def hf_cli() -> str | None:
    """The ``hf`` program of this interpreter's environment (huggingface_hub's)."""
    found = os.path.join(os.path.dirname(sys.executable), "hf")
    return found if os.access(found, os.X_OK) else shutil.which("hf")


def hf_download(hf: str, endpoint: str, cache: str, total: int) -> Run:
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_ENABLE_HF_TRANSFER="0", HF_HOME=os.path.join(cache, "home"))
    run, _ = measured([hf, "download", f"{OWNER}/{REPO}", "--cache-dir", cache, "--quiet"], env=env)
    got = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(cache, f"models--{OWNER}--{REPO}",
                                                                                       "blobs")) for f in fs)
    if got != total:
        raise BenchError(f"hf download wrote {got} bytes, not {total}")
    return run


def many_files(work: str, nginx: str, files: int, size: int, rate_mb: int, runs: int,
               write_file: Callable[[str, int], str], idle: Callable[[], None],
               say: Callable[[str], None]) -> dict[str, Any]:
    """``runs`` rounds of the service and ``hf download`` on ``files`` files of ``size``
    bytes; the report part (sizes, runs, medians, the ratio)."""
    hf = hf_cli()
    if hf is None:
        raise BenchError("no hf command (huggingface_hub's) in this environment")
    source = os.path.join(work, "many-source")
    os.makedirs(source)
    paths = {}
    say(f"many files: writing {files} x {size // MiB} MiB")
    for i in range(files):
        name = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        write_file(os.path.join(source, name), size)
        paths[name] = os.path.join(source, name)
    hub = NginxHub(nginx, os.path.join(work, "many-hub"), paths, rate_mb)
    total = hub.total
    results: dict[str, list[Run]] = {SERVICE: [], HF: []}
    clients = [SERVICE, HF]
    try:
        for r in range(runs):
            for client in clients[r % 2:] + clients[: r % 2]:
                if client == SERVICE:
                    service = Service(work, f"state-many-{r}", env={"ARW_HF_ENDPOINT": hub.endpoint})
                    try:
                        service.start()
                        idle()
                        run = service.download_model("bench-shards", f"hf://{OWNER}/{REPO}", total, files)
                    finally:
                        service.close()
                else:
                    cache = os.path.join(work, f"hf-cache-{r}")
                    idle()
                    try:
                        run = hf_download(hf, hub.endpoint, cache, total)
                    finally:
                        shutil.rmtree(cache, ignore_errors=True)
                results[client].append(run)
                say(f"many files, round {r + 1}/{runs}: {client:12} {total / run.secs / MiB:8.1f} MiB/s  "
                    f"{run.secs:6.2f} s  cpu {run.cpu:6.2f} s")
    finally:
        hub.close()
        shutil.rmtree(source, ignore_errors=True)
    secs = {c: median(r.secs for r in rs) for c, rs in results.items()}
    return {"files": files, "size": size, "total": total, "rate_per_connection": rate_mb * MiB,
            "hf_version": _hf_version(hf),
            "runs": {c: [r.as_dict() for r in rs] for c, rs in results.items()},
            "summary": {c: {"secs": s, "mib_s": total / s / MiB} for c, s in secs.items()},
            "speedup_vs_hf": secs[HF] / secs[SERVICE]}


def _hf_version(hf: str) -> str:
    """huggingface_hub's version, as ``hf version`` prints it (without its colours)."""
    try:
        said = subprocess.run([hf, "version"], check=False, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "huggingface_hub ?"
    found = re.search(r"version:\s*(\S+)", re.sub(r"\x1b\[[0-9;]*m", "", said))
    return f"huggingface_hub {found.group(1) if found else '?'}"
