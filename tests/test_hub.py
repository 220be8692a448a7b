"""Hugging Face references: ``hf://OWNER/REPO/PATH[@REVISION]`` resolved against
ARW_HF_ENDPOINT, the hub token sent to the hub's host and never to the CDN it
redirects to, nor shown anywhere; against the local hub stand-in of tests/support/hub.py
(the hub on 127.0.0.1, its CDN on 127.0.0.2)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

from arw_models.store.storage import StateDir

from .support.app import Service, post_download
from .support.helpers import listing, models_dir, read, sidecar
from .support.hub import (
    Hub,
    events_text,
    needs_second_host,
    records_holding,
    shown_nowhere,
    state_files_holding,
)
from .support.origin import payload

KiB = 1024
MiB = 1024 * KiB
TOKEN = "hf_TeStToKeN0123456789abcdefXYZ"
REPO = "acme-ai/Tiny-Coder-GGUF"

pytestmark = needs_second_host


@pytest.fixture(autouse=True)
def no_hub_settings_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of whoever runs the tests must not choose a hub or a token."""
    for name in ("HF_TOKEN", "HF_ENDPOINT", "ARW_HF_TOKEN", "ARW_HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def hub() -> Iterator[Hub]:
    server = Hub(token=TOKEN)
    yield server
    server.close()  # fails the test if the CDN ever saw the token


@pytest.fixture
def public_hub() -> Iterator[Hub]:
    server = Hub(token=None)
    yield server
    server.close()


def hub_app(service: Service, hub: Hub, token: str | None = TOKEN, **config: Any) -> tuple[Any, Any, Any]:
    settings: dict[str, Any] = {"ARW_HF_ENDPOINT": hub.endpoint, **config}
    if token is not None:
        settings["ARW_HF_TOKEN"] = token
    return service(**settings)


def test_an_hf_reference_comes_from_the_cdn_and_only_the_hub_sees_the_token(service: Service, hub: Hub) -> None:
    data = payload(3 * MiB // 2, seed=700)
    hub.publish(REPO, "quant/q4/tiny-coder-q4_k_m.gguf", data)
    app, client, watch = hub_app(service, hub)
    ref = f"hf://{REPO}/quant/q4/tiny-coder-q4_k_m.gguf"
    r = post_download(client, "tiny", ref)
    assert r.status_code == 202
    done = watch.terminal("tiny")
    assert done["status"] == "complete", done
    # Named after the path in the repository, not after the CDN's blob url.
    assert done["file"] == "tiny-coder-q4_k_m.gguf"
    assert read(os.path.join(models_dir(app), "tiny-coder-q4_k_m.gguf")) == data
    assert listing(app) == ["tiny-coder-q4_k_m.gguf"]
    [entry] = client.get("/models").json["items"]
    assert entry["url"] == ref and entry["file"] == "tiny-coder-q4_k_m.gguf"

    [asked] = hub.resolves(REPO, "quant/q4/tiny-coder-q4_k_m.gguf")
    assert asked.headers["authorization"] == f"Bearer {TOKEN}" and asked.status == 302
    [fetched] = hub.cdn.all_seen()
    assert fetched.path.startswith("/repos/") and "X-Amz-Signature=" in fetched.path
    assert "authorization" not in fetched.headers
    assert hub.cdn.saw(TOKEN) == []


@pytest.mark.parametrize("revision", ["v1.0", "refs/pr/1", "0123456789abcdef0123456789abcdef01234567"])
@pytest.mark.parametrize("form", ["after-path", "after-repo"])
def test_a_revision_reaches_its_own_resolve_path(service: Service, hub: Hub, revision: str, form: str) -> None:
    wanted = payload(200 * KiB, seed=701)
    hub.publish(REPO, "model.gguf", payload(200 * KiB, seed=702))  # main: another file
    hub.publish(REPO, "model.gguf", wanted, revision=revision)
    app, client, watch = hub_app(service, hub)
    # Ours, or huggingface_hub's (the revision after the repository, its slashes escaped).
    url = (f"hf://{REPO}/model.gguf@{revision}" if form == "after-path"
           else f"hf://{REPO}@{revision.replace('/', '%2F')}/model.gguf")
    post_download(client, "rev", url)
    done = watch.terminal("rev")
    assert done["status"] == "complete" and done["sha256"] == hashlib.sha256(wanted).hexdigest()
    # The store's manifest records the revision its bytes are of.
    with open(os.path.join(StateDir(app.config["ARW_STATE_DIR"]).manifests_dir, "rev.json")) as fh:
        assert [f["revision"] for f in json.load(fh)["files"]] == [revision]
    [asked] = hub.resolves(REPO, "model.gguf", revision)
    # A revision with a slash is one path segment, escaped, as the hub expects it.
    assert asked.path == f"/{REPO}/resolve/{revision.replace('/', '%2F')}/model.gguf"
    assert hub.resolves(REPO, "model.gguf") == []  # main was not asked


def test_the_digest_the_hub_publishes_is_the_one_checked(service: Service, hub: Hub) -> None:
    """No sha256 in the request: the hub's X-Linked-Etag is the expected digest."""
    data = payload(300 * KiB, seed=703)
    hub.publish(REPO, "weights.gguf", data)
    _, client, watch = hub_app(service, hub)
    post_download(client, "dig", f"hf://{REPO}/weights.gguf")
    done = watch.terminal("dig")
    assert done["status"] == "complete", done
    assert done["sha256_source"] == "origin"
    [entry] = client.get("/models").json["items"]
    assert entry["sha256_source"] == "origin"


def test_a_public_repository_needs_no_token_and_gets_none(service: Service, public_hub: Hub) -> None:
    data = payload(100 * KiB, seed=704)
    public_hub.publish("openorg/open-model", "open.gguf", data)
    app, client, watch = hub_app(service, public_hub, token=None)
    post_download(client, "open", "hf://openorg/open-model/open.gguf")
    assert watch.terminal("open")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "open.gguf")) == data
    [asked] = public_hub.resolves("openorg/open-model", "open.gguf")
    assert "authorization" not in asked.headers


