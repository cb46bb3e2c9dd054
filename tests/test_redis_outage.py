"""Redis SIGKILLed and restarted under load (issue 12, finding 1), on a private redis-server.

With AOF every call of a batch is answered exactly once and the batch ends; a live worker's messages left
unacked by the outage come back without waiting for the visibility timeout (an hour). Without persistence
the loss is reported promptly and honestly. While Redis is down every route answers 503 JSON, and a
WebSocket upgrade is refused before the 101.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from broker import keys
from tests.redis_server import RedisServer, private_stack
from tests.stack import Stack
from tests.test_batches import http
from tests.wsclient import RawClient

LONG_LIMIT = {"echo": {"timeout_s": 60}}  # queued behind the backend's 16 slots, no call may time out


def wait_until(what: str, condition: Callable[[], Any], timeout: float = 60, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def slow_calls(n: int, seconds: float) -> list[dict[str, Any]]:
    return [{"tool": "echo__slow", "arguments": {"seconds": seconds, "steps": 1}, "id": f"c{i}"} for i in range(n)]


def runs(stack: Stack, tool: str) -> int:
    with RawClient(stack.ws_url()) as client:
        return int(client.call("echo__runs", {"tool": tool})["result"]["structuredContent"][tool])


def batch_counts(server: RedisServer, batch_id: str) -> dict[str, str]:
    return server.client().hgetall(f"mcpb:batch:{batch_id}")


def queued_calls(server: RedisServer, queue: str = "mcp.echo") -> str:
    """The call payloads of the messages in `queue` and in kombu's unacked hash, as one string to search."""
    r = server.client()
    raws = r.lrange(queue, 0, -1) + [json.loads(held)[0] for held in r.hvals("unacked")]
    bodies = [json.loads(raw) if isinstance(raw, str) else raw for raw in raws]
    return " ".join(base64.b64decode(b["body"]).decode() for b in bodies)


