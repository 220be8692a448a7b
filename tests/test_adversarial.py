"""Inputs and settings chosen to break the gated-origin, hub and mirror paths: each
must end in a clean answer (a 4xx, a job error with a stable code) and show no
secret anywhere."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .support.app import Service, post_download
from .support.helpers import write_partial
from .support.origin import Origin, payload

SECRET = "adv-S3cr3t-91f0"


@pytest.mark.parametrize("value", [f"{SECRET}\u20ac", f"\u4e2d{SECRET}"],
                         ids=["euro", "cjk"])
def test_a_header_value_http_cannot_send_is_a_400(service: Service, origin: Origin, value: str) -> None:
    # Field values go out as latin-1: anything beyond it used to fail the job inside
    # the worker (internal-error, a traceback in the log) instead of the POST.
    origin.add("/a.bin", payload(10_000, seed=1))
    _app, client, _watch = service()
    r = post_download(client, "a", origin.url("/a.bin"), headers={"X-Token": value})
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.get_json()["code"] == "invalid-headers"
    assert SECRET not in r.get_data(as_text=True)
    assert client.get("/models/downloads").get_json()["items"] == []


def test_a_latin1_header_value_is_sent(service: Service, origin: Origin) -> None:
    res = origin.add("/a.bin", payload(10_000, seed=2))
    _app, client, watch = service()
    r = post_download(client, "a", origin.url("/a.bin"), headers={"X-Token": "caf\u00e9"}, sha256=res.sha256)
    assert r.status_code == 202
    assert watch.terminal("a")["status"] == "complete"


def test_probe_hides_the_hub_endpoints_userinfo(service: Service) -> None:
    _app, client, _watch = service(ARW_HF_ENDPOINT=f"https://alice:{SECRET}@hub.example:8443")
    body: dict[str, Any] = client.get("/probe").get_json()
    assert SECRET not in str(body)
    assert body["settings"]["hf_endpoint"] == "https://***@hub.example:8443"


@pytest.mark.parametrize("path", ["hf://owner/repo/\ud800.gguf", "hf://owner/repo/m.gguf@\udfff",
                                  "http://127.0.0.1:1/\ud800.gguf"], ids=["hf-path", "hf-revision", "http"])
def test_a_url_with_a_lone_surrogate_is_a_400(service: Service, path: str) -> None:
    # JSON may carry "\ud800", which no url can encode: it used to start a job that
    # never ended (its transfer could not even be set up).
    _app, client, _watch = service(ARW_HF_ENDPOINT="http://127.0.0.1:1")
    r = client.post("/models/download", data=json.dumps({"id": "s", "url": path}), content_type="application/json")
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.get_json()["code"] == "invalid-url"
    assert client.get("/models/downloads").get_json()["items"] == []


def test_a_download_that_cannot_be_set_up_ends_with_an_error(service: Service) -> None:
    # A sidecar from disk is not checked like a POST: whatever it holds, the job ends
    # (and lets its slot go) rather than staying "started" forever.
    app, client, watch = service(ARW_HF_ENDPOINT="http://127.0.0.1:1", ARW_MODELS_MAX_CONC=1)
    write_partial(app, "s", b"x" * 100, {"id": "s", "url": "hf://owner/repo/\ud800.gguf", "total": 1000})
    r = client.post("/models/download/resume", json={"id": "s"})
    assert r.status_code == 202, r.get_data(as_text=True)
    end = watch.terminal("s")
    assert (end["status"], end["code"]) == ("error", "internal-error"), end
