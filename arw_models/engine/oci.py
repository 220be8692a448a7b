"""A model in an OCI registry (``oci://``) or in ollama's (``ollama://``), resolved
to its files.

A registry keeps a model as ``ollama pull`` and ``oras`` see it: a manifest (found by
tag or digest) that lists blobs by digest, each with a media type. Ollama's layers
say what they are (``application/vnd.ollama.image.model``, ``.projector``,
``.template``...); a generic artifact's carry their file name in the annotation
``org.opencontainers.image.title``. :func:`resolve` asks for the manifest (through
an index, if the tag names one), checks it, and lists each blob as a
:class:`~.fileset.RemoteFile` at ``/v2/<repository>/blobs/sha256:<hex>``, pinned by
its digest, under a readable name; the manifest itself goes with the model as
``manifest.json``. :func:`authorizer` gives the headers a blob request needs (the
registry's token, to its own host only: a blob answer may redirect to a storage
host, which gets nothing).

References:

* ``ollama://NAME[:TAG]``: ``registry.ollama.ai``, ``library/NAME``, tag ``latest``;
  ``ollama://NAMESPACE/NAME[:TAG]``; ``ollama://HOST/NAMESPACE/NAME[:TAG]`` (a first
  segment with a dot or a colon, or ``localhost``, is a host).
* ``oci://HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST]``, the repository of one or
  more segments, the tag ``latest`` when neither is given.

Plain http is used only for the hosts listed in ``ARW_REGISTRY_INSECURE``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
import urllib3.exceptions

from ..errors import TransferError
from .fileset import Authorize, FileSet, RemoteFile, safe_path
from .registry_auth import RegistryAuth, request_error, scheme_of, status_error
from .sources import InvalidReference

OLLAMA_SCHEME = "ollama://"
OCI_SCHEME = "oci://"
OLLAMA_HOST = "registry.ollama.ai"
DEFAULT_TAG = "latest"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_LIST}"
INDEXES = (OCI_INDEX, DOCKER_LIST)
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
TITLE = "org.opencontainers.image.title"
OLLAMA_LAYER = "application/vnd.ollama.image."

#: Ollama's layer kinds and the names they get in the model's folder.
OLLAMA_NAMES = {
    "model": "model.gguf", "projector": "projector.gguf", "adapter": "adapter.gguf",
    "template": "template.txt", "system": "system.txt", "params": "params.json",
    "license": "license.txt", "messages": "messages.json",
}

# The distribution spec's grammar.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ANY_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{{1,5}}))?")


@dataclass(frozen=True)
class OciRef:
    """A model in a registry: ``host`` (with its port, if any), ``repository``, and
    the ``tag`` or the ``digest`` (``sha256:<hex>``) of its manifest."""

    host: str
    repository: str
    tag: str | None
    digest: str | None
    provider: str = "oci"  # "ollama" for an ollama:// reference

    @property
    def reference(self) -> str:
        """What the manifest is asked for by: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        scheme = OLLAMA_SCHEME if self.provider == "ollama" else OCI_SCHEME
        return (f"{scheme}{self.host}/{self.repository}" + (f":{self.tag}" if self.tag else "")
                + (f"@{self.digest}" if self.digest else ""))


def names_registry(url: str) -> bool:
    """Whether ``url`` is a registry reference (``ollama://`` or ``oci://``)."""
    return isinstance(url, str) and url.startswith((OLLAMA_SCHEME, OCI_SCHEME))


def valid_host(host: str) -> bool:
    """``HOST[:PORT]`` as a registry's address may be written (a port 1 to 65535)."""
    match = _HOST.fullmatch(host)
    return bool(match) and (match.group("port") is None or 0 < int(match.group("port")) <= 65535)


