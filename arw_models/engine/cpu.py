"""How much CPU this process could still have had: what the probe of a single
stream (:class:`~arw_models.engine.single.Probe`) asks before it splits a stream
into ranges, which cost more CPU per byte than one stream.

Two readings, some milliseconds apart, tell how many CPUs were idle between them:

* of the CPUs this process may run on (its affinity: ``taskset``, a container's
  ``--cpuset-cpus``), from their own lines of Linux's ``/proc/stat``; the machine's
  other CPUs may be idle, but no thread of ours can run there;
* less what a CPU quota of its cgroup left unused (``docker run --cpus``,
  systemd's ``CPUQuota=``): cgroup v2's ``cpu.max`` and ``cpu.stat``, or v1's
  ``cpu.cfs_quota_us`` and ``cpuacct.usage``, the tightest quota from the
  process's own cgroup up to the root. In such a container ``/proc/stat`` shows
  the host's CPUs, mostly idle, while the container has none to spare.

A thread ready to run may still wait for a CPU: the quota is spent for this
period, or other work holds the CPUs. No read comes meanwhile, however fast the
origin, so the probe's first test of a stream's pace leaves out the time its
reading thread waited so (``/proc/thread-self/schedstat``: :func:`held_back`). That
is the thread's own wait; a cgroup's ``throttled_time`` adds up every CPU's, and
counts waits of threads that read nothing.

Where none of this can be read (not Linux), the reading is None and the probe
judges by the pace alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from typing import NamedTuple

CGROUP = "/sys/fs/cgroup"


class Quota(NamedTuple):
    """A CPU quota of a cgroup, and what it has used of it so far."""

    cpus: float  # CPUs the quota allows
    used: float  # CPU seconds its processes have used


class Reading(NamedTuple):
    """The CPU time so far, as :func:`reading` takes it."""

    idle: int  # ticks idle or waiting for I/O, of the CPUs this process may run on
    ticks: int  # ticks in all, of those CPUs
    cpus: int  # how many of them
    used: float | None = None  # CPU seconds the cgroup of the tightest quota has used
    quota: float | None = None  # CPUs that quota allows (None: no quota)
    at: float = 0.0  # time.monotonic() when read


def cpu_ticks(path: str = "/proc/stat", cpus: Collection[int] | None = None) -> tuple[int, int, int] | None:
    """The CPU time so far, from ``/proc/stat``: (ticks idle or waiting for I/O,
    ticks in all, CPUs), over the CPUs numbered ``cpus`` (by default those this
    process may run on); over all of them when that is every CPU the file lists,
    or none of them. None where there is no such file, or it is not as Linux
    writes it."""
    if cpus is None:
        cpus = allowed_cpus()
    try:
        with open(path, "rb") as fh:
            lines = fh.read().split(b"\n")
        each = {int(line[3:].split()[0]): line for line in lines if line[:3] == b"cpu" and line[3:4].isdigit()}
        mine = [line for n, line in each.items() if n in cpus] if cpus else []
        chosen = mine if mine and len(mine) < len(each) else [lines[0]]
        rows = [[int(t) for t in line.split()[1:9]] for line in chosen]
    except (OSError, ValueError, IndexError):
        return None
    if not each or any(len(row) < 5 for row in rows):
        return None
    idle = sum(row[3] + row[4] for row in rows)
    return idle, sum(sum(row) for row in rows), len(chosen) if chosen is mine else len(each)


def allowed_cpus() -> Collection[int] | None:
    """The numbers of the CPUs this process may run on; None where unknown."""
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None


def cgroup_quota(root: str = CGROUP, own: str = "/proc/self/cgroup") -> Quota | None:
    """The tightest CPU quota on this process's cgroup or one above it (``own``:
    the process's cgroups, as ``/proc/self/cgroup`` lists them; ``root``: where
    the hierarchies are mounted); None where none is set or none can be read."""
    try:
        with open(own, errors="surrogateescape") as fh:  # a path is bytes: a name may be no UTF-8
            listed = [line.rstrip("\n").split(":", 2) for line in fh]
    except OSError:
        return None
    found: list[Quota] = []
    for fields in listed:
        if len(fields) != 3:
            continue
        controllers, path = fields[1], fields[2]
        names = controllers.split(",")
        if controllers == "":  # cgroup v2: one hierarchy
            found += _quotas(path, _v2_quota(root))
        elif "cpu" in names:
            # cpu is mounted with cpuacct (as "cpu,cpuacct", whichever order the
            # list has) or on its own, cpuacct then beside it at the same path.
            mount = os.path.join(root, ",".join(sorted(names)))
            if not os.path.isdir(mount):
                mount = os.path.join(root, controllers)
            acct = mount if "cpuacct" in names else os.path.join(root, "cpuacct")
            found += _quotas(path, _v1_quota(mount, acct))
    return min(found, key=lambda q: q.cpus) if found else None


def _quotas(path: str, quota_of: Callable[[str], Quota | None]) -> list[Quota]:
    """The quotas of the cgroup at ``path`` (as ``/proc/self/cgroup`` names it) and of
    every one above it. A container mounts its own cgroup at the root, where that
    path (the host's) names nothing: it is then read at the root, above all of it."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:  # not as the kernel writes it: nothing outside the mount is read
        return []
    found = []
    for depth in range(len(parts), -1, -1):
        quota = quota_of(os.path.join("", *parts[:depth]))
        if quota is not None:
            found.append(quota)
    return found


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def _field(stat: str, name: str) -> int | None:
    """The value of ``name`` in a ``cpu.stat`` (lines of a name and a number)."""
    for line in stat.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == name:
            return int(words[1])
    return None


def _v2_quota(mount: str) -> Callable[[str], Quota | None]:
    def quota_of(where: str) -> Quota | None:
        limit, stat = _read(os.path.join(mount, where, "cpu.max")), _read(os.path.join(mount, where, "cpu.stat"))
        if limit is None or stat is None:
            return None
        try:
            quota, period = limit.split()  # "max 100000": no quota, which int() refuses
            usage = _field(stat, "usage_usec")
            if usage is None:
                return None
            return Quota(int(quota) / int(period), usage / 1e6)
        except (ValueError, ZeroDivisionError):
            return None

    return quota_of


def _v1_quota(mount: str, acct: str) -> Callable[[str], Quota | None]:
    def quota_of(where: str) -> Quota | None:
        quota = _read(os.path.join(mount, where, "cpu.cfs_quota_us"))
        period = _read(os.path.join(mount, where, "cpu.cfs_period_us"))
        usage = _read(os.path.join(acct, where, "cpuacct.usage"))
        if quota is None or period is None or usage is None or quota.strip() == "-1":  # -1: no quota
            return None
        try:
            return Quota(int(quota) / int(period), int(usage) / 1e9)
        except (ValueError, ZeroDivisionError):
            return None

    return quota_of


def reading() -> Reading | None:
    """The CPU time so far: :func:`cpu_ticks` and :func:`cgroup_quota`, now."""
    ticks = cpu_ticks()
    if ticks is None:
        return None
    quota = cgroup_quota()
    if quota is None:
        return Reading(*ticks, at=time.monotonic())
    return Reading(*ticks, used=quota.used, quota=quota.cpus, at=time.monotonic())


def spare(before: Reading | None, now: Reading | None) -> float | None:
    """How many CPUs this process could have had more, on average, from ``before``
    to ``now`` (None: unknown): the idle ones it may run on, at most what its
    quota left."""
    if before is None or now is None or now.ticks <= before.ticks:
        return None
    idle = now.cpus * (now.idle - before.idle) / (now.ticks - before.ticks)
    if now.quota is not None and before.used is not None and now.used is not None and now.at > before.at:
        idle = min(idle, now.quota - (now.used - before.used) / (now.at - before.at))
    return max(idle, 0.0)


def waited(path: str = "/proc/thread-self/schedstat") -> float | None:
    """Seconds the calling thread has spent ready to run but waiting for a CPU (the
    second field of its ``schedstat``, in nanoseconds); None where unknown."""
    try:
        with open(path, "rb") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def held_back(before: float | None, now: float | None) -> float:
    """Seconds the calling thread waited for a CPU between two :func:`waited`
    readings (0 when unknown): a stream is slow meanwhile because its reader does
    not run, whatever its origin's pace."""
    if before is None or now is None:
        return 0.0
    return max(0.0, now - before)