@pytest.mark.parametrize("token", [None, "hf_wrong"], ids=["no-token", "wrong-token"])
def test_without_the_right_token_the_hub_401_ends_the_job(service: Service, hub: Hub, token: str | None) -> None:
    hub.publish(REPO, "gated.gguf", payload(100 * KiB, seed=705))
    app, client, watch = hub_app(service, hub, token=token)
    post_download(client, "gated", f"hf://{REPO}/gated.gguf")
    end = watch.terminal("gated")
    assert (end["status"], end["code"], end.get("http_status")) == ("error", "http-status", 401), end
    assert "401" in end["error"]
    assert [p["status"] for p in watch.payloads("gated")].count("retrying") == 0  # a 401 is not transient
    assert hub.cdn.all_seen() == []
    assert client.get("/models").json["items"] == []
    assert not any(name.endswith(".gguf") for name in listing(app))


def test_hf_token_and_hf_endpoint_from_the_environment(service: Service, hub: Hub,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """As huggingface_hub reads them, when ARW_HF_TOKEN and ARW_HF_ENDPOINT are unset."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    data = payload(100 * KiB, seed=706)
    hub.publish(REPO, "env.gguf", data)
    app, client, watch = service()
    post_download(client, "env", f"hf://{REPO}/env.gguf")
    assert watch.terminal("env")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "env.gguf")) == data
    [asked] = hub.resolves(REPO, "env.gguf")
    assert asked.headers["authorization"] == f"Bearer {TOKEN}"
    probe = client.get("/probe")
    assert probe.json["settings"]["hf_token"] == "set"
    assert probe.json["settings"]["hf_endpoint"] == hub.endpoint
    assert TOKEN not in probe.get_data(as_text=True)


def test_arw_hf_token_wins_over_hf_token(service: Service, hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_the_other_one")
    monkeypatch.setenv("ARW_HF_TOKEN", TOKEN)
    monkeypatch.setenv("ARW_HF_ENDPOINT", hub.endpoint)
    hub.publish(REPO, "ours.gguf", payload(64 * KiB, seed=707))
    _, client, watch = service()
    post_download(client, "ours", f"hf://{REPO}/ours.gguf")
    assert watch.terminal("ours")["status"] == "complete"
    assert hub.resolves(REPO, "ours.gguf")[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_no_token_set_shows_none_in_probe(service: Service) -> None:
    _, client, _ = service()
    assert client.get("/probe").json["settings"]["hf_token"] is None


def test_a_drop_at_the_cdn_resumes_through_the_hub_again(service: Service, hub: Hub) -> None:
    data = payload(2 * MiB, seed=708)
    blob = hub.publish(REPO, "resume.gguf", data, drop_after=700 * KiB)
    app, client, watch = hub_app(service, hub)
    post_download(client, "res", f"hf://{REPO}/resume.gguf")
    done = watch.terminal("res")
    assert done["status"] == "complete", done
    assert read(os.path.join(models_dir(app), "resume.gguf")) == data
    first, second = hub.cdn.all_seen()
    assert first.range is None and first.sent == 700 * KiB
    # The resume asks the hub again (a signed url expires), and the CDN for the rest only.
    assert second.range == f"bytes={700 * KiB}-" and second.headers["if-range"] == blob.etag
    assert second.status == 206
    assert [s.headers.get("authorization") for s in hub.resolves(REPO, "resume.gguf")] == [f"Bearer {TOKEN}"] * 2
    assert hub.cdn.saw(TOKEN) == []


def test_parallel_ranges_each_go_through_the_hub(service: Service, hub: Hub) -> None:
    data = payload(8 * MiB, seed=709)
    hub.publish(REPO, "big.gguf", data, throttle=4 * MiB)  # one connection alone: 2 s
    app, client, watch = hub_app(service, hub, ARW_DL_SEGMENTS=4, ARW_DL_SEGMENT_MIN_MB=1)
    post_download(client, "big", f"hf://{REPO}/big.gguf")
    done = watch.terminal("big", timeout=20)
    assert done["status"] == "complete", done
    assert read(os.path.join(models_dir(app), "big.gguf")) == data
    ranged = [s for s in hub.cdn.all_seen() if s.range]
    assert len(ranged) >= 2  # more than the first connection
    resolves = hub.resolves(REPO, "big.gguf")
    assert len(resolves) == len(hub.cdn.all_seen())
    assert all(s.headers.get("authorization") == f"Bearer {TOKEN}" for s in resolves)
    assert hub.cdn.saw(TOKEN) == []


def test_the_token_is_shown_and_kept_nowhere(service: Service, hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    data = payload(MiB, seed=710)
    blob = hub.publish(REPO, "quiet.gguf", data, stall_after=300 * KiB)
    app, client, watch = hub_app(service, hub, ARW_DL_IDLE_TIMEOUT_SECS=30)
    post_download(client, "quiet", f"hf://{REPO}/quiet.gguf")
    assert blob.stalled.wait(5)
    watch.until(lambda e: e.payload.get("id") == "quiet" and e.payload.get("downloaded") == 300 * KiB)
    # While it runs, and paused: the token is a setting, never written with the job.
    assert os.path.exists(sidecar(app, "quiet"))
    shown_nowhere(client, TOKEN, "quiet")
    assert client.post("/models/download/pause", json={"id": "quiet"}).status_code == 200
    assert state_files_holding(app.config["ARW_STATE_DIR"], TOKEN) == []
    blob.release.set()
    assert client.post("/models/download/resume", json={"id": "quiet"}).status_code == 202
    assert watch.terminal("quiet")["status"] == "complete"
    assert read(os.path.join(models_dir(app), "quiet.gguf")) == data

    shown_nowhere(client, TOKEN, "quiet")
    assert TOKEN not in events_text(watch.events)
    assert state_files_holding(app.config["ARW_STATE_DIR"], TOKEN) == []
    assert caplog.records and records_holding(caplog.records, TOKEN) == []


@pytest.mark.parametrize("url", [
    "hf://acme/model@",  # a whole repository, with an empty revision
    "hf://acme/model/",  # an empty path
    "hf://acme",
    "hf://",
    "hf://acme/model/../secrets.gguf",
    "hf://acme/model/dir/../../x.gguf",
    "hf://acme/model/./x.gguf",
    "hf://acme//model/x.gguf",  # an empty segment
    "hf://acme/model/dir//x.gguf",
    "hf://acme/model/x.gguf?download=true",  # a query
    "hf://acme/model/x.gguf#frag",
    "hf://acme/model/x.gguf@",  # an empty revision
    "hf://acme/model/x.gguf@refs/../main",
    "hf://acme/model@/x.gguf",  # huggingface_hub's form, with an empty revision
    "hf://acme/model@../x.gguf",
    "hf://acme/model@%2e%2E",  # a whole repository at a ".." revision
    "hf://-acme/model/x.gguf",  # owners and repositories start with a letter or digit
    "hf://acme/.model/x.gguf",
    "hf://ac$me/model/x.gguf",
    "hf://acme/mo del/x.gguf",
    "hf://acme/model\\x.gguf",
    "hf://" + "a" * 97 + "/model/x.gguf",  # longer than a hub name
], ids=lambda u: u[:40])
def test_an_invalid_hf_reference_is_a_400(service: Service, url: str) -> None:
    _, client, _ = service()
    r = post_download(client, "bad", url)
    assert r.status_code == 400 and r.json["code"] == "invalid-url", r.json
    assert client.get("/models/downloads").json["items"] == []


@pytest.mark.parametrize("url", ["hf://acme/model/x.gguf", "hf://datasets/acme/data/part/x.parquet",
                                 "hf://acme/model/a/b/c.gguf@refs/pr/12"])
def test_a_valid_hf_reference_is_accepted(service: Service, url: str) -> None:
    _, client, watch = service(ARW_HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens: the job fails later
    r = post_download(client, "ok", url)
    assert r.status_code == 202, r.json
    assert watch.terminal("ok")["status"] == "error"
