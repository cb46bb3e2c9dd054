"""The client library's tasks (`submit` → handle: `status`, `result`, `cancel`) on the real stack, over the
WebSocket in the modern era: sync and async round trips, cancel, a backend question answered through the
caller's `on_input`, and another key that cannot see the task."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types
import pytest
from mcp import MCPError

from client.async_broker_client import AsyncMCPBrokerClient, text
from client.broker_client import MCPBrokerClient
from client.tasks import AsyncTaskHandle, TaskCancelled, TaskInputRequired, TasksUnavailable, get_task
from tests.stack import ROOT, Stack

MODERN = "2026-07-28"
KEYS = {"alice": "KA-ctasks", "bob": "KB-ctasks"}
WEB_ENV = {"MCP_BROKER_API_KEYS": ",".join(f"{who}:{key}" for who, key in KEYS.items())}
SUPPORT = {"slow_compute": "optional", "confirm_delete": "optional", "test_tool_with_task": "required"}


def auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who]}"}


@pytest.fixture(scope="module")
def task_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`conf`: the conformance fixtures, some of them task-capable."""
    server = str(Path(ROOT, "examples", "servers", "conformance.py"))
    config = tmp_path_factory.mktemp("client-tasks") / "mcp_servers.json"
    config.write_text(json.dumps({"mcpServers": {"conf": {"command": "python", "args": [server], "broker": {
        "concurrency": 8, "timeout_s": 20, "max_timeout_s": 90, "tasks": SUPPORT}}}}))
    stack = Stack(redis_url, config_path=config)
    try:
        stack.start_worker("conf")
        stack.start_web(env=WEB_ENV)
        stack.wait_for_catalog(["conf"])
        stack.wait_web_ready(stack.web_ports[0])
        yield stack
    finally:
        stack.stop()


def confirm(questions: mcp_types.InputRequests) -> dict[str, Any]:
    assert list(questions) == ["confirm"] and questions["confirm"].method == "elicitation/create"
    return {"confirm": mcp_types.ElicitResult(action="accept", content={"confirm": True})}


def test_sync_round_trip_cancel_and_a_question(task_stack: Stack) -> None:
    with MCPBrokerClient(task_stack.ws_url(), headers=auth("alice"), mode=MODERN) as client:
        handle = client.submit("conf__slow_compute", {"seconds": 1})
        assert handle.task_id is not None and len(handle.task_id) >= 43
        assert handle.status().status == "working"
        assert text(handle.result(timeout=30)) == "computed it after 1s"
        assert handle.status().status == "completed"

        quick = client.submit("conf__greet", {"name": "World"})  # no task support: answered at once
        assert quick.task_id is None and text(quick.result()) == "Hello, World!"

        running = client.submit("conf__slow_compute", {"seconds": 60})
        with pytest.raises(TimeoutError):
            running.result(timeout=0.5)
        running.cancel()
        with pytest.raises(TaskCancelled):
            running.result(timeout=10)
        assert running.status().status == "cancelled"

        asked = client.submit("conf__confirm_delete", {"filename": "x.txt"}, on_input=confirm)
        assert text(asked.result(timeout=30)) == "x.txt: accept, confirm=true"

        unanswered = client.submit("conf__confirm_delete", {"filename": "y.txt"})
        with pytest.raises(TaskInputRequired, match="'confirm' \\(elicitation/create"):
            unanswered.result(timeout=30)
        unanswered.cancel()


def test_async_round_trip_and_questions(task_stack: Stack) -> None:
    async def scenario() -> None:
        async with AsyncMCPBrokerClient(task_stack.ws_url(), headers=auth("alice"), mode=MODERN) as client:
            handle = await client.submit("conf__slow_compute", {"seconds": 1})
            assert handle.task_id is not None and (await handle.status()).status == "working"
            assert text(await handle.result(timeout=30)) == "computed it after 1s"

            async def answer(questions: mcp_types.InputRequests) -> dict[str, Any]:
                return confirm(questions)

            asked = await client.submit("conf__confirm_delete", {"filename": "x.txt"}, on_input=answer)
            assert text(await asked.result(timeout=30)) == "x.txt: accept, confirm=true"

            def name(questions: mcp_types.InputRequests) -> dict[str, Any]:
                return {key: {"action": "accept", "content": {"name": "Alice"}} for key in questions}

            # the question comes before the task exists (an input_required round): the same callback answers it
            early = await client.submit("conf__test_tool_with_task", on_input=name)
            assert early.task_id is not None
            assert text(await early.result(timeout=30)) == "Hello, Alice!"

            running = await client.submit("conf__slow_compute", {"seconds": 60})
            await running.cancel()
            with pytest.raises(TaskCancelled):
                await running.result(timeout=10)

            # a plain call of a task-capable tool becomes a task too, finished by the extension's claim
            assert text(await client.call("conf__slow_compute", {"seconds": 0.5})) == "computed it after 0.5s"

    anyio.run(scenario)


def test_another_key_cannot_see_the_task(task_stack: Stack) -> None:
    async def scenario() -> None:
        async with (AsyncMCPBrokerClient(task_stack.ws_url(), headers=auth("alice"), mode=MODERN) as alice,
                    AsyncMCPBrokerClient(task_stack.ws_url(), headers=auth("bob"), mode=MODERN) as bob):
            handle = await alice.submit("conf__slow_compute", {"seconds": 1})
            assert handle.task_id is not None and handle.created is not None
            with pytest.raises(MCPError) as unknown:
                await get_task(bob.client.session, handle.task_id)
            assert unknown.value.code == mcp_types.INVALID_PARAMS
            stolen = AsyncTaskHandle(lambda: bob.client.session, handle.created)
            with pytest.raises(MCPError):
                await stolen.cancel()
            assert text(await handle.result(timeout=30)) == "computed it after 1s"  # bob's cancel did nothing

    anyio.run(scenario)


def test_a_handshake_era_connection_has_no_tasks(task_stack: Stack) -> None:
    with MCPBrokerClient(task_stack.ws_url(), headers=auth("alice")) as client:
        started = time.monotonic()
        with pytest.raises(TasksUnavailable, match="mode='2026-07-28'"):
            client.submit("conf__slow_compute", {"seconds": 5})
        assert time.monotonic() - started < 5  # refused before anything ran
