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
    assert check._fast is not None  # these compile: the gate is in use
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
