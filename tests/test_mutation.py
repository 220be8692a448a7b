"""The ``make mutation`` driver: its operators, ids, sample and process sweep (the runs
themselves are too slow for the suite; docs/maintainers.rst, "Mutation testing")."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import equivalent as eq
from tools.mutants import is_valid, mutants, show
from tools.mutation import (
    DEFAULT_TARGETS,
    MARKER,
    ROOT,
    Result,
    Runner,
    baseline,
    classify,
    durations,
    first_failure,
    fix_equivalent,
    kill_marked,
    read_equivalent,
    report,
    sample,
    selection_seconds,
)

SNIPPET = '''"""Docstring."""
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from x import y
log = None


def f(a: int = 2, *, b: bool = True) -> int:
    """Doc."""
    log.info("at %d", a + 1)
    if not a < b and a is not None or a in b:
        a += 1
        print(f"{a + 1}")
    return a - 3


class C:
    size: int = 0

    def __repr__(self) -> str:
        return f"C({1 + 2})"
'''


def mutated_lines(module: str, text: str) -> dict[str, str]:
    return {m.id: show(m, text)[1] for m in mutants(module, text)}


def test_each_operator_changes_one_site_and_skips_what_never_runs_differently() -> None:
    # Not mutated: the docstrings, the TYPE_CHECKING import, the log call, the
    # annotations, the f-string and __repr__.
    assert mutated_lines("pkg/mod.py", SNIPPET) == {
        "pkg/mod.py:6:0:del-assign": "pass",
        "pkg/mod.py:9:15:int-minus": "def f(a: int = 1, *, b: bool = True) -> int:",
        "pkg/mod.py:9:15:int-plus": "def f(a: int = 3, *, b: bool = True) -> int:",
        "pkg/mod.py:9:31:flip-true": "def f(a: int = 2, *, b: bool = False) -> int:",
        "pkg/mod.py:12:7:drop-not": "if a < b and a is not None or a in b:",
        "pkg/mod.py:12:13:flip-lt": "if not a >= b and a is not None or a in b:",
        "pkg/mod.py:12:17:and-to-or": "if not a < b or a is not None or a in b:",
        "pkg/mod.py:12:23:flip-isnot": "if not a < b and a is None or a in b:",
        "pkg/mod.py:12:35:or-to-and": "if not a < b and a is not None and a in b:",
        "pkg/mod.py:12:40:flip-in": "if not a < b and a is not None or a not in b:",
        "pkg/mod.py:13:8:del-augassign": "pass",
        "pkg/mod.py:13:13:int-minus": "a += 0",
        "pkg/mod.py:13:13:int-plus": "a += 2",
        "pkg/mod.py:14:8:del-call": "pass",
        "pkg/mod.py:15:4:del-return": "pass",
        "pkg/mod.py:15:13:sub-to-add": "return a + 3",
        "pkg/mod.py:15:15:int-minus": "return a - 2",
        "pkg/mod.py:15:15:int-plus": "return a - 4",
        "pkg/mod.py:19:16:int-minus": "size: int = -1",
        "pkg/mod.py:19:16:int-plus": "size: int = 1",
    }


def test_the_other_flips_and_a_raise() -> None:
    text = "if a <= b > c == d != e is f in g not in h >= i:\n    raise E(x + 0)\nok = False\n"
    assert mutated_lines("m.py", text) == {
        "m.py:1:5:flip-lte": "if a > b > c == d != e is f in g not in h >= i:",
        "m.py:1:10:flip-gt": "if a <= b <= c == d != e is f in g not in h >= i:",
        "m.py:1:14:flip-eq": "if a <= b > c != d != e is f in g not in h >= i:",
        "m.py:1:19:flip-ne": "if a <= b > c == d == e is f in g not in h >= i:",
        "m.py:1:24:flip-is": "if a <= b > c == d != e is not f in g not in h >= i:",
        "m.py:1:29:flip-in": "if a <= b > c == d != e is f not in g not in h >= i:",
        "m.py:1:34:flip-notin": "if a <= b > c == d != e is f in g in h >= i:",
        "m.py:1:43:flip-gte": "if a <= b > c == d != e is f in g not in h < i:",
        "m.py:2:4:del-raise": "pass",
        "m.py:2:14:add-to-sub": "raise E(x - 0)",
        "m.py:2:16:int-minus": "raise E(x + -1)",
        "m.py:2:16:int-plus": "raise E(x + 1)",
        "m.py:3:0:del-assign": "pass",
        "m.py:3:5:flip-false": "ok = True",
    }


def test_every_mutant_parses_and_changes_the_code() -> None:
    text = "x = (a  # why\n     < b)\ny = not (c)\nz = f(\n    1,\n)  # done\nw = g(\n    2); v = 3\nu = 'é' + 5\n"
    found = mutants("m.py", text)
    assert found and all(is_valid(m.apply(text), text) for m in found)
    by_id = {m.id: m.apply(text) for m in found}
    # The operator token of a comparison split over lines, next to a comment.
    assert by_id["m.py:2:5:flip-lt"].startswith("x = (a  # why\n     >= b)\n")
    assert by_id["m.py:3:4:drop-not"].split("\n")[2] == "y = (c)"
    # A deleted multi-line statement leaves blank lines: what follows keeps its line
    # numbers (the ids of a mutated module point at the right lines in tracebacks).
    assert by_id["m.py:4:0:del-assign"].split("\n")[3:7] == ["pass", "", "  # done", "w = g("]
    # ... unless code follows on its last line; then it collapses onto one.
    assert by_id["m.py:7:0:del-assign"].split("\n")[6] == "pass; v = 3"
    # Columns count characters, not UTF-8 bytes.
    assert "m.py:9:10:int-plus" in by_id and by_id["m.py:9:10:int-plus"].endswith("u = 'é' + 6\n")


def test_ids_do_not_depend_on_code_below_or_on_other_modules() -> None:
    ids = [m.id for m in mutants("pkg/mod.py", SNIPPET)]
    assert [m.id for m in mutants("pkg/mod.py", SNIPPET + "\nz = 1 + 2\n")][: len(ids)] == ids
    assert [m.id for m in mutants("pkg/mod.py", SNIPPET)] == ids
    assert mutants("pkg/engine/plan.py", SNIPPET)[0].id == "pkg/engine/plan.py:6:0:del-assign"
    assert len(set(ids)) == len(ids)


def test_sample_is_fixed_by_the_seed_and_spread_in_proportion() -> None:
    found = {"a.py": mutants("a.py", SNIPPET * 3), "b.py": mutants("b.py", SNIPPET)}
    assert (len(found["a.py"]), len(found["b.py"])) == (60, 20)
    chosen = sample(found, 20, seed=7)
    assert [m.id for m in chosen] == [m.id for m in sample(found, 20, seed=7)]
    assert [m.id for m in chosen] != [m.id for m in sample(found, 20, seed=8)]
    assert sum(m.module == "a.py" for m in chosen) == 15 and len({m.id for m in chosen}) == 20
    # 15.75 and 5.25: the larger remainder gets the odd one.
    odd = sample(found, 21, seed=7)
    assert len(odd) == 21 and sum(m.module == "a.py" for m in odd) == 16
    assert len(sample(found, 500, seed=7)) == 80


def test_equivalent_file_takes_one_id_a_line_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "eq.txt"
    path.write_text("# header\n\na/b.py:1:2:flip-lt  # why\n  a/b.py:3:0:del-call\n"
                    "a/b.py:4:4:del-return  @0123abcd/4567ef01  # why: not # this\n")
    assert read_equivalent(path) == {"a/b.py:1:2:flip-lt", "a/b.py:3:0:del-call", "a/b.py:4:4:del-return"}
    entry = [i for i in eq.read(path)[0] if isinstance(i, eq.Entry)][2]
    assert (entry.line_hash, entry.context_hash, entry.why) == ("0123abcd", "4567ef01", "why: not # this")
    assert entry.render() == "a/b.py:4:4:del-return  @0123abcd/4567ef01  # why: not # this"
    assert read_equivalent(tmp_path / "none.txt") == set()


MODULE = '''def f(a):
    if a:
        return 1
    return None


def g(b):
    b.close()
    return None
'''


def test_an_equivalent_entry_follows_its_line_when_code_above_moves(tmp_path: Path) -> None:
    lines = MODULE.split("\n")
    listed = [eq.stamped(eq.Entry(i, "why"), i, lines) for i in ("m.py:4:4:del-return", "m.py:9:4:del-return",
                                                                 "m.py:8:4:del-call", "m.py:3:15:int-plus")]
    # Where nothing moved, every entry is where it was.
    same = eq.resolve(listed, {"m.py": MODULE}.get)
    assert (same.ids, same.moved, same.gone) == ({e.id for e in listed}, [], [])
    # Two lines above, one line in between, and `return 1` changed: the two
    # `return None` keep apart by their neighbours; the changed line is gone.
    moved = "import os\n\n" + MODULE.replace("return 1", "return 2").replace("    b.close()\n",
                                                                             "    b.flush()\n    b.close()\n")
    found = eq.resolve(listed, {"m.py": moved}.get)
    assert [(e.id, now) for e, now in found.moved] == [
        ("m.py:4:4:del-return", "m.py:6:4:del-return"), ("m.py:9:4:del-return", "m.py:12:4:del-return"),
        ("m.py:8:4:del-call", "m.py:11:4:del-call")]
    assert [e.id for e in found.gone] == ["m.py:3:15:int-plus"]
    assert found.ids == {"m.py:6:4:del-return", "m.py:12:4:del-return", "m.py:11:4:del-call"}
    # A module that is no more: every entry of it is gone.
    assert len(eq.resolve(listed, {}.get).gone) == 4


def test_fix_equivalent_writes_the_ids_of_now(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.py").write_text(MODULE)
    path = tmp_path / "eq.txt"
    path.write_text("# header\nm.py:4:4:del-return  # falls off the end\nm.py:3:15:int-plus  # gone soon\n")
    fix_equivalent(path, tmp_path)  # an entry without hashes gets them
    written = path.read_text().splitlines()
    assert written[0] == "# header" and written[1].startswith("m.py:4:4:del-return  @")
    (tmp_path / "m.py").write_text("import os\n" + MODULE.replace("return 1", "return 2"))
    fix_equivalent(path, tmp_path)
    assert "moved: m.py:4:4:del-return -> m.py:5:4:del-return" in capsys.readouterr().out
    entries = [i for i in eq.read(path)[0] if isinstance(i, eq.Entry)]
    assert [(e.id, e.why) for e in entries] == [("m.py:5:4:del-return", "falls off the end")]
    assert eq.resolve(entries, {"m.py": (tmp_path / "m.py").read_text()}.get).moved == []


def test_equivalent_list_is_well_formed() -> None:
    # Every entry with its hashes and its reason. Where the entries are now is for
    # `make mutation` to say (moved, or gone), not for the suite: code that moves
    # above an entry is no failure.
    items, bad = eq.read(ROOT / "tools" / "mutation_equivalent.txt")
    entries = [i for i in items if isinstance(i, eq.Entry)]
    assert not bad and entries and all(e.line_hash and e.why for e in entries)
    assert len({e.id for e in entries}) == len(entries)


def test_only_a_failing_test_kills_a_mutant() -> None:
    assert classify(0) == "survived"
    assert classify(1) == "killed"
    # interrupted (a collection error), internal error, usage error, no tests, a signal
    assert [classify(code) for code in (2, 3, 4, 5, -9)] == ["error"] * 5
    assert classify(None) == "timeout"


TINY_TESTS = {
    "test_ok.py": "from pkg.mod import f\n\n\ndef test_f():\n    assert f() == 1\n",
    "test_broken.py": "import pkg.missing  # a collection error\n",
    "test_none.py": "X = 1\n",
    "test_hang.py": "import threading\n\n\ndef test_hang():\n    threading.Event().wait()\n",
    # Fails, leaving a thread that never ends: the interpreter would wait for it at exit.
    "test_wedged.py": ("import threading\n\n\ndef test_wedged():\n"
                       "    threading.Thread(target=threading.Event().wait).start()\n    assert False\n"),
}


def tiny_project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    (root / "tests" / "__init__.py").write_text("")
    for name, text in TINY_TESTS.items():
        (root / "tests" / name).write_text(text)
    return root


def test_a_run_is_judged_by_pytest_exit_status_and_its_time_limits(tmp_path: Path) -> None:
    root = tiny_project(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    runner = Runner(work, ["pkg"], root=root, test_timeout=1)
    mutant = next(m for m in mutants("pkg/mod.py", "def f():\n    return 1\n") if m.op == "int-plus")

    assert runner.judge(["tests/test_ok.py"], 30)[0] == "survived"
    status, _, detail = runner.judge(["tests/test_ok.py"], 30, mutant, "def f():\n    return 1\n")
    assert (status, detail.split(" ")[0]) == ("killed", "tests/test_ok.py::test_f")
    status, _, detail = runner.judge(["tests/test_broken.py"], 30)
    assert status == "error" and detail.startswith("pytest exit status 2") and "test_broken.py" in detail
    status, _, detail = runner.judge(["tests/test_none.py"], 30)
    assert status == "error" and detail.startswith("pytest exit status 5, no tests collected")
    # A hang fails its test at the test's own limit: a kill, and the test is named.
    status, _, detail = runner.judge(["tests/test_hang.py"], 30)
    assert status == "killed" and detail.startswith("tests/test_hang.py::test_hang") and "Timeout" in detail
    # A failure that leaves a thread behind is a kill all the same, reported at once.
    status, seconds, detail = runner.judge(["tests/test_wedged.py"], 30)
    assert (status, detail.split(" ")[0]) == ("killed", "tests/test_wedged.py::test_wedged") and seconds < 30
    # Past the whole run's limit twice (the test's own limit is longer): a timeout.
    runner.test_timeout = 60
    status, seconds, detail = runner.judge(["tests/test_hang.py"], 0.3)
    assert status == "timeout" and seconds >= 0.9 and "after 1s" in detail
    assert list(work.iterdir()) == []  # the copies are gone


def test_one_baseline_run_times_every_selection(tmp_path: Path) -> None:
    root = tiny_project(tmp_path)
    (root / "tests" / "test_two.py").write_text("def test_a():\n    pass\n\n\ndef test_b():\n    pass\n")
    work = tmp_path / "work"
    work.mkdir()
    runner = Runner(work, ["pkg"], root=root, test_timeout=10)
    # Two selections sharing a module: their union runs once, in two runs side by side,
    # and each selection gets its own tests' time plus pytest's start.
    one, two = ("tests/test_ok.py",), ("tests/test_two.py::test_a", "tests/test_ok.py")
    times = baseline(runner, [one, two], jobs=2)
    assert isinstance(times, dict) and set(times) == {one, two}
    assert 0 < times[one] <= times[two] < 60
    # A failing test (a hang, at its own limit, or a collection error) stops everything.
    runner.test_timeout = 1
    failed = baseline(runner, [one, ("tests/test_hang.py",)], jobs=2)
    assert isinstance(failed, str) and "tests/test_hang.py" in failed and "fix that first" in failed
    failed = baseline(runner, [("tests/test_broken.py",)], jobs=2)
    assert isinstance(failed, str) and "exit status 2" in failed
    assert baseline(runner, [], jobs=2) == {}
    assert list(work.iterdir()) == []


def test_selection_time_is_its_tests_time_plus_the_start() -> None:
    output = ("====== slowest durations ======\n"
              "2.00s call     tests/test_x.py::test_slow[1]\n"
              "0.50s setup    tests/test_x.py::test_slow[1]\n"
              "1.00s call     tests/test_x.py::test_other\n"
              "3.00s call     tests/test_y.py::test_z\n"
              "0.01s teardown tests/test_xy.py::test_q\n")
    times = durations(output)
    assert times == {"tests/test_x.py::test_slow[1]": 2.5, "tests/test_x.py::test_other": 1.0,
                     "tests/test_y.py::test_z": 3.0, "tests/test_xy.py::test_q": 0.01}
    assert selection_seconds(("tests/test_x.py",), times, 1.0) == 4.5  # not test_xy.py's
    assert selection_seconds(("tests/test_x.py::test_slow", "tests/test_y.py"), times, 0.0) == 5.5
    assert selection_seconds(("tests/test_none.py",), times, 1.0) == 1.0


def test_errors_and_timeouts_are_listed_and_left_out_of_the_score(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    text = "a = 1\nb = 2\nc = 3\nd = 4\ne = 5\n"
    found = [m for m in mutants("m.py", text) if m.op == "int-plus"]
    statuses = ["killed", "survived", "error", "timeout", "equivalent"]
    results = [Result(m, s, 1.0, f"why {s}") for m, s in zip(found, statuses)]
    args = argparse.Namespace(seed=1, all=True, id=[], sample=0, json=str(tmp_path / "r.json"))
    report(results, found, len(found), args, ["m.py"], {"m.py": []}, {"m.py": text})
    out = capsys.readouterr().out
    assert "mutation score 50.0%: 1 killed of 2" in out
    assert "NOT IN THE SCORE: 1 error, 1 timeout" in out
    assert "error    m.py:3:4:int-plus  why error" in out and "timeout  m.py:4:4:int-plus  why timeout" in out
    document = json.loads((tmp_path / "r.json").read_text())
    assert (document["scored"], document["counts"]["error"], document["counts"]["timeout"]) == (2, 1, 1)


def test_first_failure_reads_the_summary_not_log_lines() -> None:
    output = ("ERROR    werkzeug:_internal.py:97 Error on request:\n"
              "=== short test summary info ===\nFAILED tests/test_x.py::test_y - AssertionError\n")
    assert first_failure(output) == "tests/test_x.py::test_y - AssertionError"
    assert first_failure("1 passed\n") == ""


def test_kill_marked_reaches_a_process_in_a_session_of_its_own() -> None:
    # What a test's gunicorn is: started in its own session, out of reach of a killpg.
    marker = f"{os.getpid()}-selftest"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=dict(os.environ, **{MARKER: marker}), start_new_session=True)
    try:
        # Until the child has exec'd, /proc shows the parent's environment: wait for its word.
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        assert kill_marked(marker + "-other") == 0
        assert kill_marked(marker) == 1
        assert proc.wait(10) == -9
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()


def test_default_targets_exist() -> None:
    # When a module is moved, `make mutation` needs its new path at the top of tools/mutation.py.
    for target in DEFAULT_TARGETS:
        assert mutants(target, (ROOT / target).read_text())
