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
    problem = schema_problem(schema)
    if problem is not None:
        raise Unexpressible(f"the input schema is not valid JSON Schema: {problem}")
    types, _ = types_of(schema)
    if types != ["object"] or any(k in schema for k in ("anyOf", "oneOf", "allOf", "not", "enum")):
        raise Unexpressible("the input schema is not one object schema (the LLM APIs take no union, enum or "
                            "negation at the root)")
    return {k: v for k, v in schema.items() if k != "$schema"} | {"type": "object"}  # not ["object"] (SDK types)


def _schema(value: Any) -> bool:
    return isinstance(value, dict | bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _schema_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_schema(v) for v in value)


def _schema_map(value: Any) -> bool:
    return isinstance(value, dict) and all(_schema(v) for v in value.values())


def _type(value: Any) -> bool:
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    return bool(names) and all(n in JSON_TYPES for n in names) and len(set(names)) == len(names)  # type: ignore[arg-type]


JSON_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
KEYWORD_CHECKS: dict[str, tuple[Any, str]] = {  # keyword → (its value's check, what it must be): 2020-12
    "type": (_type, "a type name or a list of distinct ones"),
    "properties": (_schema_map, "an object of schemas"),
    "patternProperties": (_schema_map, "an object of schemas"),
    "dependentSchemas": (_schema_map, "an object of schemas"),
    "$defs": (_schema_map, "an object of schemas"),
    "definitions": (_schema_map, "an object of schemas"),
    "required": (lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v) and len(set(v)) == len(v),
                 "a list of distinct names"),
    "anyOf": (_schema_list, "a non-empty list of schemas"),
    "oneOf": (_schema_list, "a non-empty list of schemas"),
    "allOf": (_schema_list, "a non-empty list of schemas"),
    "prefixItems": (_schema_list, "a non-empty list of schemas"),
    "enum": (lambda v: isinstance(v, list), "a list"),
    "$ref": (lambda v: isinstance(v, str), "a string"),
    "pattern": (lambda v: isinstance(v, str), "a string"),
    "format": (lambda v: isinstance(v, str), "a string"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "title": (lambda v: isinstance(v, str), "a string"),
    "uniqueItems": (lambda v: isinstance(v, bool), "true or false"),
    "multipleOf": (lambda v: _number(v) and v > 0, "a number above 0"),
    **{k: (_number, "a number") for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")},
    **{k: (_count, "a count") for k in ("minLength", "maxLength", "minItems", "maxItems", "minProperties",
                                        "maxProperties", "minContains", "maxContains")},
    **{k: (_schema, "a schema") for k in ("items", "additionalProperties", "not", "contains", "propertyNames",
                                          "if", "then", "else", "unevaluatedProperties", "unevaluatedItems")},
}


def schema_problem(schema: Any, path: str = "") -> str | None:
    """What makes `schema` invalid JSON Schema (2020-12) in the keywords that shape a tool's arguments, or None.
    An API refuses a whole request for one broken tool schema, so a broken tool is reported instead. A walk,
    not the meta-schema: checking against the meta-schema costs 3-8 ms a schema (~20 s over the 2,379 catalog
    tools on this machine), this ~0.1 ms."""
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, dict):
        return f"{path or '/'}: a schema must be an object or a boolean"
    for key, value in schema.items():
        check = KEYWORD_CHECKS.get(key)
        if check is not None and not check[0](value):
            return f"{path or '/'}: {key} must be {check[1]}"
    for step, sub in subschemas(schema):
        problem = schema_problem(sub, f"{path}/{step}")
        if problem is not None:
            return problem
    for key in DEFINITION_KEYWORDS:
        for name, sub in (schema.get(key) or {}).items():
            problem = schema_problem(sub, f"{path}/{key}/{name}")
            if problem is not None:
                return problem
    return None
