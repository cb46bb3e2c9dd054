"""The tasks extension (SEP-2663) on the real stack: raw 2026-07-28 HTTP requests, tasks made through one web
process and polled, answered and cancelled through another, a worker SIGKILLed mid-task, isolation by key
and endpoint, and the gates (-32021, Mcp-Name, removed methods)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from broker import keys
from broker.tasks import digest_of
from tests.stack import ROOT, Stack
from tests.wsclient import RawClient

MODERN = "2026-07-28"
TASKS = "io.modelcontextprotocol/tasks"
KEYS = {"alice": "KA-tasks", "bob": "KB-tasks", "admin": "KADMIN-tasks"}
WEB_ENV = {"MCP_BROKER_API_KEYS": ",".join(f"{who}:{key}" for who, key in KEYS.items())}
SUPPORT = {"slow_compute": "optional", "failing_job": "required", "protocol_error_job": "optional",
           "confirm_delete": "optional", "multi_input": "optional", "test_tool_with_task": "required"}


def envelope(tasks: bool = True) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"elicitation": {}, "sampling": {}}
    if tasks:
        capabilities["extensions"] = {TASKS: {}}
    return {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities":
            capabilities, "io.modelcontextprotocol/clientInfo": {"name": "tests", "version": "1"}}


class Web:
    """Raw 2026 requests to one web process, as one key, on one endpoint."""

    def __init__(self, http: httpx2.Client, port: int, who: str = "alice", path: str = "/servers/conf/mcp") -> None:
        self.http, self.url, self.who = http, f"http://127.0.0.1:{port}{path}", who

    def post(self, method: str, params: dict[str, Any], tasks: bool = True,
             headers: dict[str, str] | None = None) -> httpx2.Response:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": envelope(tasks)}}
        sent = {"Accept": "application/json", "Content-Type": "application/json", "MCP-Protocol-Version": MODERN,
                "Mcp-Method": method, "Authorization": f"Bearer {KEYS[self.who]}"}
        name = params.get("name") if method == "tools/call" else params.get("taskId")
        if name is not None:
            sent["Mcp-Name"] = name
        return self.http.post(self.url, content=json.dumps(body), headers={**sent, **(headers or {})})

    def call(self, tool: str, arguments: dict[str, Any] | None = None, tasks: bool = True,
             **extra: Any) -> dict[str, Any]:
        return self.post("tools/call", {"name": tool, "arguments": arguments or {}, **extra}, tasks).json()

    def task(self, method: str, handle: str, **params: Any) -> dict[str, Any]:
        return self.post(f"tasks/{method}", {"taskId": handle, **params}).json()

    def until(self, handle: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.task("get", handle)["result"]
            if got["status"] in statuses or time.monotonic() > deadline:
                assert got["status"] in statuses, got
                return got
            time.sleep(0.1)


@pytest.fixture(scope="module")
def tasks_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`conf`: the conformance fixtures with their task support; `single`: the same, one call at a time."""
    server = str(Path(ROOT, "examples", "servers", "conformance.py"))
    config = tmp_path_factory.mktemp("tasks") / "mcp_servers.json"
    config.write_text(json.dumps({"mcpServers": {
        name: {"command": "python", "args": [server],
               "broker": {"concurrency": concurrency, "timeout_s": 20, "max_timeout_s": 90, "tasks": SUPPORT,
                          "max_result_tokens": {"slow_compute": 256}}}
        for name, concurrency in (("conf", 8), ("single", 1))}}))
    stack = Stack(redis_url, config_path=config)
    try:
        for name in ("conf", "single"):
            stack.start_worker(name)
        stack.start_web(env=WEB_ENV)
        stack.wait_for_catalog(["conf", "single"])
        stack.wait_web_ready(stack.web_ports[0])
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def webs(tasks_stack: Stack) -> Iterator[tuple[int, int]]:
    """Web process A (the stack's) and B (another one), shared by the module's tests: none stops or restarts a
    web process (the two that do start their own with `extra_webs`). Started per test, B's start and readiness
    cost 6.5-9.8 s of setup each under load (11 tests); once per module it is one of them."""
    with tasks_stack.extra_webs(WEB_ENV, count=1) as ports:
        tasks_stack.wait_web_ready(ports[0])
        yield tasks_stack.web_ports[0], ports[0]


def test_made_on_one_web_process_polled_and_cancelled_on_another(tasks_stack: Stack, webs: tuple[int, int]) -> None:
    with httpx2.Client(timeout=30) as http:
        a, b = Web(http, webs[0]), Web(http, webs[1])
        created = a.call("slow_compute", {"seconds": 1.5})["result"]
        assert created["resultType"] == "task" and created["status"] == "working"
        assert isinstance(created["ttlMs"], int) and created["pollIntervalMs"] > 0
        assert created["createdAt"].endswith("Z") and "result" not in created and "requestState" not in created
        handle = created["taskId"]
        assert len(handle) >= 43  # token_urlsafe(32): unguessable
        r = tasks_stack.redis()
        assert r.exists(keys.task(digest_of(handle))) and not any(handle in k for k in r.keys("mcpb:task*"))
        assert b.task("get", handle)["result"]["status"] == "working"  # durable before it was announced
        done = b.until(handle, "completed")
        assert done["result"]["content"][0]["text"] == "computed it after 1.5s"
        assert "_meta" not in done["result"] or "io.modelcontextprotocol/related-task" not in done["result"]["_meta"]
        assert b.task("cancel", handle)["result"]["resultType"] == "complete"  # terminal: an ack, nothing changes
        assert b.task("get", handle)["result"]["status"] == "completed"

        running = a.call("slow_compute", {"seconds": 60})["result"]["taskId"]
        time.sleep(0.5)
        ack = b.task("cancel", running)["result"]
        assert set(ack) <= {"resultType", "_meta"} and ack["resultType"] == "complete"
        assert a.until(running, "cancelled", timeout=5)["status"] == "cancelled"
        call_id = r.hget(keys.task(digest_of(running)), "call_id")
        deadline = time.monotonic() + 10  # the running call was cancelled in the worker: its outcome says so
        while not r.exists(keys.result(call_id)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(r.get(keys.result(call_id))).get("cancelled") is True


def test_a_queued_task_cancelled_never_runs(tasks_stack: Stack, webs: tuple[int, int]) -> None:
    with httpx2.Client(timeout=30) as http:
        a = Web(http, webs[0], path="/servers/single/mcp")
        busy = a.call("slow_compute", {"seconds": 2})["result"]["taskId"]
        queued = a.call("slow_compute", {"seconds": 0, "label": "queued"})["result"]["taskId"]
        assert a.task("get", queued)["result"]["status"] == "working"
        a.task("cancel", queued)
        assert a.until(busy, "completed")["status"] == "completed"
        time.sleep(0.5)
        assert a.task("get", queued)["result"]["status"] == "cancelled"
        r = tasks_stack.redis()
        outcome = json.loads(r.get(keys.result(r.hget(keys.task(digest_of(queued)), "call_id"))))
        assert outcome.get("cancelled") is True and "result" not in outcome  # skipped, never run


def test_outcomes_by_status(tasks_stack: Stack, webs: tuple[int, int]) -> None:
    with httpx2.Client(timeout=30) as http:
        a, b = Web(http, webs[0]), Web(http, webs[1])
        tool_error = b.until(a.call("failing_job")["result"]["taskId"], "completed")
        assert tool_error["result"]["isError"] is True  # a tool error completes the task
        failed = b.until(a.call("protocol_error_job")["result"]["taskId"], "failed")
        assert isinstance(failed["error"]["code"], int) and "result" not in failed
        quick = a.call("greet", {"name": "World"}, task={"ttl": 60000, "pollInterval": 100})["result"]
        assert quick["resultType"] == "complete" and quick["content"][0]["text"] == "Hello, World!"  # never a task
        unasked = a.call("slow_compute", {"seconds": 0}, tasks=False)["result"]
        assert unasked["resultType"] == "complete" and "taskId" not in unasked  # no extension: synchronous


def test_a_task_result_is_shaped_by_its_tools_settings(tasks_stack: Stack, webs: tuple[int, int]) -> None:
    """`max_result_tokens` of `slow_compute` is 256 (the default is 10,000): its task result is paged too."""
    with httpx2.Client(timeout=30) as http:
        a, b = Web(http, webs[0]), Web(http, webs[1])
        label = "word " * 2000
        created = a.call("slow_compute", {"seconds": 1.5, "label": label})["result"]
        assert created["resultType"] == "task"
        content = b.until(created["taskId"], "completed")["result"]["content"]
        assert len(content) == 2 and content[0]["text"] != f"computed {label} after 1.5s"
        assert "Result cut for length: page 1 of" in content[1]["text"]


def test_questions_inside_a_task_are_answered_with_tasks_update(tasks_stack: Stack, webs: tuple[int, int]) -> None:
    with httpx2.Client(timeout=30) as http:
        a, b = Web(http, webs[0]), Web(http, webs[1])
        handle = a.call("confirm_delete", {"filename": "x.txt"})["result"]["taskId"]
        asked = b.until(handle, "input_required", timeout=10)
        assert list(asked["inputRequests"]) == ["confirm"]
        assert asked["inputRequests"]["confirm"]["method"] == "elicitation/create"
        ack = b.task("update", handle, inputResponses={"unknown-key": {"ignored": True}})["result"]
        assert ack["resultType"] == "complete" and "status" not in ack
        assert b.task("get", handle)["result"]["status"] == "input_required"  # an unknown key changes nothing
        b.task("update", handle, inputResponses={"confirm": {"action": "accept", "content": {"confirm": True}}})
        done = a.until(handle, "completed")
        assert done["result"]["content"][0]["text"] == "x.txt: accept, confirm=true"

        two = a.call("multi_input")["result"]["taskId"]
        deadline = time.monotonic() + 10
        while len(b.task("get", two)["result"].get("inputRequests", {})) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert set(b.task("get", two)["result"]["inputRequests"]) == {"first", "second"}
        b.task("update", two, inputResponses={"first": {"action": "accept", "content": {"value": "1"}}})
        left = a.task("get", two)["result"]
        assert left["status"] == "input_required" and list(left["inputRequests"]) == ["second"]
        a.task("update", two, inputResponses={"second": {"action": "decline"}})
        assert b.until(two, "completed")["result"]["content"][0]["text"] == "first=accept, second=decline"

        parked = a.call("confirm_delete", {"filename": "y.txt"})["result"]["taskId"]
        b.until(parked, "input_required", timeout=10)
        b.task("cancel", parked)  # the parked backend call wakes at once (its question answered: cancelled)
        assert a.until(parked, "cancelled")["status"] == "cancelled"
        assert "inputRequests" not in a.task("get", parked)["result"]


def test_a_question_before_the_task_is_an_input_required_round(tasks_stack: Stack, webs: tuple[int, int]) -> None:
    with httpx2.Client(timeout=30) as http:
        a, b = Web(http, webs[0]), Web(http, webs[1])
        first = a.call("test_tool_with_task")["result"]
        assert first["resultType"] == "input_required" and "taskId" not in first
        assert list(first["inputRequests"]) == ["user_name"]
        retry = b.call("test_tool_with_task", requestState=first["requestState"],
                       inputResponses={"user_name": {"action": "accept", "content": {"name": "Alice"}}})["result"]
        assert retry["resultType"] == "task" and "requestState" not in retry and "inputRequests" not in retry
        assert retry["status"] == "working"  # the answered question is not pending in the task
        done = a.until(retry["taskId"], "completed")
        assert done["result"]["content"][0]["text"] == "Hello, Alice!"


def test_a_task_belongs_to_its_key_and_endpoint(tasks_stack: Stack, webs: tuple[int, int]) -> None:
    with httpx2.Client(timeout=30) as http:
        a = Web(http, webs[0])
        handle = a.call("slow_compute", {"seconds": 1})["result"]["taskId"]
        unknown = a.task("get", "no-such-task")["error"]
        assert unknown["code"] == -32602
        for other in (Web(http, webs[1], who="bob"), Web(http, webs[1], path="/mcp")):
            for method, params in (("get", {}), ("update", {"inputResponses": {}}), ("cancel", {})):
                assert other.task(method, handle, **params)["error"] == unknown
        assert a.until(handle, "completed")["status"] == "completed"  # bob's cancel did nothing


def test_the_gates(tasks_stack: Stack, webs: tuple[int, int]) -> None:
    with httpx2.Client(timeout=30) as http:
        a = Web(http, webs[0])
        refused = a.post("tools/call", {"name": "failing_job", "arguments": {}}, tasks=False)
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == -32021 and error["data"] == {"requiredCapabilities": {"extensions": {TASKS: {}}}}
        for method in ("get", "update", "cancel"):
            params = {"taskId": "gate-test", **({"inputResponses": {}} if method == "update" else {})}
            assert a.post(f"tasks/{method}", params, tasks=False).json()["error"]["code"] == -32021
        handle = a.call("slow_compute", {"seconds": 0.5})["result"]["taskId"]
        mismatch = a.post("tasks/get", {"taskId": handle}, headers={"Mcp-Name": "other"})
        assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == -32020
        for removed in ("tasks/result", "tasks/list"):
            gone = a.post(removed, {"taskId": handle})
            assert gone.status_code == 404 and gone.json()["error"]["code"] == -32601
        discover = a.post("server/discover", {}).json()["result"]
        assert discover["capabilities"]["extensions"] == {TASKS: {}} and "tasks" not in discover["capabilities"]


def test_the_same_flow_over_the_websocket_envelope(tasks_stack: Stack, webs: tuple[int, int]) -> None:
    auth = {"Authorization": f"Bearer {KEYS['alice']}"}
    with RawClient(f"ws://127.0.0.1:{webs[0]}/servers/conf/mcp", initialize=False, additional_headers=auth) as ws:
        created = ws.request("tools/call", {"name": "confirm_delete", "arguments": {"filename": "ws.txt"},
                                            "_meta": envelope()})["result"]
        assert created["resultType"] == "task"
        handle = created["taskId"]
        deadline = time.monotonic() + 10
        while ws.request("tasks/get", {"taskId": handle, "_meta": envelope()})["result"]["status"] != "input_required":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        answer = {"confirm": {"action": "accept", "content": {"confirm": True}}}
        ack = ws.request("tasks/update", {"taskId": handle, "inputResponses": answer, "_meta": envelope()})
        assert ack["result"]["resultType"] == "complete"
    with httpx2.Client(timeout=30) as http:  # the socket is gone: the task is not
        done = Web(http, webs[1]).until(handle, "completed")
        assert done["result"]["content"][0]["text"] == "ws.txt: accept, confirm=true"


def test_a_task_outlives_the_web_process_that_made_it(tasks_stack: Stack) -> None:
    with httpx2.Client(timeout=30) as http:
        with tasks_stack.extra_webs(WEB_ENV, count=1) as ports:
            tasks_stack.wait_web_ready(ports[0])
            handle = Web(http, ports[0]).call("slow_compute", {"seconds": 2, "label": "orphan"})["result"]["taskId"]
        with tasks_stack.extra_webs(WEB_ENV, count=1) as ports:  # the maker is gone: a new process serves it
            tasks_stack.wait_web_ready(ports[0])
            done = Web(http, ports[0]).until(handle, "completed")
            assert done["result"]["content"][0]["text"] == "computed orphan after 2s"


def test_a_finished_task_expires_after_its_ttl(tasks_stack: Stack) -> None:
    with httpx2.Client(timeout=30) as http, tasks_stack.extra_webs({**WEB_ENV, "MCP_BROKER_TASK_TTL_S": "3"},
                                                                   count=1) as ports:
        tasks_stack.wait_web_ready(ports[0])
        web = Web(http, ports[0])
        handle = web.call("slow_compute", {"seconds": 60})["result"]["taskId"]
        web.task("cancel", handle)  # finished now: readable for 3 s more
        assert web.task("get", handle)["result"]["status"] == "cancelled"
        time.sleep(4)
        assert web.task("get", handle)["error"]["code"] == -32602


def test_metrics_and_status_count_tasks_by_state(tasks_stack: Stack, webs: tuple[int, int]) -> None:
    admin = {"Authorization": f"Bearer {KEYS['admin']}"}

    def counts(http: httpx2.Client) -> dict[str, int]:
        return http.get(f"http://127.0.0.1:{webs[1]}/status.json", headers=admin).json()["totals"]["tasks"]

    with httpx2.Client(timeout=30) as http:
        a = Web(http, webs[0])
        before = counts(http)
        handle = a.call("slow_compute", {"seconds": 30})["result"]["taskId"]
        during = counts(http)
        assert during["working"] == before["working"] + 1
        scraped = http.get(f"http://127.0.0.1:{webs[1]}/metrics", headers=admin).text
        assert f'mcp_broker_tasks{{state="working"}} {float(during["working"])}' in scraped
        a.task("cancel", handle)
        after = counts(http)
        assert after["working"] == before["working"] and after["cancelled"] == before["cancelled"] + 1
        quick = a.call("slow_compute", {"seconds": 0})["result"]  # answered within the hold (unless slow)
        asked = a.call("test_tool_with_task")["result"]  # its first question round, never retried
        time.sleep(0.5)
        if quick["resultType"] == "complete" and asked["resultType"] == "input_required":
            assert counts(http) == after  # neither was a task anyone was told of


def test_a_task_survives_a_sigkilled_worker(tasks_stack: Stack, webs: tuple[int, int]) -> None:
    with httpx2.Client(timeout=30) as http:
        a, b = Web(http, webs[0], path="/servers/single/mcp"), Web(http, webs[1], path="/servers/single/mcp")
        handle = a.call("slow_compute", {"seconds": 3, "label": "survivor"})["result"]["taskId"]
        time.sleep(1)
        worker = next(p for p in tasks_stack.procs if p.name.startswith("worker-single-") and p.alive())
        worker.stop(signal.SIGKILL)
        tasks_stack.start_worker("single")
        done = b.until(handle, "completed", timeout=90)
        assert done["result"]["content"][0]["text"] == "computed survivor after 3s"
        r = tasks_stack.redis()
        call_id = r.hget(keys.task(digest_of(handle)), "call_id")
        assert r.exists(keys.answered(call_id))
