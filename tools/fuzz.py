"""``make fuzz``: schemathesis against a live service, driven by the service's own
``/openapi.json``.

The service runs in this process under a threaded WSGI server, with an admin
token (sent by the fuzzer, so that ``ignored_auth`` can check that leaving it out
is refused) and a state directory of its own. The downloads the fuzzer starts must
not reach the network: every origin request goes through a proxy that is a local
test origin, which answers 404 to anything it is asked through it (and cannot
tunnel https), so each of those downloads ends at once with an ``error`` event.

Operations that this blueprint does not serve yet (documented for the code being
built alongside) are left out, and so is ``GET /events``, a stream that never ends
by itself. The url of a download request is generated from plain patterns (see
``GENERATED_URL_PATTERNS``): the document's exact ones need lookaheads. Options: ``--max-examples N`` (per operation), ``--seed N``,
``--checks LIST``; anything after ``--`` goes to ``schemathesis run`` as it is.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from werkzeug.serving import make_server

from arw_models import create_app
from arw_models.server.openapi import document
from tests.support.origin import Origin

TOKEN = "fuzz-token"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
# Why each check that is not run is not run.
SKIPPED_CHECKS = {
    # DELETE /models/{model_id} also matches /models/download and /models/downloads
    # (a model may be called "download"), so their Allow headers rightly list
    # DELETE; OpenAPI gives the concrete path precedence, this check does not.
    "allow_header_conformance": "/models/{model_id} overlaps /models/download(s)",
}


# Accepted by the service but not all refused as the document says: the
# negative_data_rejection check would fail on them (it sends a body with a wrong
# type of rate limit and expects a 400). Each is probed, and a body field that the
# service does not check yet is left out of the fuzzed copy of the document.
BODY_FIELDS = {"rate_limit": "no", "headers": "no"}
# The document's url patterns are exact (arw_models/server/urlschema.py), and so use
# lookaheads, which schemathesis cannot generate from: it drops them and sends any
# string as a "valid" url. The fuzzed copy has these instead: plain patterns of urls
# the service accepts (a subset: no IPv6 hosts, userinfo or non-ASCII; \Z, as "$"
# also matches before a final newline, which the service refuses), checked
# against the document's own in tests/test_url_pattern.py.
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_HUB_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
GENERATED_URL_PATTERNS = [
    # No % or backslash in the path: they could hide a dot segment, which the service refuses.
    r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(:" + _PORT + r")?(/[!-$&-\[\]-~]*)?\Z",
    rf"^hf://((datasets|spaces)/)?{_HUB_NAME}/{_HUB_NAME}(/{_SEGMENT})+(@{_SEGMENT})?\Z",
]
# Statuses that refuse input: 408 and 413 (a body too slow or too large) too.
REFUSALS = ["400", "401", "404", "405", "408", "409", "413", "415", "422"]


def unchecked_fields(client: Any) -> list[str]:
    """The fields of a download request whose wrong values the service accepts."""
    found = []
    for name, wrong in BODY_FIELDS.items():
        answer = client.post("/models/download", headers={"Authorization": f"Bearer {TOKEN}"},
                             json={"id": f"probe-{name}", "url": "http://probe.invalid/m", name: wrong})
        if answer.status_code != 400:
            found.append(name)
    return found


def served_paths(app: object) -> set[str]:
    paths = set()
    for rule in app.url_map.iter_rules():  # type: ignore[attr-defined]
        if rule.endpoint.startswith("arw_models."):
            paths.add(re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule))
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    passthrough: list[str] = []
    if "--" in args:
        at = args.index("--")
        args, passthrough = args[:at], args[at + 1:]
    parser = argparse.ArgumentParser(prog="make fuzz")
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--checks", default="all")
    opts = parser.parse_args(args)
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if binary is None:
        sys.stderr.write("schemathesis is not installed: pip install -e '.[fuzz]'\n")
        return 2

    # Failures are what matters here: the request log and the downloads' warnings
    # (every one of them fails by design) would bury them.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("arw_models").setLevel(logging.ERROR)
    clean_env = {k: v for k, v in os.environ.items() if k.upper() not in PROXY_VARS}
    origin = Origin()
    with tempfile.TemporaryDirectory(prefix="arw-fuzz-") as tmp:
        for name in ("HTTP_PROXY", "HTTPS_PROXY"):
            os.environ[name] = os.environ[name.lower()] = origin.base
        os.environ["NO_PROXY"] = os.environ["no_proxy"] = ""
        app = create_app({
            "ARW_STATE_DIR": os.path.join(tmp, "state"), "ARW_ADMIN_TOKEN": TOKEN, "ARW_DL_RETRIES": 0,
            "ARW_DL_CONNECT_TIMEOUT_SECS": 2, "ARW_DL_IDLE_TIMEOUT_SECS": 2, "ARW_MODELS_DISK_RESERVE_MB": 0,
            "ARW_DL_RESUME_ON_START": False,
        })
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fuzz-server")
        thread.start()
        try:
            base = f"http://127.0.0.1:{server.server_port}"
            served = served_paths(app)
            left_out = sorted(p for p in document()["paths"] if p not in served) + ["/events"]
            print(f"fuzzing {base}; left out: {', '.join(left_out)}", flush=True)
            checks = opts.checks
            if checks == "all":
                skipped = ",".join(SKIPPED_CHECKS)
                for name, why in SKIPPED_CHECKS.items():
                    print(f"not checked: {name} ({why})", flush=True)
            doc = app.test_client().get("/openapi.json").json
            unchecked = unchecked_fields(app.test_client())
            if unchecked:
                print(f"left out of the download request: {', '.join(unchecked)} (not checked by this service yet)",
                      flush=True)
                for name in unchecked:
                    del doc["components"]["schemas"]["DownloadRequest"]["properties"][name]
            url = doc["components"]["schemas"]["DownloadRequest"]["properties"]["url"]
            url["anyOf"] = [{"pattern": pattern} for pattern in GENERATED_URL_PATTERNS]
            schema_path = os.path.join(tmp, "openapi.json")
            with open(schema_path, "w") as fh:
                json.dump(doc, fh)
            config_path = os.path.join(tmp, "schemathesis.toml")
            with open(config_path, "w") as fh:
                fh.write(f"[checks.negative_data_rejection]\nexpected-statuses = {json.dumps(REFUSALS)}\n")
            command = [binary, "--config-file", config_path, "run", schema_path, "--url", base, "--checks", checks,
                       "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", str(opts.max_examples),
                       "--seed", str(opts.seed), "--generation-database", "none", "--request-timeout", "10",
                       "--workers", "2", "--no-color", "--generation-with-security-parameters", "false"]
            if opts.checks == "all":
                command += ["--exclude-checks", skipped]
            for path in left_out:
                command += ["--exclude-path", path]
            # In the temporary directory: schemathesis leaves a cache where it runs.
            return subprocess.call([*command, *passthrough], env=clean_env, cwd=tmp)
        finally:
            app.extensions["arw_models"].shutdown()
            server.shutdown()
            server.server_close()
            thread.join(5)
            origin.close()


if __name__ == "__main__":
    sys.exit(main())
