"""Fuzzing `/mcp` over WebSocket: thousands of random and mutated frames against the real web process.

The oracle, per frame: every message the broker sends back is well-formed JSON-RPC (a response with
exactly one of result/error and a valid id, or a notification/request with a method); a frame that
is not JSON (RFC 8259: `NaN`/`Infinity` are not) gets a -32700 error; nothing the broker sends holds a
non-finite number; a message with a lone surrogate (sent in strings, keys, ids and tool names) is refused,
its id answered as null if the id itself holds one; every request with a valid id gets an answer with that id (now or,
for a forwarded call, later; unless the fuzzer cancelled it); no answer is an "Internal error" (an
exception the broker did not expect). After each frame a `ping` sentinel marks where the frame's
immediate answers end. At the end the web process is still up and still answers.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import Counter
from typing import Any

import httpx2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from broker import wire
from tests.stack import Stack
from tests.wsclient import RawClient

EXAMPLES = 1500  # per test; two tests: random frames, and mutations of valid ones
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                HealthCheck.data_too_large, HealthCheck.filter_too_much])

# ---------------------------------------------------------------- strategies
# Lone surrogates (legal JSON escapes, not encodable as UTF-8) and non-finite numbers (json.dumps writes NaN and
# Infinity, which are not JSON) are what broke the broker before (issue 13): the broker must refuse both.
LONE_SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udbff", "x\ud83d"])
json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
                | st.text(max_size=12) | LONE_SURROGATES | st.sampled_from([math.nan, math.inf, -math.inf]))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
METHODS = ["initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/read",
           "resources/templates/list", "prompts/list", "prompts/get", "completion/complete", "logging/setLevel",
           "notifications/initialized", "notifications/cancelled", "server/discover", "no/such/method", ""]
methods = st.sampled_from(METHODS) | st.text(max_size=12)
ids = (st.integers(-(2**40), 2**40) | st.text(max_size=10) | st.none() | st.booleans() | st.floats(allow_nan=False)
       | LONE_SURROGATES)
TOOLS = ["echo__echo", "echo__add", "echo__fail", "echo__no_such", "time__get_current_time", "notes__nope", "nope", ""]
tool_names = st.sampled_from(TOOLS) | st.text(max_size=10) | LONE_SURROGATES
arguments = st.one_of(
    st.fixed_dictionaries({"text": st.text(max_size=20)}),
    st.fixed_dictionaries({"a": st.integers(-100, 100), "b": st.floats(-1e6, 1e6)}),
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    json_values,
)
params = st.one_of(
    st.fixed_dictionaries({"name": tool_names}, optional={"arguments": arguments, "_meta": json_values}),
    st.fixed_dictionaries({"protocolVersion": st.sampled_from(["2025-06-18", "2025-11-25", "1999-01-01"]) | json_values,
                           "capabilities": json_values, "clientInfo": json_values}),
    st.fixed_dictionaries({"cursor": json_values}),
    st.fixed_dictionaries({"uri": st.text(max_size=20) | json_values}),
    st.fixed_dictionaries({"requestId": ids}),
    st.fixed_dictionaries({"level": st.sampled_from(["debug", "info", "error", "loud"]) | json_values}),
    json_values,
)
messages = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0") | json_values, "method": methods},
    optional={"id": ids, "params": params},
) | st.fixed_dictionaries({"jsonrpc": st.just("2.0"), "id": ids},
                          optional={"result": json_values, "error": json_values})
valid_text = st.one_of(messages, st.lists(messages, max_size=4)).map(json.dumps)
frames_random = st.one_of(
    valid_text,
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.sampled_from(["", "[]", "{}", "null", "[[]]", "[1,2]", '{"jsonrpc":"2.0"}', "1" * 5000, "NaN", "-Infinity",
                     "1e400", '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"progressToken":NaN}}}',
                     '{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}']),
    st.integers(1, 200_000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 200_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
)


SYNTAX = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\\u00"]


@st.composite
def frames_mutated(draw: st.DrawFn) -> str | bytes:
    """A valid frame with bytes flipped, cut, inserted or repeated."""
    data = bytearray(draw(valid_text).encode())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "duplicate", "replace"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(SYNTAX))
        elif op == "truncate":
            del data[at:]
        elif op == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 40))]
        elif op == "replace" and data:
            data[at] = draw(st.sampled_from(list(b'{}[]",:0-.etfn\\')))
    raw = bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # not UTF-8: only a binary frame can carry it
    return raw if draw(st.booleans()) else text


# ---------------------------------------------------------------- oracle
def well_formed(message: Any) -> str | None:
    """None if `message` is well-formed JSON-RPC 2.0 from a server, else what is wrong with it."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return "not a JSON-RPC 2.0 object"
    if "method" in message:
        if not isinstance(message["method"], str):
            return "method is not a string"
        if "params" in message and not isinstance(message["params"], dict):
            return "params is not an object"
        return None
    if "id" not in message:
        return "a response without an id"
    rid = message["id"]
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        return f"bad response id {rid!r}"
    if ("result" in message) == ("error" in message):
        return "a response needs exactly one of result and error"
    if "error" in message:
        error = message["error"]
        if not isinstance(error, dict) or isinstance(error.get("code"), bool) or not isinstance(error.get("code"), int):
            return "error without an integer code"
        if not isinstance(error.get("message"), str):
            return "error without a message"
        if error["message"].startswith("Internal error"):
            return f"an unexpected exception in the broker: {error['message']}"
        return None
    return None if isinstance(message["result"], dict) else "result is not an object"


