"""A pytest plugin for the runs of ``make mutation`` (loaded with ``-p``): once the
session has ended and reported, the process exits with pytest's status at once.

A mutant can leave a thread that never ends (a worker waiting for a buffer that
never comes back, say): its test fails, pytest reports it, and then the interpreter
waits for that thread forever at exit, so the run would count as a timeout, not as
the kill the report shows. Nothing of the tests' own work is cut short: this runs
after the last fixture's teardown and the summary; the processes the tests started
are swept by the mutation runner as ever.
"""

from __future__ import annotations

import os
import sys

import pytest

_status: list[int] = []


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_status[-1])
