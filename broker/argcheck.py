r"""A tool's arguments checked against its input schema: None when they fit, else the first way they break it.

Every `tools/call` is checked once, before it is queued (a backend tool's schema from the catalog,
`ToolEntry`, or a broker tool's own, `broker.context.tools`). `jsonschema`'s `iter_errors` walks the schema
in Python (descend, evolve, a generator per keyword) on every call, valid or not: 3.7 us for the probe's
empty-object schema, 18 us for a two-property one, and ~7.6 % of the web's samples over WebSocket at 64 in
flight (py-spy). So a compiled `jsonschema_rs` validator (Rust) answers the common question first, "valid?",
in 0.15-0.26 us for the same schemas; only arguments it refuses are walked by `jsonschema`, whose `best_match`
words the error, so an error's text is the one it always was. `jsonschema` stays the judge: arguments
`jsonschema_rs` refuses but `jsonschema` passes are passed.

`jsonschema_rs` is built to agree with `jsonschema` on what passes: `format` is never asserted (as
`jsonschema` without a format checker does; `jsonschema_rs` asserts it by default for drafts 4-7), and it is
`offline` (a remote `$ref` is never fetched). A schema it cannot compile (draft 3, a remote or unknown
`$ref`, a pattern its regex engine refuses) and arguments it cannot read are left to `jsonschema` alone, as
before. A schema `jsonschema` finds broken is not checked at all: the backend judges.

Two keywords it does not agree on, so a schema holding either anywhere (the whole schema is walked once, at
build: `$defs`/`definitions`, `properties`, `not`, `propertyNames`, every subschema) takes the slow path,
`jsonschema` alone, as before the gate:
- regexes (`pattern`, `patternProperties`' keys; `propertyNames` patterns are `pattern`s): `jsonschema_rs`
  reads them as ECMA-262, `jsonschema` with Python's `re`, and their classes differ outside ASCII: `^\W+$`
  passes "é" in ECMA (`\w` is ASCII there) but not in `re`; likewise `^\D+$` with "٣", `^[^\w]$` / `^[\W]$`
  with "é", `^\S$` with "\x1c" and `^\s+$` with "\ufeff". Under `not` any difference turns into a pass
  `jsonschema` refuses, so no pattern is trusted, not even an ASCII-only one.
- a float `multipleOf`: `jsonschema` divides in floats (0.3 / 0.1 = 2.9999999999999996, refused) where
  `jsonschema_rs` passes 0.3 for 0.1, and 0.07 or 19.99 for 0.01. An integer `multipleOf` agrees (20,000
  hypothesis cases of floats and ints up to 2**80 against multipleOf 1 .. 2**70), so it keeps the gate.
Plain schemas (types, properties, required, enum, bounds, lengths, `$ref`s, combinators), the usual tool
schema, keep the fast gate. A property *named* "pattern" (a grep tool's argument) is a name, not a keyword.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import jsonschema_rs

# Keywords whose value maps names (property names, definition names) to subschemas: their keys are not keywords.
_NAME_MAPS = frozenset({"properties", "$defs", "definitions", "dependentSchemas", "dependencies"})


def disagrees(schema: Any) -> bool:
    """Whether `schema` holds, anywhere, a keyword the two validators judge differently (a regex, a float
    `multipleOf`). Conservative: a keyword-like key inside data (`default`, `enum`) counts too; that only
    costs the gate, never a wrong pass."""
    if isinstance(schema, list):
        return any(disagrees(item) for item in schema)
    if not isinstance(schema, dict):
        return False
    for key, value in schema.items():
        if key in ("pattern", "patternProperties"):
            return True
        if key == "multipleOf" and isinstance(value, float):
            return True
        if key in _NAME_MAPS and isinstance(value, dict):
            if any(disagrees(sub) for sub in value.values()):
                return True
        elif disagrees(value):
            return True
    return False


class ArgumentCheck:
    """One input schema's check (built once per tool, used for every call of it)."""

    def __init__(self, schema: dict[str, Any], default: type[jsonschema.protocols.Validator] | None = None) -> None:
        """`default`: the draft of a schema without `$schema` (2020-12 unless said)."""
        self._slow: jsonschema.protocols.Validator | None = None
        self._fast: Any = None
        try:
            cls = jsonschema.validators.validator_for(schema, default=default or jsonschema.Draft202012Validator)
            cls.check_schema(schema)
            self._slow = cls(schema)
        except jsonschema.SchemaError:
            return  # the backend's schema is broken; let the backend judge
        if disagrees(schema):
            return  # `jsonschema` alone: the compiled validator would pass what it refuses
        try:
            self._fast = jsonschema_rs.validator_for(schema, validate_formats=False, offline=True)
        except (jsonschema_rs.ValidationError, ValueError, TypeError):
            self._fast = None  # `jsonschema` alone, as before

    def errors(self, arguments: Any) -> str | None:
        """The first way `arguments` break the schema (`jsonschema.exceptions.best_match`'s words), or None."""
        if self._slow is None:
            return None
        if self._fast is not None:
            try:
                if self._fast.is_valid(arguments):
                    return None
            except (ValueError, TypeError, OverflowError):
                pass  # not something it reads: `jsonschema` decides
        error = jsonschema.exceptions.best_match(self._slow.iter_errors(arguments))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{where}: {error.message}" if where else error.message
