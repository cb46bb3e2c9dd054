"""The HTTP API against the real stack: batches (submit, stream, status, cancel), one-shot calls, errors."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import pytest
import redis

from broker import keys
from cli.devrun import free_port
from tests.stack import Stack

JSONL = "application/x-ndjson"


# ---------------------------------------------------------------- helpers
def http(base: str, method: str, path: str, body: Any = None, ctype: str = "application/json",
         timeout: float = 60, key: str | None = None) -> tuple[int, Any]:
    """(status, JSON body); `body` is sent as is if bytes/str/iterable of bytes, else JSON-encoded."""
    if body is None or isinstance(body, bytes) or hasattr(body, "__next__"):
        data = body
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = json.dumps(body).encode()
    headers = {"Content-Type": ctype} if data is not None else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def echo_calls(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"tool": "echo__echo", "arguments": {"text": str(i)}, "id": f"c{i}"} for i in range(start, start + n)]


def submit(base: str, calls: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    status, body = http(base, "POST", "/v1/batches", {"calls": calls, **extra})
    assert status == 202, body
    assert body["total"] == len(calls) and body["status_url"] == f"/v1/batches/{body['batch_id']}"
    return body


def stream(base: str, batch_id: str, query: str = "", timeout: float = 60) -> Iterator[dict[str, Any]]:
    """The results of a batch as they arrive (blank keep-alive lines skipped)."""
    with urllib.request.urlopen(f"{base}/v1/batches/{batch_id}/results{query}", timeout=timeout) as response:
        assert response.headers["Content-Type"].startswith(JSONL)
        for line in response:
            if line.strip():
                yield json.loads(line)


def status_of(base: str, batch_id: str) -> dict[str, Any]:
    code, body = http(base, "GET", f"/v1/batches/{batch_id}")
    assert code == 200, body
    parts = ("queued", "running", "done", "failed", "cancelled")
    assert sum(body[k] for k in parts) == body["total"], body  # the counts always add up
    return body


def wait_finished(base: str, batch_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = status_of(base, batch_id)
        if "finished_at" in status:
            return status
        time.sleep(0.1)
    raise AssertionError(f"batch not finished: {status}")


def text_of(outcome: dict[str, Any]) -> Any:
    return outcome["result"]["structuredContent"]["result"]


def count(r: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in r.scan_iter(pattern, count=1000))


class NothingQueued:
    """Asserts a block enqueued nothing: no batch keys, no batch results, the echo queue untouched."""

    def __init__(self, stack: Stack) -> None:
        self.r = stack.redis()

    def snapshot(self) -> tuple[int, int, int]:
        return self.r.llen("mcp.echo"), count(self.r, keys.batch("*")), count(self.r, keys.result("*.*"))

    def __enter__(self) -> NothingQueued:
        deadline = time.monotonic() + 30
        while self.r.llen("mcp.echo") and time.monotonic() < deadline:
            time.sleep(0.1)  # let earlier tests' messages drain
        self.before = self.snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            time.sleep(0.3)  # a call that had been queued would have a result by now
            assert self.snapshot() == self.before


@pytest.fixture(scope="module")
def limited(stack: Stack) -> Iterator[str]:
    """A second web process with small limits (same Redis, same workers)."""
    port = free_port()
    proc = stack.start_web(port, env={"MCP_BROKER_MAX_BATCH_CALLS": "10", "MCP_BROKER_MAX_BATCH_BYTES": "4096"})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()
        stack.web_ports.remove(port)  # other tests pick web processes by index


@pytest.fixture(scope="module")
def with_keys(stack: Stack) -> Iterator[str]:
    """A web process that requires API keys: alice may use two echo tools, bob anything."""
    port = free_port()
    proc = stack.start_web(port, env={"MCP_BROKER_API_KEYS": "alice:key-a:echo__echo|echo__add,bob:key-b"})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()
        stack.web_ports.remove(port)


# ---------------------------------------------------------------- batches
def test_two_thousand_calls_each_answered_once_in_completion_order(stack: Stack) -> None:
    base = stack.http_url()
    accepted = submit(base, echo_calls(2000))
    batch_id = accepted["batch_id"]
    outcomes = list(stream(base, batch_id))  # read from the start, while the batch runs
    assert len(outcomes) == 2000
    assert sorted(o["index"] for o in outcomes) == list(range(2000))
    for o in outcomes:
        assert o["call_id"] == f"{batch_id}.{o['index']}"
        assert o["id"] == f"c{o['index']}"
        assert text_of(o) == str(o["index"])
        assert o["result"]["isError"] is False
    seqs = [tuple(map(int, o["seq"].split("-"))) for o in outcomes]
    assert seqs == sorted(seqs) and len(set(seqs)) == 2000

    status = wait_finished(base, batch_id, timeout=5)
    assert status["state"] == "done"
    assert (status["done"], status["failed"], status["cancelled"], status["queued"], status["running"]) == \
        (2000, 0, 0, 0, 0)
    assert status["tools"] == {"echo__echo": 2000}
    assert status["created"] <= status["finished_at"] <= time.time() + 1

    # read again: all at once (wait=0), and resumed after the 1,000th
    again = list(stream(base, batch_id, "?wait=0"))
    assert [o["seq"] for o in again] == [o["seq"] for o in outcomes]
    tail = list(stream(base, batch_id, f"?after={outcomes[999]['seq']}&wait=0"))
    assert [o["seq"] for o in tail] == [o["seq"] for o in outcomes[1000:]]


def test_results_stream_while_the_batch_runs(stack: Stack) -> None:
    base = stack.http_url()
    calls = echo_calls(30) + [{"tool": "echo__slow", "arguments": {"seconds": 1.5, "steps": 1}} for _ in range(16)]
    batch_id = submit(base, calls)["batch_id"]
    results = stream(base, batch_id)
    first = next(results)
    during = status_of(base, batch_id)
    assert during["state"] == "running" and "finished_at" not in during
    assert during["queued"] + during["running"] > 0
    assert first["index"] < 30  # the quick calls come back first, without waiting for the slow ones
    rest = list(results)
    assert sorted(o["index"] for o in [first, *rest]) == list(range(46))
    assert all(text_of(o) == "slept 1.5s" for o in rest if o["index"] >= 30)
    assert "id" not in rest[-1]  # no client id given, none invented
    assert wait_finished(base, batch_id, timeout=5)["done"] == 46


def test_json_lines_body_and_a_failing_call(stack: Stack) -> None:
    base = stack.http_url()
    lines = [json.dumps(c) for c in echo_calls(3)] + ["", json.dumps({"tool": "echo__fail", "id": 7}), "  "]
    code, accepted = http(base, "POST", "/v1/batches", "\n".join(lines) + "\n", ctype=JSONL)
    assert code == 202 and accepted["total"] == 4, accepted
    outcomes = {o["id"]: o for o in stream(base, accepted["batch_id"])}
    assert outcomes[7]["result"]["isError"] is True and outcomes[7]["index"] == 3
    assert text_of(outcomes["c2"]) == "2"
    status = wait_finished(base, accepted["batch_id"], timeout=5)
    assert (status["state"], status["done"], status["failed"]) == ("done", 3, 1)


def test_a_bare_list_body_and_a_default_time_limit(stack: Stack) -> None:
    base = stack.http_url()
    slow = {"tool": "echo__slow", "arguments": {"seconds": 2, "steps": 1}}
    code, accepted = http(base, "POST", "/v1/batches?timeout_s=0.3", [slow, {**slow, "timeout_s": 5}])
    assert code == 202, accepted
    outcomes = sorted(stream(base, accepted["batch_id"]), key=lambda o: o["index"])
    assert outcomes[0]["error"]["code"] == -32001  # the query's default limit
    assert text_of(outcomes[1]) == "slept 2.0s"  # its own limit wins


VALID = {"tool": "echo__echo", "arguments": {"text": "fine"}}
BAD_BATCHES = [
    ("not json", "{nope", "application/json", "the body is not valid JSON"),
    ("jsonl bad line", json.dumps(VALID) + "\n{nope\n", JSONL, "line 2: not valid JSON"),
    ("not an object or list", "42", "application/json", "must be a JSON object with 'calls'"),
    ("calls not a list", {"calls": "x"}, "application/json", "calls: Not a valid list."),
    ("unknown top-level key", {"calls": [VALID], "timeout": 3}, "application/json", "timeout: Unknown field."),
    ("no calls", {"calls": []}, "application/json", "the batch has no calls"),
    ("call not an object", [VALID, 5], "application/json", "calls[1]: a call must be a JSON object, not int"),
    ("tool not a string", [VALID, {"tool": 5}], "application/json", "calls[1].tool: Not a valid string."),
    ("no tool", [VALID, {"arguments": {}}], "application/json", "calls[1].tool: Missing data for required field."),
    ("unknown tool", [VALID] * 17 + [{"tool": "echo__nope"}], "application/json",
     "calls[17].tool: Unknown tool: echo__nope"),
    ("unknown server", [VALID, {"tool": "nope__echo"}], "application/json", "calls[1].tool: Unknown tool: nope__echo"),
    ("bad arguments", [VALID, {"tool": "echo__add", "arguments": {"a": "one", "b": 2}}], "application/json",
     "calls[1].arguments: invalid arguments for tool echo__add: a: 'one' is not of type 'number'"),
    ("arguments not an object", [VALID, {"tool": "echo__echo", "arguments": "hi"}], "application/json",
     "calls[1].arguments: Not a valid mapping type."),
    ("misspelt field", [VALID, {"tool": "echo__echo", "argumnets": {"text": "x"}}], "application/json",
     "calls[1].argumnets: Unknown field."),
    ("bad timeout", [VALID, {**VALID, "timeout_s": -1}], "application/json", "calls[1].timeout_s:"),
    ("bool id", [VALID, {**VALID, "id": True}], "application/json", "calls[1].id: must be a string or an integer"),
    ("duplicate id", [{**VALID, "id": "a"}, {**VALID, "id": "a"}], "application/json",
     "calls[1].id: duplicate id 'a' (also calls[0])"),
    ("jsonl unknown tool", json.dumps(VALID) + "\n\n" + json.dumps({"tool": "echo__nope"}), JSONL,
     "line 3: tool: Unknown tool: echo__nope"),
    ("bad query", [VALID], "application/json", "query string: timeout_s"),
]


@pytest.mark.parametrize(("case", "body", "ctype", "expected"), BAD_BATCHES, ids=[c[0] for c in BAD_BATCHES])
def test_a_bad_batch_is_refused_whole_and_nothing_is_queued(
    stack: Stack, case: str, body: Any, ctype: str, expected: str
) -> None:
    path = "/v1/batches?timeout_s=soon" if case == "bad query" else "/v1/batches"
    with NothingQueued(stack):
        code, answer = http(stack.http_url(), "POST", path, body, ctype)
    assert code == 400, answer
    assert answer["error"]["code"] == "invalid_batch"
    assert expected in answer["error"]["message"], answer


def test_every_problem_is_listed(stack: Stack) -> None:
    calls = [VALID, {"tool": "echo__nope"}, {"tool": "echo__add", "arguments": {"a": 1}}, "x"]
    with NothingQueued(stack):
        code, answer = http(stack.http_url(), "POST", "/v1/batches", {"calls": calls})
    assert code == 400
    assert answer["error"]["message"].startswith("calls[1].tool: Unknown tool: echo__nope (and 2 more problems")
    assert [d.split(":")[0] for d in answer["error"]["details"]] == ["calls[1].tool", "calls[2].arguments", "calls[3]"]


def test_size_limits(stack: Stack, limited: str) -> None:
    with NothingQueued(stack):
        code, answer = http(limited, "POST", "/v1/batches", echo_calls(11))
        assert code == 413 and answer["error"]["code"] == "batch_too_large"
        assert "11 calls; the limit is 10" in answer["error"]["message"]
        body = "\n".join(json.dumps(c) for c in echo_calls(11))
        code, answer = http(limited, "POST", "/v1/batches", body, JSONL)
        assert code == 413 and "11 calls; the limit is 10" in answer["error"]["message"]
        big = {"calls": [{**VALID, "arguments": {"text": "x" * 5000}}]}
        code, answer = http(limited, "POST", "/v1/batches", big)  # refused on Content-Length, unread
        assert code == 413 and "the limit is 4096" in answer["error"]["message"], answer
        chunked = iter([b'{"calls": [', json.dumps(VALID).encode(), b", ", b" " * 5000, b"]}"])
        code, answer = http(limited, "POST", "/v1/batches", chunked)  # no Content-Length: refused while read
        assert code == 413 and "over the limit of 4096" in answer["error"]["message"], answer
    accepted = submit(limited, echo_calls(10))
    assert len(list(stream(limited, accepted["batch_id"]))) == 10


def test_cancel_a_batch_of_slow_calls(stack: Stack) -> None:
    base = stack.http_url()
    calls = [{"tool": "echo__slow", "arguments": {"seconds": 1, "steps": 1}, "id": i} for i in range(400)]
    batch_id = submit(base, calls)["batch_id"]
    deadline = time.monotonic() + 10
    while status_of(base, batch_id)["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    began = time.monotonic()
    code, answer = http(base, "DELETE", f"/v1/batches/{batch_id}")
    assert code == 202, answer
    assert answer["state"] == "cancelled"
    status = wait_finished(base, batch_id, timeout=15)
    assert time.monotonic() - began < 10  # 400 one-second calls at 16 at a time would take 25 s
    assert status["state"] == "cancelled"
    assert status["done"] + status["failed"] + status["cancelled"] == 400
    assert status["cancelled"] > 300 and status["queued"] == status["running"] == 0
    outcomes = list(stream(base, batch_id, "?wait=0"))
    assert len(outcomes) == 400 and {o["id"] for o in outcomes} == set(range(400))
    cancelled = [o for o in outcomes if o.get("cancelled")]
    assert len(cancelled) == status["cancelled"]
    assert all(o["error"]["code"] == -32800 for o in cancelled)
    # cancelling again changes nothing; the echo backend is free again at once
    code, again = http(base, "DELETE", f"/v1/batches/{batch_id}")
    assert code == 202 and again["cancelled"] == status["cancelled"]
    t0 = time.monotonic()
    assert http(base, "POST", "/v1/calls", {"tool": "echo__echo", "arguments": {"text": "free"}})[0] == 200
    assert time.monotonic() - t0 < 2


def test_a_client_that_leaves_stops_its_results_stream(stack: Stack) -> None:
    r = stack.redis()

    def blocked_readers() -> int:
        return sum(1 for c in r.client_list() if c["cmd"] == "xread" and "b" in c["flags"])

    def wait_for(predicate: Any, timeout: float) -> float:
        t0 = time.monotonic()
        while not predicate():
            assert time.monotonic() - t0 < timeout
            time.sleep(0.05)
        return time.monotonic() - t0

    base = stack.http_url()
    batch_id = submit(base, [{"tool": "echo__slow", "arguments": {"seconds": 5, "steps": 1}} for _ in range(4)])[
        "batch_id"]
    conn = HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=10)
    conn.request("GET", f"/v1/batches/{batch_id}/results")
    response = conn.getresponse()
    assert response.status == 200  # headers at once, long before the first result
    wait_for(lambda: blocked_readers() == 1, timeout=3)
    conn.close()  # nothing was written since: only the disconnect probe can notice
    assert wait_for(lambda: blocked_readers() == 0, timeout=3) < 2.5
    assert http(base, "DELETE", f"/v1/batches/{batch_id}")[0] == 202


def test_unknown_batches_are_404(stack: Stack) -> None:
    base = stack.http_url()
    for method, path in [("GET", "/v1/batches/0123456789abcdef0123456789abcdef"), ("GET", "/v1/batches/x:y"),
                         ("DELETE", "/v1/batches/0123456789abcdef0123456789abcdef"),
                         ("GET", "/v1/batches/0123456789abcdef0123456789abcdef/results")]:
        code, answer = http(base, method, path)
        assert code == 404 and answer["error"]["code"] == "not_found", (method, path, answer)


# ---------------------------------------------------------------- one call
def test_one_call(stack: Stack) -> None:
    base = stack.http_url()
    code, answer = http(base, "POST", "/v1/calls", {"tool": "echo__add", "arguments": {"a": 2, "b": 40}})
    assert code == 200 and answer["result"]["structuredContent"]["result"] == 42
    code, answer = http(base, "POST", "/v1/calls", {"tool": "echo__fail"})
    assert code == 200 and answer["result"]["isError"] is True  # a tool's failure is a result, as in MCP


CALL_ERRORS = [
    ("unknown tool", {"tool": "echo__nope"}, 400, "unknown_tool", "Unknown tool: echo__nope"),
    ("bad arguments", {"tool": "echo__add", "arguments": {"a": 1}}, 400, "invalid_arguments",
     "'b' is a required property"),
    ("misspelt field", {"tool": "echo__echo", "args": {}}, 400, "invalid_call", "args: Unknown field."),
    ("not json", "{nope", 400, "invalid_call", "not valid JSON"),
    ("timeout", {"tool": "echo__slow", "arguments": {"seconds": 3, "steps": 1}, "timeout_s": 0.5}, 504, "timeout",
     "did not answer within 0.5s"),
]


@pytest.mark.parametrize(("case", "body", "status", "code", "expected"), CALL_ERRORS, ids=[c[0] for c in CALL_ERRORS])
def test_one_call_errors(stack: Stack, case: str, body: Any, status: int, code: str, expected: str) -> None:
    t0 = time.monotonic()
    got, answer = http(stack.http_url(), "POST", "/v1/calls", body)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert expected in answer["error"]["message"]
    assert time.monotonic() - t0 < 3


def test_api_errors_are_json(stack: Stack) -> None:
    base = stack.http_url()
    code, answer = http(base, "GET", "/v1/nope")
    assert code == 404 and answer["error"]["code"] == "not_found"
    code, answer = http(base, "PUT", "/v1/batches", b"")
    assert code == 405 and answer["error"]["code"] == "method_not_allowed"
    code, answer = http(base, "GET", "/v1/calls")
    assert code == 405 and set(answer) == {"error"} and set(answer["error"]) == {"code", "message"}


def test_keys_allow_lists_and_batch_ownership(stack: Stack, with_keys: str) -> None:
    code, answer = http(with_keys, "POST", "/v1/calls", {"tool": "echo__echo", "arguments": {"text": "x"}})
    assert code == 401 and answer["error"]["code"] == "unauthorized"
    code, answer = http(with_keys, "POST", "/v1/calls", {"tool": "echo__slow"}, key="key-a")
    assert code == 403 and answer["error"]["code"] == "forbidden" and "echo__slow" in answer["error"]["message"]
    with NothingQueued(stack):
        code, answer = http(with_keys, "POST", "/v1/batches", [VALID, {"tool": "echo__slow"}], key="key-a")
    assert code == 403 and answer["error"]["message"].startswith("calls[1].tool: Forbidden"), answer

    code, accepted = http(with_keys, "POST", "/v1/batches", echo_calls(3), key="key-a")
    assert code == 202
    path = f"/v1/batches/{accepted['batch_id']}"
    assert http(with_keys, "GET", path, key="key-b")[0] == 404  # another key's batch does not exist for it
    assert http(with_keys, "DELETE", path, key="key-b")[0] == 404
    assert http(with_keys, "GET", path + "/results?wait=0", key="key-b")[0] == 404
    request = urllib.request.Request(f"{with_keys}{path}/results", headers={"Authorization": "Bearer key-a"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert len([line for line in response if line.strip()]) == 3
    assert http(with_keys, "GET", path, key="key-a")[1]["done"] == 3
