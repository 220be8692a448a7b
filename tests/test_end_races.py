"""Cancels, shutdowns and posts that race the end of a job: a cancel after the last
byte, with a busy answer, between verification and install or after it; a shutdown
after a cancel; a POST on a job's terminal signal or just after its install."""

from __future__ import annotations

import os
from typing import Any

import pytest

from arw_models import ArwModels, signals
from arw_models.errors import ArwError
from arw_models.service.jobs import DownloadJob

from .support.app import Service, post_download
from .support.helpers import models_dir
from .support.origin import Origin, payload

KiB = 1024
MiB = 1024 * KiB


def _job(app: Any, model_id: str) -> Any:
    job = ArwModels.state(app).manager.find(model_id)
    assert job is not None
    return job


def test_a_cancel_that_lands_after_the_last_byte_still_wins(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel that arrives once the body is
    whole, before the file is installed, must still cancel (the model is not installed)."""
    app, client, watch = service()
    origin.add("/late.gguf", payload(1000, seed=53))
    manager = ArwModels.state(app).manager
    points: list[str] = []

    def checkpoint(point: str, job: Any) -> None:
        points.append(point)
        if point == "transferred":  # the body is on disk; verification comes next
            job.stop("cancel")

    monkeypatch.setattr(manager, "checkpoint", checkpoint)
    post_download(client, "late", origin.url("/late.gguf"))
    assert watch.terminal("late")["status"] == "canceled"
    assert points == ["answered", "transferred"]
    assert client.get("/models").json["items"] == []
    assert os.listdir(models_dir(app)) == []


def test_a_cancel_that_lands_with_a_busy_answer_publishes_no_retrying(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 503 arrives as the job is
    canceled; the job ends canceled without announcing a retry it will never make."""
    app, client, watch = service()
    origin.add("/b.gguf", payload(1000, seed=54), statuses=[(503, {"Retry-After": "0"})])

    def checkpoint(point: str, job: Any) -> None:
        if point == "failed":
            job.stop("cancel")  # the cancel lands once the 503 is read, before the retry is decided

    monkeypatch.setattr(ArwModels.state(app).manager, "checkpoint", checkpoint)
    post_download(client, "b", origin.url("/b.gguf"))
    assert watch.terminal("b")["status"] == "canceled"
    assert watch.statuses("b") == ["canceled"]
    assert len(origin.requests_for("/b.gguf")) == 1


def test_a_shutdown_after_a_cancel_does_not_turn_it_into_an_interruption(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first reason to stop wins; a cancel
    followed by a shutdown (SIGTERM while the cancel is waited for) still removes the
    .part and publishes canceled. The socket shutdown is disabled so that both stops
    land while the worker is blocked; the origin's release then wakes it."""
    app, client, watch = service(ARW_DL_IDLE_TIMEOUT_SECS=30)
    res = origin.add("/c.gguf", payload(MiB, seed=55), stall_after=64 * KiB)
    post_download(client, "c", origin.url("/c.gguf"))
    assert res.stalled.wait(5)
    monkeypatch.setattr(DownloadJob, "wake", staticmethod(lambda sock: None))
    monkeypatch.setattr(DownloadJob, "attach_response", lambda self, response: None)
    job = _job(app, "c")
    job.stop("cancel")
    job.stop("shutdown")
    res.release.set()  # the origin ends the response: the worker sees its stop
    assert watch.terminal("c")["status"] == "canceled"
    assert job.done.wait(5)
    assert os.listdir(models_dir(app)) == []


def test_a_cancel_between_verification_and_install_wins(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is verified and about to be renamed when the cancel lands: the model is
    not installed, and the cancel's answer is true."""
    app, client, watch = service()
    origin.add("/v.gguf", payload(1000, seed=56))

    def checkpoint(point: str, job: Any) -> None:
        if point == "verified":
            job.stop("cancel")  # after the last check of the transfer, before the install

    monkeypatch.setattr(ArwModels.state(app).manager, "checkpoint", checkpoint)
    post_download(client, "v", origin.url("/v.gguf"))
    assert watch.terminal("v")["status"] == "canceled"
    assert client.get("/models").json["items"] == []
    assert os.listdir(models_dir(app)) == []
    assert [e.payload for e in watch.events if e.kind == "Models.Changed"] == []


def test_a_cancel_after_the_install_says_there_is_nothing_to_cancel(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model is installed but its job has not ended yet: the cancel must not answer
    ``canceled`` for a model that stays."""
    app, client, watch = service()
    res = origin.add("/i.gguf", payload(1000, seed=57))
    manager = ArwModels.state(app).manager
    answers: list[Any] = []

    def checkpoint(point: str, job: Any) -> None:
        if point == "installed":  # after the install, before the job ends
            try:
                answers.append(manager.cancel(job.id, wait=0))
            except ArwError as exc:
                answers.append(exc)

    monkeypatch.setattr(manager, "checkpoint", checkpoint)
    post_download(client, "i", origin.url("/i.gguf"), sha256=res.sha256)
    assert watch.terminal("i")["status"] == "complete"
    assert _job(app, "i").done.wait(5)
    [answer] = answers
    assert getattr(answer, "code", None) == "no-active-download", answer
    assert watch.statuses("i").count("canceled") == 0
    assert [m["id"] for m in client.get("/models").json["items"]] == ["i"]


def test_a_post_made_on_a_jobs_terminal_signal_finds_the_job_over(service: Service, origin: Origin) -> None:
    """A receiver of the terminal signal (or a client that acts on the terminal event)
    posts again at once: the job is over by then, so the POST answers 200 for the
    installed model, or starts a new job, and never races the ending one."""
    app, client, watch = service()
    good = origin.add("/ok.gguf", payload(1000, seed=58))
    origin.add("/gone.gguf", payload(10), statuses=[(404, {}), (404, {})])
    answers: dict[str, Any] = {}

    def post_again(sender: Any, payload: dict[str, Any]) -> None:  # runs in the ending job's thread
        if payload["id"] in answers:
            return
        url = origin.url("/ok.gguf" if payload["id"] == "ok" else "/gone.gguf")
        answers[payload["id"]] = app.test_client().post("/models/download", json={"id": payload["id"], "url": url})

    with signals.download_completed.connected_to(post_again, sender=app), \
            signals.download_failed.connected_to(post_again, sender=app):
        post_download(client, "ok", origin.url("/ok.gguf"), sha256=good.sha256)
        assert watch.terminal("ok")["status"] == "complete"
        post_download(client, "gone", origin.url("/gone.gguf"))
        assert watch.terminal("gone")["status"] == "error"
        assert watch.terminal("gone")["status"] == "error"  # the job the receiver started
        for model_id in ("ok", "gone"):
            assert _job(app, model_id).done.wait(5)
    assert answers["ok"].status_code == 200 and answers["ok"].json["sha256"] == good.sha256
    assert answers["gone"].status_code == 202 and answers["gone"].json["status"] == "started"
    assert [s for s in watch.statuses("ok") if s != "downloading"] == ["started", "complete"]
    assert watch.statuses("gone") == ["error", "error"]
    assert len(origin.requests_for("/gone.gguf")) == 2


def test_a_post_in_the_moment_after_the_install_gets_the_installed_model(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model is installed and its job not yet over: the same POST answers 200 with
    the model (not a 409, not a second download)."""
    app, client, watch = service()
    res = origin.add("/w.gguf", payload(1000, seed=59))
    manager = ArwModels.state(app).manager
    answers: list[Any] = []

    def checkpoint(point: str, job: Any) -> None:
        if point == "installed":
            answers.append(manager.submit(job.id, job.url, None, "local"))

    monkeypatch.setattr(manager, "checkpoint", checkpoint)
    post_download(client, "w", origin.url("/w.gguf"), sha256=res.sha256)
    assert watch.terminal("w")["status"] == "complete"
    [(status, model)] = answers
    assert status == 200 and model["sha256"] == res.sha256 and model["file"] == "w.gguf"
    assert len(origin.requests_for("/w.gguf")) == 1


def test_another_url_posted_in_the_moment_after_the_install_is_told_the_job_is_ending(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model is installed and its job not yet over: a POST of another url is refused
    (409 ``download-ending``, with the job) rather than starting a job that races the
    ending one; once the job is over, the same POST starts the new download."""
    app, client, watch = service()
    first = origin.add("/e1.gguf", payload(1000, seed=60))
    second = origin.add("/e2.gguf", payload(1000, seed=61))
    manager = ArwModels.state(app).manager
    answers: list[Any] = []

    def checkpoint(point: str, job: Any) -> None:
        if point == "installed" and not answers:
            try:
                answers.append(manager.submit(job.id, origin.url("/e2.gguf"), None, "local"))
            except ArwError as exc:
                answers.append(exc)

    monkeypatch.setattr(manager, "checkpoint", checkpoint)
    post_download(client, "e", origin.url("/e1.gguf"), sha256=first.sha256)
    assert watch.terminal("e")["status"] == "complete"
    [error] = answers
    assert isinstance(error, ArwError) and (error.status, error.code) == (409, "download-ending"), error
    assert _job(app, "e").done.wait(5)
    r = post_download(client, "e", origin.url("/e2.gguf"), sha256=second.sha256)
    assert r.status_code == 202 and r.json["status"] == "started"
    assert watch.terminal("e")["status"] == "complete"
    assert [m["sha256"] for m in client.get("/models").json["items"]] == [second.sha256]
    assert origin.requests_for("/e2.gguf")


def test_a_post_while_a_cancel_stops_a_fetch_again_is_told_the_job_is_ending(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model is fetched again (``force``) and canceled; a POST that lands while the
    cancel is stopping that job is refused (409 ``download-ending``) even though the
    earlier copy is installed: only a job that completed answers with the model."""
    app, client, watch = service()
    res = origin.add("/f.gguf", payload(1000, seed=62))
    post_download(client, "f", origin.url("/f.gguf"), sha256=res.sha256)
    assert watch.terminal("f")["status"] == "complete"
    manager = ArwModels.state(app).manager
    answers: list[Any] = []

    def checkpoint(point: str, job: Any) -> None:
        if point == "answered" and not answers:
            manager.cancel(job.id, wait=0)
            try:
                answers.append(manager.submit(job.id, origin.url("/f.gguf"), None, "local"))
            except ArwError as exc:
                answers.append(exc)

    monkeypatch.setattr(manager, "checkpoint", checkpoint)
    assert post_download(client, "f", origin.url("/f.gguf"), force=True).status_code == 202
    assert watch.terminal("f")["status"] == "canceled"
    [error] = answers
    assert isinstance(error, ArwError) and (error.status, error.code) == (409, "download-ending"), error
    assert [m["sha256"] for m in client.get("/models").json["items"]] == [res.sha256]


def test_a_part_that_vanishes_between_verification_and_install_ends_the_download(
    service: Service, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``.part`` is verified, then removed by something else before the install:
    the download ends with ``resume-invalid`` (not an internal error), nothing is
    installed and no sidecar is left to resume from."""
    app, client, watch = service()
    origin.add("/g.gguf", payload(1000, seed=63))

    def checkpoint(point: str, job: Any) -> None:
        if point == "verified":
            os.remove(os.path.join(models_dir(app), job.id + ".part"))

    monkeypatch.setattr(ArwModels.state(app).manager, "checkpoint", checkpoint)
    post_download(client, "g", origin.url("/g.gguf"))
    ended = watch.terminal("g")
    assert (ended["status"], ended["code"]) == ("error", "resume-invalid"), ended
    assert client.get("/models").json["items"] == []
    assert os.listdir(models_dir(app)) == []
