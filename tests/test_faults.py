"""Nothing lost under faults: backend crashes, tool errors, timeouts, cancellation, a SIGKILLed worker."""

from __future__ import annotations

import json
import signal
import time
import uuid

import psutil

from broker import keys
from tests.stack import Stack
from tests.wsclient import RawClient


def backend_processes(stack: Stack, server: str) -> list[psutil.Process]:
    """The MCP server processes (echo.py children) of the workers of `server`."""
    found = []
    for proc in stack.procs:
        if proc.name.startswith(f"worker-{server}-") and proc.alive():
            for child in psutil.Process(proc.popen.pid).children(recursive=True):
                try:
                    if any("echo.py" in part for part in child.cmdline()):
                        found.append(child)
                except psutil.NoSuchProcess:
                    pass
    return found


def runs(client: RawClient, server: str, tool: str) -> int:
    return int(client.call(f"{server}__runs", {"tool": tool})["result"]["structuredContent"][tool])


def test_backend_killed_mid_call_is_restarted_and_the_call_retried(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        assert client.call("crashy__echo", {"text": "warm"})["result"]["isError"] is False
        [backend] = backend_processes(stack, "crashy")
        client.send({"jsonrpc": "2.0", "id": "victim", "method": "tools/call",
                     "params": {"name": "crashy__slow", "arguments": {"seconds": 1.0, "steps": 1}}})
        time.sleep(0.4)
        backend.kill()
        response = client.response(timeout=20)
        assert response["id"] == "victim"
        assert response["result"]["structuredContent"]["result"] == "slept 1.0s"
        [restarted] = backend_processes(stack, "crashy")
        assert restarted.pid != backend.pid
        # the new backend ran the call from scratch: its counter shows exactly one run
        assert runs(client, "crashy", "slow") == 1


def test_a_failing_tool_answers_is_error_once_and_is_not_retried(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        before = runs(client, "echo", "fail")
        result = client.call("echo__fail", {"message": "nope"})["result"]
        assert result["isError"] is True
        assert runs(client, "echo", "fail") == before + 1


def test_a_call_past_its_time_limit_gets_a_timeout_error(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        response = client.request("tools/call", {"name": "echo__slow", "arguments": {"seconds": 3, "steps": 1},
                                                 "_meta": {"io.mcp-broker/timeoutS": 0.5}})
        assert response["error"]["code"] == -32001
        assert "did not answer within 0.5s" in response["error"]["message"]
        # the server's own timeout_s applies when the client sets none (echo: 5 s)
        response = client.request("tools/call", {"name": "echo__slow", "arguments": {"seconds": 8, "steps": 1}})
        assert response["error"]["code"] == -32001 and "within 5s" in response["error"]["message"]


def test_cancelling_a_running_call_frees_its_slot(stack: Stack) -> None:
    # solo has concurrency 1: while the slow call holds the slot, nothing else can run
    with RawClient(stack.ws_url()) as client:
        client.send({"jsonrpc": "2.0", "id": "long", "method": "tools/call",
                     "params": {"name": "solo__slow", "arguments": {"seconds": 20, "steps": 1}}})
        time.sleep(1.0)
        client.notify("notifications/cancelled", {"requestId": "long", "reason": "user changed their mind"})
        # with the slot freed, a call with a 5 s limit of its own succeeds (it would time out behind the slow one)
        quick = client.request("tools/call", {"name": "solo__echo", "arguments": {"text": "next"},
                                              "_meta": {"io.mcp-broker/timeoutS": 5}})
        assert quick["result"]["structuredContent"]["result"] == "next"
        # and no answer ever comes for the cancelled request
        client.send({"jsonrpc": "2.0", "id": "probe", "method": "ping"})
        assert client.response()["id"] == "probe"


def test_cancelling_a_queued_call_means_it_never_runs(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        before = runs(client, "solo", "add")
        client.send({"jsonrpc": "2.0", "id": "blocker", "method": "tools/call",
                     "params": {"name": "solo__slow", "arguments": {"seconds": 1.5, "steps": 1}}})
        client.send({"jsonrpc": "2.0", "id": "queued", "method": "tools/call",
                     "params": {"name": "solo__add", "arguments": {"a": 1, "b": 1}}})
        time.sleep(0.3)
        client.notify("notifications/cancelled", {"requestId": "queued"})
        assert client.response(timeout=20)["id"] == "blocker"
        assert runs(client, "solo", "add") == before


def test_sigkilled_worker_mid_batch_loses_nothing_and_answers_each_call_once(stack: Stack) -> None:
    from workers.dispatch import submit_calls

    r = stack.redis()
    [worker] = [p for p in stack.procs if p.name.startswith("worker-crashy-") and p.alive()]
    batch_id = f"kill-{uuid.uuid4().hex[:8]}"
    total = 500
    r.hset(keys.batch(batch_id), mapping={"total": total, "state": "running"})
    calls = [{"call_id": f"{batch_id}.{i}", "server": "crashy", "tool": "slow", "batch": batch_id, "id": i,
              "arguments": {"seconds": 0.1, "steps": 1}} for i in range(total)]
    for start in range(0, total, 10):
        submit_calls("mcp.crashy", calls[start : start + 10])
    deadline = time.monotonic() + 30
    while r.xlen(keys.batch_results(batch_id)) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop(signal.SIGKILL)
    answered_before_kill = r.xlen(keys.batch_results(batch_id))
    assert 0 < answered_before_kill < total
    stack.start_worker("crashy")
    deadline = time.monotonic() + 90
    while r.xlen(keys.batch_results(batch_id)) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    entries = r.xrange(keys.batch_results(batch_id))
    outcomes = [json.loads(fields["data"]) for _, fields in entries]
    call_ids = [o["call_id"] for o in outcomes]
    assert len(call_ids) == total, f"{len(call_ids)} of {total} answered"
    assert len(set(call_ids)) == total  # none twice
    assert all(o["result"]["structuredContent"]["result"] == "slept 0.1s" for o in outcomes)
    assert int(r.hget(keys.batch(batch_id), "done")) == total
    assert {o["id"] for o in outcomes} == set(range(total))


def test_a_fetched_message_is_leased_in_the_transaction_that_fetches_it(stack: Stack) -> None:
    """No moment exists where a message sits in kombu's `unacked` hash without a worker's lease on it:
    a SIGKILL at any point after the fetch leaves a lease a live worker restores (not an hour's wait)."""
    from workers import control, node
    from workers.app import app
    from workers.tasks import run_calls

    r = stack.redis()
    queue = f"mcp.lease-{uuid.uuid4().hex[:8]}"
    run_calls.apply_async(args=[[{"call_id": "lease-test", "server": "echo", "tool": "echo"}]], queue=queue)
    me = node.node_name()
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        message = channel.basic_get(queue, no_ack=False)
        assert message is not None
        tag = message.delivery_tag
        assert r.hexists(channel.qos.unacked_key, tag) and r.hexists(keys.worker_tags(me), tag)
        channel.basic_ack(tag)
        assert not r.hexists(channel.qos.unacked_key, tag) and not r.hexists(keys.worker_tags(me), tag)

        held = channel.basic_get(queue, no_ack=False) or channel.basic_get(queue, no_ack=False)
        assert held is None  # the queue is empty: the acked message is gone for good
        run_calls.apply_async(args=[[{"call_id": "lease-test-2", "server": "echo", "tool": "echo"}]], queue=queue)
        held = channel.basic_get(queue, no_ack=False)
        assert held is not None and r.llen(queue) == 0
        r.sadd(keys.WORKERS, me)  # this process "dies": in the fleet, holding a message, no heartbeat
        r.delete(keys.worker_alive(me))
        node._state["node"] = f"reaper-{uuid.uuid4().hex[:6]}"
        try:
            assert control.reclaim_dead_workers(app) >= 1
        finally:
            node._state["node"] = me
        assert r.llen(queue) == 1 and not r.hexists(channel.qos.unacked_key, held.delivery_tag)
        assert not r.exists(keys.worker_tags(me)) and not r.sismember(keys.WORKERS, me)
    r.delete(queue)