def parse(url: str) -> OciRef:
    """Reads an ``ollama://`` or ``oci://`` reference (see the module's docstring);
    raises :class:`~.sources.InvalidReference` saying what is wrong."""
    if not names_registry(url):
        raise InvalidReference("not an ollama:// or oci:// reference")
    provider = "ollama" if url.startswith(OLLAMA_SCHEME) else "oci"
    rest = url[len(OLLAMA_SCHEME if provider == "ollama" else OCI_SCHEME):]
    form = ("ollama://[HOST/][NAMESPACE/]NAME[:TAG]" if provider == "ollama"
            else "oci://HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST]")
    if any(c in rest for c in "?#\\ ") or any(ord(c) < 0x20 for c in rest):
        raise InvalidReference(f"a registry reference has no query, fragment, space or backslash ({form})")
    name, _, digest = rest.partition("@")
    if "@" in rest and not _DIGEST.fullmatch(digest):
        why = ("that is not a sha256 digest" if digest.startswith("sha256:") else
               "only sha256 digests are accepted" if _ANY_DIGEST.fullmatch(digest) else "that is not a digest")
        raise InvalidReference(f"{digest[:80]!r} after @: {why} (sha256: and 64 lowercase hex digits)")
    segments = name.split("/")
    host = None
    if provider == "oci" or (len(segments) > 1 and (any(c in segments[0] for c in ".:")
                                                    or segments[0] == "localhost")):
        host = segments.pop(0)
        if not host or not valid_host(host):
            raise InvalidReference(f"{host!r} is not a registry host[:port] ({form})")
    tag = None
    if segments and ":" in segments[-1]:
        segments[-1], _, tag = segments[-1].partition(":")
        if not _TAG.fullmatch(tag):
            raise InvalidReference(f"{tag!r} is not a tag (letters, digits, _ . -, at most 128, not starting "
                                   "with . or -)")
    if provider == "ollama" and len(segments) == 1:
        segments.insert(0, "library")  # ollama's own models, as `ollama pull NAME` finds them
    repository = "/".join(segments)
    if not segments or not repository or not _REPOSITORY.fullmatch(repository):
        raise InvalidReference(f"{repository!r} is not a repository name: lowercase letters and digits, "
                               f"separated by '.', '_', '__' or '-', in '/'-separated parts ({form})")
    if len(repository) > 255:
        raise InvalidReference("the repository name is longer than 255 characters")
    if tag is None and not digest:
        tag = DEFAULT_TAG
    return OciRef(host or OLLAMA_HOST, repository, tag, digest or None, provider)


def blob_url(ref: OciRef, insecure: tuple[str, ...], digest: str) -> str:
    return f"{scheme_of(ref.host, insecure)}://{ref.host}/v2/{ref.repository}/blobs/{digest}"


def _auth(ref: OciRef, session: requests.Session, insecure: tuple[str, ...], credentials: str | None,
          timeouts: tuple[float, float]) -> RegistryAuth:
    return RegistryAuth(ref.host, ref.repository, session, insecure, credentials, timeouts,
                        f"{ref.host}/{ref.repository}:{ref.reference}")


def resolve(ref: OciRef, session: requests.Session, insecure: tuple[str, ...] = (), credentials: str | None = None,
            connect_timeout: float = 10.0, read_timeout: float = 30.0) -> FileSet:
    """The files of the model ``ref`` names, pinned to its manifest's digest (the
    ``revision``). ``credentials``: the ``Authorization`` value meant for the
    registry (``Basic …`` or ``Bearer …``; see :mod:`.registry_auth`), or None."""
    auth = _auth(ref, session, insecure, credentials, (connect_timeout, read_timeout))
    label = auth.label
    body, document, media_type, digest = _manifest(auth, ref, ref.reference, label)
    if ref.digest and digest != ref.digest:
        raise TransferError("checksum-mismatch", f"{label}: the registry's manifest has digest {digest}, "
                            f"not the {ref.digest} the reference pins", expected=ref.digest, actual=digest)
    inline: dict[str, bytes] = {}
    if media_type in INDEXES:
        entry = select(document, label)
        inline["index.json"] = body
        body, document, media_type, digest = _manifest(auth, ref, entry["digest"], label)
        if digest != entry["digest"]:
            raise TransferError("checksum-mismatch", f"{label}: the manifest the index names as {entry['digest']} "
                                f"has digest {digest}", expected=entry["digest"], actual=digest)
        if media_type in INDEXES:
            raise TransferError("invalid-manifest", f"{label}: the index names another index, not a model")
    inline["manifest.json"] = body
    files = layer_files(document, ref, insecure, label, set(inline))
    return FileSet(reference=str(ref), provider=ref.provider, revision=digest, files=tuple(files), inline=inline)


