"""How much more CPU this process could have had (arw_models.engine.cpu): the CPUs
it may run on, from their lines of /proc/stat, within its cgroup's CPU quota. On
files of known contents, and on the kernel's own: a process in a real cgroup with a
quota, and one held to a single CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from arw_models.engine import cpu, single

STAT = b"""cpu  100 20 30 4000 500 6 7 8 9 10
cpu0 50 10 15 2000 250 3 3 4 9 10
cpu1 50 10 15 2000 250 3 4 4 0 0
intr 1 2 3
"""


@pytest.mark.parametrize("text, cpus, ticks", [
    (STAT, {0, 1}, (4500, 4671, 2)),  # idle and iowait; user to steal (guest is in user already)
    (STAT.replace(b" 8 9 10\n", b"\n", 1), {0, 1}, (4500, 4663, 2)),  # a kernel that counts no steal nor guest
    (STAT, {1}, (2250, 2336, 1)),  # held to cpu1: its own line
    (STAT, {0, 1, 5}, (4500, 4671, 2)),  # allowed more than there are: all of them
    (STAT, {7}, (4500, 4671, 2)),  # none of those listed: all of them (not as Linux would say)
    (STAT, set(), (4500, 4671, 2)),
    (b"cpu  1 2 3 4 5\ncpu0 1 2 3 4 5\n", {0}, (9, 15, 1)),  # up to iowait: all it needs
    (b"cpu  1 2 3 4\ncpu0 1 2 3 4\n", {0}, None),  # no iowait: not as Linux writes it since 2.6
    (b"cpu  9 9 9 9 9\ncpu0 1 2 3 4\ncpu1 1 2 3 4 5\n", {0}, None),  # the allowed CPU's line is short
    (b"cpu  1 2 3 4 5 6 7 8\n", {0}, None),  # no line of a CPU
    (b"cpu  1 2 x 4 5 6 7 8\ncpu0 1 2 3 4 5 6 7 8\n", {0}, None),
    (b"", {0}, None),
])
def test_the_cpu_ticks_of_a_proc_stat(tmp_path: Path, text: bytes, cpus: set[int], ticks: Any) -> None:
    stat = tmp_path / "stat"
    stat.write_bytes(text)
    assert cpu.cpu_ticks(str(stat), cpus) == ticks
    assert cpu.cpu_ticks(str(tmp_path / "none"), cpus) is None


def test_the_cpu_ticks_of_this_machine() -> None:
    """On Linux, /proc/stat: idle ticks within all ticks, both growing, over the
    CPUs this process may run on."""
    first = cpu.cpu_ticks()
    if first is None:
        pytest.skip("no /proc/stat on this system")
    sum(range(200_000))  # some CPU time passes
    second = cpu.cpu_ticks()
    assert second is not None
    assert 0 <= first[0] <= first[1] and first[2] == len(os.sched_getaffinity(0))
    assert second[1] >= first[1] and second[0] >= first[0] and second[2] == first[2]


def test_a_process_held_to_one_cpu_counts_that_cpu_alone() -> None:
    """``taskset -c 0`` (or a container's cpuset): the other CPUs' idle time is none
    this process can use."""
    if cpu.cpu_ticks() is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs /proc/stat and at least two CPUs this process may run on")
    got = _in_child("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
                    "print(json.dumps(cpu.cpu_ticks()))")
    assert got[2] == 1
    with open("/proc/stat", "rb") as fh:
        lines = fh.read().split(b"\n")
    total = sum(int(t) for t in lines[0].split()[1:9])
    assert got[1] < total / 1.5  # one CPU's ticks, not the machine's


# -- quotas on files of known contents -------------------------------------------------------


def tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def quota(tmp_path: Path, own: str, files: dict[str, str]) -> tuple[float, float] | None:
    tree(tmp_path / "fs", files)
    (tmp_path / "own").write_text(own)
    return cpu.cgroup_quota(str(tmp_path / "fs"), str(tmp_path / "own"))


V2_OWN = "0::/system.slice/arw.service\n"


@pytest.mark.parametrize("files, expected", [
    ({"system.slice/arw.service/cpu.max": "150000 100000\n",
      "system.slice/arw.service/cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nthrottled_usec 300000\n"},
     (1.5, 2.5)),
    # The tighter one, a level up (a slice's CPUQuota=), with its own usage.
    ({"system.slice/arw.service/cpu.max": "150000 100000\n",
      "system.slice/arw.service/cpu.stat": "usage_usec 2500000\n",
      "system.slice/cpu.max": "50000 100000\n", "system.slice/cpu.stat": "usage_usec 9000000\n"}, (0.5, 9.0)),
    ({"system.slice/arw.service/cpu.max": "max 100000\n",
      "system.slice/arw.service/cpu.stat": "usage_usec 2500000\n"}, None),
    ({"system.slice/arw.service/cpu.max": "150000 100000\n"}, None),  # no usage to go by
    ({"system.slice/arw.service/cpu.max": "150000 100000\n",
      "system.slice/arw.service/cpu.stat": "user_usec 1\n"}, None),
    ({"system.slice/arw.service/cpu.max": "lots\n",
      "system.slice/arw.service/cpu.stat": "usage_usec 1\n"}, None),
    ({"system.slice/arw.service/cpu.max": "100000 0\n",
      "system.slice/arw.service/cpu.stat": "usage_usec 1\n"}, None),
    ({}, None),
])
def test_a_cgroup_v2_quota(tmp_path: Path, files: dict[str, str], expected: Any) -> None:
    assert quota(tmp_path, V2_OWN, files) == expected


@pytest.mark.parametrize("own", [
    "0::/user.slice/app:1\n",  # a colon in the path is the path's
    "junk\nstray:line\n0::/user.slice/app:1\n",  # lines not of three fields are passed over
])
def test_the_cgroups_of_a_process_as_listed(tmp_path: Path, own: str) -> None:
    files = {"user.slice/app:1/cpu.max": "250000 100000\n", "user.slice/app:1/cpu.stat": "usage_usec 1000000\n"}
    assert quota(tmp_path, own, files) == (2.5, 1.0)


def test_a_cgroup_named_in_bytes_that_are_no_utf8(tmp_path: Path) -> None:
    """A cgroup's name is bytes, as any path: one that is no UTF-8 is read, not
    raised into the download that asked."""
    where = os.fsencode(tmp_path / "fs") + b"/system.slice/caf\xe9.service"
    os.makedirs(where)
    with open(where + b"/cpu.max", "w") as fh:
        fh.write("50000 100000\n")
    with open(where + b"/cpu.stat", "w") as fh:
        fh.write("usage_usec 4000000\n")
    (tmp_path / "own").write_bytes(b"0::/system.slice/caf\xe9.service\n")
    assert cpu.cgroup_quota(str(tmp_path / "fs"), str(tmp_path / "own")) == (0.5, 4.0)


def test_a_path_that_climbs_out_of_the_mount_is_not_followed(tmp_path: Path) -> None:
    """Not as the kernel writes it; nothing outside the hierarchy is read, not even its root."""
    files = {"cpu.max": "100000 100000\n", "cpu.stat": "usage_usec 1\n"}
    assert quota(tmp_path, "0::/../..\n", files) is None
    assert quota(tmp_path, "0::/a/../../b\n", files) is None


def test_in_a_container_the_cgroup_mounted_is_its_own(tmp_path: Path) -> None:
    """``docker run --cpus 2``: /proc/self/cgroup names the host's path, which is not
    under the container's mount; the quota is the one at its root."""
    files = {"cpu.max": "200000 100000\n", "cpu.stat": "usage_usec 7000000\n"}
    assert quota(tmp_path, "0::/docker/4f1e\n", files) == (2.0, 7.0)
    assert quota(tmp_path, "0::/\n", files) == (2.0, 7.0)


V1_OWN = "12:pids:/x\n4:cpu:/arw\n3:cpuacct:/arw\n1:name=systemd:/arw\n0::/\n"


@pytest.mark.parametrize("own, files, expected", [
    (V1_OWN, {"cpu/arw/cpu.cfs_quota_us": "25000\n", "cpu/arw/cpu.cfs_period_us": "100000\n",
              "cpuacct/arw/cpuacct.usage": "3000000000\n"}, (0.25, 3.0)),
    # Mounted as listed, not in the order of the names.
    ("4:cpuacct,cpu:/arw\n", {"cpuacct,cpu/arw/cpu.cfs_quota_us": "50000\n",
                              "cpuacct,cpu/arw/cpu.cfs_period_us": "100000\n",
                              "cpuacct,cpu/arw/cpuacct.usage": "1000000000\n"}, (0.5, 1.0)),
    # CentOS 7 lists "cpuacct,cpu" and mounts "cpu,cpuacct".
    ("4:cpuacct,cpu:/arw\n", {"cpu,cpuacct/arw/cpu.cfs_quota_us": "25000\n",
                              "cpu,cpuacct/arw/cpu.cfs_period_us": "100000\n",
                              "cpu,cpuacct/arw/cpuacct.usage": "3000000000\n"}, (0.25, 3.0)),
    (V1_OWN, {"cpu/arw/cpu.cfs_quota_us": "-1\n", "cpu/arw/cpu.cfs_period_us": "100000\n",
              "cpuacct/arw/cpuacct.usage": "3000000000\n"}, None),
    (V1_OWN, {"cpu/arw/cpu.cfs_quota_us": "25000\n", "cpu/arw/cpu.cfs_period_us": "100000\n"}, None),
    (V1_OWN, {"cpu/arw/cpu.cfs_quota_us": "25000\n", "cpuacct/arw/cpuacct.usage": "3000000000\n"}, None),
    (V1_OWN, {"cpu/arw/cpu.cfs_period_us": "100000\n", "cpuacct/arw/cpuacct.usage": "3000000000\n"}, None),
    (V1_OWN, {"cpu/arw/cpu.cfs_quota_us": "25000\n", "cpu/arw/cpu.cfs_period_us": "0\n",
              "cpuacct/arw/cpuacct.usage": "3000000000\n"}, None),
    ("4:cpu,cpuacct:/arw\n", {"cpu,cpuacct/arw/cpu.cfs_quota_us": "300000\n",
                              "cpu,cpuacct/arw/cpu.cfs_period_us": "100000\n",
                              "cpu,cpuacct/arw/cpuacct.usage": "500000000\n"}, (3.0, 0.5)),
    ("4:cpu,cpuacct:/arw\n", {"cpu,cpuacct/cpu.cfs_quota_us": "100000\n",  # only the root's, for a container
                              "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
                              "cpu,cpuacct/cpuacct.usage": "500000000\n"}, (1.0, 0.5)),
    ("4:cpuacct:/arw\n", {"cpuacct/arw/cpuacct.usage": "5\n"}, None),  # no cpu controller listed
])
def test_a_cgroup_v1_quota(tmp_path: Path, own: str, files: dict[str, str], expected: Any) -> None:
    assert quota(tmp_path, own, files) == expected


def test_no_cgroups_listed_no_quota(tmp_path: Path) -> None:
    assert cpu.cgroup_quota(str(tmp_path), str(tmp_path / "none")) is None


# -- spare CPU from two readings -------------------------------------------------------------


@pytest.mark.parametrize("before, now, expected", [
    (cpu.Reading(0, 0, 2), cpu.Reading(150, 200, 2), 1.5),  # no quota: the idle CPUs
    (cpu.Reading(1000, 4000, 2), cpu.Reading(1050, 4200, 2), 0.5),  # what passed between the two
    # A quota of 1 CPU, 0.9 of it used: 0.1 more, whatever the host's idle CPUs.
    (cpu.Reading(0, 0, 8, used=10.0, quota=1.0, at=5.0), cpu.Reading(700, 800, 8, 10.9, 1.0, 6.0), 0.1),
    # A quota of 4, half of it used, on a host whose CPUs we may run on are busier still.
    (cpu.Reading(0, 0, 8, 0.0, 4.0, 5.0), cpu.Reading(100, 800, 8, 2.0, 4.0, 6.0), 1.0),
    (cpu.Reading(0, 0, 2, 0.0, 0.5, 5.0), cpu.Reading(200, 200, 2, 0.7, 0.5, 6.0), 0.0),  # over it (a burst)
    (cpu.Reading(0, 0, 2, None, None, 5.0), cpu.Reading(100, 200, 2, 3.0, 0.5, 6.0), 1.0),  # a quota since
    (cpu.Reading(0, 100, 2), cpu.Reading(50, 100, 2), None),  # no tick between them
    (None, cpu.Reading(50, 100, 2), None),
    (cpu.Reading(0, 0, 2), None, None),
])
def test_spare_cpus(before: Any, now: Any, expected: float | None) -> None:
    got = cpu.spare(before, now)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_time_held_back_from_running() -> None:
    assert cpu.held_back(0.5, 0.6) == pytest.approx(0.1)
    assert cpu.held_back(0.5, 0.4) == 0.0  # not as the kernel counts
    assert cpu.held_back(None, 0.6) == 0.0 and cpu.held_back(0.5, None) == 0.0


def test_the_wait_of_a_thread(tmp_path: Path) -> None:
    stat = tmp_path / "schedstat"
    stat.write_bytes(b"417949 113350000 2\n")
    assert cpu.waited(str(stat)) == pytest.approx(0.11335)
    for text in (b"417949\n", b"1 x 2\n", b""):
        stat.write_bytes(text)
        assert cpu.waited(str(stat)) is None
    assert cpu.waited(str(tmp_path / "none")) is None
    if os.path.exists("/proc/thread-self/schedstat"):
        mine = cpu.waited()
        assert mine is not None and mine >= 0


def test_a_reading_is_of_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "cpu_ticks", lambda: (5, 10, 2))
    monkeypatch.setattr(cpu, "cgroup_quota", lambda: cpu.Quota(1.5, 7.0))
    before = time.monotonic()
    got = cpu.reading()
    assert got is not None and got[:5] == (5, 10, 2, 7.0, 1.5) and before <= got.at <= time.monotonic()
    monkeypatch.setattr(cpu, "cgroup_quota", lambda: None)
    got = cpu.reading()
    assert got is not None and got.quota is None and got.used is None
    monkeypatch.setattr(cpu, "cpu_ticks", lambda: None)  # not Linux: nothing to judge by
    assert cpu.reading() is None


