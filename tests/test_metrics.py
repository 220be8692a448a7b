"""GET /metrics: counters of what the events told, against the real local origin;
gauges read at scrape time; one registry per app."""

from __future__ import annotations

import shutil
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from arw_models import ArwModels
from arw_models.service.metrics import ERROR_CODES, Metrics

from .support.app import Service, Watch, post_download
from .support.helpers import cancel
from .support.models import LocalModels
from .support.origin import Origin, payload


def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, by name and labels, parsed as Prometheus does."""
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.get_data(as_text=True)) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def observed(app: Any, model_id: str, status: str) -> None:
    """Waits until the metrics (and the log) have taken the event: the hub publishes
    a terminal event just before the signal carries it to them."""
    assert ArwModels.state(app).observer.wait_for(model_id, status, timeout=10), (model_id, status)


def test_counters_after_a_known_sequence_of_jobs(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_SEGMENTS=1, ARW_MODELS_MAX_CONC=4)
    ok = origin.add("/ok.gguf", payload(300_000, seed=1))
    flaky = origin.add("/flaky.gguf", payload(200_000, seed=2), drop_after=70_000)
    slow = origin.add("/slow.gguf", payload(400_000, seed=3), stall_after=100_000)
    before = scrape(client)
    assert value(before, "arw_downloads_started_total") == 0
    assert value(before, "arw_download_received_bytes_total") == 0

    post_download(client, "ok", origin.url("/ok.gguf"), sha256=ok.sha256)
    assert watch.terminal("ok")["status"] == "complete"
    post_download(client, "gone", origin.url("/gone.gguf"))  # the origin answers 404
    assert watch.terminal("gone")["code"] == "http-status"
    post_download(client, "flaky", origin.url("/flaky.gguf"), sha256=flaky.sha256)
    retry = watch.status("flaky", "retrying")
    assert watch.terminal("flaky")["status"] == "complete"
    post_download(client, "slow", origin.url("/slow.gguf"))
    assert slow.stalled.wait(10)
    # Its bytes reach the counter through progress events: wait for the one that shows them all.
    watch.until(lambda e: e.payload.get("id") == "slow" and e.payload.get("downloaded") == 100_000)
    assert cancel(client, "slow").status_code == 200
    slow.release.set()
    for model_id, status in (("ok", "complete"), ("gone", "error"), ("flaky", "complete"), ("slow", "canceled")):
        observed(app, model_id, status)

    after = scrape(client)
    assert value(after, "arw_downloads_started_total") == 3  # the 404 never began a transfer
    assert value(after, "arw_downloads_completed_total") == 2
    assert value(after, "arw_downloads_failed_total", code="http-status") == 1
    assert value(after, "arw_downloads_canceled_total") == 1
    assert value(after, "arw_downloads_paused_total") == 0
    assert value(after, "arw_download_retries_total", code=retry["code"]) == 1
    # Every byte once: a resume counts only what it fetched, not what was on disk.
    assert value(after, "arw_download_received_bytes_total") == 300_000 + 200_000 + 100_000
    assert value(after, "arw_jobs_active") == value(after, "arw_jobs_queued") == 0


def test_gauges_are_read_when_scraped(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_MODELS_MAX_CONC=1, ARW_DL_RATE_LIMIT=250_000)
    first = origin.add("/first.gguf", payload(100_000, seed=4), stall_after=10_000)
    origin.add("/second.gguf", payload(1000, seed=5))
    post_download(client, "first", origin.url("/first.gguf"))
    assert first.stalled.wait(10)
    post_download(client, "second", origin.url("/second.gguf"))
    watch.status("second", "queued")
    extra = Watch(app)
    try:
        samples = scrape(client)
        assert value(samples, "arw_jobs_active") == 1
        assert value(samples, "arw_jobs_queued") == 1
        assert value(samples, "arw_jobs_paused") == 0
        # The test's two subscriptions, as open event streams would be.
        assert value(samples, "arw_sse_subscribers") == 2
        assert value(samples, "arw_rate_limit_bytes_per_second") == 250_000
    finally:
        extra.close()
    assert value(scrape(client), "arw_sse_subscribers") == 1
    cancel(client, "first")
    cancel(client, "second")
    first.release.set()


def test_unlimited_rate_is_zero_and_metrics_need_no_token(make_app: Any) -> None:
    client = make_app(ARW_ADMIN_TOKEN="t").test_client()
    samples = scrape(client)  # no token sent
    assert value(samples, "arw_rate_limit_bytes_per_second") == 0


def test_each_app_counts_its_own(make_app: Any, tmp_path: Any, origin: Origin) -> None:
    data = origin.add("/m.gguf", payload(10_000, seed=6))
    one = make_app()
    two = make_app(ARW_STATE_DIR=str(tmp_path / "other"))
    watch = Watch(one)
    try:
        post_download(one.test_client(), "m", origin.url("/m.gguf"), sha256=data.sha256)
        assert watch.terminal("m")["status"] == "complete"
        observed(one, "m", "complete")
    finally:
        watch.close()
    assert value(scrape(one.test_client()), "arw_downloads_completed_total") == 1
    assert value(scrape(two.test_client()), "arw_downloads_completed_total") == 0
    assert not [m for m in REGISTRY.collect() if m.name.startswith("arw_")]  # never the process-wide registry


def test_paused_and_resumed_downloads_count_each_byte_once() -> None:
    """The events of a pause and a later resume, as the service publishes them."""
    metrics = Metrics(jobs=lambda: [{"id": "p", "status": "paused"}], subscribers=lambda: 0)
    for event in ({"status": "queued"}, {"status": "started", "total": 1000},
                  {"status": "downloading", "downloaded": 300}, {"status": "paused", "downloaded": 400},
                  {"status": "resumed", "offset": 400}, {"status": "downloading", "downloaded": 900},
                  {"status": "retrying", "code": "network", "downloaded": 950},
                  {"status": "resumed", "offset": 950},
                  {"status": "complete", "bytes": 1000, "file": "p", "provider": "local", "sha256": "0" * 64}):
        metrics.observe({"id": "p", **event})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}
    assert value(samples, "arw_downloads_paused_total") == 1
    assert value(samples, "arw_downloads_started_total") == 2  # the job, and the one that resumed it
    assert value(samples, "arw_download_retries_total", code="network") == 1
    assert value(samples, "arw_downloads_completed_total") == 1
    assert value(samples, "arw_download_received_bytes_total") == 1000
    assert value(samples, "arw_jobs_paused") == 1


def test_a_fresh_service_has_every_series_a_dashboard_needs(make_app: Any, tmp_path: Any) -> None:
    client = make_app().test_client()
    samples = scrape(client)
    # Every stable error code, and every outcome of the durations, is a series at zero from the start.
    for code in ERROR_CODES:
        assert value(samples, "arw_downloads_failed_total", code=code) == 0, code
    assert {"checksum-mismatch", "size-mismatch", "http-status", "network", "dns-error", "connection-refused",
            "disk-insufficient", "disk-full", "size-limit", "resume-invalid", "internal-error"} <= set(ERROR_CODES)
    for outcome in ("complete", "error", "canceled"):
        assert value(samples, "arw_download_duration_seconds_count", outcome=outcome) == 0
        assert value(samples, "arw_download_duration_seconds_bucket", outcome=outcome, le="+Inf") == 0
    assert value(samples, "arw_models_installed") == value(samples, "arw_models_installed_bytes") == 0
    assert value(samples, "arw_partial_bytes") == value(samples, "arw_store_used_bytes") == 0
    free = value(samples, "arw_disk_free_bytes")
    assert free is not None and abs(free - shutil.disk_usage(tmp_path).free) < 64 * 1024 * 1024
    # The process's own series, on the service's registry.
    names = {name for name, _ in samples}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
            "python_info", "python_gc_collections_total"} <= names


def test_durations_and_the_store_move_with_downloads(service: Service, origin: Origin) -> None:
    app, client, watch = service(ARW_DL_SEGMENTS=1, ARW_DL_DIRECT_IO="off")
    ok = origin.add("/ok.gguf", payload(300_000, seed=11))
    slow = origin.add("/slow.gguf", payload(400_000, seed=12), stall_after=100_000)
    post_download(client, "ok", origin.url("/ok.gguf"), sha256=ok.sha256)
    post_download(client, "bad", origin.url("/ok.gguf"), sha256="0" * 64)
    for model_id, status in (("ok", "complete"), ("bad", "error")):
        observed(app, model_id, status)  # in either order
    post_download(client, "slow", origin.url("/slow.gguf"))
    assert slow.stalled.wait(10)
    watch.until(lambda e: e.payload.get("id") == "slow" and e.payload.get("downloaded") == 100_000)

    during = scrape(client)
    assert value(during, "arw_models_installed") == 1
    assert value(during, "arw_models_installed_bytes") == 300_000
    assert value(during, "arw_partial_bytes") == 100_000  # read at scrape time, from the disk
    assert value(during, "arw_store_used_bytes") == 400_000
    assert value(during, "arw_downloads_failed_total", code="checksum-mismatch") == 1
    assert value(during, "arw_download_duration_seconds_count", outcome="complete") == 1
    assert value(during, "arw_download_duration_seconds_count", outcome="error") == 1
    assert value(during, "arw_download_duration_seconds_count", outcome="canceled") == 0

    assert cancel(client, "slow").status_code == 200
    slow.release.set()
    assert watch.terminal("slow")["status"] == "canceled"
    observed(app, "slow", "canceled")
    after = scrape(client)
    assert value(after, "arw_download_duration_seconds_count", outcome="canceled") == 1
    assert 0 < value(after, "arw_download_duration_seconds_sum", outcome="canceled") < 10  # type: ignore[operator]
    assert value(after, "arw_partial_bytes") == 0
    assert value(after, "arw_store_used_bytes") == value(after, "arw_models_installed_bytes") == 300_000


def test_a_duration_runs_from_the_request_to_the_end() -> None:
    now = [100.0]
    metrics = Metrics(jobs=list, subscribers=lambda: 0, clock=lambda: now[0])
    for at, event in ((100.0, {"status": "queued"}), (130.0, {"status": "started"}),
                      (142.0, {"status": "complete", "bytes": 1})):
        now[0] = at
        metrics.observe({"id": "m", **event})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}
    assert value(samples, "arw_download_duration_seconds_sum", outcome="complete") == 42.0
    assert value(samples, "arw_download_duration_seconds_bucket", outcome="complete", le="30.0") == 0
    assert value(samples, "arw_download_duration_seconds_bucket", outcome="complete", le="60.0") == 1


def test_a_model_of_many_files_counts_once_and_its_fetched_bytes_once(service: Service, origin: Origin) -> None:
    # One file at a time, in the listing's order: a.bin is done before b.bin begins.
    app, client, watch = service(ARW_DL_SEGMENTS=1, ARW_DL_DIRECT_IO="off", ARW_DL_FILES_AT_ONCE=1)
    client.get("/healthz")  # the service starts
    models = LocalModels(origin)
    ArwModels.state(app).manager.references = models
    shared = payload(100_000, seed=21)
    first = models.add("first", {"shared.bin": shared})
    post_download(client, "first", first)
    observed(app, "first", "complete")
    before = scrape(client)

    # Two files fetched, one the store holds already (not fetched), one inline (no transfer).
    files = {"a.bin": payload(300_000, seed=22), "b.bin": payload(200_000, seed=23), "shared.bin": shared}
    held = {"b.bin": 50_000}
    ref = models.add("many", files, inline={"README.md": b"# many\n"})
    stalled = origin.add(f"/many/{'0' * 40}/b.bin", files["b.bin"], stall_after=held["b.bin"])
    post_download(client, "many", ref)
    assert stalled.stalled.wait(10)
    watch.until(lambda e: e.payload.get("id") == "many" and any(
        f["path"] == "b.bin" and f["downloaded"] == held["b.bin"] for f in e.payload.get("files") or ()))
    during = scrape(client)
    # The staged file's .part is partial bytes; the model is not installed yet.
    assert value(during, "arw_partial_bytes") == held["b.bin"]
    assert value(during, "arw_models_installed") == 1
    stalled.release.set()
    assert watch.terminal("many")["status"] == "complete"
    observed(app, "many", "complete")
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)  # type: ignore[operator]

    assert moved("arw_downloads_started_total") == 1
    assert moved("arw_downloads_completed_total") == 1
    assert moved("arw_download_duration_seconds_count", outcome="complete") == 1
    # What the files fetched, not the file the store held; the inline file's few bytes
    # (the listing carried them) are in the model's total, which the complete event gives.
    assert moved("arw_download_received_bytes_total") == 300_000 + 200_000 + len(b"# many\n")
    # The folder is an installed model; each blob once, shared.bin with the first model.
    assert value(after, "arw_models_installed") == 2
    assert value(after, "arw_models_installed_bytes") == 100_000 + 300_000 + 200_000 + len(b"# many\n")
    assert value(after, "arw_partial_bytes") == 0
