"""Anthropic's tool definitions (Messages API, `anthropic.types.ToolParam`): `{"name", "description",
"input_schema"}`.

The Messages API takes JSON Schema (draft 2020-12) as `input_schema`, `$ref`s and all, as long as the root is one
object schema (no `anyOf`/`oneOf`/`allOf` at the top level): the server's schema is passed as it is, less
`$schema`. `strict` (Anthropic's structured tool use) is not set: it takes a narrower subset, and the broker
checks the arguments against the tool's own schema anyway.
"""

from __future__ import annotations

from typing import Any

from broker.translate.schemas import Definition, description_of, input_schema_of


def definition(tool: dict[str, Any], name: str, strict: bool) -> Definition:
    payload: dict[str, Any] = {"name": name}
    if description := description_of(tool):
        payload["description"] = description
    payload["input_schema"] = input_schema_of(tool)
    return Definition(payload)
