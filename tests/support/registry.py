"""Real OCI registries for tests: Debian's ``docker-registry`` (the CNCF
distribution registry) on loopback ports, with models pushed over its HTTP API.

* :class:`tests.support.tokens.TokenServer` is the token service (JWTs with an
  ``x5c`` the registry trusts); anonymous callers may pull all but ``private/…``.
* The ``token`` registry asks for those tokens (``auth: token``) and, by its
  ``redirect`` storage middleware, answers every blob GET with a 307 to its
  storage's path on a "CDN" at 127.0.0.2 (:class:`tests.support.hub.Server`, which
  records each request's headers): a different host, which must never see a token.
* The ``basic`` registry asks for HTTP Basic (``auth: htpasswd``, a bcrypt hash).

Both run once per test session (:func:`start`); :meth:`Registries.close` ends them.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .hub import Server
from .servers import free_port
from .tokens import ISSUER, SERVICE, USERS, TokenServer, basic

OLLAMA = "application/vnd.ollama.image."
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"


class Registry:
    """One ``docker-registry serve`` with its config, storage and log under ``base``."""

    def __init__(self, binary: str, base: Path, auth: str, middleware: str = "") -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.root = base / "storage"
        self.root.mkdir(parents=True)
        self.log_path = base / "registry.log"
        config = base / "config.yml"
        config.write_text(f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {self.root}
  delete:
    enabled: true
http:
  addr: {self.host}
  secret: {secrets.token_hex(16)}
auth:
{auth}
{middleware}
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([binary, "serve", str(config)], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        """A bounded connect-retry on ``/v2/`` (any answer: 200 or a 401 challenge)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"docker-registry exited with {self.proc.returncode}:\n{self.output()}")
            try:
                requests.get(f"http://{self.host}/v2/", timeout=2).close()
                return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"docker-registry did not answer within {timeout}s:\n{self.output()}")
            try:
                self.proc.wait(0.05)  # the pause between two connects also notices an exit
            except subprocess.TimeoutExpired:
                pass

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


@dataclass
class Pushed:
    """A manifest pushed: its repository, tag, digest and bytes, and its blobs'
    bytes by digest."""

    repository: str
    tag: str
    digest: str
    manifest: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)


class Pusher:
    """Pushes blobs and manifests over the registry's API, with ``authorization``
    (a callable giving the header for a repository's push scope)."""

    def __init__(self, registry: Registry, authorization: Any, cdn: Server | None = None) -> None:
        self.registry = registry
        self.authorization = authorization
        self.cdn = cdn
        self.session = requests.Session()

    def _headers(self, repository: str) -> dict[str, str]:
        return {"Authorization": self.authorization(repository)}

    def blob(self, repository: str, data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        base = f"http://{self.registry.host}"
        started = self.session.post(f"{base}/v2/{repository}/blobs/uploads/", headers=self._headers(repository),
                                    timeout=10)
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        location = location if location.startswith("http") else base + location
        done = self.session.put(location + ("&" if "?" in location else "?") + f"digest={digest}", data=data,
                                headers={**self._headers(repository), "Content-Type": "application/octet-stream"},
                                timeout=10)
        assert done.status_code == 201, done.text
        if self.cdn is not None:  # where the redirect middleware sends a blob GET
            hexa = digest[len("sha256:"):]
            self.cdn.add(f"/docker/registry/v2/blobs/sha256/{hexa[:2]}/{hexa}/data", data)
        return {"digest": digest, "size": len(data)}

    def manifest(self, repository: str, tag: str, document: dict[str, Any],
                 blobs: dict[str, bytes] | None = None) -> Pushed:
        body = json.dumps(document, indent=2).encode()
        answer = self.session.put(f"http://{self.registry.host}/v2/{repository}/manifests/{tag}", data=body,
                                  headers={**self._headers(repository), "Content-Type": document["mediaType"]},
                                  timeout=10)
        assert answer.status_code == 201, answer.text
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        assert answer.headers.get("Docker-Content-Digest") == digest
        return Pushed(repository, tag, digest, body, dict(blobs or {}))

    def ollama_model(self, repository: str, tag: str, seed: bytes) -> Pushed:
        """An ollama-shaped model: model, projector, template, system, params and two
        licenses, as ollama's media types, and an ollama-style config."""
        parts = [
            ("model", b"GGUF" + hashlib.sha256(seed).digest() * 2048),  # 64 KiB and a little
            ("projector", b"GGUF" + hashlib.sha256(seed + b"p").digest() * 64),
            ("template", b"{{ .System }}\n{{ .Prompt }}"),
            ("system", b"You are a test."),
            ("params", json.dumps({"stop": ["<|end|>"], "temperature": 0.2}).encode()),
            ("license", b"MIT License, for the test"),
            ("license", b"Apache License 2.0, for the test"),
        ]
        blobs: dict[str, bytes] = {}
        layers = []
        for kind, data in parts:
            desc = self.blob(repository, data)
            blobs[desc["digest"]] = data
            layers.append({"mediaType": OLLAMA + kind, **desc})
        config = json.dumps({"model_format": "gguf", "model_family": "test", "file_type": "Q4_K_M",
                             "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
        cdesc = self.blob(repository, config.encode())
        blobs[cdesc["digest"]] = config.encode()
        document = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                    "config": {"mediaType": DOCKER_CONFIG, **cdesc}, "layers": layers}
        return self.manifest(repository, tag, document, blobs)

    def oras_artifact(self, repository: str, tag: str, titled: dict[str, bytes],
                      untitled: tuple[tuple[str, bytes], ...] = (),
                      artifact_type: str = "application/vnd.arw.test.model") -> Pushed:
        """An artifact as ``oras push`` makes one: an OCI manifest with an
        ``artifactType``, the empty config, and layers titled with their file names
        (``untitled``: (media type, bytes) layers without a title)."""
        blobs: dict[str, bytes] = {}
        layers = []
        for title, data in titled.items():
            desc = self.blob(repository, data)
            blobs[desc["digest"]] = data
            layers.append({"mediaType": "application/vnd.arw.test.file", **desc,
                           "annotations": {"org.opencontainers.image.title": title}})
        for media_type, data in untitled:
            desc = self.blob(repository, data)
            blobs[desc["digest"]] = data
            layers.append({"mediaType": media_type, **desc})
        empty = self.blob(repository, b"{}")
        document: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                    **({"artifactType": artifact_type} if artifact_type else {}),
                                    "config": {"mediaType": OCI_EMPTY, **empty}, "layers": layers}
        return self.manifest(repository, tag, document, blobs)

    def index(self, repository: str, tag: str, entries: list[tuple[Pushed, dict[str, Any]]]) -> Pushed:
        """An OCI index of manifests already pushed to ``repository``, each with
        more descriptor fields (``platform``, ``artifactType``, ``annotations``)."""
        manifests = [{"mediaType": json.loads(p.manifest)["mediaType"], "digest": p.digest,
                      "size": len(p.manifest), **extra} for p, extra in entries]
        return self.manifest(repository, tag, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})

    def close(self) -> None:
        self.session.close()


