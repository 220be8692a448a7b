"""``make bench``: the transfer loop against curl, on the same file, in the same run.

A local origin serves one file with ``sendfile`` (so the origin is not what is
measured); curl fetches it to disk, then arw-models downloads it the way a user's
POST does (stream, SHA-256 while streaming, fsync, rename). Figures are printed as
ratios to curl's, which makes them comparable across machines:

* throughput ratio: arw-models bytes/s divided by curl's (1.0 = as fast as curl;
  curl neither hashes nor fsyncs, so a ratio near 1 means those cost nothing extra);
* also against ``curl | sha256sum``-free baselines: hashlib alone on the same bytes;
* memory: growth of the process's peak RSS during the download, as a fraction of
  the file size (a streaming loop keeps this near zero whatever the size).

Options: ``--size-mb N`` (default 1024), ``--runs N`` (default 3, best run counts).
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

MiB = 1024 * 1024


class _SendfileHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    path_on_disk = ""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        size = os.path.getsize(self.path_on_disk)
        start = 0
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.send_header("ETag", '"bench"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        with open(self.path_on_disk, "rb") as fh:
            try:
                self.connection.sendfile(fh, offset=start)
            except (BrokenPipeError, ConnectionResetError):
                pass


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _curl(url: str, out: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", out, url], check=True)
    elapsed = time.perf_counter() - t0
    os.unlink(out)
    return elapsed


def _arw(url: str, state_dir: str, sha256: str) -> tuple[float, int]:
    from arw_models import ArwModels, create_app

    shutil.rmtree(state_dir, ignore_errors=True)
    app = create_app({"ARW_STATE_DIR": state_dir, "ARW_MODELS_DISK_RESERVE_MB": 0,
                      "ARW_DL_RESUME_ON_START": False})
    state = ArwModels.state(app)
    client = app.test_client()
    _reset_peak_rss()
    rss_before = _peak_rss_kib()
    t0 = time.perf_counter()
    r = client.post("/models/download", json={"id": "bench", "url": url, "sha256": sha256})
    assert r.status_code == 202, r.json
    state.manager.wait("bench")
    elapsed = time.perf_counter() - t0
    growth = _peak_rss_kib() - rss_before
    job = client.get("/models/downloads/bench").json
    state.shutdown()
    if job["status"] != "complete":
        raise SystemExit(f"bench download failed: {job}")
    return elapsed, growth * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if shutil.which("curl") is None:
        print("curl is needed as the reference", file=sys.stderr)
        return 2

    work = tempfile.mkdtemp(prefix="arw-bench-")
    try:
        src = os.path.join(work, "model.bin")
        size = args.size_mb * MiB
        with open(src, "wb") as fh:
            block = os.urandom(4 * MiB)
            fh.writelines(block for _ in range(size // len(block)))
            fh.write(block[: size % len(block)])
        hasher = hashlib.sha256()
        t0 = time.perf_counter()
        with open(src, "rb") as fh:
            while chunk := fh.read(4 * MiB):
                hasher.update(chunk)
        hash_secs = time.perf_counter() - t0
        digest = hasher.hexdigest()

        _SendfileHandler.path_on_disk = src
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SendfileHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}/model.bin"
        try:
            curl_secs = min(_curl(url, os.path.join(work, "curl.out")) for _ in range(args.runs))
            runs = [_arw(url, os.path.join(work, "state"), digest) for _ in range(args.runs)]
        finally:
            server.shutdown()
            server.server_close()
        arw_secs = min(r[0] for r in runs)
        rss_growth = max(r[1] for r in runs)

        def rate(secs: float) -> str:
            return f"{size / secs / MiB:8.1f} MiB/s"

        print(f"file: {args.size_mb} MiB, best of {args.runs} runs, origin: local sendfile server")
        print(f"curl -o FILE          {rate(curl_secs)}  (reference)")
        print(f"arw-models download   {rate(arw_secs)}  (stream + sha256 + fsync + rename)")
        print(f"sha256 of the file    {rate(hash_secs)}  (hashlib alone, from the page cache)")
        print(f"throughput ratio arw/curl:           {curl_secs / arw_secs:.2f}")
        print(f"throughput ratio arw/(curl then sha256): {(curl_secs + hash_secs) / arw_secs:.2f}")
        print(f"peak RSS growth / file size:          {rss_growth / size:.4f} ({rss_growth / MiB:.1f} MiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