def post_mcp(base: str, message: dict[str, Any]) -> tuple[int, Any]:
    """A Streamable HTTP POST to /mcp: (status, JSON body)."""
    request = urllib.request.Request(f"{base}/mcp", data=json.dumps(message).encode(), method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def assert_answered_once(server: RedisServer, base: str, batch_id: str, total: int) -> None:
    """The batch is done, its results stream ends, and it holds exactly one outcome per call."""
    status = wait_until("the batch to finish", lambda: (s := http(base, "GET", f"/v1/batches/{batch_id}")[1])
                        .get("state") == "done" and s, timeout=90, every=0.5)
    assert status["done"] == total and status["failed"] == 0, status
    with urllib.request.urlopen(f"{base}/v1/batches/{batch_id}/results", timeout=30) as body:
        lines = [json.loads(line) for line in body if line.strip()]  # ends: every call has its outcome
    call_ids = [line["call_id"] for line in lines]
    assert len(call_ids) == total and len(set(call_ids)) == total
    assert server.client().xlen(f"mcpb:batch:{batch_id}:results") == total


def test_the_private_redis_keeps_its_data_across_a_sigkill_only_with_aof() -> None:
    for aof in (True, False):
        with RedisServer(aof=aof) as server:
            server.client().set("k", "v")
            first = server.run_id()
            server.kill()
            assert not server.alive()
            server.restart()
            assert server.run_id() != first
            assert server.client().get("k") == ("v" if aof else None)


def test_a_batch_survives_a_redis_sigkill_and_restart_with_aof() -> None:
    """Measured before the fix: ~490 of 3,000 calls never answered, batch `running` forever."""
    total = 400
    with RedisServer(aof=True) as server, private_stack(server, ["echo"], settings=LONG_LIMIT) as stack:
        base = stack.http_url()
        runs_before = runs(stack, "slow")
        code, body = http(base, "POST", "/v1/batches", {"calls": slow_calls(total, 0.1)})
        assert code == 202, body
        batch_id = body["batch_id"]
        client = RawClient(stack.ws_url())
        wait_until("a quarter of the batch", lambda: int(batch_counts(server, batch_id).get("done", 0)) >= total // 4)
        client.send({"jsonrpc": "2.0", "id": "inflight", "method": "tools/call",  # queued behind the batch
                     "params": {"name": "echo__slow", "arguments": {"seconds": 0.1, "steps": 1}}})
        session_calls = keys.session_calls(client.ws.response.headers["Mcp-Session-Id"])  # type: ignore[union-attr]
        call_id = wait_until("the socket's call sent", lambda: server.client().hkeys(session_calls))[0]
        wait_until("its message queued", lambda: call_id in queued_calls(server))
        server.kill()  # mid-batch: messages running, queued and fetched

        # during the outage: JSON 503s, the WebSocket upgrade is refused before the 101, calls are refused
        # with a JSON-RPC error naming the cause
        code, body = http(base, "GET", f"/v1/batches/{batch_id}", timeout=30)
        assert code == 503 and body["error"]["code"] == "redis_unavailable", body
        with pytest.raises(InvalidStatus) as refused:
            connect(stack.ws_url(), subprotocols=["mcp"], open_timeout=30)  # type: ignore[list-item]
        assert refused.value.response.status_code == 503
        assert json.loads(refused.value.response.body)["error"]["code"] == "redis_unavailable"
        code, body = post_mcp(base, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        assert code == 503 and body["error"]["data"]["reason"] == "redis_unavailable", body
        refused_call = client.call("echo__echo", {"text": "during"}, timeout=30)
        assert refused_call["error"]["data"]["reason"] == "redis_unavailable", refused_call

        time.sleep(3)
        server.restart()
        assert_answered_once(server, base, batch_id, total)
        # the socket's call in flight at the kill is answered too, with its result
        answer = client.response(timeout=60)
        assert answer["id"] == "inflight" and answer["result"]["structuredContent"]["result"] == "slept 0.1s", answer
        client.close()
        # every call ran on the backend once: no outcome was thrown away and its call run again
        assert runs(stack, "slow") - runs_before == total + 1


def test_a_live_workers_unacked_messages_come_back_after_a_redis_restart() -> None:
    """Outcomes that cannot be stored in time leave their messages unacked under a LIVE worker (its ack
    or reject cannot reach Redis): they must be restored when Redis is back, not an hour later."""
    total = 48
    with RedisServer(aof=True) as server, private_stack(server, ["echo"], settings=LONG_LIMIT,
                                                        env={"MCP_BROKER_STORE_RETRY_S": "1"}) as stack:
        base = stack.http_url()
        code, body = http(base, "POST", "/v1/batches", {"calls": slow_calls(total, 2.0)})
        assert code == 202, body
        batch_id = body["batch_id"]
        r = server.client()
        # both messages (32 + 16 calls) held by the worker, their calls running
        wait_until("the messages held", lambda: r.llen("mcp.echo") == 0 and r.hlen("unacked") == 2
                   and r.scard(f"mcpb:batch:{batch_id}:started") >= 16)
        server.kill()
        time.sleep(12)  # past the store retries and redis-py's own retries of the ack/reject
        server.restart()
        assert_answered_once(server, base, batch_id, total)
        assert server.client().hlen("unacked") == 0


def test_without_persistence_the_loss_is_reported_promptly() -> None:
    with RedisServer(aof=False) as server, private_stack(server, ["echo"]) as stack:
        base = stack.http_url()
        code, body = http(base, "POST", "/v1/batches", {"calls": slow_calls(64, 5.0)})
        assert code == 202, body
        batch_id = body["batch_id"]
        with RawClient(stack.ws_url()) as client:
            client.send({"jsonrpc": "2.0", "id": "inflight", "method": "tools/call",
                         "params": {"name": "echo__slow", "arguments": {"seconds": 30, "steps": 1},
                                    "_meta": {"io.mcp-broker/timeoutS": 60}}})
            session_calls = keys.session_calls(client.ws.response.headers["Mcp-Session-Id"])  # type: ignore[union-attr]
            call_id = wait_until("the socket's call sent", lambda: server.client().hkeys(session_calls))[0]
            wait_until("its message queued", lambda: call_id in queued_calls(server))
            server.kill()
            server.restart()
            # within seconds (the deadline), not at the call's 60 s limit
            answer = client.response(timeout=20)
            assert answer["id"] == "inflight"
            assert answer["error"]["data"]["reason"] == "redis_state_lost", answer
            assert "restarted without persistence" in answer["error"]["message"]
        code, body = http(base, "GET", f"/v1/batches/{batch_id}")
        assert code == 410 and body["state"] == "lost" and body["error"]["code"] == "batch_lost", body
        code, body = http(base, "GET", f"/v1/batches/{'0' * 32}")
        assert code == 404, body  # a batch that never was is still unknown
