"""Settings: read from the environment with their types, garbage refused, and the
configuration page of docs/ lists every setting and no other."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from arw_models.config import DEFAULTS, Settings, from_env


def test_config_from_env_parses_types_and_rejects_garbage() -> None:
    parsed = from_env({"ARW_MODELS_MAX_CONC": "3", "ARW_DL_RESUME_ON_START": "off", "ARW_ADMIN_TOKEN": "",
                       "ARW_MODELS_MAX_MB": "1.5", "UNRELATED": "x"})
    assert parsed == {"ARW_MODELS_MAX_CONC": 3, "ARW_DL_RESUME_ON_START": False, "ARW_ADMIN_TOKEN": None,
                      "ARW_MODELS_MAX_MB": 1.5}
    with pytest.raises(ValueError, match="ARW_PORT"):
        from_env({"ARW_PORT": "eighty"})
    settings = Settings.from_config(dict(DEFAULTS, ARW_MODELS_MAX_MB=1.5))
    assert settings.max_bytes == int(1.5 * 1024 * 1024)
    assert settings.max_conc == 2 and settings.idle_timeout == 30.0
    with pytest.raises(ValueError):
        Settings.from_config(dict(DEFAULTS, ARW_MODELS_MAX_CONC=0))


DOCS = Path(__file__).resolve().parent.parent / "docs"


def _docs_renderer() -> Any:
    """docs/_ext/arw_render.py, which renders the configuration page's table."""
    spec = importlib.util.spec_from_file_location("arw_render", DOCS / "_ext" / "arw_render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_page_lists_every_setting_and_no_other() -> None:
    # The table is generated from SETTINGS when the docs are built (`make docs`, in
    # CI); here, what it renders: every key once, with its default and doc line.
    from arw_models.config import SETTINGS

    table = _docs_renderer().settings_rst()
    assert set(re.findall(r"^   \* - ``(ARW_[A-Z_]+)``$", table, re.MULTILINE)) == {s.key for s in SETTINGS}
    assert table.count("   * - ``ARW_") == len(SETTINGS)
    assert all(s.doc for s in SETTINGS)
    assert "     - ``./state``" in table and "     - ``8090``" in table and "     - unset" in table
    page = (DOCS / "configuration.rst").read_text()
    assert "\n.. arw-settings::\n" in page
    # The notes below the table name settings that exist.
    assert set(re.findall(r"``(ARW_[A-Z_]+)``", page)) <= {s.key for s in SETTINGS}
