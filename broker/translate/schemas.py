"""What every provider's schema adaptation starts from: a tool's input schema with its `$ref`s inlined.

MCP servers write their input schemas in full JSON Schema; the LLM APIs take subsets. The catalogs in
`../shared/catalogs` (2,379 tools) hold 790 `$ref`s: most point into `#/$defs`, some (zod-to-json-schema's) into
`#/properties/...`, and 52 carry siblings next to the `$ref` (a description, a default). Gemini's schema has no
references and OpenAI's strict mode is fussy about their siblings, so every adapter works on the inlined form:
each `$ref` replaced by its target with the siblings laid over it (the `$ref`'s own description wins), as the
`openai` SDK's `to_strict_json_schema` does. A reference cycle (10 tools of ms-365-mcp: folders within folders)
or an inlined form past `MAX_INLINED_NODES` cannot be inlined: `Unexpressible` says why, and each adapter decides
what that tool becomes in its API.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

# Keywords whose values are data, not schemas: never walked into as if they were.
VALUE_KEYWORDS = frozenset({"enum", "const", "default", "examples", "example", "required", "$schema", "$id",
                            "$comment", "title", "description", "pattern", "format"})
# Keywords whose value maps names to schemas (a property may be called "enum" or "$ref").
MAP_KEYWORDS = frozenset({"properties", "patternProperties", "dependentSchemas"})
DEFINITION_KEYWORDS = ("$defs", "definitions")
# Inlined schemas bigger than this are refused: the largest catalog schema (ms-365-mcp, 22 KB with its $defs)
# inlines to a few thousand nodes; an exponential blow-up (each level referring twice to the next) stops here.
MAX_INLINED_NODES = 50_000


class Unexpressible(ValueError):
    """A schema an API's subset cannot express; the message says why, for the caller's `unsupported` list."""


def resolve_pointer(root: dict[str, Any], ref: str) -> Any:
    """The target of a local `$ref` (`#`, `#/$defs/X`, `#/properties/a~1b`), or Unexpressible."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        raise Unexpressible(f"$ref {ref!r} is not a local reference")
    node: Any = root
    for raw in ref[2:].split("/"):
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise Unexpressible(f"$ref {ref!r} points at nothing")
    if not isinstance(node, dict | bool):
        raise Unexpressible(f"$ref {ref!r} points at no schema")
    return node


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every `$ref` replaced by its target (siblings laid over it) and its definitions dropped.
    A new structure: `schema` is not changed. Unexpressible on a cycle, a non-local or dangling reference, or
    an inlined form past `MAX_INLINED_NODES` nodes."""
    budget = [MAX_INLINED_NODES]

    def walk(node: Any, trail: tuple[str, ...]) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise Unexpressible(f"the schema is too large once its $refs are inlined (over {MAX_INLINED_NODES} "
                                f"nodes)")
        if isinstance(node, list):
            return [walk(item, trail) for item in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref in trail:
                raise Unexpressible(f"the schema is recursive ($ref {ref!r} refers to itself)")
            target = walk(resolve_pointer(schema, ref), (*trail, ref))
            out.update(target if isinstance(target, dict) else {} if target else {"not": {}})
        for key, value in node.items():
            if key == "$ref" or key in DEFINITION_KEYWORDS:
                continue
            out[key] = value if key in VALUE_KEYWORDS else walk_map(value, trail) if key in MAP_KEYWORDS \
                else walk(value, trail)
        return out

    def walk_map(value: Any, trail: tuple[str, ...]) -> Any:
        if not isinstance(value, dict):
            return walk(value, trail)
        return {name: walk(sub, trail) for name, sub in value.items()}

    return walk(schema, ())  # type: ignore[no-any-return]


def types_of(node: dict[str, Any]) -> tuple[list[str], bool]:
    """(the non-null types `type` names, whether it names null): `["string", "null"]` → (["string"], True)."""
    declared = node.get("type")
    names = [declared] if isinstance(declared, str) else list(declared) if isinstance(declared, list) else []
    return [t for t in names if t != "null"], "null" in names


def is_null_schema(node: Any) -> bool:
    """`{"type": "null"}` (with at most a description or title): the null branch of an optional's anyOf."""
    return isinstance(node, dict) and node.get("type") == "null" and set(node) <= {"type", "description", "title"}


def subschemas(node: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(path step, subschema) of every schema directly inside `node`, for walks that only look."""
    for key, value in node.items():
        if key in VALUE_KEYWORDS:
            continue
        if key in MAP_KEYWORDS and isinstance(value, dict):
            for name, sub in value.items():
                yield f"{key}/{name}", sub
        elif isinstance(value, dict):
            yield key, value
        elif isinstance(value, list) and key in ("anyOf", "oneOf", "allOf", "prefixItems", "items"):
            for i, sub in enumerate(value):
                yield f"{key}/{i}", sub


def is_free_form_object(node: dict[str, Any]) -> bool:
    """An object that lists no properties: a map or anything at all (`additionalProperties` not false)."""
    types, _ = types_of(node)
    return types == ["object"] and not node.get("properties") and node.get("additionalProperties", True) is not False


@dataclass(frozen=True)
class Definition:
    """One tool in one API's shape, with what the adaptation lost or changed (for the answer's `adapted`)."""

    payload: dict[str, Any]
    notes: tuple[str, ...] = ()


def description_of(tool: dict[str, Any]) -> str:
    """What the model reads to choose the tool: its description, else its title, else nothing."""
    return str(tool.get("description") or tool.get("title") or "")


def input_schema_of(tool: dict[str, Any]) -> dict[str, Any]:
    """The tool's input schema without `$schema` (a dialect marker no LLM API wants), `{"type": "object"}` when
    the server sent none; Unexpressible when it is not one object schema (every API takes only those)."""
    schema = tool.get("inputSchema")
    if schema is None:
        return {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise Unexpressible("the input schema is not a JSON object")
    types, _ = types_of(schema)
    if types != ["object"] or any(k in schema for k in ("anyOf", "oneOf", "allOf", "not", "enum")):
        raise Unexpressible("the input schema is not one object schema (the LLM APIs take no union, enum or "
                            "negation at the root)")
    return {k: v for k, v in schema.items() if k != "$schema"}