def authorizer(ref: OciRef, session: requests.Session, insecure: tuple[str, ...] = (),
               credentials: str | None = None, connect_timeout: float = 10.0,
               read_timeout: float = 30.0) -> Authorize:
    """The headers for a request of one of the model's blobs: the registry's
    ``Authorization`` (its token, kept until it is about to expire; asked again
    when ``fresh`` is True, after a 401), for the registry's own host alone. A
    url on any other host gets nothing. ``session`` carries the authorizer's own
    requests (the registry's ``/v2/`` check, the token service), one at a time:
    give it a session of its own, not one a download thread reads from."""
    auth = _auth(ref, session, insecure, credentials, (connect_timeout, read_timeout))
    own = f"{scheme_of(ref.host, insecure)}://{ref.host}/".lower()

    def authorize(file: RemoteFile, fresh: bool) -> Mapping[str, str]:
        if not file.url.lower().startswith(own):
            return {}
        auth.ping()
        return auth.headers(fresh)

    return authorize


def _manifest(auth: RegistryAuth, ref: OciRef, reference: str,
              label: str) -> tuple[bytes, dict[str, Any], str, str]:
    """The manifest ``reference`` names: its bytes as served, its document, its
    media type and its digest (``sha256:`` of those bytes)."""
    url = f"{auth.base}/v2/{ref.repository}/manifests/{reference}"
    response = auth.get(url, f"{label}: the manifest", headers={"Accept": ACCEPT})
    with response:
        status = response.status_code
        if status != 200:
            raise _refusal(response, label, auth)
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > MAX_MANIFEST_BYTES:
            raise _too_large(label)
        try:
            body = response.raw.read(MAX_MANIFEST_BYTES + 1, decode_content=True)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise request_error(exc, f"{label}: the manifest") from None
    if len(body) > MAX_MANIFEST_BYTES:
        raise _too_large(label)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    served = response.headers.get("Docker-Content-Digest", "")
    if served.startswith("sha256:") and served != digest:
        raise TransferError("checksum-mismatch", f"{label}: the registry says the manifest is {served}, its "
                            f"bytes are {digest}", expected=served, actual=digest)
    document = _json(body, label)
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared:
        media_type = declared  # the document's own word wins over a generic Content-Type
    if media_type not in INDEXES + MANIFESTS:
        raise TransferError("invalid-manifest", f"{label}: the registry answered a {media_type or 'untyped'} "
                            "document, not an OCI or Docker v2 manifest or index")
    return body, document, media_type, digest


def _refusal(response: Any, label: str, auth: RegistryAuth) -> TransferError:
    status = response.status_code
    if status == 401:
        detail = ("the credentials given were refused" if auth.credentials else
                  "it needs credentials (the request's Authorization header for the registry)")
        return status_error(status, f"{label}: the manifest", response.headers, detail)
    if status == 404:
        return status_error(status, f"{label}: the manifest", response.headers,
                            "no such repository or tag on that registry")
    return status_error(status, f"{label}: the manifest", response.headers)


def _too_large(label: str) -> TransferError:
    return TransferError("invalid-manifest", f"{label}: the manifest is larger than {MAX_MANIFEST_BYTES} bytes")


