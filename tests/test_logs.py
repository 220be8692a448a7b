"""Logs: one line per change of a job's state, with its id, bytes, duration and
outcome; ARW_LOG_FORMAT=json writes the package's log as JSON lines, and only
the package's logger is touched."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import requests
from gunicorn.glogging import SafeAtoms

from arw_models import ArwModels
from arw_models.config import DEFAULTS, Settings
from arw_models.server.gunicorn_log import AccessJsonFormatter
from arw_models.service.logs import JobLog, JsonFormatter

from .support.app import Service, post_download
from .support.helpers import cancel
from .support.origin import Origin, payload
from .support.servers import Gunicorn

JOBS = "arw_models.downloads"


def lines(caplog: Any, model_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == JOBS and r.arw["id"] == model_id]


def settle(app: Any, *ends: tuple[str, str]) -> None:
    state = ArwModels.state(app)
    for model_id, status in ends:
        assert state.observer.wait_for(model_id, status, timeout=10), (model_id, status)


def test_one_line_per_state_change(service: Service, origin: Origin, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="arw_models")
    app, client, _ = service(ARW_DL_SEGMENTS=1, ARW_MODELS_MAX_CONC=4)
    ok = origin.add("/ok.gguf", payload(300_000, seed=1))
    flaky = origin.add("/flaky.gguf", payload(200_000, seed=2), drop_after=70_000)
    whole = origin.add("/whole.gguf", payload(150_000, seed=3), drop_after=50_000, ignore_range=True)
    slow = origin.add("/slow.gguf", payload(400_000, seed=4), stall_after=100_000)

    post_download(client, "ok", origin.url("/ok.gguf"), sha256=ok.sha256)
    post_download(client, "gone", origin.url("/gone.gguf"))
    post_download(client, "flaky", origin.url("/flaky.gguf"), sha256=flaky.sha256)
    settle(app, ("ok", "complete"), ("gone", "error"), ("flaky", "complete"))
    post_download(client, "whole", origin.url("/whole.gguf"), sha256=whole.sha256)
    settle(app, ("whole", "complete"))
    post_download(client, "slow", origin.url("/slow.gguf"))
    assert slow.stalled.wait(10)
    settle(app, ("slow", "started"))  # the origin may stall before the answer is taken
    cancel(client, "slow")
    slow.release.set()
    settle(app, ("slow", "canceled"))

    ok_lines = lines(caplog, "ok")
    assert [r.arw["status"] for r in ok_lines] == ["started", "complete"]  # no line per progress event
    assert ok_lines[0].getMessage() == "download ok: started from byte 0 of 300000"
    done = ok_lines[-1]
    assert done.levelno == logging.INFO
    assert done.arw["outcome"] == "complete" and done.arw["bytes"] == 300_000 and done.arw["file"] == "ok.gguf"
    assert done.getMessage().startswith("download ok: complete, 300000 bytes in ")
    assert 0 <= done.arw["duration_s"] < 10

    (failed,) = lines(caplog, "gone")
    assert failed.levelno == logging.WARNING
    assert failed.arw["outcome"] == "error" and failed.arw["code"] == "http-status"
    assert failed.getMessage().startswith("download gone: failed (http-status) after ")

    flaky_lines = lines(caplog, "flaky")
    assert [r.arw["status"] for r in flaky_lines] == ["started", "retrying", "resumed", "complete"]
    assert flaky_lines[1].arw["attempt"] == 1 and flaky_lines[1].arw["bytes"] == 70_000
    assert flaky_lines[2].getMessage() == "download flaky: resumed from byte 70000 of 200000"
    assert flaky_lines[2].arw["offset"] == flaky_lines[2].arw["bytes"] == 70_000
    assert flaky_lines[3].arw["bytes"] == 200_000

    # The origin answered the resume with the whole file: the engine says why it
    # restarts, and the job's lines show the new start.
    whole_records = [r for r in caplog.records if r.getMessage().startswith("download whole:")]
    said = [r.getMessage() for r in whole_records]
    assert "download whole: the origin sent the whole file; restarting from byte 0" in said
    assert [r.arw["status"] for r in lines(caplog, "whole")] == ["started", "retrying", "started", "complete"]

    slow_lines = lines(caplog, "slow")
    assert [r.arw["status"] for r in slow_lines] == ["started", "canceled"]
    assert slow_lines[-1].arw["outcome"] == "canceled"
    assert slow_lines[-1].getMessage().startswith("download slow: canceled after ")
    # Every job line names its job and how long it has run; only the last an outcome.
    for record in (r for r in caplog.records if r.name == JOBS):
        assert {"id", "status", "duration_s"} <= set(record.arw)
        assert ("outcome" in record.arw) == (record.arw["status"] in ("complete", "error", "canceled", "paused"))


def test_json_lines(make_app: Any, origin: Origin, capsys: Any, caplog: Any) -> None:
    package = logging.getLogger("arw_models")
    before = (package.propagate, package.level, list(package.handlers))
    data = origin.add("/m.gguf", payload(20_000, seed=5))
    app = make_app(ARW_LOG_FORMAT="json")
    client = app.test_client()
    post_download(client, "m", origin.url("/m.gguf"), sha256=data.sha256)
    post_download(client, "gone", origin.url("/gone.gguf"))
    settle(app, ("m", "complete"), ("gone", "error"))
    err = capsys.readouterr().err
    records = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is one object
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert all(r["time"].endswith("Z") and "T" in r["time"] for r in records)
    (complete,) = [r for r in records if r["logger"] == JOBS and r.get("outcome") == "complete"]
    assert complete["id"] == "m" and complete["bytes"] == 20_000 and complete["level"] == "INFO"
    assert isinstance(complete["duration_s"], float) and complete["message"].startswith("download m: complete")
    # The failure is one WARNING line, a JSON line like the others.
    assert [r["id"] for r in records if r["level"] == "WARNING"] == ["gone"]
    # The root's handlers (caplog's among them) do not write the lines again.
    assert not [r for r in caplog.records if r.name.startswith("arw_models")]

    ArwModels.state(app).shutdown()
    assert (package.propagate, package.level, list(package.handlers)) == before


def test_text_format_and_two_apps(make_app: Any, tmp_path: Any, capsys: Any) -> None:
    package = logging.getLogger("arw_models")
    before = list(package.handlers)
    first = ArwModels.state(make_app(ARW_LOG_FORMAT="json"))
    second = ArwModels.state(make_app(ARW_LOG_FORMAT="text", ARW_STATE_DIR=str(tmp_path / "two")))
    assert len(package.handlers) == len(before) + 1  # one handler, or every line would come twice
    logging.getLogger("arw_models.test").info("hello %s", "there")
    assert capsys.readouterr().err.endswith(" INFO arw_models.test: hello there\n")
    second.shutdown()
    logging.getLogger("arw_models.test").info("again")
    assert json.loads(capsys.readouterr().err)["message"] == "again"  # the first app's handler is back
    first.shutdown()
    assert package.handlers == before and package.propagate


def test_the_json_formatter_keeps_one_object_per_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("arw_models.x", logging.ERROR, __file__, 1, "a\nb\u2028c %s", ("d",),
                                   sys.exc_info())
    record.arw = {"id": "m", "bytes": 3, "message": "not this one"}
    line = JsonFormatter().format(record)
    assert "\n" not in line and "\u2028" not in line
    out = json.loads(line)
    assert out["message"] == "a\nb\u2028c d" and out["level"] == "ERROR" and out["logger"] == "arw_models.x"
    assert out["id"] == "m" and out["bytes"] == 3
    assert "ValueError: boom" in out["exc"]


@pytest.mark.parametrize("value", ["xml", "JSONL", 1])
def test_an_unknown_format_is_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="ARW_LOG_FORMAT"):
        Settings.from_config(dict(DEFAULTS, ARW_LOG_FORMAT=value))
    assert Settings.from_config(dict(DEFAULTS, ARW_LOG_FORMAT=" JSON ")).log_format == "json"
    assert Settings.from_config(dict(DEFAULTS, ARW_LOG_FORMAT="")).log_format is None


def test_each_job_of_an_id_has_its_own_clock_and_bytes(caplog: Any) -> None:
    now = [100.0]
    job_log = JobLog(clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger=JOBS)
    for at, event in ((100.0, {"status": "started"}), (102.5, {"status": "downloading", "downloaded": 700}),
                      (103.0, {"status": "error", "code": "network", "error": "reset"}),
                      (200.0, {"status": "resumed", "offset": 700}), (201.25, {"status": "canceled"})):
        now[0] = at
        job_log.observe({"id": "m", **event})
    first_end, second_end = [r.arw for r in caplog.records if r.arw.get("outcome")]
    assert (first_end["duration_s"], first_end["bytes"]) == (3.0, 700)
    assert (second_end["duration_s"], second_end["bytes"]) == (1.25, 700)


def failure_lines(caplog: Any, model_id: str) -> list[logging.LogRecord]:
    """Every WARNING or worse that speaks of the job, from any logger of the package."""
    return [r for r in caplog.records if r.name.startswith("arw_models") and r.levelno >= logging.WARNING
            and f"download {model_id}" in r.getMessage()]


def test_a_checksum_mismatch_is_one_line_with_the_bytes_received(service: Service, origin: Origin,
                                                                  caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="arw_models")
    app, client, watch = service(ARW_DL_SEGMENTS=1)
    origin.add("/bad.gguf", payload(300_000, seed=7))
    post_download(client, "bad", origin.url("/bad.gguf"), sha256="0" * 64)
    assert watch.terminal("bad")["code"] == "checksum-mismatch"
    settle(app, ("bad", "error"))
    (line,) = failure_lines(caplog, "bad")  # once, not by the manager and again by the job log
    assert line.name == JOBS and line.arw["code"] == "checksum-mismatch" and line.arw["bytes"] == 300_000
    assert re.fullmatch(r"download bad: failed \(checksum-mismatch\) after [0-9.]+ s, 300000 bytes: "
                        r"checksum mismatch", line.getMessage()), line.getMessage()


def test_a_size_mismatch_says_what_was_received_of_what(service: Service, origin: Origin, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="arw_models")
    app, client, watch = service(ARW_DL_SEGMENTS=1, ARW_DL_RETRIES=0)
    origin.add("/short.gguf", payload(100_000, seed=8), drop_after=40_000)
    post_download(client, "short", origin.url("/short.gguf"))
    assert watch.terminal("short")["status"] == "error"
    settle(app, ("short", "error"))
    (line,) = failure_lines(caplog, "short")
    assert line.arw["bytes"] == 40_000, line.getMessage()
    assert ", 40000 " in line.getMessage()


def test_a_cancel_says_how_many_bytes_it_discarded(service: Service, origin: Origin, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="arw_models")
    app, client, watch = service(ARW_DL_SEGMENTS=1)
    slow = origin.add("/slow.gguf", payload(400_000, seed=9), stall_after=100_000)
    post_download(client, "slow", origin.url("/slow.gguf"))
    assert slow.stalled.wait(10)
    watch.until(lambda e: e.payload.get("id") == "slow" and e.payload.get("downloaded") == 100_000)
    assert cancel(client, "slow").status_code == 200
    slow.release.set()
    assert watch.terminal("slow")["downloaded"] == 100_000
    settle(app, ("slow", "canceled"))
    (line,) = [r for r in lines(caplog, "slow") if r.arw["status"] == "canceled"]
    assert line.arw["bytes"] == 100_000
    assert line.getMessage().endswith(", 100000 bytes downloaded and discarded"), line.getMessage()


# A process that fails one download and prints what its log wrote; HOST_LOGGING
# set: the host configured logging first, in a format of its own.
SCRIPT = textwrap.dedent("""
    import logging, os, sys
    if os.environ.get("HOST_LOGGING"):
        logging.basicConfig(format="HOST %(levelname)s %(name)s %(message)s")
    from arw_models import ArwModels, create_app
    app = create_app({"ARW_STATE_DIR": sys.argv[1], "ARW_DL_RESUME_ON_START": False})
    answer = app.test_client().post("/models/download", json={"id": "gone", "url": sys.argv[2]})
    assert answer.status_code in (200, 202), answer.get_data()
    state = ArwModels.state(app)
    assert state.observer.wait_for("gone", "error", timeout=10)
    state.shutdown()
