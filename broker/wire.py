"""JSON on the wire: what the broker accepts from clients and what it sends to anyone.

Python's `json` is more lenient than JSON (RFC 8259) in two ways that hurt a gateway:

- it reads and writes `NaN`, `Infinity` and `-Infinity` (and reads `1e400` as infinity). A client's
  `"progressToken": NaN` came back in progress notifications as `NaN`, which is not JSON: the client's
  own parser fails on the broker's answer. So input with a non-finite number is refused as a parse error
  (`loads`), and every message the broker writes is valid JSON whatever it holds (`dumps`: a non-finite
  number that reached it from a backend is written as `null`, as JavaScript's `JSON.stringify` does).
- it decodes the escape `"\\ud800"` (legal JSON text) to a lone surrogate, a string no UTF-8 writer can
  encode. Sent on to a stdio backend it killed the SDK's stdin writer, and with it the warm session every
  other tenant's calls shared (issue 13, finding 1). So such input is refused at the edge, on every path,
  naming where it is (`lone_surrogate`), and `dumps` writes one that reached it from elsewhere as an
  ASCII escape instead of failing.

The web tier decodes every client frame and body with `loads` and checks it with `lone_surrogate`
(one place per transport: `Conversation.handle_message` for MCP on every transport, the `/v1`
body decoders), and writes every message with `dumps`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import orjson


class NonFiniteNumber(ValueError):
    """The text holds a number JSON cannot carry (NaN, Infinity, or a literal beyond a double's range)."""


def _refuse_constant(name: str) -> Any:
    raise NonFiniteNumber(f"{name} is not a JSON number (non-finite numbers are refused)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"the number {text[:40]} is out of range (it would be infinite)")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)  # one, reused: json.loads
# with hooks builds a decoder per call, which doubled the cost of decoding a small message


def loads(data: str | bytes | bytearray, strict: bool = True) -> Any:
    """`json.loads` that refuses non-finite numbers (`NonFiniteNumber`, a `ValueError`); like `json.loads`
    it raises `ValueError` for text that is not JSON and `RecursionError` for nesting too deep to decode.
    `strict=False`: plain `json.loads` (for what the broker wrote itself, a worker's message), as fast.

    Most text is read by orjson (`_fast_loads`), which reads what `json` reads the same way; what it
    refuses or could read otherwise goes to `json` below, which reads it or raises as it always did."""
    fast = _fast_loads(data)
    if fast is not _NOT_FAST:
        return fast
    if not strict:
        return json.loads(data)
    if isinstance(data, (bytes, bytearray)):
        data = data.decode(json.detect_encoding(data), "surrogatepass")  # what json.loads does with bytes
    elif data.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
    return _DECODER.decode(data)


_NOT_FAST = object()
# every byte to one of three: digits to "0", "[" and "{" to "[", anything else to " " (what `_fast_loads` counts)
_SHAPE = bytes(48 if 48 <= i <= 57 else 91 if i in (91, 123) else 32 for i in range(256))
_LONG_DIGITS = b"0" * 19
_NESTS_BELOW = 256  # '[' and '{' in the text: fewer, and it is nested less deep than `json` can read


def _fast_loads(data: str | bytes | bytearray) -> Any:
    """The value orjson reads from `data`, or `_NOT_FAST` where `json` must read it: orjson refuses it (not
    JSON, NaN, a number beyond a double, a lone surrogate, a BOM, text that is not UTF-8) or might read it
    otherwise: a run of 19 digits (an integer beyond 64 bits: orjson makes it a float, `json` an int) or
    256 brackets or more (`json` stops at Python's recursion limit, orjson at 1,024 levels). Both looks are
    one pass in C (`bytes.translate`). CPU per read, this path against `json` alone (process time of a loop
    of 50,000, 3 rounds): a tools/call frame 2.6-2.9 -> 2.2 us, a worker's outcome (0.3 KB) 4.5-4.8 -> 2.7-3.1 us."""
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            return _NOT_FAST
    shape = data.translate(_SHAPE)
    if _LONG_DIGITS in shape or shape.count(b"[") >= _NESTS_BELOW:
        return _NOT_FAST
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _NOT_FAST


def lone_surrogate(value: Any, root: str = "") -> str | None:
    """Where `value` holds a string (a value or an object key) that cannot be encoded as UTF-8, as a path
    like `params.arguments.text` or `calls[3].arguments` (`root` is its prefix), or None if there is none.

    The common case is one C-speed pass (orjson refuses any lone surrogate, in a value or a key); only a value
    that fails it is walked, without recursion (a decoded message may be nested as deep as the decoder allows)."""
    if _fast(value) is not None:
        return None
    try:
        json.dumps(value, ensure_ascii=False, check_circular=False).encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    except (RecursionError, ValueError, TypeError):
        pass  # too deep to serialise from here, or not plain JSON: walk it
    stack: list[tuple[str, Any]] = [(root, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return path or "(the value)"
        elif isinstance(item, dict):
            if not all(_encodable(key) for key in item if isinstance(key, str)):
                return f"{path}.<key>" if path else "<key>"
            stack.extend((f"{path}.{key}" if path else str(key), child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in reversed(list(enumerate(item))))
    return None


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def describe_surrogate(where: str) -> str:
    """The message a client gets for a lone surrogate: where, what, and what to send instead."""
    return (f"the string at {where} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which "
            f"cannot be encoded as UTF-8 text for the backend; send valid Unicode (a pair, or U+FFFD)")


def dumps(value: Any, **options: Any) -> str:
    """Compact JSON text that is always valid JSON and always encodable as UTF-8.

    A non-finite number becomes `null`; a lone surrogate is written as an ASCII escape (the same JSON
    string). `options` are `json.dumps` keyword arguments (`sort_keys`, `indent`, `default`, ...).

    With no option but `default` (every frame, every outcome, every call log line) orjson writes it: the
    text `json.dumps` writes for the JSON the broker carries (1e-7 spelt so, not 1e-07), non-finite numbers
    already as `null`, in ~1/8 of the instructions (`_fast`). What it refuses (a lone surrogate, an integer
    beyond 64 bits, a non-string key, nesting deeper than 255 levels, a type that is not plain JSON) takes
    the `json` path below, which writes or refuses it as before."""
    if not options.keys() - {"default"}:
        fast = _fast(value, options.get("default"))
        if fast is not None:
            return fast.decode("utf-8")
    options.setdefault("separators", (",", ":"))
    options.setdefault("ensure_ascii", False)
    options["allow_nan"] = False
    try:
        text = json.dumps(value, **options)
    except ValueError as err:
        if "Out of range float" not in str(err):
            raise
        value = json.loads(json.dumps(value, **{**options, "allow_nan": True}), parse_constant=lambda _: None)
        text = json.dumps(value, **options)
    if not options["ensure_ascii"] and not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(value, **{**options, "ensure_ascii": True})
    return text


# dataclasses and datetimes are not JSON to `json.dumps` (a TypeError): orjson must not write them either
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _fast(value: Any, default: Callable[[Any], Any] | None = None) -> bytes | None:
    """Compact UTF-8 JSON by orjson (non-finite numbers as `null`, like `dumps`), or None where orjson refuses
    the value and `json` must decide. Measured (valgrind --tool=callgrind, instructions per call, the
    `json` path against this one): `dumps` of a 0.2 KB tools/call result 41,253 -> 5,457; `encoded_size`
    of it 42,225 -> 4,610; `lone_surrogate` of a tools/call request 34,876 -> 4,762; `dumps` of a
    1,000-item result 5.88 M -> 0.74 M."""
    try:
        return orjson.dumps(value, default=default, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is one
        return None


def encoded_size(value: Any) -> int:
    """How many bytes `value` takes as the broker sends it (compact JSON, UTF-8)."""
    fast = _fast(value)
    return len(fast) if fast is not None else len(dumps(value).encode("utf-8"))