def _htpasswd(base: Path) -> Path:
    """An htpasswd file of the test users' bcrypt hashes (the only kind distribution reads), at
    the lowest cost: the registry checks the hash on every request."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt through libcrypt; deprecated, present through Python 3.12

        lines = [f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}"
                 for user, password in USERS.items()]
    path = base / "htpasswd"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Registries:
    token_server: TokenServer
    cdn: Server
    token: Registry
    basic: Registry
    pushed: dict[str, Pushed] = field(default_factory=dict)

    def close(self) -> None:
        for closing in (self.token.close, self.basic.close, self.token_server.close, self.cdn.close):
            closing()


def start(binary: str, base: Path) -> Registries:
    """Both registries, their token service and CDN, with the test models pushed."""
    made: list[Any] = []
    try:
        token_server = TokenServer(base)
        made.append(token_server)
        cdn = Server("127.0.0.2")
        made.append(cdn)
        cdn_base = cdn.base
        (base / "token").mkdir()
        token = Registry(binary, base / "token", f"""  token:
    realm: {token_server.realm}
    service: {SERVICE}
    issuer: {ISSUER}
    rootcertbundle: {token_server.cert}""", f"""middleware:
  storage:
    - name: redirect
      options:
        baseurl: {cdn_base}""")
        made.append(token)
        (base / "basic").mkdir()
        plain = Registry(binary, base / "basic", f"""  htpasswd:
    realm: arw-test-basic
    path: {_htpasswd(base / "basic")}""")
        made.append(plain)
    except BaseException:
        for thing in reversed(made):
            thing.close()
        raise
    regs = Registries(token_server, cdn, token, plain)
    try:
        _push_all(regs)
    except BaseException:
        regs.close()
        raise
    return regs


def _push_all(regs: Registries) -> None:
    tokens: dict[str, str] = {}

    def bearer(repository: str) -> str:
        if repository not in tokens:
            tokens[repository] = regs.token_server.token("pusher", [f"repository:{repository}:pull,push"])
        return "Bearer " + tokens[repository]

    pusher = Pusher(regs.token, bearer, regs.cdn)
    basic_pusher = Pusher(regs.basic, lambda _repo: basic("pusher", USERS["pusher"]))
    try:
        pushed = regs.pushed
        pushed["tiny"] = pusher.ollama_model("library/tiny", "latest", b"tiny")
        pushed["secret"] = pusher.ollama_model("private/secret", "v1", b"secret")
        pushed["oras"] = pusher.oras_artifact(
            "team/artifact", "v1", {"model.safetensors": b"\x00" * 4096 + b"weights", "tokenizer.json": b"{}\n",
                                    "nested/readme.md": b"# test\n"},
            untitled=(("application/vnd.example.unknown", b"who knows"),))
        one = pusher.oras_artifact("team/indexed", "model-a", {"a.bin": b"model a"})
        two = pusher.oras_artifact("team/indexed", "model-b", {"b.bin": b"model b"})
        attestation = pusher.oras_artifact("team/indexed", "att", {"att.json": b"{}"}, artifact_type="")
        pushed["index-one"] = pusher.index("team/indexed", "one", [
            (one, {"artifactType": "application/vnd.arw.test.model"}),
            (attestation, {"platform": {"os": "unknown", "architecture": "unknown"},
                           "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}),
        ])
        pushed["index-one-model"] = one
        pushed["index-two"] = pusher.index("team/indexed", "two", [
            (one, {"artifactType": "application/vnd.arw.test.model"}),
            (two, {"artifactType": "application/vnd.arw.test.model"}),
        ])
        pushed["basic"] = basic_pusher.ollama_model("library/tiny", "latest", b"basic")
    finally:
        pusher.close()
        basic_pusher.close()
