"""arw-models: fetch, verify and keep local model files over HTTP.

Standalone::

    from arw_models import create_app
    app = create_app()

Inside a host app::

    from arw_models import ArwModels
    ArwModels(app, url_prefix="/ai")

The package is in layers, each importing only those below it (setup.cfg's
``[importlinter]`` contracts hold them to it):

- ``server/``: everything Flask (the factory and extension, the blueprint, the event
  stream, CORS, the web page, the OpenAPI document, gunicorn's configuration);
- ``service/``: the job table, jobs and their states, slots, the event hub,
  listings, metrics, logs and signals;
- ``engine/``: one download, from the first request to a verified file;
- ``store/``: the state directory and the files in it;
- ``client/``: the command line and its HTTP client, on its own;
- and a shared kernel at the top level (``config``, ``errors``, ``redact``,
  ``_version``) that any of them may import.

The names below are loaded on first use (PEP 562), so that ``import arw_models.client``
loads neither Flask nor the service.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

# Each public name, and the module that defines it.
_EXPORTS = {
    "ArwModels": "arw_models.server.app",
    "ServiceState": "arw_models.server.app",
    "create_app": "arw_models.server.app",
    "StateDirError": "arw_models.store.storage",
    "StateLockError": "arw_models.store.lock",
    "signals": "arw_models.service.signals",
}

__all__ = ["ArwModels", "ServiceState", "StateDirError", "StateLockError", "__version__", "create_app", "signals"]


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module = importlib.import_module(where)
    value = module if name == "signals" else getattr(module, name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
