"""A model's arguments made the tool's own again, after a definition the translator adapted.

OpenAI's strict mode makes every optional property required-and-nullable (broker/translate/openai_strict.py):
a model that has nothing to say for `limit` sends `"limit": null`, which the tool's own schema may refuse
(`{"type": "integer"}`) or read differently from an absent value (its default). `drop_strict_nulls` removes
exactly those nulls: a null given for a property the tool does not require and whose own schema does not take
null, at any depth of nested objects and arrays of objects. A null the tool's schema takes is the model's answer
and stays. Executing a provider's tool calls (issue 18 part 2) passes OpenAI arguments through it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jsonschema

from broker.translate.schemas import Unexpressible, inline_refs


@lru_cache(maxsize=1024)
def _inlined(schema_json: str) -> dict[str, Any] | None:
    try:
        return inline_refs(json.loads(schema_json))
    except Unexpressible:
        return None  # no strict form was offered for it (recursive, too large): no null was added either


def _takes_null(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return bool(schema)
    try:
        return bool(jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
                    .is_valid(None))
    except jsonschema.exceptions.SchemaError:
        return True  # a broken schema: leave the value for the backend to judge


def _clean(value: Any, schema: Any) -> Any:
    if not isinstance(schema, dict):
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_clean(item, schema["items"]) for item in value]
    if not isinstance(value, dict):
        return value
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    out = {}
    for name, item in value.items():
        sub = properties.get(name)
        if item is None and sub is not None and name not in required and not _takes_null(sub):
            continue
        out[name] = _clean(item, sub)
    return out


def drop_strict_nulls(arguments: dict[str, Any], input_schema: dict[str, Any] | None) -> dict[str, Any]:
    """`arguments` without the nulls strict mode made a model send for optional properties the tool's schema
    (`input_schema`, the MCP tool's `inputSchema`) does not take null for. A new dict; `arguments` unchanged.
    Raises `ValueError` for arguments nested deeper than Python's stack allows (the call's problem, not a 500)."""
    if not isinstance(arguments, dict) or not isinstance(input_schema, dict):
        return arguments
    inlined = _inlined(json.dumps(input_schema, sort_keys=True))
    try:
        return arguments if inlined is None else _clean(arguments, inlined)  # type: ignore[no-any-return]
    except RecursionError:
        raise ValueError("the arguments are nested too deeply") from None
