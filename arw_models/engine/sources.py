"""Where a download's bytes are asked for.

A job names one url: an ``http(s)`` url, or ``hf://OWNER/REPO/PATH[@REVISION]``,
a file on the Hugging Face hub (or on ``ARW_HF_ENDPOINT``), which resolves to the
hub's ``/resolve/`` url. A :class:`Source` is one place to ask: its url, and the
headers that may go to that url's own host and nowhere else (the hub token, the
request's own ``headers`` for a gated origin). The session drops them on a
redirect to another host (:func:`arw_models.engine.http.new_session`): the hub answers
with a redirect to a signed CDN url, which must never see the token.

:func:`for_job` lists a job's sources: each mirror of ``ARW_DL_MIRRORS`` (a
template filled in for the origin's url, with no private headers at all), then the
origin; :mod:`.route` says which one an attempt asks.

Some sources name the file by its SHA-256 instead of its url: the peers of
``ARW_DL_PEERS`` (other services, ``{base}/blobs/sha256/<digest>``, with the
``ARW_PEERS_TOKEN`` for their host alone) and the templates with ``{sha256}`` (a
bucket keyed by digest). They can be asked only once the digest is known
(:func:`by_digest`): before the first byte when the request, a listing or an OCI
manifest gives it, else after the origin's first answer publishes it (then
:meth:`.route.Route.learn` puts them before the origin). They are mirrors: they
vouch for nothing, every byte they serve is held to that digest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from ..redact import redact_url
from .headers import remove_dot_segments, url_filename

HF_SCHEME = "hf://"
# The hub's own names: an owner (user or organisation) and a repository.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,95})")
# Repositories that are not models live under a kind prefix, as huggingface_hub spells them.
_KINDS = ("datasets", "spaces")


class InvalidReference(ValueError):
    """An ``hf://`` reference that names no file."""


@dataclass(frozen=True)
class HfRef:
    kind: str | None  # None: a model repository
    owner: str
    repo: str
    path: str
    revision: str

    def resolve_url(self, endpoint: str) -> str:
        prefix = f"/{self.kind}" if self.kind else ""
        return (f"{endpoint.rstrip('/')}{prefix}/{self.owner}/{self.repo}/resolve/"
                f"{quote(self.revision, safe='')}/{quote(self.path)}")

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def parse_hf(url: str) -> HfRef:
    """``hf://[datasets/|spaces/]OWNER/REPO/PATH/IN/REPO[@REVISION]``; the revision
    (a branch, a tag or a commit) defaults to ``main``. huggingface_hub's own form,
    ``hf://OWNER/REPO@REVISION/PATH`` (a revision with a slash written ``%2F``), is
    read too."""
    if not url.startswith(HF_SCHEME):
        raise InvalidReference("not an hf:// reference")
    rest = url[len(HF_SCHEME):]
    if "?" in rest or "#" in rest or "\\" in rest:
        raise InvalidReference("an hf:// reference has no query, fragment or backslash")
    parts = rest.split("/")
    kind = parts.pop(0) if parts and parts[0] in _KINDS else None
    if len(parts) < 3:
        raise InvalidReference("an hf:// reference is hf://OWNER/REPO/PATH[@REVISION]")
    owner, repo, in_repo = parts[0], parts[1], "/".join(parts[2:])
    revision = "main"
    if "@" in repo:  # huggingface_hub's form: the revision after the repository
        repo, _, revision = repo.partition("@")
        revision = unquote(revision)
    elif "@" in in_repo:  # the revision after the path
        in_repo, _, revision = in_repo.rpartition("@")
    if not revision or any(part in ("", ".", "..") for part in revision.split("/")):
        raise InvalidReference("the revision after @ must name a branch, tag or commit")
    if not _NAME.fullmatch(owner) or not _NAME.fullmatch(repo):
        raise InvalidReference("the owner and repository must be hub names (letters, digits, . _ -)")
    path = in_repo.split("/")
    # %2e is a dot to the hub's server, which decodes before it resolves.
    if any(part.lower().replace("%2e", ".") in ("", ".", "..") for part in path):
        raise InvalidReference("the path in the repository must not have empty, . or .. segments")
    return HfRef(kind, owner, repo, "/".join(path), revision)


@dataclass(frozen=True)
class Source:
    """One place to fetch the file from: ``url``, with ``headers`` that go to its
    own host only. ``label`` is how events and listings name it."""

    url: str
    label: str
    headers: Mapping[str, str] = field(default_factory=dict)
    mirror: bool = False
    # (connect, read) seconds for this source; None: the settings' own.
    timeout: tuple[float, float] | None = None

    def __repr__(self) -> str:  # never the headers' values
        return f"Source({self.label!r}, headers={sorted(self.headers)!r})"


