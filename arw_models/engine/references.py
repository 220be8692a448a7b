"""References that name a model of many files, and their resolution: the one
seam between a download and the resolvers.

``hf://OWNER/REPO[@REVISION]`` (a whole hub repository, or the files of it a
selection names) is :mod:`.hub`'s; ``ollama://NAME[:TAG]`` and
``oci://HOST/REPO[:TAG|@DIGEST]`` are :mod:`.oci`'s. Each resolves a reference,
once, to a :class:`~.fileset.FileSet` and gives the :data:`~.fileset.Authorize`
that adds the private headers of each file's request. A download resumed from its
plan is not resolved again (its revision holds): :func:`authorizer` gives what its
requests need without a listing.

"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._version import __version__
from ..config import Settings
from ..errors import TransferError
from . import hub, oci
from .fileset import Authorize, FileSet, RemoteFile, Selection
from .http import new_session


def names_many(url: str) -> bool:
    """Whether ``url`` names a model of many files rather than one file."""
    if hub.names_many(url):
        return True
    return oci.names_registry(url)


def provider_of(url: str) -> str:
    """The provider a many-file reference's model is recorded with."""
    if url.startswith("hf://"):
        return "hf"
    return url.split("://", 1)[0] if "://" in url else "local"


def resolve(url: str, selection: Selection, settings: Settings, session: Any,
            headers: Mapping[str, str]) -> tuple[FileSet, Authorize]:
    """The files ``url`` names (those ``selection`` picks), pinned to one revision,
    and what each file's request carries. Raises
    :class:`~arw_models.errors.TransferError` (``unsupported-reference``,
    ``invalid-selection``, or the resolver's own: a listing that cannot be a
    model's files is the resolver's ``invalid-listing`` or ``invalid-manifest``)."""
    if hub.names_many(url):
        fileset = hub.resolve(hub.parse_repo(url), selection, session, settings.hf_endpoint,
                              settings.hf_token, dict(headers),
                              timeout=(settings.connect_timeout, settings.idle_timeout))
    elif oci.names_registry(url):
        if selection != Selection():
            raise TransferError("invalid-selection", f"{url} is a registry's model, fetched whole: "
                                "include, exclude and files apply to hub repositories")
        fileset = oci.resolve(oci.parse(url), session, settings.registry_insecure, _credentials(headers),
                              settings.connect_timeout, settings.idle_timeout)
    else:
        raise TransferError("unsupported-reference",
                            f"this installation cannot resolve {url.split('://', 1)[0]}:// references")
    return fileset, authorizer(url, settings, headers)


def authorizer(url: str, settings: Settings, headers: Mapping[str, str]) -> Authorize:
    """What each file's request of a model from ``url`` carries."""
    if hub.names_many(url):
        authorize: Authorize = hub.authorizer(settings.hf_endpoint, settings.hf_token, dict(headers))
        return authorize
    if oci.names_registry(url):
        # A session of its own: the registry's token requests, never a download's connection.
        authorize = oci.authorizer(oci.parse(url), new_session(f"arw-models/{__version__}"),
                                   settings.registry_insecure, _credentials(headers), settings.connect_timeout,
                                   settings.idle_timeout)
        return authorize
    return no_headers


def _credentials(headers: Mapping[str, str]) -> str | None:
    """The request's ``Authorization``, meant for the registry (``Basic`` or ``Bearer``)."""
    return next((v for k, v in headers.items() if k.lower() == "authorization"), None)


def no_headers(file: RemoteFile, fresh: bool) -> Mapping[str, str]:
    """An :data:`~.fileset.Authorize` for files that need no private header."""
    return {}
