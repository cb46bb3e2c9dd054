"""Lossless compaction of JSON text content: `raw` | `compact` | `toon` (the `result_format` setting).

Only a text that parses as a JSON object or array is touched; anything else (prose, a log, a lone
number, JSON with duplicate keys, NaN/Infinity or a number a double cannot hold) stays as the backend
wrote it, so nothing that is not strictly JSON is reinterpreted. Every rewrite is checked by decoding it
back: the value must be identical (numbers as the doubles JSON parsers read, `true` never equal to `1`),
else the text goes out compact (and compact must round-trip too, else raw).

- compact: minified JSON (no indentation, `ensure_ascii=False`): pretty-printed backends lose their
  whitespace, 20-45 % of their tokens (bench/context_results.py).
- toon: TOON (Token-Oriented Object Notation, the official `toon-format` library), kept only where it is
  smaller in tokens than compact JSON: uniform arrays of objects (a table: the keys once, then rows)
  save ~40 % more; nested or irregular data, where TOON's indentation costs more than braces, stays compact.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import toon_format

from broker.context import tokens

FORMATS = ("raw", "compact", "toon")


class NotStrictJSON(ValueError):
    """The text is JSON only to a lenient parser (duplicate keys, NaN, an overflowing number)."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise NotStrictJSON("duplicate keys")
    return value


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise NotStrictJSON(f"{text} overflows a double")
    return number


def _constant(name: str) -> Any:
    raise NotStrictJSON(f"{name} is not JSON")


def parse(text: str) -> Any:
    """The JSON object or array `text` holds, or None when it holds anything else."""
    stripped = text.lstrip()
    if not stripped or stripped[0] not in "[{":
        return None
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_float=_finite, parse_constant=_constant)
    except (ValueError, RecursionError):
        return None


def identical(a: Any, b: Any) -> bool:
    """JSON value equality: numbers by value (1 == 1.0), but a boolean is never a number."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    return False


def compact_text(value: Any) -> str | None:
    """Minified JSON of `value`, or None if it would not decode back to the same value."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")  # a lone surrogate from a \ud800 escape: keep it escaped instead
    except UnicodeEncodeError:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return None
    return text if identical(json.loads(text), value) else None


def toon_text(value: Any) -> str | None:
    """TOON of `value`, or None if the library cannot encode it or it would not decode to the same value."""
    try:
        text = toon_format.encode(value)
        return text if identical(toon_format.decode(text), value) else None
    except (TypeError, ValueError, RecursionError, toon_format.ToonDecodeError):
        return None


def _compact(text: str, value: Any) -> str:
    return compact_text(value) or text


def _toon(text: str, value: Any) -> str:
    compact = _compact(text, value)
    toon = toon_text(value)
    return toon if toon is not None and tokens.count(toon) < tokens.count(compact) else compact


REWRITERS: dict[str, Callable[[str, Any], str]] = {"compact": _compact, "toon": _toon}


def rewrite(text: str, result_format: str) -> str:
    """`text` in `result_format` (unchanged for `raw`, or when it is not a JSON object or array)."""
    rewriter = REWRITERS.get(result_format)
    if rewriter is None:
        return text
    value = parse(text)
    if value is None:
        return text
    try:
        return rewriter(text, value)
    except RecursionError:  # nested deeper than the checks can walk (`[` * 500): left as the backend wrote it
        return text


def decode(text: str) -> Any:
    """The JSON value of a text `rewrite` produced (JSON first, else TOON): what a program reading a shaped
    result would do, and what the round-trip tests check."""
    value = parse(text)
    if value is not None:
        return value
    return toon_format.decode(text)