def _json(body: bytes, label: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        raise TransferError("invalid-manifest", f"{label}: the manifest is not JSON") from None
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        raise TransferError("invalid-manifest", f"{label}: the manifest is not a schema 2 document")
    return document


def _descriptor(item: Any, label: str, what: str) -> dict[str, Any]:
    """A descriptor checked: a sha256 digest and a size that is a whole number."""
    if not isinstance(item, dict):
        raise TransferError("invalid-manifest", f"{label}: {what} is not a descriptor")
    digest, size = item.get("digest"), item.get("size")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise TransferError("invalid-manifest", f"{label}: {what} has digest {str(digest)[:80]!r}; only sha256 "
                            "digests are accepted")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise TransferError("invalid-manifest", f"{label}: {what} has no valid size")
    return item


def _machine() -> tuple[str, str]:
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(platform.machine(), platform.machine())
    return "linux", arch


def select(index: Mapping[str, Any], label: str) -> dict[str, Any]:
    """The entry of an index that is the model: the only one (attestations aside);
    else the only one that is an artifact (``artifactType``), else the only one for
    this machine's platform; else an error that lists the entries."""
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise TransferError("invalid-manifest", f"{label}: the index lists no manifest")
    checked = [_descriptor(e, label, f"index entry {i + 1}") for i, e in enumerate(entries)]
    candidates = [e for e in checked
                  if (e.get("annotations") or {}).get("vnd.docker.reference.type") != "attestation-manifest"
                  and (e.get("platform") or {}).get("os") != "unknown"]
    if len(candidates) == 1:
        return candidates[0]
    artifacts = [e for e in candidates if e.get("artifactType")]
    if len(artifacts) == 1:
        return artifacts[0]
    here = _machine()
    fits = [e for e in candidates
            if ((e.get("platform") or {}).get("os"), (e.get("platform") or {}).get("architecture")) == here]
    if len(fits) == 1:
        return fits[0]

    def shown(e: dict[str, Any]) -> str:
        plat = e.get("platform") or {}
        kind = e.get("artifactType") or (f"{plat.get('os')}/{plat.get('architecture')}" if plat else "")
        return f"{e['digest'][:19]}… ({kind or e.get('mediaType') or 'untyped'})"

    raise TransferError("invalid-manifest", f"{label}: the index lists {len(candidates)} manifests and none is "
                        f"the one model: {', '.join(shown(e) for e in candidates) or 'only attestations'}; "
                        "name one by its digest (@sha256:…)")


def layer_files(manifest: Mapping[str, Any], ref: OciRef, insecure: tuple[str, ...], label: str,
                taken: set[str]) -> list[RemoteFile]:
    """Each layer (and the config blob, unless it is empty) as a file with a
    readable name: ollama's kinds by :data:`OLLAMA_NAMES` (``license-2.txt`` for a
    second license), a titled layer by its title, anything else
    ``<kind>-<first 12 hex digits>``."""
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise TransferError("invalid-manifest", f"{label}: the manifest lists no layers")
    files: list[RemoteFile] = []
    names = set(taken)
    counts: dict[str, int] = {}

    def add(item: dict[str, Any], role: str, path: str) -> None:
        if not safe_path(path):
            raise TransferError("invalid-manifest", f"{label}: a layer's title {path[:80]!r} is not a safe file path")
        if path in names:
            raise TransferError("invalid-manifest", f"{label}: two files of the manifest are named {path!r}")
        names.add(path)
        files.append(RemoteFile(path=path, url=blob_url(ref, insecure, item["digest"]), size=item["size"],
                                sha256=item["digest"][len("sha256:"):], role=role))

    for i, raw in enumerate(layers):
        item = _descriptor(raw, label, f"layer {i + 1}")
        media_type = str(item.get("mediaType") or "")
        hex12 = item["digest"][len("sha256:"):][:12]
        title = (item.get("annotations") or {}).get(TITLE)
        kind = media_type[len(OLLAMA_LAYER):] if media_type.startswith(OLLAMA_LAYER) else ""
        if isinstance(title, str) and title:
            add(item, kind or "layer", title)
        elif kind in OLLAMA_NAMES:
            counts[kind] = counts.get(kind, 0) + 1
            stem, dot, ext = OLLAMA_NAMES[kind].rpartition(".")
            add(item, kind, OLLAMA_NAMES[kind] if counts[kind] == 1 else f"{stem}-{counts[kind]}{dot}{ext}")
        else:
            role = kind if re.fullmatch(r"[a-z0-9][a-z0-9.-]{0,31}", kind) else "layer"
            add(item, role, f"{role}-{hex12}")
    config = manifest.get("config")
    if config is not None:
        item = _descriptor(config, label, "the config")
        # An empty config ("{}", the OCI empty descriptor) says nothing worth keeping.
        if item.get("mediaType") != EMPTY_CONFIG and item["size"] > 2:
            add(item, "config", "config.json")
    return files
