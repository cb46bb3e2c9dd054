"""Every tool of every published catalog (../shared/catalogs) in every format, checked with the providers' own
types (tests/provider_types.py); and the schema adaptations, case by case. Pure functions: no stack."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from openapi_spec_validator import validate

from broker.translate.arguments import drop_strict_nulls
from broker.translate.definitions import FORMATS, UnknownFormat, tool_definitions
from broker.translate.gemini import gemini_schema
from broker.translate.names import provider_name
from broker.translate.openai_strict import strict_schema
from broker.translate.openapi import COMPONENT_SCHEMAS, openapi_document
from broker.translate.schemas import Unexpressible, inline_refs
from tests.provider_types import CHECKS, check_openai_strict
from tests.shared_catalogs import catalogs, namespaced_tools


def _entries(answer: dict[str, Any]) -> list[dict[str, Any]]:
    if answer["format"] == "gemini":
        return [d for tool in answer["tools"] for d in tool["functionDeclarations"]]
    return answer["tools"]


def _name(fmt: str, entry: dict[str, Any]) -> str:
    return entry["function"]["name"] if fmt == "openai" else entry["name"]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_catalog_tool_translates_or_is_reported(fmt: str) -> None:
    tools = namespaced_tools()
    answer = tool_definitions(tools, fmt)
    for tool in answer["tools"]:
        CHECKS[fmt](tool)
    entries = _entries(answer)
    unsupported = {u["name"]: u["reason"] for u in answer["unsupported"]}
    assert all(reason for reason in unsupported.values())
    assert len(entries) + len(unsupported) == len(tools)
    listed = [answer["renamed"].get(_name(fmt, e), _name(fmt, e)) for e in entries]
    assert listed == sorted(t["name"] for t in tools if t["name"] not in unsupported)  # MCP-name order
    for entry, name in zip(entries, listed, strict=True):
        assert _name(fmt, entry) == provider_name(name, fmt)
    json.dumps(answer, allow_nan=False)
    shuffled = list(tools)
    random.Random(7).shuffle(shuffled)
    assert tool_definitions(shuffled, fmt) == answer  # deterministic whatever order the backends published in
    print(f"{fmt}: {len(entries)} tools, {len(unsupported)} unsupported, {len(answer['adapted'])} notes, "
          f"{len(answer['renamed'])} renamed")


def test_strict_where_possible_and_loose_when_asked() -> None:
    tools = namespaced_tools()
    strict = tool_definitions(tools, "openai-responses")
    loose = tool_definitions(tools, "openai-responses", strict=False)
    strict_count = sum(1 for t in strict["tools"] if t["strict"])
    assert strict_count > len(tools) * 0.8  # measured: 2,119 of 2,379
    assert not any(t["strict"] for t in loose["tools"])
    by_name = {t["name"]: t for t in tools}
    for tool in loose["tools"]:
        original = by_name[loose["renamed"].get(tool["name"], tool["name"])]["inputSchema"]
        assert tool["parameters"] == {k: v for k, v in original.items() if k != "$schema"}
    not_strict = {a["name"] for a in strict["adapted"] if a["reason"].startswith("strict false")}
    assert len(not_strict) == len(tools) - strict_count


def test_strict_form() -> None:
    schema = {"type": "object", "$schema": "http://json-schema.org/draft-07/schema#",
              "properties": {"q": {"type": "string", "minLength": 1, "format": "uri"},
                             "limit": {"type": "integer", "default": 10, "minimum": 1},
                             "mode": {"enum": ["a", "b"]},
                             "when": {"type": ["string", "number"]},
                             "filter": {"$ref": "#/$defs/F", "description": "which"}},
              "required": ["q"], "additionalProperties": True,
              "$defs": {"F": {"type": "object", "description": "F", "properties": {"k": {"const": "x"}},
                              "required": ["k"]}}}
    strict, dropped = strict_schema(schema)
    check_openai_strict(strict)
    assert dropped == ["additionalProperties", "default", "format uri", "minLength"]
    assert strict == {
        "type": "object",
        "properties": {
            "q": {"type": "string"},
            "limit": {"type": ["integer", "null"], "minimum": 1},
            "mode": {"enum": ["a", "b", None]},
            "when": {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]},
            "filter": {"type": ["object", "null"], "description": "which", "properties": {"k": {"const": "x"}},
                       "required": ["k"], "additionalProperties": False},
        },
        "required": ["q", "limit", "mode", "when", "filter"], "additionalProperties": False}
    # the nulls a model sends for what it left out are removed again, and only those
    arguments = {"q": "z", "limit": None, "mode": None, "when": None, "filter": {"k": "x"}}
    assert drop_strict_nulls(arguments, schema) == {"q": "z", "filter": {"k": "x"}}
    nullable = {"type": "object", "properties": {"note": {"type": ["string", "null"]}}}
    assert drop_strict_nulls({"note": None}, nullable) == {"note": None}


@pytest.mark.parametrize(("schema", "reason"), [
    ({"type": "object", "properties": {"m": {"type": "object", "additionalProperties": {"type": "string"}}}},
     "/m: an object without properties (a map) has no strict form"),
    ({"type": "object", "properties": {"v": {"description": "anything"}}},
     "/v: a schema that accepts any value has no strict form"),
    ({"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}},
      "$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}},
     "the schema is recursive ($ref '#/$defs/N' refers to itself)"),
    ({"type": "object", "properties": {"t": {"type": "array", "prefixItems": [{"type": "string"}]}}},
     "/t: an array without one items schema has no strict form"),
    ({"type": "object", "properties": {"a": {"allOf": [{"type": "string"}, {"maxLength": 3}]}}},
     "/a: allOf of several schemas has no strict form"),
    ({"type": "object", "properties": {"r": {"$ref": "#/$defs/missing"}}}, "$ref '#/$defs/missing' points at nothing"),
])
def test_no_strict_form(schema: dict[str, Any], reason: str) -> None:
    with pytest.raises(Unexpressible) as err:
        strict_schema(schema)
    assert str(err.value) == reason
    answer = tool_definitions([{"name": "s__t", "inputSchema": schema}], "openai")
    assert answer["tools"][0]["function"]["strict"] is False
    assert answer["adapted"] == [{"name": "s__t", "reason": f"strict false: {reason}"}]


def test_gemini_schema() -> None:
    schema = {"type": "object", "properties": {
        "q": {"type": ["string", "null"], "format": "uri", "description": "query"},
        "n": {"anyOf": [{"type": "integer", "exclusiveMinimum": 0}, {"type": "null"}], "default": None},
        "kind": {"const": "a"},
        "tags": {"type": "array", "items": {"enum": ["x", "y"]}},
        "either": {"oneOf": [{"type": "string"}, {"type": "object", "properties": {"z": {"type": "boolean"}}}]},
        "loc": {"$ref": "#/properties/q"}},
        "required": ["q", "gone"], "additionalProperties": False}
    converted, dropped = gemini_schema(schema)
    assert dropped == ["additionalProperties", "default", "exclusiveMinimum (as minimum)", "format uri"]
    assert converted == {"type": "OBJECT", "properties": {
        "q": {"type": "STRING", "description": "query", "nullable": True},
        "n": {"type": "INTEGER", "minimum": 0, "nullable": True},
        "kind": {"type": "STRING", "enum": ["a"], "format": "enum"},
        "tags": {"type": "ARRAY", "items": {"type": "STRING", "enum": ["x", "y"], "format": "enum"}},
        "either": {"anyOf": [{"type": "STRING"}, {"type": "OBJECT", "properties": {"z": {"type": "BOOLEAN"}}}]},
        "loc": {"type": "STRING", "description": "query", "nullable": True}},
        "required": ["q"]}
    CHECKS["gemini"]({"functionDeclarations": [{"name": "t", "parameters": converted}]})


def test_gemini_falls_back_to_json_schema_and_omits_empty_parameters() -> None:
    dashed = {"type": "object", "properties": {"auth-method": {"type": "string"}}}
    no_arguments = {"type": "object", "properties": {}}
    answer = tool_definitions([{"name": "a__dashed", "inputSchema": dashed},
                               {"name": "a__none", "description": "d", "inputSchema": no_arguments}], "gemini")
    assert answer["tools"] == [{"functionDeclarations": [
        {"name": "a__dashed", "parametersJsonSchema": dashed},
        {"name": "a__none", "description": "d"}]}]
    assert answer["adapted"] == [{"name": "a__dashed", "reason": "parametersJsonSchema (JSON Schema) instead of "
                                  "parameters: /: property name 'auth-method' is outside Gemini's "
                                  "[A-Za-z_][A-Za-z0-9_]{0,63}"}]
    CHECKS["gemini"](answer["tools"][0])


def test_unsupported_and_collisions_reported() -> None:
    dotted = "a.b__c"
    tools = [{"name": dotted, "inputSchema": {"type": "object"}},
             {"name": provider_name(dotted, "anthropic"), "inputSchema": {"type": "object"}},
             {"name": "x__union", "inputSchema": {"type": "object", "anyOf": [{"required": ["a"]}]}},
             {"name": "x__array", "inputSchema": {"type": "array"}}]
    answer = tool_definitions(tools, "anthropic")
    assert [t["name"] for t in answer["tools"]] == [provider_name(dotted, "anthropic")]
    assert answer["unsupported"] == [
        {"name": dotted, "reason": f"its anthropic name {provider_name(dotted, 'anthropic')!r} is the name of "
                                   f"{provider_name(dotted, 'anthropic')!r}"},
        {"name": "x__array", "reason": "the input schema is not one object schema (the LLM APIs take no union, "
                                       "enum or negation at the root)"},
        {"name": "x__union", "reason": "the input schema is not one object schema (the LLM APIs take no union, "
                                       "enum or negation at the root)"}]
    with pytest.raises(UnknownFormat, match="mcp, openai, openai-responses, anthropic, gemini"):
        tool_definitions(tools, "cohere")


def test_inline_refs_keeps_the_original() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}, "b": {"$ref": "#/properties/a"}},
              "$defs": {"A": {"type": "string"}}}
    before = json.dumps(schema)
    assert inline_refs(schema) == {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}}
    assert json.dumps(schema) == before
    deep = {"type": "object", "properties": {"x": {"$ref": "#/$defs/L0"}},
            "$defs": {f"L{i}": {"type": "object", "properties": {"p": {"$ref": f"#/$defs/L{i + 1}"},
                                                                 "q": {"$ref": f"#/$defs/L{i + 1}"}}}
                      for i in range(30)} | {"L30": {"type": "string"}}}
    with pytest.raises(Unexpressible, match="too large once its \\$refs are inlined"):
        inline_refs(deep)


def test_openapi_document_over_the_catalogs() -> None:
    """One operation per catalog tool with a unique operationId; checked with openapi-spec-validator on every
    tool whose schema could not be inlined (placed under components) and the first tool of each catalog: the
    validator takes minutes over all 2,385 operations (8.8 MB) on this machine."""
    tools = namespaced_tools()
    document = openapi_document(tools, server_url="http://127.0.0.1:8000", formats=list(FORMATS), admin=True)
    operations = {p: item["post"] for p, item in document["paths"].items() if p.startswith("/v1/tools/")}
    assert sorted(operations) == sorted(f"/v1/tools/{t['name']}" for t in tools)
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    placed = {name for name in document["components"]["schemas"] if name not in COMPONENT_SCHEMAS}
    assert len(placed) == 10  # the recursive schemas of ms-365-mcp
    firsts = {tool["name"] for tools_of in catalogs().values() for tool in tools_of[:1]}
    sample = [t for t in tools if provider_name(t["name"], "openai") in placed
              or t["name"].split("__", 1)[1] in firsts]
    validate(openapi_document(sample, server_url="http://127.0.0.1:8000", formats=list(FORMATS), admin=True))