def valid_id(value: Any) -> bool:
    """An id the broker echoes: a string it can encode, or an integer (else its answer carries null)."""
    if isinstance(value, str):
        return wire.lone_surrogate(value) is None
    return isinstance(value, int) and not isinstance(value, bool)


def strict_loads(raw: str | bytes) -> Any:
    """What the broker sends, parsed as JSON (RFC 8259): a NaN or Infinity token fails the oracle."""
    def refuse(token: str) -> Any:
        raise AssertionError(f"the broker sent {token}, which is not JSON: {raw[:300]!r}")

    return json.loads(raw, parse_constant=refuse)


class Fuzzer:
    """One WebSocket conversation fed with fuzz frames; reconnects if the broker closes it (it may, for a
    frame far over the size limit) and counts what it expects to be answered later."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = RawClient(url)
        self.sentinels = 0
        self.frames = 0
        self.expected: Counter[Any] = Counter()  # request id → answers owed
        self.answered: Counter[Any] = Counter()
        self.cancelled: set[Any] = set()
        self.sent_ids: set[Any] = set()
        self.parse_errors = 0

    def _key(self, rid: Any) -> Any:
        return (type(rid).__name__, rid)  # 1 and "1" are different ids

    def _expect(self, element: Any) -> None:
        if not isinstance(element, dict):
            return
        if "id" in element:
            self.sent_ids.add(self._key(element["id"]) if valid_id(element["id"]) else None)
        if "method" in element and "id" in element and valid_id(element["id"]):
            self.expected[self._key(element["id"])] += 1
        if element.get("method") == "notifications/cancelled" and isinstance(element.get("params"), dict):
            target = element["params"].get("requestId")
            if valid_id(target):  # the broker cancels by id equality: True and 1.0 would hit 1 too
                self.cancelled.update({self._key(target), ("int", target), ("str", target)})
            elif isinstance(target, (bool, float)):
                self.cancelled.add(("int", int(target)) if float(target).is_integer() else None)

    def _record(self, raw: str | bytes) -> dict[str, Any]:
        message = strict_loads(raw)
        problem = well_formed(message)
        assert problem is None, f"{problem}: {raw!r}"
        if "method" not in message:
            rid = message["id"]
            assert rid is None or self._key(rid) in self.sent_ids or str(rid).startswith("sentinel-"), raw
            if rid is not None:
                self.answered[self._key(rid)] += 1
        return message

    def send(self, frame: str | bytes) -> None:
        if self.client.ws.close_code is not None:  # an earlier example failed with the socket closed: go on
            self.client = RawClient(self.url)
        self.frames += 1
        text = frame.decode("utf-8", errors="strict") if isinstance(frame, bytes) and _utf8(frame) else frame
        try:
            decoded: Any = wire.loads(text) if isinstance(text, str) else _Unparsable  # NaN is not JSON
        except (ValueError, RecursionError):
            decoded = _Unparsable
        for element in decoded if isinstance(decoded, list) else [decoded]:
            self._expect(element)
        self.sentinels += 1
        sentinel = f"sentinel-{self.sentinels}"
        try:
            self.client.ws.send(frame)
            self.client.send({"jsonrpc": "2.0", "id": sentinel, "method": "ping"})
            seen: list[dict[str, Any]] = []
            while True:
                message = self._record(self.client.ws.recv(timeout=30))
                if message.get("id") == sentinel:
                    break
                seen.append(message)
        except ConnectionClosed:
            # only a frame over the hard size limit may close the socket; ours are far below it
            raise AssertionError(f"the broker closed the socket after frame {frame[:200]!r}") from None
        if decoded is _Unparsable:
            assert any(m.get("error", {}).get("code") == -32700 for m in seen), (frame[:200], seen)
            self.parse_errors += 1

    def finish(self, timeout: float = 60) -> None:
        """Wait for the answers to forwarded calls; every request must have had its answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            owed = {k: n for k, n in self.expected.items() if self.answered[k] < n and k not in self.cancelled}
            if not owed:
                break
            with contextlib.suppress(TimeoutError):
                self._record(self.client.ws.recv(timeout=1))
        owed = {k: n - self.answered[k] for k, n in self.expected.items()
                if self.answered[k] < n and k not in self.cancelled}
        assert not owed, f"requests never answered: {owed}"
        print(f"fuzz: {self.frames} frames, {sum(self.expected.values())} requests with an id, "
              f"{sum(self.answered.values())} answers, {self.parse_errors} parse errors")
        assert self.client.request("ping")["result"] == {}
        self.client.close()


class _UnparsableType:
    pass


_Unparsable = _UnparsableType()


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _web_still_fine(stack: Stack) -> None:
    assert stack.web_proc(stack.web_ports[0]).alive()
    assert httpx2.get(f"{stack.http_url()}/healthz", timeout=10).status_code == 200


def test_random_frames_get_well_formed_answers(stack: Stack) -> None:
    fuzzer = Fuzzer(stack.ws_url())

    @FUZZ_SETTINGS
    @given(frame=frames_random)
    def one(frame: str | bytes) -> None:
        fuzzer.send(frame)

    one()
    fuzzer.finish()
    assert fuzzer.frames >= EXAMPLES
    _web_still_fine(stack)


def test_mutated_frames_get_well_formed_answers(stack: Stack) -> None:
    fuzzer = Fuzzer(stack.ws_url())

    @FUZZ_SETTINGS
    @given(frame=frames_mutated())
    def one(frame: str | bytes) -> None:
        fuzzer.send(frame)

    one()
    fuzzer.finish()
    assert fuzzer.frames >= EXAMPLES
    _web_still_fine(stack)