""")


def run_script(tmp_path: Path, url: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ARW_")}
    environ.update(env)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "state"), url], check=False,
                          env=environ, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_without_log_format_a_warning_has_its_time_level_and_logger(tmp_path: Path, origin: Origin) -> None:
    err = run_script(tmp_path, origin.url("/gone.gguf"))
    (line,) = [x for x in err.splitlines() if "download gone" in x]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING arw_models.downloads: "
                        r"download gone: failed \(http-status\) after .*", line), err


def test_a_host_logging_setup_is_left_alone(tmp_path: Path, origin: Origin) -> None:
    err = run_script(tmp_path, origin.url("/gone.gguf"), HOST_LOGGING="1")
    (line,) = [x for x in err.splitlines() if "download gone" in x]  # once: in the host's format only
    assert line.startswith("HOST WARNING arw_models.downloads download gone: failed (http-status)"), err


def test_gunicorn_access_lines_are_json_objects_without_the_query(gunicorns: Any, tmp_path: Path) -> None:
    g: Gunicorn = gunicorns("json", tmp_path / "state", ARW_LOG_FORMAT="json")
    g.wait_ready()
    assert requests.get(g.url + "/models?token=s3cret", headers={"X-Secret": "h3ader"}, timeout=5).ok
    g.proc.terminate()
    g.wait_exit(15)
    out = g.output()
    records = [json.loads(x) for x in out.splitlines() if x.strip()]  # every line, gunicorn's too
    (access,) = [r for r in records if r["logger"] == "gunicorn.access" and r.get("path") == "/models"]
    assert {"time", "level", "message"} <= set(access)
    assert access["method"] == "GET" and access["status"] == 200 and access["protocol"] == "HTTP/1.1"
    assert access["remote"] == "127.0.0.1" and isinstance(access["bytes"], int)
    assert isinstance(access["duration_us"], int)
    assert "s3cret" not in out and "h3ader" not in out
    assert any(r["logger"] == "gunicorn.error" for r in records)


def test_a_gunicorn_access_line_never_writes_the_query_or_a_header_even_in_its_message() -> None:
    atoms = SafeAtoms({"h": "127.0.0.1", "r": "GET /models?token=s3cret HTTP/1.1", "q": "token=s3cret",
                       "{x-secret}i": "h3ader", "m": "GET", "U": "/models", "s": "200", "D": "1234"})
    fmt = '%(h)s "%(r)s" %(q)s %({x-secret}i)s %(m)s %(U)s %(s)s %(D)sus %(Z)s'
    record = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, fmt, (atoms,), None)
    line = AccessJsonFormatter(fmt).format(record)
    assert "s3cret" not in line and "h3ader" not in line
    out = json.loads(line)
    assert out["message"] == '127.0.0.1 "-" - - GET /models 200 1234us -'
    assert (out["remote"], out["path"], out["status"], out["duration_us"]) == ("127.0.0.1", "/models", 200, 1234)
    assert out["logger"] == "gunicorn.access" and out["level"] == "INFO"


def test_a_json_line_carries_the_extra_fields_of_its_record() -> None:
    record = logging.LogRecord("arw_models.x", logging.INFO, __file__, 1, "hello", (), None)
    record.arw = {"id": "m", "level": "not this one"}
    record.request_id = "r-1"  # as logger.info(..., extra={"request_id": "r-1"}) sets it
    out = json.loads(JsonFormatter().format(record))
    assert out == {"time": out["time"], "level": "INFO", "logger": "arw_models.x", "message": "hello",
                   "id": "m", "request_id": "r-1"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out["time"])
