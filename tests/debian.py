"""Debian packages that some tests need (a real nginx, say): installed on first use
when the tests run as root with apt-get, as CI does; otherwise the test skips and
says what to install."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest

_lock = threading.Lock()
_tried: dict[str, str | None] = {}
_updated = False


def _apt(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


def binary(package: str, name: str, *places: str) -> str:
    """The path of the program ``name`` from the Debian ``package``, installing the
    package if need be; skips the test when it cannot be had."""
    global _updated
    with _lock:
        found = shutil.which(name) or next((p for p in places if os.access(p, os.X_OK)), None)
        if found:
            return found
        if package not in _tried:
            why = None
            if os.geteuid() != 0 or shutil.which("apt-get") is None:
                why = "not root, or no apt-get"
            else:
                try:
                    if not _updated:
                        _apt("update", "-q", timeout=300)
                        _updated = True
                    done = _apt("install", "-y", "-q", "--no-install-recommends", package, timeout=600)
                    if done.returncode != 0:
                        why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["apt-get failed"]
                        why = why[0]
                except subprocess.TimeoutExpired:
                    why = "apt-get timed out"
            _tried[package] = why
        found = shutil.which(name) or next((p for p in places if os.access(p, os.X_OK)), None)
        if found:
            return found
        pytest.skip(f"{name} is not installed and could not be installed (apt-get install {package}): "
                    f"{_tried[package]}")
