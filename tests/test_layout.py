"""The package's layers as a user meets them: the command line loads neither Flask
nor the service, the public names of ``arw_models`` are there on first use, and the
gunicorn configuration gunicorn is pointed at carries every setting and hook.

(Which layer may import which is checked by ``lint-imports``, in ``make lint``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _loaded_after(code: str, names: list[str]) -> list[str]:
    """The ``names`` in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"import json, sys\n{code}\nprint(json.dumps([n for n in {names!r} if n in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", probe], check=False, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_command_line_loads_no_flask_server_service_or_engine() -> None:
    loaded = _loaded_after("import arw_models.client\nimport arw_models.client.cli",
                           ["flask", "arw_models.server", "arw_models.service", "arw_models.engine"])
    assert loaded == []


def test_importing_the_package_loads_no_flask() -> None:
    assert _loaded_after("import arw_models\nassert arw_models.__version__", ["flask", "arw_models.server"]) == []


@pytest.mark.parametrize("name", ["create_app", "ArwModels", "ServiceState", "signals", "StateDirError",
                                  "StateLockError", "__version__"])
def test_the_public_names_are_there_on_first_use(name: str) -> None:
    import arw_models

    assert name in arw_models.__all__ and name in dir(arw_models)
    assert getattr(arw_models, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    import arw_models

    with pytest.raises(AttributeError, match="no_such_name"):
        arw_models.no_such_name  # noqa: B018


def test_the_gunicorn_configuration_carries_every_setting_and_hook() -> None:
    from gunicorn.config import Config

    from arw_models import gunicorn_conf
    from arw_models.server import gunicorn_conf as server_conf

    known = Config().settings
    settings = {name for name in vars(server_conf) if name in known}
    assert settings >= {"worker_class", "threads", "bind", "on_starting", "post_worker_init"}
    assert {name: getattr(gunicorn_conf, name, None) for name in settings} == {
        name: getattr(server_conf, name) for name in settings}


def test_the_gunicorn_configuration_carries_the_json_logger() -> None:
    """``logger_class`` is set only under ARW_LOG_FORMAT=json, when the module loads."""
    code = ("from arw_models import gunicorn_conf\nfrom arw_models.server.gunicorn_log import JsonLogger\n"
            "module, _, name = gunicorn_conf.logger_class.rpartition('.')\n"
            "assert getattr(__import__(module, fromlist=[name]), name) is JsonLogger")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARW_")}
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env={**env, "ARW_LOG_FORMAT": "json"})
    assert proc.returncode == 0, proc.stderr
