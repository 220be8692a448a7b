"""Real static file servers for tests: nginx, Apache and lighttpd, each serving one
directory on a loopback port with its own configuration, pid file and logs.

Apache and lighttpd drop their privileges when run as root, so the served directory
is one of their own that anyone may read (a test's ``tmp_path`` is not). nginx takes
over a socket this process listens on (:mod:`tests.support.nginx`); the others bind a free
port themselves and are waited for with a bounded connect-retry.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from . import debian
from .nginx import launch as launch_nginx
from .nginx import stop as stop_nginx
from .servers import free_port

KINDS = ("nginx", "apache2", "lighttpd")
APACHE_MODULES = "/usr/lib/apache2/modules"


class WebServer:
    """One server process serving ``root``; ``url(name)`` is a file's url there."""

    def __init__(self, kind: str, base: str, proc: subprocess.Popen[bytes], port: int, root: str) -> None:
        self.kind, self.base, self.proc, self.port, self.root = kind, base, proc, port, root

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def close(self) -> None:
        if self.kind == "nginx":
            stop_nginx(self.proc)
            return
        if self.proc.poll() is None:
            # A whole process group: Apache and lighttpd fork workers of their own.
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the server did not listen within {timeout}s: {_tail(log)}")
        time.sleep(0.02)  # a bounded connect-retry: the server gives no other sign


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()[-2000:]
    except OSError:
        return "(no log)"


def _nginx(base: str, root: str, rate_kib: int | None) -> WebServer:
    binary = debian.binary("nginx-light", "nginx", "/usr/sbin/nginx")
    proc, port = launch_nginx(binary, base, lambda port: f"""
    access_log off;
    client_body_temp_path {base}/body;
    server {{ listen 127.0.0.1:{port}; root {root}; {f"limit_rate {rate_kib}k;" if rate_kib else ""} }}
""")
    return WebServer("nginx", base, proc, port, root)


def _apache(base: str, root: str, rate_kib: int | None) -> WebServer:
    binary = debian.binary("apache2", "apache2", "/usr/sbin/apache2")
    port = free_port()
    conf = os.path.join(base, "apache2.conf")
    log = os.path.join(base, "error.log")
    with open(conf, "w") as fh:
        fh.write(f"""
ServerRoot {base}
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {base}/apache2.pid
ErrorLog {log}
Mutex file:{base}
LoadModule mpm_event_module {APACHE_MODULES}/mod_mpm_event.so
LoadModule authz_core_module {APACHE_MODULES}/mod_authz_core.so
LoadModule ratelimit_module {APACHE_MODULES}/mod_ratelimit.so
LoadModule env_module {APACHE_MODULES}/mod_env.so
{"User nobody" if os.geteuid() == 0 else ""}
{"Group nogroup" if os.geteuid() == 0 else ""}
DocumentRoot {root}
<Directory {root}>
    Require all granted
    {f"SetOutputFilter RATE_LIMIT{chr(10)}    SetEnv rate-limit {rate_kib}" if rate_kib else ""}
</Directory>
""")
    proc = subprocess.Popen([binary, "-d", base, "-f", conf, "-DFOREGROUND"], env={"PATH": os.environ["PATH"]},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_listening(proc, port, log)
    return WebServer("apache2", base, proc, port, root)


def _lighttpd(base: str, root: str, rate_kib: int | None) -> WebServer:
    binary = debian.binary("lighttpd", "lighttpd", "/usr/sbin/lighttpd")
    port = free_port()
    conf = os.path.join(base, "lighttpd.conf")
    log = os.path.join(base, "error.log")
    with open(conf, "w") as fh:
        fh.write(f"""
server.document-root = "{root}"
server.bind = "127.0.0.1"
server.port = {port}
server.modules = ("mod_staticfile")
static-file.etags = "enable"
# Without a type lighttpd treats a file as uncacheable and sends neither ETag nor Last-Modified.
mimetype.assign = ("" => "application/octet-stream")
{f"connection.kbytes-per-second = {rate_kib}" if rate_kib else ""}
{'server.username = "nobody"' if os.geteuid() == 0 else ""}
{'server.groupname = "nogroup"' if os.geteuid() == 0 else ""}
""")
    # Its error log goes to stderr: a file of its own would be opened after it drops privileges.
    with open(log, "wb") as err:
        proc = subprocess.Popen([binary, "-D", "-f", conf], stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    _wait_listening(proc, port, log)
    return WebServer("lighttpd", base, proc, port, root)


@contextmanager
def serving(kind: str, base: str, rate_kib: int | None = None) -> Iterator[WebServer]:
    """``kind`` (one of :data:`KINDS`) serving a fresh directory that anyone may read;
    its configuration and logs in ``base``. ``rate_kib``: each connection is paced
    to this many KiB/s by the server itself, so a response is still being read from
    the file long after its headers went out."""
    os.makedirs(base, exist_ok=True)
    root = tempfile.mkdtemp(prefix=f"arw-{kind}-")
    os.chmod(root, 0o755)
    try:
        server = {"nginx": _nginx, "apache2": _apache, "lighttpd": _lighttpd}[kind](base, root, rate_kib)
        try:
            yield server
        finally:
            server.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
