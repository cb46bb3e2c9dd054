"""The LLM APIs' own published types, as checks: a definition the translator produced is what the provider's SDK
describes (openai 3.63.0, anthropic 2.17.0, google-genai 3.6.1; test-only packages, never called over the
network), and its schema keeps to what that API takes.

The SDKs' request types are TypedDicts, which pydantic validates for types and required keys but not for keys
the type does not have: `check_typed` adds that, at every nested TypedDict.
"""

from __future__ import annotations

import functools
import json
import re
import types
import typing
from typing import Any

import jsonschema
import pydantic
from anthropic.types import ToolParam
from google.genai import types as genai_types
from openai.types.chat import ChatCompletionFunctionToolParam
from openai.types.responses import FunctionToolParam

NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
GEMINI_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}")
GEMINI_PROPERTY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
STRICT_KEYWORDS = {"type", "description", "title", "enum", "const", "anyOf", "pattern", "format", "multipleOf",
                   "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "items", "minItems", "maxItems",
                   "properties", "required", "additionalProperties"}
STRICT_FORMATS = {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}


def _typeddicts(annotation: Any) -> list[Any]:
    if typing.is_typeddict(annotation):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return [td for arg in typing.get_args(annotation) for td in _typeddicts(arg)]
    return []


def _no_extra_keys(typed: Any, value: dict[str, Any], path: str) -> None:
    hints = typing.get_type_hints(typed)
    extra = set(value) - set(hints)
    assert not extra, f"{path}: keys {sorted(extra)} are not in {typed.__name__}"
    for key, item in value.items():
        candidates = _typeddicts(hints[key])
        if isinstance(item, dict) and len(candidates) == 1:
            _no_extra_keys(candidates[0], item, f"{path}/{key}")


@functools.cache
def _adapter(typed: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(typed)


def check_typed(typed: Any, value: dict[str, Any]) -> None:
    """`value` validates as the SDK's TypedDict `typed`, with no key it does not describe."""
    _adapter(typed).validate_python(value)
    _no_extra_keys(typed, value, typed.__name__)


def check_json_schema(schema: dict[str, Any]) -> None:
    """An object schema valid under the 2020-12 meta-schema (what Anthropic and OpenAI read). Checked once per
    distinct schema: the meta-schema check costs 3-8 ms a schema on this machine, and the formats share most."""
    assert schema.get("type") == "object", schema
    _check_meta(json.dumps(schema, sort_keys=True))


@functools.cache
def _check_meta(schema_json: str) -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(schema_json))


def check_openai_strict(schema: Any, path: str = "") -> None:
    """The strict-mode subset, checked apart from the code that writes it."""
    assert isinstance(schema, dict), path
    assert set(schema) <= STRICT_KEYWORDS, f"{path}: {sorted(set(schema) - STRICT_KEYWORDS)}"
    assert "format" not in schema or schema["format"] in STRICT_FORMATS, path
    if "properties" in schema:
        assert schema.get("additionalProperties") is False, path
        assert sorted(schema["required"]) == sorted(schema["properties"]), path  # every property, once
        for name, sub in schema["properties"].items():
            check_openai_strict(sub, f"{path}/{name}")
    elif "object" in (schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]):
        raise AssertionError(f"{path}: an object without properties")
    if "items" in schema:
        check_openai_strict(schema["items"], f"{path}/items")
    for i, branch in enumerate(schema.get("anyOf", ())):
        check_openai_strict(branch, f"{path}/anyOf/{i}")


def check_openai_function(function: dict[str, Any]) -> None:
    assert NAME.fullmatch(function["name"]), function["name"]
    check_json_schema(function["parameters"])
    if function["strict"]:
        check_openai_strict(function["parameters"])


def check_openai_chat(tool: dict[str, Any]) -> None:
    check_typed(ChatCompletionFunctionToolParam, tool)
    check_openai_function(tool["function"])


def check_openai_responses(tool: dict[str, Any]) -> None:
    check_typed(FunctionToolParam, tool)
    check_openai_function(tool)


def check_anthropic(tool: dict[str, Any]) -> None:
    check_typed(ToolParam, tool)
    assert NAME.fullmatch(tool["name"]), tool["name"]
    check_json_schema(tool["input_schema"])


def _check_gemini_schema(schema: dict[str, Any], path: str) -> None:
    assert not {"$ref", "$defs", "ref", "defs", "additionalProperties", "additional_properties"} & set(schema), path
    if schema.get("type") == "OBJECT":
        assert schema.get("properties"), f"{path}: an OBJECT without properties"
        for name, sub in schema["properties"].items():
            assert GEMINI_PROPERTY.fullmatch(name), f"{path}: property {name!r}"
            _check_gemini_schema(sub, f"{path}/{name}")
        assert set(schema.get("required", ())) <= set(schema["properties"]), path
    if schema.get("type") == "ARRAY":
        assert "items" in schema, f"{path}: an ARRAY without items"
        _check_gemini_schema(schema["items"], f"{path}/items")
    for i, branch in enumerate(schema.get("anyOf", ())):
        _check_gemini_schema(branch, f"{path}/anyOf/{i}")


def check_gemini(tool: dict[str, Any]) -> None:
    """One `Tool` of function declarations, as google-genai's pydantic models (extra keys forbidden) take it."""
    genai_types.Tool.model_validate(tool)
    assert set(tool) == {"functionDeclarations"}, tool.keys()
    for declaration in tool["functionDeclarations"]:
        assert GEMINI_NAME.fullmatch(declaration["name"]), declaration["name"]
        assert not {"parameters", "parametersJsonSchema"} <= set(declaration), declaration["name"]
        if "parameters" in declaration:
            genai_types.Schema.model_validate(declaration["parameters"])
            assert declaration["parameters"]["type"] == "OBJECT"
            _check_gemini_schema(declaration["parameters"], declaration["name"])
        if "parametersJsonSchema" in declaration:
            check_json_schema(declaration["parametersJsonSchema"])


def check_mcp(tool: dict[str, Any]) -> None:
    import mcp_types

    mcp_types.Tool.model_validate(tool)


CHECKS = {  # format → the check of one entry of the answer's `tools`
    "mcp": check_mcp,
    "openai": check_openai_chat,
    "openai-responses": check_openai_responses,
    "anthropic": check_anthropic,
    "gemini": check_gemini,
}
