"""GET /openapi.json: a valid OpenAPI 3.1 document of every route, every problem
code docs/api.rst lists, served where the blueprint is mounted; real answers of the
service match the schemas it promises."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from arw_models import ArwModels
from arw_models.errors import EVENT_ERROR_CODES
from arw_models.server.openapi import INTERNAL_ERROR, document, problem_codes
from arw_models.server.problems import PROBLEM_CODES

from .support.app import Watch
from .support.origin import Origin, payload

DOCS = Path(__file__).resolve().parent.parent / "docs"
# Described before their routes exist in this blueprint: they are built alongside.
ANNOUNCED = {("/", "get"), ("/models/download/pause", "post"), ("/models/download/resume", "post"),
             ("/settings/rate-limit", "put")}
KEBAB = re.compile(r"``([a-z][a-z0-9]*(?:-[a-z0-9]+)+)``")


def routes(app: Flask, prefix: str = "") -> set[tuple[str, str]]:
    """(path as OpenAPI writes it, method) for every rule of the blueprint."""
    found = set()
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("arw_models."):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert path.startswith(prefix)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            found.add((path[len(prefix):] or "/", method.lower()))
    return found


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item}


def documented_codes(page: str, start: str, end: str, pattern: re.Pattern[str] = KEBAB) -> set[str]:
    """The codes a page of docs/ lists between ``start`` and ``end``."""
    text = (DOCS / page).read_text()
    begin = text.index(start)
    return set(pattern.findall(text[begin:text.index(end, begin)]))


def test_the_document_is_valid_openapi_3_1(client: Any) -> None:
    answer = client.get("/openapi.json")
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    doc = answer.json
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema, unresolved $refs included


def test_every_route_of_the_blueprint_is_documented_with_its_methods(app: Any) -> None:
    doc = document()
    served = routes(app)
    assert ("/models/download", "post") in served  # the walk finds the blueprint's routes
    assert served <= operations(doc), f"undocumented: {sorted(served - operations(doc))}"
    # And nothing is documented that neither exists nor is announced.
    assert operations(doc) - served <= ANNOUNCED, sorted(operations(doc) - served - ANNOUNCED)


def test_token_is_required_exactly_where_the_document_says(make_app: Any) -> None:
    app = make_app(ARW_ADMIN_TOKEN="s3cret")
    client = app.test_client()
    doc = document()
    for path, method in routes(app):
        secured = "security" in doc["paths"][path][method]
        url = path.replace("{model_id}", "m")
        answer = client.open(url, method=method.upper(), json={"id": "m"})
        assert (answer.status_code == 401) == secured, (method, path, answer.status_code)


def test_problem_codes_are_the_documented_ones(client: Any) -> None:
    listed = documented_codes("api.rst", "Errors are RFC 9457 problem documents", "\nInput:")
    assert "invalid-id" in listed and "too-many-streams" in listed  # the page's list is found
    assert listed == set(PROBLEM_CODES), (sorted(listed - set(PROBLEM_CODES)), sorted(set(PROBLEM_CODES) - listed))
    served = client.get("/openapi.json").json
    assert problem_codes(served) == {*PROBLEM_CODES, INTERNAL_ERROR}
    # An open set: a client generated today must not break on a code added tomorrow.
    code = served["components"]["schemas"]["Problem"]["properties"]["code"]
    assert "enum" not in code and code["type"] == "string"
    assert all(name in code["description"] for name in PROBLEM_CODES)


def test_every_problem_answer_is_the_one_problem_schema() -> None:
    # By reference and nothing else: a generated client then parses every 4xx and 5xx
    # into one typed object (openapi-python-client drops a response it cannot merge).
    for path, item in document()["paths"].items():
        for method, op in item.items():
            assert "500" in op["responses"], (method, path)
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    assert response["content"] == {"application/problem+json": {
                        "schema": {"$ref": "#/components/schemas/Problem"}}}, (method, path, status)
                    assert response["x-problem-codes"], (method, path, status)


def test_event_error_codes_are_the_documented_ones() -> None:
    listed = documented_codes("design.rst", "values in events", "\n\n", re.compile(r"``([a-z][a-z0-9-]*)``"))
    assert listed - {"http", "https"} == set(EVENT_ERROR_CODES)  # less the schemes a redirect may not leave


@pytest.mark.parametrize(("prefix", "script_root", "server"), [
    (None, "", "/"), ("/ai", "", "/ai"), ("/ai/", "/host", "/host/ai")])
def test_served_with_the_path_where_the_blueprint_is_mounted(tmp_path: Path, prefix: str | None,
                                                             script_root: str, server: str) -> None:
    host = Flask("host")
    host.config.update(ARW_STATE_DIR=str(tmp_path / "state"))
    ArwModels(host, url_prefix=prefix)
    try:
        here = (prefix or "").rstrip("/") + "/openapi.json"
        client = host.test_client()
        answer = client.get(here, base_url="http://localhost" + script_root)
        assert answer.status_code == 200
        assert answer.json["servers"][0]["url"] == server
        # Every documented route that the blueprint has is there under the server url.
        assert routes(host, (prefix or "").rstrip("/")) <= operations(answer.json)
        assert client.get((prefix or "").rstrip("/") + "/healthz", base_url="http://localhost" + script_root).json
    finally:
        host.extensions["arw_models"].shutdown()


class Contract:
    """Validates a real answer against the schema the document gives for it."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def check(self, path: str, method: str, answer: Any) -> None:
        responses = self.doc["paths"][path][method]["responses"]
        assert str(answer.status_code) in responses, (path, method, answer.status_code, answer.get_data())
        response = responses[str(answer.status_code)]
        assert answer.mimetype in response["content"], (answer.mimetype, list(response["content"]))
        for name, header in response.get("headers", {}).items():
            assert not header.get("required") or name in answer.headers, name
        if answer.mimetype.endswith("json"):
            # The components sit beside the schema, where its "#/components/..." refs point.
            schema = {**response["content"][answer.mimetype]["schema"], "components": self.doc["components"]}
            Draft202012Validator(schema).validate(answer.json)
        if answer.mimetype == "application/problem+json":
            # code is an open set in the schema; what this operation may answer is listed.
            assert answer.json["code"] in response["x-problem-codes"], (path, method, answer.json)


