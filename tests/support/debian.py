"""Debian packages that some tests need (a real nginx, say): installed on first use
when the tests run as root with apt-get, as CI does; otherwise the test skips and
says what to install.

The suite runs on several worker processes (pytest-xdist), and apt-get takes dpkg's
lock: two workers installing at once would see the second fail at once. So an
install holds a lock file of its own across processes, and a worker that waited
for it looks again before it installs anything."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import threading

import pytest

_lock = threading.Lock()
# One install at a time on the machine, whichever worker process asks.
LOCK_FILE = "/tmp/arw-models-tests-apt.lock"
_tried: dict[str, str | None] = {}
_updated = False


def _apt(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


def _found(name: str, places: tuple[str, ...]) -> str | None:
    return shutil.which(name) or next((p for p in places if os.access(p, os.X_OK)), None)


def binary(package: str, name: str, *places: str) -> str:
    """The path of the program ``name`` from the Debian ``package``, installing the
    package if need be; skips the test when it cannot be had."""
    with _lock:
        found = _found(name, places)
        if found:
            return found
        if package not in _tried:
            with open(LOCK_FILE, "a") as held:
                fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes
                found = _found(name, places)
                if found:  # another worker installed it meanwhile
                    return found
                _tried[package] = _install(package)
        found = _found(name, places)
        if found:
            return found
        pytest.skip(f"{name} is not installed and could not be installed (apt-get install {package}): "
                    f"{_tried[package]}")


def _install(package: str) -> str | None:
    """Installs ``package`` with apt-get; None when that worked, else why not."""
    global _updated
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root, or no apt-get"
    try:
        if not _updated:
            _apt("update", "-q", timeout=300)
            _updated = True
        done = _apt("install", "-y", "-q", "--no-install-recommends", package, timeout=600)
    except subprocess.TimeoutExpired:
        return "apt-get timed out"
    if done.returncode != 0:
        return ((done.stderr or done.stdout).strip().splitlines()[-1:] or ["apt-get failed"])[0]
    return None
