"""Any input schema a server may publish, well-formed or not, is translated or reported: never an exception
(hypothesis over generated schemas, with the JSON Schema keywords the adapters read, wrong types included)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.translate.definitions import FORMATS, tool_definitions
from broker.translate.openapi import openapi_document
from tests.provider_types import CHECKS

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=5))
TYPES = st.sampled_from(["string", "number", "integer", "boolean", "object", "array", "null", "bogus"])
NAMES = st.sampled_from(["a", "b", "auth-method", "$ref", "enum", "properties", "x y"])


def schemas() -> st.SearchStrategy[Any]:
    def extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        keyword = st.one_of(
            st.tuples(st.just("type"), st.one_of(TYPES, st.lists(TYPES, max_size=3), SCALARS)),
            st.tuples(st.just("properties"), st.one_of(st.dictionaries(NAMES, inner, max_size=3), SCALARS)),
            st.tuples(st.just("required"), st.one_of(st.lists(NAMES, max_size=3), SCALARS)),
            st.tuples(st.sampled_from(["items", "additionalProperties", "not"]), inner),
            st.tuples(st.sampled_from(["anyOf", "oneOf", "allOf", "prefixItems"]),
                      st.one_of(st.lists(inner, max_size=3), SCALARS)),
            st.tuples(st.sampled_from(["enum", "examples"]), st.lists(SCALARS, max_size=3)),
            st.tuples(st.sampled_from(["const", "default", "format", "pattern", "minimum", "exclusiveMinimum",
                                       "minLength", "description", "title"]), SCALARS),
            st.tuples(st.just("$ref"), st.sampled_from(["#", "#/$defs/D", "#/properties/a", "#/nowhere",
                                                        "http://x/y", "#/$defs/D/properties/a"])),
            st.tuples(st.just("$defs"), st.dictionaries(st.just("D"), inner, max_size=1)),
        )
        return st.one_of(st.booleans(), st.lists(keyword, max_size=5).map(dict))

    return st.recursive(st.just({}), extend, max_leaves=12)


ROOTS = schemas().map(lambda s: {"type": "object", **s} if isinstance(s, dict) else s)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=st.one_of(ROOTS, SCALARS), description=st.one_of(st.none(), st.text(max_size=5)))
def test_any_schema_is_translated_or_reported(schema: Any, description: str | None) -> None:
    tool = {"name": "fuzz__tool", "inputSchema": schema, **({"description": description} if description else {})}
    for fmt in FORMATS:
        if fmt == "mcp":
            continue
        answer = tool_definitions([tool], fmt)
        assert len(answer["unsupported"]) + (1 if answer["tools"] else 0) == 1
        for entry in answer["tools"]:
            CHECKS[fmt](entry)
    openapi_document([tool], server_url="http://127.0.0.1:8000", formats=list(FORMATS), admin=False)