def test_a_probe_on_a_host_of_idle_cpus_but_a_spent_quota_keeps_one_stream() -> None:
    """Eight CPUs idle on the host, the service's quota of one CPU all used: ranges
    would not be faster, so the stream short of its pace stays one stream."""
    readings = iter([cpu.Reading(0, 0, 8, 0.0, 1.0, 0.0), cpu.Reading(800, 800, 8, 1.0, 1.0, 1.0)])
    mib, now = 1024 * 1024, [0.0]
    probe = single.Probe(800 * mib, clock=lambda: now[0], cpu=lambda: next(readings))
    said = []
    for n in range(1, 45):  # 500 MiB/s, past the window
        now[0] = n / 500
        said.append(probe(n * mib))
    assert not probe.split and not any(said) and "0.00 CPUs idle" in probe.why, probe.why


def waiting(secs: float) -> Any:
    """This thread's wait for a CPU, as :func:`cpu.waited` reads it: ``secs`` more
    after the first reading (the first read of the stream) than at it."""
    calls = iter(range(1_000_000))
    return lambda: 7.0 if next(calls) == 0 else 7.0 + secs


@pytest.mark.parametrize("frozen, split", [(0.0, True), (0.004, True), (0.0055, False)])
def test_the_early_test_does_not_count_the_time_the_reader_waited_for_a_cpu(frozen: float, split: bool) -> None:
    """200 KiB in the 10 ms after the first read: under 200 MiB/s over the 6 ms past
    PROBE_GRACE, unless the reading thread waited 5.5 ms of them for a CPU (a quota
    spent, other work: no read could come then, and 200 KiB in half a millisecond is
    no slow origin). Waiting 4 ms, it is still too slow: a capped origin on a busy
    machine, or in a container out of its quota, is still split at once."""
    kib, mib, now = 1024, 1024 * 1024, [0.0]
    probe = single.Probe(800 * mib, clock=lambda: now[0], cpu=lambda: None, waited=waiting(frozen))
    said = []
    for secs, got in [(0.020, 128 * kib), (0.030, 328 * kib)]:
        now[0] = secs
        said.append(probe(got))
    assert said == [False, split] and probe.split == split
    if split and frozen:
        assert "4.0 ms of them waiting for a CPU" in probe.why, probe.why