def test_real_answers_match_the_document(make_app: Any, origin: Origin) -> None:
    app = make_app(ARW_ADMIN_TOKEN="t")
    client, auth = app.test_client(), {"Authorization": "Bearer t"}
    contract = Contract(client.get("/openapi.json").json)
    good = origin.add("/m.gguf", payload(50_000, seed=3))
    watch = Watch(app)
    try:
        body = {"id": "m", "url": origin.url("/m.gguf"), "sha256": good.sha256}
        contract.check("/models/download", "post", client.post("/models/download", json=body))  # 401
        started = client.post("/models/download", json=body, headers=auth)
        assert started.status_code == 202
        contract.check("/models/download", "post", started)
        assert watch.terminal("m")["status"] == "complete"
        contract.check("/models/download", "post", client.post("/models/download", json=body, headers=auth))  # 200
        contract.check("/models/downloads/{model_id}", "get", client.get("/models/downloads/m"))
        contract.check("/models/downloads", "get", client.get("/models/downloads"))
        contract.check("/models", "get", client.get("/models"))
        contract.check("/probe", "get", client.get("/probe"))
        contract.check("/healthz", "get", client.get("/healthz"))
        contract.check("/metrics", "get", client.get("/metrics"))
        for bad in ({"id": "../x", "url": body["url"]}, {"id": "x", "url": "ftp://h/f"},
                    {"id": "x", "url": body["url"], "sha256": "12"}, {"id": "x", "url": body["url"], "provider": ""}):
            contract.check("/models/download", "post", client.post("/models/download", json=bad, headers=auth))
        contract.check("/models/download", "post", client.post("/models/download", data="{", headers=auth,
                                                               content_type="application/json"))
        contract.check("/models/download", "post", client.post("/models/download", data="x", headers=auth))
        contract.check("/models/download/cancel", "post",
                       client.post("/models/download/cancel", json={"id": "none"}, headers=auth))
        contract.check("/models/downloads/{model_id}", "get", client.get("/models/downloads/none"))
        contract.check("/models/{model_id}", "delete", client.delete("/models/none", headers=auth))
        contract.check("/models/{model_id}", "delete", client.delete("/models/m", headers=auth))
        contract.check("/events", "get", client.get("/events?after=x", headers=auth))
    finally:
        watch.close()
