"""Sphinx configuration: ``make docs`` builds these pages into docs/_build/html."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

from arw_models import __version__

project = "arw-models"
author = "arw-models"
copyright = "arw-models"
version = release = __version__

extensions = [
    "sphinxarg.ext",  # the command line page, from arw_models.client.cli.build_parser
    "arw_docs",  # the configuration and HTTP API pages, from SETTINGS and the OpenAPI document
]

html_theme = "furo"
html_title = f"arw-models {release}"
exclude_patterns = ["_build"]
# The README's literal blocks are shell sessions and configuration files, not Python.
highlight_language = "none"
# Quotes stay as typed: headers, JSON and shell in running text are meant literally.
smartquotes = False
