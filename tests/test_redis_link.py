"""The link between a worker and Redis (issue 12, findings 2 and 3), on the real stack: a private redis-server,
web and any helper workers connected to it directly, and one worker whose REDIS_URL points at a fault proxy
(tests/faultproxy.py) that can partition that link half-open or slow it down."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.faultproxy import FaultProxy
from tests.redis_server import RedisServer, subset_config
from tests.stack import Proc, Stack
from tests.wsclient import RawClient

EXIT_LEASE_LOST = 75  # workers.control.EXIT_LEASE_LOST (not imported: that would load the Celery app here)


# echo's 5 s limit in the test config is not about the link: a worker restarted on a loaded machine may take
# longer to start its backend, and a call must not time out for that
ROOMY = {"echo": {"timeout_s": 30}}


@contextlib.contextmanager
def linked_stack(settings: dict[str, dict[str, Any]] | None = None,
                 concurrency: int = 8) -> Iterator[tuple[Stack, FaultProxy, Proc, RedisServer]]:
    """A private Redis, one web process on it, and one echo worker that reaches Redis through a FaultProxy."""
    settings = settings or ROOMY
    with RedisServer(aof=False) as server, FaultProxy.for_url(server.url) as proxy:
        log_dir = Path(tempfile.mkdtemp(prefix="mcpb-logs-"))
        config = subset_config(["echo"], log_dir / "mcp_servers.json", settings=settings)
        stack = Stack(server.url, config_path=config, log_dir=log_dir)
        try:
            worker = stack.start_worker("echo", concurrency=concurrency, env={"REDIS_URL": proxy.url_for(server.url)})
            stack.start_web()
            stack.wait_for_catalog(["echo"])
            yield stack, proxy, worker, server
        finally:
            stack.stop()


def wait_for(what: str, check: Any, timeout: float, proc: Proc | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s" + (f"\n{proc.log()[-3000:]}" if proc else ""))


def send_calls(client: RawClient, prefix: str, count: int, tool: str = "echo__echo") -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(count)]
    for request_id in ids:
        client.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                     "params": {"name": tool, "arguments": {"text": request_id}}})
    return ids


def collect(client: RawClient, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Every response to `ids` (each at most once), waiting up to `timeout` in all."""
    answers: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(answers) < len(ids) and time.monotonic() < deadline:
        try:
            message = client.response(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        if message.get("id") in ids:
            assert message["id"] not in answers, f"answered twice: {message}"
            answers[message["id"]] = message
    return answers


def echoed(answers: dict[str, dict[str, Any]]) -> dict[str, str]:
    """id → the text echoed back, for the answers that are results (not errors)."""
    out = {}
    for request_id, message in answers.items():
        result = message.get("result") or {}
        if not result.get("isError") and result.get("content"):
            out[request_id] = result["content"][0]["text"]
    return out


def test_a_worker_cut_off_by_a_half_open_partition_logs_it_exits_and_loses_no_call() -> None:
    with linked_stack() as (stack, proxy, worker, server), RawClient(stack.ws_url()) as client:
        warm = send_calls(client, "warm", 4)
        assert echoed(collect(client, warm, 30)) == {i: i for i in warm}
        proxy.partition()  # the worker's sockets stay open; Redis is silent to it, it is silent to Redis
        during = send_calls(client, "during", 6)
        wait_for("the worker logs that Redis is unreachable", lambda: "lease heartbeat failed" in worker.log(),
                 20, worker)
        wait_for("the worker exits once its lease lapsed", lambda: not worker.alive(), 30, worker)
        assert worker.popen.returncode == EXIT_LEASE_LOST, worker.log()[-3000:]
        assert "lease not renewed" in worker.log()
        proxy.heal()
        # its supervisor starts it again (here: the test, with the same link, now healed)
        stack.start_worker("echo", env={"REDIS_URL": proxy.url_for(server.url)})
        answers = collect(client, during, 90)
        assert echoed(answers) == {i: i for i in during}, answers


def test_a_worker_behind_a_short_partition_logs_it_and_recovers_by_itself() -> None:
    with linked_stack() as (stack, proxy, worker, _), RawClient(stack.ws_url()) as client:
        warm = send_calls(client, "warm", 4)
        assert echoed(collect(client, warm, 30)) == {i: i for i in warm}
        proxy.partition()
        during = send_calls(client, "during", 6)
        wait_for("the worker logs that Redis is unreachable", lambda: "lease heartbeat failed" in worker.log(),
                 15, worker)
        proxy.heal()  # within the lease: the worker reconnects and keeps serving, nothing restarts it
        wait_for("the worker logs that Redis is back", lambda: "Redis reachable again" in worker.log(), 15, worker)
        assert echoed(collect(client, during, 60)) == {i: i for i in during}
        after = send_calls(client, "after", 6)
        assert echoed(collect(client, after, 30)) == {i: i for i in after}
        assert worker.alive(), worker.log()[-3000:]
        assert "lease not renewed" not in worker.log()


def test_a_slow_link_to_redis_slows_results_not_the_backend_calls() -> None:
    """500 ms round trip between the worker and Redis, 32 concurrent calls each sending 4 progress notes: every
    call succeeds within its 10 s limit (before the fix, every store and PUBLISH stalled the backend loop for a
    round trip: most calls failed as "did not answer within 10s")."""
    settings = {"echo": {"timeout_s": 10, "concurrency": 32}}
    with linked_stack(settings) as (stack, proxy, _, _), RawClient(stack.ws_url()) as client:
        warm = send_calls(client, "warm", 2)
        assert echoed(collect(client, warm, 30)) == {i: i for i in warm}
        proxy.set_latency(up=0.25, down=0.25)
        ids = [f"slow-{i}" for i in range(32)]
        for request_id in ids:
            client.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                         "params": {"name": "echo__slow", "arguments": {"seconds": 1.0, "steps": 4},
                                    "_meta": {"progressToken": request_id}}})
        answers = collect(client, ids, 120)
        failed = {i: m.get("error") or m["result"] for i, m in answers.items()
                  if "error" in m or m["result"]["isError"]}
        assert not failed, failed
        assert sorted(answers) == sorted(ids)
        assert all(m["result"]["structuredContent"]["result"] == "slept 1.0s" for m in answers.values())
        assert any(n.get("method") == "notifications/progress" for n in client.notifications)  # notes still flow
