"""OpenAI's strict mode (Structured Outputs for function calls): a tool's input schema made strict, or why not.

With `"strict": true` the model's arguments always match the schema, but the API takes only a subset of JSON
Schema (the function-calling guide's "Supported schemas"): every object closed (`additionalProperties: false`)
with every property required, an optional property written as a union with null; types string, number,
integer, boolean, object, array, null, `enum`, `const`, `anyOf` (not at the root); string `pattern` and a few
`format`s, number bounds and `multipleOf`, array `minItems`/`maxItems`; at most 10 levels of nested objects and
5,000 properties, 1,000 enum values. Anything else is refused by the API with a 400.

So a schema is rewritten, not just checked: keywords outside the subset are dropped (the broker still checks
the arguments against the tool's own schema when the call comes, so `minLength` or `default` lost here is
enforced there, with a clear error), `oneOf` reads as `anyOf`, a multi-type `type` becomes an `anyOf`, and an
optional property becomes nullable-and-required: a model that leaves it out sends `null`, which
`broker.translate.arguments.drop_strict_nulls` removes again before the call. What has no strict form — an
object without properties (a map), a schema that accepts any value, `allOf` of several, tuples, recursion —
raises `Unexpressible` and the tool is offered with `"strict": false` and its schema as it is.

Measured over the 2,379 tools of `../shared/catalogs`: see tests/test_translate_catalogs.py for the counts.
"""

from __future__ import annotations

from typing import Any

from broker.translate.schemas import Unexpressible, inline_refs, is_free_form_object, types_of

STRICT_FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"})
KEYWORDS_BY_TYPE: dict[str, frozenset[str]] = {
    "string": frozenset({"pattern", "format"}),
    "number": frozenset({"multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum"}),
    "integer": frozenset({"multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum"}),
    "array": frozenset({"items", "minItems", "maxItems"}),
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "boolean": frozenset(),
}
ANY_TYPE_KEYWORDS = frozenset({"type", "description", "title", "enum", "const", "anyOf"})
MAX_OBJECT_DEPTH = 10
MAX_PROPERTIES = 5000
MAX_ENUM_VALUES = 1000


class _Walk:
    """One schema's conversion: the keywords it dropped and the properties it counted."""

    def __init__(self) -> None:
        self.dropped: set[str] = set()
        self.properties = 0

    def node(self, node: Any, path: str, depth: int) -> dict[str, Any]:
        if not isinstance(node, dict):
            raise Unexpressible(f"{path or '/'}: a boolean schema has no strict form")
        node = dict(node)
        if "oneOf" in node:  # for generating arguments, one-of reads as any-of
            node["anyOf"] = node.pop("oneOf")
        if "allOf" in node:
            parts = node.pop("allOf")
            if not isinstance(parts, list) or len(parts) != 1 or not isinstance(parts[0], dict):
                raise Unexpressible(f"{path or '/'}: allOf of several schemas has no strict form")
            node = {**parts[0], **node}
        types, nullable = types_of(node)
        if len(types) > 1:  # ["string", "number"] → anyOf, keeping each type's own keywords
            shared = {k: node[k] for k in ("description", "title") if k in node}
            branches = [{"type": t, **{k: v for k, v in node.items() if k in KEYWORDS_BY_TYPE[t]}} for t in types
                        if t in KEYWORDS_BY_TYPE]
            node = {**shared, "anyOf": branches + ([{"type": "null"}] if nullable else [])}
            types, nullable = [], False
        if not types and not nullable and not any(k in node for k in ("anyOf", "enum", "const")):
            raise Unexpressible(f"{path or '/'}: a schema that accepts any value has no strict form")
        if types and types[0] not in KEYWORDS_BY_TYPE:
            raise Unexpressible(f"{path or '/'}: type {types[0]!r} is not a JSON Schema type")
        allowed = ANY_TYPE_KEYWORDS | (KEYWORDS_BY_TYPE[types[0]] if types else frozenset())
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key not in allowed or (key == "format" and value not in STRICT_FORMATS):
                self.dropped.add(key if key != "format" else f"format {value}")
                continue
            out[key] = value
        if len(out.get("enum") or ()) > MAX_ENUM_VALUES:
            raise Unexpressible(f"{path or '/'}: over {MAX_ENUM_VALUES} enum values")
        if "anyOf" in out:
            out["anyOf"] = [self.node(branch, f"{path}/anyOf/{i}", depth) for i, branch in enumerate(out["anyOf"])]
        if types == ["array"]:
            items = out.get("items")
            if not isinstance(items, dict):
                raise Unexpressible(f"{path or '/'}: an array without one items schema has no strict form")
            out["items"] = self.node(items, f"{path}/items", depth)
        if types == ["object"]:
            out.update(self.object(out, path, depth + 1))
        return out

    def object(self, node: dict[str, Any], path: str, depth: int) -> dict[str, Any]:
        if depth > MAX_OBJECT_DEPTH:
            raise Unexpressible(f"{path or '/'}: objects nested over {MAX_OBJECT_DEPTH} levels deep")
        if is_free_form_object(node):
            raise Unexpressible(f"{path or '/'}: an object without properties (a map) has no strict form")
        properties = node.get("properties") or {}
        self.properties += len(properties)
        if self.properties > MAX_PROPERTIES:
            raise Unexpressible(f"over {MAX_PROPERTIES} properties in all")
        required = set(node.get("required") or ())
        converted = {}
        for name, sub in properties.items():
            strict = self.node(sub, f"{path}/{name}", depth)
            converted[name] = strict if name in required else nullable(strict)
        if node.get("additionalProperties", False) is not False:
            self.dropped.add("additionalProperties")
        return {"properties": converted, "required": list(properties), "additionalProperties": False}


def nullable(node: dict[str, Any]) -> dict[str, Any]:
    """`node` that also accepts null: how strict mode writes an optional property (it must be required)."""
    types, already = types_of(node)
    if already or any(isinstance(b, dict) and b.get("type") == "null" for b in node.get("anyOf") or ()):
        return node
    out = dict(node)
    if types:
        out["type"] = [*types, "null"]
    elif "anyOf" in out:
        out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]
    return out


def strict_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the strict form of a tool's input schema, the keywords dropped to get there), or Unexpressible."""
    inlined = {k: v for k, v in inline_refs(schema).items() if k != "$schema"}
    types, _ = types_of(inlined)
    if types != ["object"] or any(k in inlined for k in ("anyOf", "oneOf", "allOf")):
        raise Unexpressible("the input schema is not one object schema (strict mode takes no union at the root)")
    if not inlined.get("properties") and "additionalProperties" not in inlined:
        inlined = {**inlined, "properties": {}, "additionalProperties": False}  # a tool without arguments
    walk = _Walk()
    out = walk.node(inlined, "", 0)
    return out, sorted(walk.dropped)