def test_the_wait_is_read_again_only_when_it_would_split() -> None:
    """The wait counts from the first read: one before it (the request, the answer's
    headers) is no part of the pace measured from there. What is known of it only
    grows, so a read that is fast enough by what was known asks for nothing."""
    kib, mib, now, calls = 1024, 1024 * 1024, [0.0], []
    wait = waiting(0.0055)

    def counted() -> float:
        calls.append(now[0])
        return wait()

    probe = single.Probe(800 * mib, clock=lambda: now[0], cpu=lambda: None, waited=counted)
    for secs, got in [(0.020, 128 * kib), (0.030, 328 * kib), (0.031, 600 * kib)]:
        now[0] = secs
        assert not probe(got)
    assert calls == [0.020, 0.030]  # the first read, then the read that was slow by 0 ms waited


# -- the kernel's own: a real cgroup with a quota --------------------------------------------


def _in_child(code: str, procs: list[Path] | None = None) -> Any:
    """Runs ``code`` (with ``cpu`` and ``json`` imported) in a child Python; once it
    has started, it joins the cgroups whose ``cgroup.procs`` are ``procs``. Returns
    what it printed, as JSON."""
    prelude = "import json, sys\nfrom arw_models.engine import cpu\nsys.stdin.readline()\n"
    child = subprocess.Popen([sys.executable, "-c", prelude + code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        for path in procs or []:
            path.write_text(str(child.pid))
        out, _ = child.communicate("go\n", timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    return json.loads(out)


@pytest.fixture
def quota_of_a_fifth() -> Iterator[list[Path]]:
    """A new cgroup whose processes may use a fifth of a CPU (v2's ``cpu.max``, or
    v1's ``cpu.cfs_quota_us`` with a ``cpuacct`` beside it), removed after the test:
    the ``cgroup.procs`` files to join it."""
    name = f"arw-test-{uuid.uuid4().hex[:8]}"
    root = Path(cpu.CGROUP)
    made: list[Path] = []
    try:
        if (root / "cgroup.controllers").exists():
            if "cpu" not in (root / "cgroup.subtree_control").read_text().split():
                (root / "cgroup.subtree_control").write_text("+cpu")
            here = root / name
            here.mkdir()
            made.append(here)
            (here / "cpu.max").write_text("20000 100000")
            procs = [here / "cgroup.procs"]
        else:
            procs = []
            # cpu and cpuacct are often one hierarchy ("cpu,cpuacct", the others links to it).
            for mount in dict.fromkeys((root / c).resolve() for c in ("cpu", "cpuacct")):
                here = mount / name
                here.mkdir()
                made.append(here)
                procs.append(here / "cgroup.procs")
            (root / "cpu" / name / "cpu.cfs_quota_us").write_text("20000")
    except OSError as exc:
        _remove(made)
        pytest.skip(f"cannot make a cgroup with a CPU quota here (needs root and a writable cgroup file system): "
                    f"{exc}")
    try:
        yield procs
    finally:
        _remove(made)  # its one process has exited


def _remove(made: list[Path]) -> None:
    for here in reversed(made):
        try:
            here.rmdir()
        except OSError:
            pass  # the next one goes all the same


def test_a_process_in_a_cgroup_with_a_quota_has_no_cpu_to_spare(quota_of_a_fifth: list[Path]) -> None:
    """A child process in a cgroup of a fifth of a CPU hashes for half a second:
    its reading has that quota, and what it used meanwhile is all of it, whatever
    the machine's idle CPUs, so it has none to spare (at most a CFS period's worth)."""
    got = _in_child(
        "import hashlib, time\n"
        "before, waited = cpu.reading(), cpu.waited()\n"
        "ends = time.monotonic() + 0.5\n"
        "while time.monotonic() < ends:\n"
        "    hashlib.sha256(bytes(64 * 1024))\n"
        "now = cpu.reading()\n"
        "print(json.dumps([before, now, cpu.spare(before, now), cpu.waited() - waited]))\n", procs=quota_of_a_fifth)
    before, now, spare, waited = cpu.Reading(*got[0]), cpu.Reading(*got[1]), got[2], got[3]
    assert now.quota == pytest.approx(0.2) and before.quota == pytest.approx(0.2)
    used = (now.used - before.used) / (now.at - before.at)
    assert used < 0.3, used  # the kernel held it to its quota
    assert spare is not None and spare < 0.15 < single.SPARE_CORES, (spare, used)
    # Its one thread waited for a CPU most of the time (about 0.8 of it on a quiet
    # machine, the quota spent; on a busy one, for other work too), never longer
    # than the time that passed.
    assert 0.3 < waited / (now.at - before.at) <= 1.01, (waited, now.at - before.at)
