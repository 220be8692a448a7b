"""A real nginx for tests and for ``make bench``: its own configuration, pid file and
logs in a directory of the caller's, on a port that nothing else can take."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable


class Nginx:
    """nginx serving ``root``, on a socket this process listens on first (nginx takes
    it over through ``NGINX=<fd>;``): no port race, no wait for it to come up."""

    def __init__(self, binary: str, base: str, server_conf: str = "",
                 log_format: str = '$status "$http_range" "$http_if_range"') -> None:
        """``server_conf``: more directives for the server block (``sendfile on;``, a
        ``location`` with a ``limit_rate``...); ``log_format``: what the access log
        says of each request (nginx's variables)."""
        self.root = os.path.join(base, "root")
        os.makedirs(self.root)
        self.access_log = os.path.join(base, "access.log")
        self.proc, self.port = launch(binary, base, lambda port: f"""
    log_format ranges escape=none '{log_format}';
    access_log {self.access_log} ranges;
    client_body_temp_path {base}/body;
    server {{
        listen 127.0.0.1:{port};
        root {self.root};
        {server_conf}
    }}
""")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def log(self) -> list[str]:
        """The access log, once nginx has stopped (and so written every line)."""
        self.close()
        with open(self.access_log) as fh:
            return fh.read().splitlines()

    def close(self) -> None:
        stop(self.proc)


def launch(binary: str, base: str, http: Callable[[int], str],
           connections: int = 64) -> tuple[subprocess.Popen[bytes], int]:
    """Starts nginx with its pid file and logs in ``base`` and the ``http`` block
    that ``http(port)`` writes, on a port this process has bound and listens on:
    nginx takes the socket over (``NGINX=<fd>;``), so it is ready at once."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    conf = os.path.join(base, "nginx.conf")
    with open(conf, "w") as fh:
        fh.write(f"""
daemon off;
worker_processes 1;
{"user root;" if os.geteuid() == 0 else ""}
pid {base}/nginx.pid;
error_log {base}/error.log;
events {{ worker_connections {connections}; }}
http {{
{http(port)}
}}
""")
    try:
        proc = subprocess.Popen(
            [binary, "-p", base, "-e", os.path.join(base, "error.log"), "-c", conf],
            pass_fds=[listener.fileno()], env=dict(os.environ, NGINX=f"{listener.fileno()};"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    finally:
        listener.close()
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Ends an nginx master (and its worker): SIGTERM is its fast shutdown."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise
