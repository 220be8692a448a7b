"""The token service of the test registry, as Docker Hub's works: ``GET /token?
service=…&scope=repository:NAME:ACTIONS``, anonymous or with HTTP Basic, answers a
JWT signed (RS256, by the openssl command: no Python dependency) with a key whose
self-signed certificate the registry trusts (its ``rootcertbundle``). The
certificate rides in the JWT's ``x5c`` header, the form distribution verifies
against its roots (registry/auth/token/token.go: the leaf of the chain must verify
against the bundle). Anonymous callers may pull every repository but
``private/…``; ``reader`` may pull all; ``pusher`` may push too."""

from __future__ import annotations

import base64
import http.server
import json
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

SERVICE = "arw-test-registry"
ISSUER = "arw-test-issuer"
USERS = {"reader": "reader-secret", "pusher": "pusher-secret"}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """The token service of the ``token`` registry, on 127.0.0.1."""

    def __init__(self, base: Path, openssl: str = "openssl") -> None:
        self.key = base / "token.key"
        self.cert = base / "token.crt"
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "2", "-subj", "/CN=arw-test-token-issuer"],
                       check=True, capture_output=True, timeout=60)
        der = subprocess.run([openssl, "x509", "-in", str(self.cert), "-outform", "DER"], check=True,
                             capture_output=True, timeout=30).stdout
        self.x5c = base64.b64encode(der).decode()
        self.openssl = openssl
        self.expires_in = 300
        self.lock = threading.Lock()
        self.asked: list[dict[str, Any]] = []  # each request: its query and whether it carried credentials
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner._answer(self)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-token-server")
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def realm(self) -> str:
        return f"http://{self.host}/token"

    def requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.asked)

    def grant(self, user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            allowed = {"pull", "push"} if user == "pusher" else {"pull"}
            if user is None and name.startswith("private/"):
                allowed = set()
            given = sorted(allowed & set(actions.split(",")))
            if given:
                access.append({"type": "repository", "name": name, "actions": given})
        return access

    def token(self, user: str | None, scopes: list[str]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": ISSUER, "sub": user or "", "aud": SERVICE, "exp": now + self.expires_in, "nbf": now - 5,
                  "iat": now, "jti": secrets.token_hex(8), "access": self.grant(user, scopes)}
        signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run([self.openssl, "dgst", "-sha256", "-sign", str(self.key)], input=signing.encode(),
                                   check=True, capture_output=True, timeout=30).stdout
        return f"{signing}.{_b64url(signature)}"

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(handler.path).query)
        given = handler.headers.get("Authorization")
        with self.lock:
            self.asked.append({"query": query, "credentials": given is not None})
        user = None
        if given is not None:
            user = next((u for u, p in USERS.items() if given == basic(u, p)), None)
            if user is None:
                return self._send(handler, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
        if query.get("service") != [SERVICE]:
            return self._send(handler, 400, {"errors": [{"code": "DENIED", "message": "unknown service"}]})
        token = self.token(user, query.get("scope", []))
        self._send(handler, 200, {"token": token, "expires_in": self.expires_in})

    @staticmethod
    def _send(handler: http.server.BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
