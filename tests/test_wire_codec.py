"""`broker.wire.dumps` writes with orjson when it can: the same guarantees as the `json` path (valid JSON,
no NaN, valid UTF-8 out), the same text for what the broker carries, and `json`'s answer where orjson
refuses a value. No stack: the codec alone."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime

import pytest

from broker import wire

POISON = "\ud800"
SAMPLES = [
    {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "héllo ✓ 😀"}], "isError": False}},
    {"floats": [0.1, 1e16, 1e-7, -0.0, 3.141592653589793, 1.7976931348623157e308], "ints": [0, -1, 2**63 - 1]},
    {"controls": "\x00\x01\n\t\"\\/\x7f\u2028\u2029</script>", "empty": {}, "list": [], "none": None},
    ["nested", [[[{"k": [True, False, None]}]]]],
    "a bare string",
]


def strict(text: str) -> object:
    def refuse(name: str) -> object:
        raise AssertionError(f"{name} in the output")

    return json.loads(text.encode("utf-8"), parse_constant=refuse)


@pytest.mark.parametrize("value", SAMPLES)
def test_the_fast_path_writes_what_json_writes(value: object) -> None:
    assert wire._fast(value) is not None  # taken by orjson
    assert strict(wire.dumps(value)) == value
    assert wire.encoded_size(value) == len(wire.dumps(value).encode("utf-8"))
    if "1e-07" not in json.dumps(value):  # the one spelling that differs: orjson writes 1e-7, the same number
        assert wire.dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert wire.lone_surrogate(value) is None


def test_non_finite_numbers_become_null_on_both_paths() -> None:
    held = {"nan": math.nan, "inf": [math.inf, -math.inf]}
    assert wire._fast(held) is not None
    assert strict(wire.dumps(held)) == {"nan": None, "inf": [None, None]}
    assert strict(wire.dumps(held, sort_keys=True)) == {"inf": [None, None], "nan": None}  # the json path


@pytest.mark.parametrize("value", [
    {"text": f"a{POISON}b", "n": math.nan},  # a lone surrogate: escaped, never written raw
    {f"key{POISON}": 1},
    {"big": 2**70},  # beyond 64 bits: json writes it exactly
    {1: "int key", None: "null key"},  # json makes them strings
    json.loads("[" * 300 + "]" * 300),  # deeper than orjson's 255 levels
])
def test_what_orjson_refuses_takes_the_json_path(value: object) -> None:
    assert wire._fast(value) is None
    text = wire.dumps(value)
    text.encode("utf-8")  # always encodable
    assert strict(text) is not None or text == "null"
    assert wire.encoded_size(value) == len(text.encode("utf-8"))


def test_lone_surrogates_are_still_found_where_they_are() -> None:
    assert wire.lone_surrogate({"a": [{"b": f"x{POISON}"}]}, "params") == "params.a[0].b"
    assert wire.lone_surrogate({f"k{POISON}": 1}) == "<key>"
    assert wire.lone_surrogate({"big": 2**70, "fine": "ok"}) is None  # orjson refuses it, the walk clears it


def test_types_json_refuses_are_still_refused() -> None:
    @dataclass
    class Point:
        x: int

    for value in (Point(1), datetime(2026, 1, 1), {1, 2}):
        with pytest.raises(TypeError):
            wire.dumps(value)


def _json_reads(text: str | bytes, strict: bool = True) -> object:
    """What `wire.loads` read before its orjson path: `json` alone (with its non-finite refusal)."""
    if not strict:
        return json.loads(text)
    if isinstance(text, bytes):
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    elif text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return wire._DECODER.decode(text)


@pytest.mark.parametrize("text", [
    '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"e__echo","arguments":{"t":"héllo ✓"}}}',
    '{"ints":[0,-0,9223372036854775807,-9223372036854775808,18446744073709551615],"f":[1.5,1e5,-0.0,1E-7,1.5e308]}',
    '{"big":123456789012345678901234567890,"neg":-99999999999999999999}',  # beyond 64 bits: ints, as json reads
    '{"s":"0123456789012345678901234"}',  # a long digit run in a string: json reads it (the same value)
    "[" * 300 + "]" * 300,  # nested past 255: json reads it
    '{"a":1,"a":2}', ' {"w" : [ true , false , null ] } ', '"\\u0000\\ud83d\\ude00"',
])
def test_loads_reads_what_json_reads(text: str) -> None:
    for strict_ in (True, False):
        value = wire.loads(text, strict=strict_)
        assert value == _json_reads(text, strict_) and repr(value) == repr(_json_reads(text, strict_))
        assert wire.loads(text.encode("utf-8"), strict=strict_) == value


@pytest.mark.parametrize("text", ["NaN", '{"a":-Infinity}', '{"a":1e400}', "[1,2", "", '"\\ud800"', "\ufeff{}"])
def test_loads_refuses_and_reads_as_json_did(text: str) -> None:
    try:
        expected: object = _json_reads(text)
    except ValueError as err:
        with pytest.raises(type(err), match=None) as raised:
            wire.loads(text)
        assert str(raised.value) == str(err)
    else:  # a lone surrogate's escape: json reads it (`lone_surrogate` refuses it where it matters)
        assert wire.loads(text) == expected
    lenient = json.loads(text) if text not in ("[1,2", "", "\ufeff{}") else None
    if lenient is not None:
        assert repr(wire.loads(text, strict=False)) == repr(lenient)  # NaN and 1e400 as json reads them
