"""reStructuredText rendered from the code, for the pages that must not drift from
it: :func:`settings_rst` from :data:`arw_models.config.SETTINGS` (each key, its
default and its doc line), :func:`openapi_rst` from :func:`arw_models.server.openapi.document`.

No Sphinx here: the directives of :mod:`arw_docs` parse these, and the tests read
them without a docs build.
"""

from __future__ import annotations

import json
import re
from typing import Any

from arw_models.config import SETTINGS
from arw_models.server.openapi import document

METHODS = ("get", "post", "put", "delete")


def literal(text: str) -> str:
    """The doc lines write code in single backticks (Markdown's way); RST wants two."""
    return re.sub(r"(?<!`)`([^`]+)`(?!`)", r"``\1``", text)


def default_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"``{value:g}``"
    return f"``{value}``"


def settings_rst() -> str:
    """A list table of every setting: key, default, doc line."""
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 30 15 55", "",
             "   * - Key", "     - Default", "     - What it does"]
    for setting in SETTINGS:
        lines += [f"   * - ``{setting.key}``", f"     - {default_text(setting.default)}",
                  f"     - {literal(setting.doc)}"]
    return "\n".join(lines) + "\n"


def _schema_name(content: dict[str, Any]) -> str:
    names = []
    for media, body in content.items():
        schema = body.get("schema", {})
        ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
        name = f":ref:`{ref.rsplit('/', 1)[1]} <openapi-{ref.rsplit('/', 1)[1].lower()}>`" if ref else ""
        names.append(f"``{media}`` {name}".strip())
    return ", ".join(names)


def _title(text: str, mark: str) -> list[str]:
    return [text, mark * len(text), ""]


def openapi_rst() -> str:
    """Every operation (summary, description, token, parameters, body, answers)
    and every schema of the OpenAPI document, as sections under the current one."""
    doc = document()
    out: list[str] = []
    for path, item in doc["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            out += _title(f"{method.upper()} {path}", "~")
            out += [f"**{op['summary']}.** {op.get('description', '')}".rstrip(), ""]
            if "security" in op:
                out += ["Needs the admin token when ``ARW_ADMIN_TOKEN`` is set.", ""]
            for param in op.get("parameters", []):
                line = f"* ``{param['name']}`` (in {param['in']}"
                ref = param.get("schema", {}).get("$ref")
                if ref:
                    name = ref.rsplit("/", 1)[1]
                    line += f", :ref:`{name} <openapi-{name.lower()}>`"
                out.append(f"{line}): {param.get('description', '')}".rstrip().rstrip(":"))
            if op.get("parameters"):
                out.append("")
            if "requestBody" in op:
                out += [f"Request body: {_schema_name(op['requestBody']['content'])}", ""]
            out += ["Answers:", ""]
            for status, answer in op["responses"].items():
                line = f"* ``{status}``: {answer['description']}"
                if "content" in answer:
                    line += f" ({_schema_name(answer['content'])})"
                out.append(line)
                for name, header in answer.get("headers", {}).items():
                    out.append(f"  ``{name}``: {header.get('description', '')}")
            out.append("")
    out += _title("Schemas", "~")
    for name, schema in doc["components"]["schemas"].items():
        out += [f".. _openapi-{name.lower()}:", ""]
        out += _title(name, "^")
        out += [".. code-block:: json", ""]
        out += ["   " + line for line in json.dumps(schema, indent=2).splitlines()]
        out.append("")
    return "\n".join(out) + "\n"