def origin(url: str, headers: Mapping[str, str], hf_endpoint: str, hf_token: str | None) -> Source:
    """The job's own url as a source: an ``hf://`` reference resolved, with the hub
    token when there is one (for the hub's host only, like every header here)."""
    private = dict(headers)
    if url.startswith(HF_SCHEME):
        url = parse_hf(url).resolve_url(hf_endpoint)
        if hf_token and not any(k.lower() == "authorization" for k in private):
            private["Authorization"] = f"Bearer {hf_token}"
    return Source(url, "origin", private)


def mirror(template: str, url: str, digest: str | None = None, size: int | None = None) -> Source:
    """``template`` filled in for ``url``: ``{host}`` is its host (with its port,
    if it names one; never its userinfo), ``{path}`` its path and query, ``{sha256}``
    and ``{size}`` the file's digest and size (see :func:`needs_digest`). A mirror
    gets no private headers: they belong to the origin's host."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    # The API resolved the url's dot segments; a url from an older sidecar may still
    # have them, and "{path}" must not climb out of the template's own prefix.
    path = (remove_dot_segments(parts.path) or "/") + (f"?{parts.query}" if parts.query else "")
    filled = template.replace("{host}", host).replace("{path}", path)
    if digest is not None:
        filled = filled.replace("{sha256}", digest)
    if size is not None:
        filled = filled.replace("{size}", str(size))
    return Source(filled, mirror_label(filled), mirror=True)


def needs_digest(template: str) -> bool:
    """Whether ``template`` names the file by its digest (``{sha256}``, ``{size}``)."""
    return "{sha256}" in template or "{size}" in template


def fillable(template: str, digest: str | None, size: int | None) -> bool:
    """Whether what is known fills every field ``template`` has."""
    return ("{sha256}" not in template or digest is not None) and ("{size}" not in template or size is not None)


@dataclass(frozen=True)
class Fleet:
    """The sources that name a file by its digest: ``templates`` (those of
    ``ARW_DL_MIRRORS`` with ``{sha256}`` or ``{size}``), ``peers`` (base urls of
    other services), the ``token`` sent to the peers, and the ``timeout`` (connect,
    read) that keeps a peer that is down or slow from holding the job up."""

    templates: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()
    token: str | None = field(default=None, repr=False)
    timeout: float = 2.0

    @property
    def empty(self) -> bool:
        return not self.templates and not self.peers


def peer(base: str, digest: str, token: str | None, timeout: float) -> Source:
    """Another service's blob of ``digest``; the token goes to its host alone."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Source(f"{base}/blobs/sha256/{digest}", mirror_label(base), headers, mirror=True,
                  timeout=(timeout, timeout))


def by_digest(fleet: Fleet, url: str, digest: str | None, size: int | None) -> list[Source]:
    """The sources that can be asked for the file of ``digest`` (and ``size``, if
    known): each peer, then each template that what is known fills in. None
    without a digest: they would serve whatever their key names, with nothing to
    hold it to."""
    if digest is None:
        return []
    return [*(peer(base, digest, fleet.token, fleet.timeout) for base in fleet.peers),
            *(mirror(t, url, digest, size) for t in fleet.templates if fillable(t, digest, size))]


def mirror_label(url: str) -> str:
    """How a mirror is shown: its scheme, host and port, nothing that may be secret."""
    shown = urlsplit(redact_url(url))
    return f"{shown.scheme}://{shown.netloc.rpartition('@')[2]}"


def for_job(url: str, headers: Mapping[str, str], hf_endpoint: str, hf_token: str | None,
            templates: tuple[str, ...] = (), fleet: Fleet | None = None, digest: str | None = None,
            size: int | None = None) -> list[Source]:
    """Where a job asks, in order: the sources by digest (``fleet``'s, when
    ``digest`` is known), each mirror of ``templates`` (filled in for the resolved url
    of the job, an ``hf://`` reference's ``/resolve/`` url included; those that need
    the digest are left to ``fleet``), then the origin."""
    own = origin(url, headers, hf_endpoint, hf_token)
    return [*by_digest(fleet or Fleet(), own.url, digest, size),
            *(mirror(t, own.url) for t in templates if not needs_digest(t)), own]


def fleet_of(templates: tuple[str, ...], peers: tuple[str, ...], token: str | None, timeout: float) -> Fleet:
    """The digest-keyed part of the settings' sources."""
    return Fleet(tuple(t for t in templates if needs_digest(t)), peers, token, timeout)


def filename_of(url: str) -> str:
    """The file name a url or an ``hf://`` reference suggests."""
    if url.startswith(HF_SCHEME):
        try:
            return parse_hf(url).filename
        except InvalidReference:
            return ""
    return url_filename(url)
