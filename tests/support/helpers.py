"""Small helpers shared by the test modules: where a model's files are, how to
leave a partial download behind as an earlier run would have, and a record of
where the ranges of a download write."""

from __future__ import annotations

import json
import os
import threading
from typing import Any


def models_dir(app: Any) -> str:
    return os.path.join(app.config["ARW_STATE_DIR"], "models")


def part(app: Any, model_id: str) -> str:
    return os.path.join(models_dir(app), model_id + ".part")


def sidecar(app: Any, model_id: str) -> str:
    return os.path.join(models_dir(app), model_id + ".part.json")


def read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def listing(app: Any) -> list[str]:
    """The files in ``{state_dir}/models``, sorted; [] before it exists."""
    try:
        return sorted(os.listdir(models_dir(app)))
    except FileNotFoundError:
        return []


def write_partial(app: Any, model_id: str, data: bytes, side: dict[str, Any] | None) -> None:
    """A ``.part`` with ``data`` and, unless ``side`` is None, its sidecar."""
    d = models_dir(app)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, model_id + ".part"), "wb") as fh:
        fh.write(data)
    if side is not None:
        with open(os.path.join(d, model_id + ".part.json"), "w") as fh:
            json.dump(side, fh)


def cancel(client: Any, model_id: str) -> Any:
    return client.post("/models/download/cancel", json={"id": model_id})


class Writes:
    """The ``os`` of :mod:`arw_models.engine.segments`, with a record of every
    ``pwrite``: where, and how many bytes."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def pwrite(self, fd: int, data: Any, at: int) -> int:
        n = os.pwrite(fd, data, at)
        with self._lock:
            self.spans.append((at, at + n))
        return n


def open_files() -> set[str]:
    """The paths of the files this process has open."""
    paths = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed meanwhile
            pass
    return paths
