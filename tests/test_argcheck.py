"""`broker.argcheck`: the compiled validator only says "valid" first; every answer is `jsonschema`'s own."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.argcheck import ArgumentCheck

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {}},
    {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}, "s": {"type": "string", "maxLength": 3},
                                      "e": {"enum": ["x", 1, None]}}, "required": ["a"],
     "additionalProperties": False},
    {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "number"}, "maxItems": 2},
                                      "o": {"type": "object", "additionalProperties": {"type": "boolean"}}}},
    {"type": "object", "properties": {"mail": {"type": "string", "format": "email"},
                                      "p": {"type": "string", "pattern": "^[a-c]+$"}}},
    {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
     "properties": {"when": {"type": "string", "format": "date-time"}, "n": {"type": "integer"}}},
    {"type": "object", "$defs": {"n": {"type": "integer"}}, "properties": {"r": {"$ref": "#/$defs/n"}},
     "oneOf": [{"required": ["r"]}, {"required": ["a"]}]},
]

# Arguments the compiled validator passed and `jsonschema` refuses (float division; ECMA-262 regex classes
# against Python's `re`): each must be refused, in `jsonschema`'s words.
DISAGREEMENTS: list[tuple[dict[str, Any], Any]] = [
    ({"multipleOf": 0.1}, 0.3),
    ({"multipleOf": 0.01}, 0.07),
    ({"multipleOf": 0.01}, 19.99),
    ({"type": "string", "pattern": r"^\W+$"}, "é"),
    ({"type": "string", "pattern": r"^\D+$"}, "٣"),
    ({"type": "string", "pattern": r"^[^\w]$"}, "é"),
    ({"type": "string", "pattern": r"^[\W]$"}, "é"),
    ({"type": "string", "pattern": r"^\S$"}, "\x1c"),
    ({"type": "string", "pattern": r"^\s+$"}, "\ufeff"),
]


def nested(where: str, inner: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """`inner` reached through a property, `$defs`/`definitions` (by `$ref`) or an `additionalProperties` array."""
    if where == "properties":
        return {"type": "object", "properties": {"x": inner}}, "x"
    if where == "$defs":
        return {"type": "object", "$defs": {"d": inner}, "properties": {"x": {"$ref": "#/$defs/d"}}}, "x"
    if where == "definitions":
        return {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                "definitions": {"d": inner}, "properties": {"x": {"$ref": "#/definitions/d"}}}, "x"
    return {"type": "object", "additionalProperties": {"type": "array", "items": inner}}, "x"


@pytest.mark.parametrize(("schema", "value"), DISAGREEMENTS)
@pytest.mark.parametrize("where", ["top", "properties", "$defs", "definitions", "items"])
def test_what_jsonschema_refuses_is_refused(schema: dict[str, Any], value: Any, where: str) -> None:
    if where == "top":
        whole, arguments = schema, value
    else:
        whole, key = nested(where, schema)
        arguments = {key: [value] if where == "items" else value}
    said = ArgumentCheck(whole).errors(arguments)
    assert said is not None
    assert said == jsonschema_says(whole, arguments)


@pytest.mark.parametrize(("schema", "arguments"), [
    ({"type": "object", "patternProperties": {r"^\W+$": {}}, "additionalProperties": False}, {"é": 1}),  # a key
    ({"type": "object", "propertyNames": {"pattern": r"^\W+$"}}, {"é": 1}),
    ({"type": "object", "not": {"propertyNames": {"pattern": r"^\w+$"}}}, {"é": 1}),
    ({"type": "object", "properties": {"x": {"not": {"pattern": r"^\w+$"}}}}, {"x": "é"}),
])
def test_regexes_on_names_and_under_not_are_jsonschemas(schema: dict[str, Any], arguments: Any) -> None:
    assert ArgumentCheck(schema).errors(arguments) == jsonschema_says(schema, arguments)


def test_plain_schemas_keep_the_gate() -> None:
    from broker.argcheck import disagrees

    grep = {"type": "object", "properties": {"pattern": {"type": "string"}, "n": {"type": "integer",
            "multipleOf": 2}}, "required": ["pattern"]}
    assert not disagrees(grep)  # a property named "pattern" and an integer multipleOf
    assert ArgumentCheck(grep)._fast is not None
    assert ArgumentCheck(grep).errors({"pattern": "a", "n": 3}) == "n: 3 is not a multiple of 2"
    assert disagrees({"type": "object", "$defs": {"d": {"anyOf": [{"multipleOf": 0.5}]}}})
    assert disagrees({"definitions": {"pattern": {"type": "object", "patternProperties": {"a": {}}}}})
    assert ArgumentCheck({"multipleOf": 2.0})._fast is None  # a float: `jsonschema` divides in floats


KEYS = st.sampled_from(["a", "s", "e", "items", "o", "mail", "p", "when", "n", "r", "z"])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(KEYS, inner, max_size=4), max_leaves=8)
ARGUMENTS = st.dictionaries(KEYS, JSON, max_size=4)


def jsonschema_says(schema: dict[str, Any], arguments: Any) -> str | None:
    """What the check said before the compiled gate (jsonschema alone)."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    error = jsonschema.exceptions.best_match(cls(schema).iter_errors(arguments))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


@pytest.mark.parametrize("schema", SCHEMAS)
@settings(max_examples=150, deadline=None)
@given(arguments=ARGUMENTS)
def test_every_answer_is_jsonschemas(schema: dict[str, Any], arguments: dict[str, Any]) -> None:
    check = ArgumentCheck(schema)
    assert (check._fast is None) == ("pattern" in str(schema))  # these compile: the gate is in use, but for regexes
    assert check.errors(arguments) == jsonschema_says(schema, arguments)


def test_formats_are_not_asserted_and_errors_keep_their_words() -> None:
    check = ArgumentCheck(SCHEMAS[4])  # draft 7, where jsonschema_rs asserts formats unless told not to
    assert check.errors({"when": "not a date"}) is None
    assert check.errors({"n": "7"}) == "n: '7' is not of type 'integer'"
    assert ArgumentCheck(SCHEMAS[1]).errors({"a": -1}) == "a: -1 is less than the minimum of 0"


def test_what_the_compiled_validator_cannot_take_is_left_to_jsonschema() -> None:
    remote = {"type": "object", "properties": {"x": {"$ref": "https://127.0.0.1:1/never-fetched.json"}}}
    check = ArgumentCheck(remote)
    assert check._fast is None  # offline: not fetched, not compiled
    assert check.errors({"y": 1}) is None
    draft3 = {"$schema": "http://json-schema.org/draft-03/schema#", "type": "object",
              "properties": {"a": {"type": "integer", "required": True}}}
    check = ArgumentCheck(draft3)
    assert check._fast is None
    assert check.errors({}) == jsonschema_says(draft3, {}) is not None
    assert ArgumentCheck({"type": 5}).errors({"a": 1}) is None  # a broken schema: the backend judges
