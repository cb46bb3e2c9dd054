"""Gemini's function declarations (`google.genai.types.FunctionDeclaration`, REST `functionDeclarations`).

A declaration's `parameters` is Gemini's `Schema`: a subset of the OpenAPI 3.0 schema object, not JSON Schema.
What it takes, per type, is what `google-genai`'s own `Schema.from_json_schema` keeps (3.6.1): `type`
(upper-case names), `nullable`, `anyOf`, `description`, `title`; strings `enum` (strings only), `format`,
`minLength`, `maxLength`, `pattern`; numbers `minimum`, `maximum`, `format`; arrays `items`, `minItems`,
`maxItems`; objects `properties`, `required`, `minProperties`, `maxProperties`. The API adds: property names
`^[A-Za-z_][A-Za-z0-9_]{0,63}$` (the `parameters` field's documentation), an OBJECT needs properties and an ARRAY
its `items`, string formats only `enum` and `date-time`, and no references. So `$ref`s are inlined
(broker/translate/schemas.py), `["string", "null"]` becomes `STRING` + `nullable`, an `anyOf` with a null branch
becomes the other branch + `nullable`, `oneOf` reads as `anyOf`, `const` a one-value enum, `exclusiveMinimum` a
`minimum`, and everything else is dropped (the broker still checks the arguments against the tool's own schema).

A schema the subset cannot carry (a map, a value of any type, a property named `auth-method`, recursion) is not
broken into something else: the declaration carries it as `parametersJsonSchema`, which the same SDK documents as
JSON Schema taken as it is ("mutually exclusive with `parameters`"), and the answer's `adapted` says so.
A tool without arguments has no `parameters` at all (the field's documentation: "can be left unset").
"""

from __future__ import annotations

import re
from typing import Any

from broker.translate.schemas import (
    Definition,
    Unexpressible,
    description_of,
    inline_refs,
    input_schema_of,
    is_null_schema,
    types_of,
)

PROPERTY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
COMMON = ("description", "title")
KEYWORDS_BY_TYPE: dict[str, tuple[str, ...]] = {  # google-genai's Schema.from_json_schema, per type
    "string": ("enum", "format", "minLength", "maxLength", "pattern"),
    "number": ("format", "minimum", "maximum"),
    "integer": ("format", "minimum", "maximum"),
    "array": ("minItems", "maxItems"),
    "object": ("minProperties", "maxProperties"),
    "boolean": (),
}
FORMATS = {"string": ("enum", "date-time"), "number": ("float", "double"), "integer": ("int32", "int64")}
HANDLED = frozenset({"type", "anyOf", "oneOf", "items", "properties", "required", "const", "exclusiveMinimum",
                     "exclusiveMaximum", *COMMON})


