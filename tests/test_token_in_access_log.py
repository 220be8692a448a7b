"""The page's event stream carries the admin token in its query (``EventSource`` sends
no headers). gunicorn's default access log format writes the whole request line,
query included; the format docs/security.rst gives for a plain command line leaves it out.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from .support.servers import Gunicorn, plain

TOKEN = "q-T0ken-in-the-query-7x"
# As docs/security.rst "Access control" gives it: gunicorn's default, with the path (%(U)s)
# in place of the request line (%(r)s).
DOCUMENTED = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(f)s" "%(a)s"'


def test_the_security_page_gives_this_format() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "security.rst").read_text()
    assert f"--access-logformat '{DOCUMENTED}'" in page


@pytest.mark.parametrize(("logformat", "leaks"), [((), True), (("--access-logformat", DOCUMENTED), False)],
                         ids=["gunicorn-default", "documented"])
def test_the_documented_access_log_format_leaves_the_token_out(
    gunicorns: Callable[..., Gunicorn], tmp_path: Path, logformat: tuple[str, ...], leaks: bool,
) -> None:
    g = plain(gunicorns, "log", tmp_path / "state", "-k", "gthread", "--threads", "8", "--access-logfile", "-",
              *logformat, "wsgi:app", ARW_ADMIN_TOKEN=TOKEN)
    g.wait_ready()
    with requests.get(g.url + "/events", params={"access_token": TOKEN}, stream=True, timeout=(2, 5)) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    assert requests.get(g.url + "/events", params={"access_token": "wrong"}, timeout=5).status_code == 401
    # Each request is logged once it ends (the stream's, once the service saw its client leave).
    deadline = time.monotonic() + 5
    while not all(any("/events" in line and f" {status} " in line for line in g.output().splitlines())
                  for status in (200, 401)):
        assert time.monotonic() < deadline, g.output()
        with contextlib.suppress(subprocess.TimeoutExpired):
            g.proc.wait(0.05)  # the pause between two looks also notices an exit
    assert (TOKEN in g.output()) is leaks, g.output()
