"""Sphinx directives that render pages from the code, so that they cannot drift
from it: ``.. arw-settings::`` writes the table of :data:`arw_models.config.SETTINGS`
(each key, its default and its doc line), ``.. arw-openapi::`` the operations and
schemas of :func:`arw_models.server.openapi.document`. The text comes from :mod:`arw_render`;
here it is parsed in place.
"""

from __future__ import annotations

from typing import Any

from arw_render import openapi_rst, settings_rst
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


class _Rendered(SphinxDirective):
    has_content = False

    def rst(self) -> str:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        container = nodes.section() if self.name == "arw-openapi" else nodes.container()
        source = self.get_source_info()[0] or self.env.docname
        content = StringList(self.rst().splitlines(), source=source)
        nested_parse_with_titles(self.state, content, container)
        return list(container.children)


class SettingsDirective(_Rendered):
    def rst(self) -> str:
        return settings_rst()


class OpenAPIDirective(_Rendered):
    def rst(self) -> str:
        return openapi_rst()


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("arw-settings", SettingsDirective)
    app.add_directive("arw-openapi", OpenAPIDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