class _Walk:
    def __init__(self) -> None:
        self.dropped: set[str] = set()

    def node(self, node: Any, path: str) -> dict[str, Any]:
        where = path or "/"
        if not isinstance(node, dict):
            raise Unexpressible(f"{where}: a boolean schema")
        branches = node.get("anyOf", node.get("oneOf"))
        types, nullable = types_of(node)
        if isinstance(branches, list):
            kept = [b for b in branches if not is_null_schema(b)]
            nullable = nullable or len(kept) < len(branches)
            if len(kept) == 1:  # X or null: X, nullable (the common optional)
                rest = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
                return self.nullable(self.node({**kept[0], **rest}, path), nullable)
            if not types:
                out = {k: node[k] for k in COMMON if k in node}
                out["anyOf"] = [self.node(b, f"{path}/anyOf/{i}") for i, b in enumerate(kept)]
                return self.nullable(out, nullable)
            self.dropped.add("anyOf")
        if len(types) > 1:
            out = {k: node[k] for k in COMMON if k in node}
            out["anyOf"] = [self.node({"type": t, **{k: v for k, v in node.items() if k not in ("type", *COMMON)}},
                                      f"{path}/{t}") for t in types]
            return self.nullable(out, nullable)
        if not types:
            values = node["enum"] if isinstance(node.get("enum"), list) else [node["const"]] if "const" in node else []
            if values and all(isinstance(v, str) for v in values):
                types = ["string"]
            elif "properties" in node:
                types = ["object"]
            else:
                raise Unexpressible(f"{where}: a value of any type")
        kind = types[0]
        if kind not in KEYWORDS_BY_TYPE:
            raise Unexpressible(f"{where}: type {kind!r}")
        out = {"type": kind.upper(), **{k: node[k] for k in COMMON if k in node}}
        for key, value in node.items():
            if key in KEYWORDS_BY_TYPE[kind]:
                out[key] = value
            elif key not in HANDLED:
                self.dropped.add(key)
        self.typed(out, node, kind, path)
        return self.nullable(out, nullable)

    def typed(self, out: dict[str, Any], node: dict[str, Any], kind: str, path: str) -> None:
        """The keywords whose meaning Gemini writes otherwise, for a node of type `kind`."""
        if "format" in out and out["format"] not in FORMATS.get(kind, ()):
            self.dropped.add(f"format {out.pop('format')}")
        if "const" in node:
            if kind == "string" and isinstance(node["const"], str):
                out["enum"] = [node["const"]]
            else:
                self.dropped.add("const")
        if "enum" in out:
            if not all(isinstance(v, str) for v in out["enum"]):
                self.dropped.add("enum")
                del out["enum"]
            else:
                out["format"] = "enum"
        for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if isinstance(node.get(exclusive), int | float) and bound not in out and kind in ("number", "integer"):
                out[bound] = node[exclusive]
                self.dropped.add(f"{exclusive} (as {bound})")
        if kind == "array":
            items = node.get("items")
            if not isinstance(items, dict):
                raise Unexpressible(f"{path or '/'}: an array without one items schema")
            out["items"] = self.node(items, f"{path}/items")
        if kind == "object":
            properties = node.get("properties") or {}
            if not properties:
                raise Unexpressible(f"{path or '/'}: an object without properties (a map, or anything)")
            bad = [name for name in properties if not PROPERTY_NAME.fullmatch(name)]
            if bad:
                raise Unexpressible(f"{path or '/'}: property name {bad[0]!r} is outside Gemini's "
                                    f"[A-Za-z_][A-Za-z0-9_]{{0,63}}")
            out["properties"] = {name: self.node(sub, f"{path}/{name}") for name, sub in properties.items()}
            required = [name for name in node.get("required") or () if name in properties]
            if required:
                out["required"] = required
            if node.get("additionalProperties", False) is not False:
                self.dropped.add("additionalProperties")

    @staticmethod
    def nullable(out: dict[str, Any], nullable: bool) -> dict[str, Any]:
        return {**out, "nullable": True} if nullable else out


def gemini_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(Gemini's Schema for a tool's input schema, the keywords dropped), or Unexpressible."""
    walk = _Walk()
    return walk.node(inline_refs(schema), ""), sorted(walk.dropped)


def definition(tool: dict[str, Any], name: str, strict: bool) -> Definition:
    schema = input_schema_of(tool)
    payload: dict[str, Any] = {"name": name}
    if description := description_of(tool):
        payload["description"] = description
    if not schema.get("properties") and schema.get("additionalProperties", False) is False:
        return Definition(payload)  # no arguments: no parameters
    try:
        parameters, dropped = gemini_schema(schema)
    except Unexpressible as err:
        payload["parametersJsonSchema"] = schema
        return Definition(payload, (f"parametersJsonSchema (JSON Schema) instead of parameters: {err}",))
    payload["parameters"] = parameters
    notes = (f"Gemini's schema drops {', '.join(dropped)} (the broker still checks them)",) if dropped else ()
    return Definition(payload, notes)
