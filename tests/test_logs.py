"""Logs: one line per change of a job's state, with its id, bytes, duration and
outcome; ARW_LOG_FORMAT=json writes the package's log as JSON lines, and only
the package's logger is touched."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest

from arw_models import ArwModels
from arw_models.config import DEFAULTS, Settings
from arw_models.logs import JobLog, JsonFormatter

from .conftest import Service, post_download
from .helpers import cancel
from .origin import Origin, payload

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
    # The manager's own warning is a JSON line too.
    assert any(r["logger"] == "arw_models.manager" and r["level"] == "WARNING" for r in records)
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
