"""`mcp-broker connect`: the SDK's stdio client spawns the bridge, which serves a real broker to it over stdio.

Everything a desktop host does goes through the spawned command: list, call, progress, cancellation,
sampling/elicitation/roots answered by the host, a broker web process killed and restarted mid-call,
exit on stdin close, and the errors of a wrong URL or key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import mcp_types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.message import SessionMessage
from mcp_types import CreateMessageResult, ElicitResult, Implementation, ListRootsResult, Root, TextContent

from cli.devrun import free_port
from tests.stack import ROOT, Stack
from tests.test_cancellation import LONG, wait_for_nap

BRIDGE = [sys.executable, "-m", "broker", "connect"]


def bridge(url: str, *extra: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    """`python -m broker connect URL`, as a host's config would start it (from outside the checkout)."""
    return StdioServerParameters(command=sys.executable, args=["-m", "broker", "connect", url, *extra],
                                 env={"PYTHONPATH": str(ROOT), **(env or {})}, cwd="/")


async def sampling(_context: Any, params: Any) -> CreateMessageResult:
    return CreateMessageResult(role="assistant", content=TextContent(type="text", text=f"host says: "
                                                                     f"{params.messages[0].content.text}"),
                               model="host-model")


async def elicitation(_context: Any, params: Any) -> ElicitResult:
    return ElicitResult(action="accept", content={"colour": "teal"})


async def roots(_context: Any) -> ListRootsResult:
    return ListRootsResult(roots=[Root(uri="file:///work/project", name="project")])


def host(params: StdioServerParameters) -> Client:
    return Client(params, sampling_callback=sampling, elicitation_callback=elicitation, list_roots_callback=roots,
                  read_timeout_seconds=60, mode="legacy")


@pytest.mark.parametrize("scheme", ["ws", "http"])
def test_a_stdio_host_lists_calls_and_sees_progress(stack: Stack, scheme: str) -> None:
    url = stack.ws_url() if scheme == "ws" else f"{stack.http_url()}/mcp"

    async def scenario() -> None:
        async with host(bridge(url)) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert {"echo__echo", "echo__slow", "time__get_current_time"} <= names
            echoed = await client.call_tool("echo__echo", {"text": "through stdio"})
            assert echoed.structured_content == {"result": "through stdio"}
            seen: list[float] = []

            async def progress(done: float, total: float | None, message: str | None) -> None:
                seen.append(done)

            slow = await client.call_tool("echo__slow", {"seconds": 0.4, "steps": 4}, progress_callback=progress)
            assert slow.structured_content == {"result": "slept 0.4s"}
            assert seen == [1, 2, 3, 4]

    anyio.run(scenario)


@pytest.mark.parametrize("scheme", ["ws", "http"])
def test_sampling_elicitation_and_roots_reach_the_host_and_its_answers_return(stack: Stack, scheme: str) -> None:
    url = stack.ws_url() if scheme == "ws" else f"{stack.http_url()}/mcp"

    async def scenario() -> None:
        async with host(bridge(url)) as client:
            sampled = await client.call_tool("echo__ask_model", {"question": "why?"})
            assert sampled.structured_content == {"result": "host says: why?"}
            elicited = await client.call_tool("echo__ask_user", {"question": "colour?"})
            assert elicited.structured_content == {"result": "accept: teal"}
            listed = await client.call_tool("echo__ask_roots", {})
            assert listed.structured_content == {"result": ["file:///work/project"]}

    anyio.run(scenario)


def test_cancelling_through_the_bridge_cancels_the_call_on_the_broker(stack: Stack) -> None:
    """The host's notifications/cancelled, sent through the bridge, reaches the backend: the echo server's nap
    records its own cancellation (tests/test_cancellation.py), and its 120 s limit rules out a timeout."""
    key = f"bridge-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with host(bridge(stack.ws_url())) as client, anyio.create_task_group() as tg:
            async def long_call() -> None:
                await client.call_tool("echo__nap", {"key": key, "seconds": 90}, meta=LONG)

            tg.start_soon(long_call)
            await anyio.to_thread.run_sync(wait_for_nap, key, "started")
            tg.cancel_scope.cancel()  # the SDK sends notifications/cancelled for the call

    anyio.run(scenario)
    wait_for_nap(key, "cancelled")


@pytest.fixture
def own_web(stack: Stack) -> Iterator[int]:
    """A web process of this test's own (killed and restarted by it), forgotten when the test ends."""
    port = free_port()
    stack.start_web(port)
    stack.wait_web_ready(port)
    try:
        yield port
    finally:
        for proc in [p for p in stack.procs if p.name == f"web-{port}"]:
            proc.stop()
        stack.web_ports.remove(port)


def test_a_call_in_flight_is_answered_after_the_broker_web_restarts(stack: Stack, own_web: int) -> None:
    """The web process is SIGKILLed mid-call and started again: the bridge reconnects, resumes the session by
    id, and the call's answer arrives; the host never saw the break."""

    async def scenario() -> None:
        async with host(bridge(f"ws://127.0.0.1:{own_web}/mcp")) as client:
            assert (await client.call_tool("echo__echo", {"text": "before"})).structured_content == {"result": "before"}
            started = anyio.Event()
            answer: dict[str, Any] = {}

            async def progress(done: float, total: float | None, message: str | None) -> None:
                started.set()

            async def long_call() -> None:
                result = await client.call_tool("echo__slow", {"seconds": 4, "steps": 4}, progress_callback=progress)
                answer["result"] = result.structured_content

            async with anyio.create_task_group() as tg:
                tg.start_soon(long_call)
                await started.wait()
                await anyio.to_thread.run_sync(restart_web, stack, own_web)
            assert answer["result"] == {"result": "slept 4.0s"}
            # and the session goes on: lists and calls on the resumed session
            assert any(t.name == "echo__echo" for t in (await client.list_tools()).tools)
            assert (await client.call_tool("echo__echo", {"text": "after"})).structured_content == {"result": "after"}

    anyio.run(scenario)


def restart_web(stack: Stack, port: int) -> None:
    stack.web_proc(port).stop(signal.SIGKILL)
    stack.start_web(port)
    stack.wait_web_ready(port)


def run_bridge(url: str, *extra: str, stdin: str = "", env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BRIDGE, url, *extra], input=stdin, capture_output=True, text=True, timeout=timeout,
                          cwd="/", env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def run_bridges(runs: list[tuple[tuple[str, ...], dict[str, str]]]) -> list[subprocess.CompletedProcess[str]]:
    """`run_bridge` for each (argv, env), all at once: each is a process of its own that spends ~1 CPU-s
    importing the SDK, and they only wait on their broker, so running them together halves the wait."""
    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(lambda run: run_bridge(*run[0], env=run[1]), runs))


def test_the_bridge_answers_then_exits_0_when_the_host_closes_stdin(stack: Stack) -> None:
    initialize = ('{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", '
                  '"capabilities": {}, "clientInfo": {"name": "shell", "version": "1"}}}\n')
    done = run_bridge(stack.ws_url(), stdin="this is not JSON-RPC\n" + initialize)
    assert done.returncode == 0, done.stderr
    parse_error, answer = (json.loads(line) for line in done.stdout.splitlines())
    assert parse_error["id"] is None and parse_error["error"]["code"] == -32700  # as any MCP server answers it
    assert answer["id"] == 1 and answer["result"]["protocolVersion"] == "2025-11-25"


def test_an_unreachable_broker_or_a_bad_url_is_one_line_on_stderr(stack: Stack) -> None:
    unreachable = [f"ws://127.0.0.1:{free_port()}/mcp", f"http://127.0.0.1:{free_port()}/mcp"]
    *refused, bad_scheme = run_bridges([((url,), {}) for url in [*unreachable, "ftp://127.0.0.1/mcp"]])
    for done in refused:
        assert done.returncode == 1
        assert "cannot reach the broker" in done.stderr and "Traceback" not in done.stderr
    assert bad_scheme.returncode == 2 and "expected ws://, wss://, http:// or https://" in bad_scheme.stderr


def test_a_bad_key_is_refused_at_start_and_the_right_one_from_the_environment_works(stack: Stack) -> None:
    port = free_port()
    stack.start_web(port, env={"MCP_BROKER_API_KEYS": "desk:desk-key"})
    try:
        stack.wait_web_ready(port)
        urls = (f"ws://127.0.0.1:{port}/mcp", f"http://127.0.0.1:{port}/mcp")
        wrong = ((("--key", "wrong"), {}), ((), {"MCP_BROKER_KEY": "wrong"}), ((), {}))
        for done in run_bridges([((url, *extra), env) for url in urls for extra, env in wrong]):
            assert done.returncode == 1, done.stderr
            assert "refused the connection: HTTP 401" in done.stderr and "Traceback" not in done.stderr
        for url in urls:

            async def scenario(target: str = url) -> None:
                async with host(bridge(target, env={"MCP_BROKER_KEY": "desk-key"})) as client:
                    echoed = await client.call_tool("echo__echo", {"text": "keyed"})
                    assert echoed.structured_content == {"result": "keyed"}

            anyio.run(scenario)
    finally:
        for proc in [p for p in stack.procs if p.name == f"web-{port}"]:
            proc.stop()
        stack.web_ports.remove(port)


def test_a_session_the_broker_lost_is_replaced_and_the_host_goes_on(stack: Stack, own_web: int) -> None:
    """The broker's record of the session is deleted (as an expiry would) and the web process restarted: the
    resume is refused (404), the bridge opens a new session with the host's own `initialize` replayed, and the
    host's next calls work on it without a new handshake of its own."""
    r = stack.redis()
    name = f"lost-session-host-{free_port()}"

    def our_sessions() -> list[str]:
        return [key for key in r.scan_iter("mcpb:session:*")
                if not key.endswith(":calls") and name in (r.hget(key, "clientInfo") or "")]

    async def scenario() -> None:
        async with Client(bridge(f"ws://127.0.0.1:{own_web}/mcp"), read_timeout_seconds=60, mode="legacy",
                          client_info=Implementation(name=name, version="1")) as client:
            assert (await client.call_tool("echo__echo", {"text": "one"})).structured_content == {"result": "one"}
            [first] = our_sessions()
            r.delete(first)
            await anyio.to_thread.run_sync(restart_web, stack, own_web)
            echoed = await client.call_tool("echo__echo", {"text": "two"})
            assert echoed.structured_content == {"result": "two"}
            [second] = our_sessions()  # the replayed initialize made it (same clientInfo), the old one is gone
            assert second != first

    anyio.run(scenario)


def test_a_list_in_flight_when_the_broker_lost_the_session_is_sent_again_and_answered(stack: Stack,
                                                                                      own_web: int) -> None:
    """The bridge in-process (to see what it wrote) on the real broker: a `tools/list` goes out to a frozen web
    process (SIGSTOP), the session's record is deleted and the web process restarted: the resume is refused
    (404), and on the new session (its handshake replayed first) the list is sent again and answered, not
    given an "outcome unknown" error (only broker-queued calls can have run)."""
    from client.bridge import Bridge
    from client.upstream import WebSocketUpstream

    def request(rid: Any, method: str, params: dict[str, Any] | None = None) -> SessionMessage:
        return SessionMessage(mcp_types.JSONRPCRequest(jsonrpc="2.0", id=rid, method=method, params=params))

    async def scenario() -> None:
        bridge_ = Bridge(WebSocketUpstream(f"ws://127.0.0.1:{own_web}/mcp"), say=lambda _line: None)
        to_bridge, host_read = anyio.create_memory_object_stream[SessionMessage | Exception](16)
        host_write, from_bridge = anyio.create_memory_object_stream[SessionMessage](16)
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                tg.start_soon(bridge_.run, host_read, host_write)
                await to_bridge.send(request(1, "initialize", {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "lost-list-host", "version": "1"}}))
                assert (await from_bridge.receive()).message.id == 1
                await to_bridge.send(SessionMessage(mcp_types.JSONRPCNotification(
                    jsonrpc="2.0", method="notifications/initialized")))
                first = bridge_.session_id
                assert first
                os.killpg(stack.web_proc(own_web).popen.pid, signal.SIGSTOP)  # reads nothing, answers nothing
                await to_bridge.send(request(2, "tools/list"))
                while 2 not in bridge_.written:
                    await anyio.sleep(0.05)
                stack.redis().delete(f"mcpb:session:{first}")
                await anyio.to_thread.run_sync(restart_web, stack, own_web)  # SIGKILL ends a stopped process too
                answer = (await from_bridge.receive()).message
                assert isinstance(answer, mcp_types.JSONRPCResponse), answer
                assert answer.id == 2 and any(t["name"] == "echo__echo" for t in answer.result["tools"])
                assert bridge_.session_id not in (None, first)  # answered on a new session
                to_bridge.close()

    anyio.run(scenario)


def test_giving_up_answers_the_queued_requests_but_keeps_the_hosts_notifications_and_answers() -> None:
    """The broker away past `give_up_s`: the host's queued requests get their error and are not sent later, but
    its notifications and its answer to a sampling question still wait for the next link. No link is opened."""
    from client.bridge import Bridge
    from client.upstream import WebSocketUpstream

    async def scenario() -> None:
        bridge_ = Bridge(WebSocketUpstream("ws://127.0.0.1:9/mcp"), give_up_s=0, say=lambda _line: None)
        to_bridge, host_read = anyio.create_memory_object_stream[SessionMessage | Exception](16)
        host_write, from_bridge = anyio.create_memory_object_stream[SessionMessage](16)
        bridge_._host_write = host_write
        changed = mcp_types.JSONRPCNotification(jsonrpc="2.0", method="notifications/roots/list_changed")
        sampled = mcp_types.JSONRPCResponse(jsonrpc="2.0", id="broker-7", result={"role": "assistant"})
        call = mcp_types.JSONRPCRequest(jsonrpc="2.0", id=3, method="tools/call", params={"name": "echo__echo"})
        for message in (changed, call, sampled):
            await to_bridge.send(SessionMessage(message))
        to_bridge.close()
        await bridge_._from_host(host_read)
        await bridge_._while_away()  # the link just went away
        await bridge_._while_away()  # ... and stays away past give_up_s
        error = (await from_bridge.receive()).message
        assert isinstance(error, mcp_types.JSONRPCError) and error.id == 3 and not bridge_.pending
        assert [item.message for item in bridge_._take_outbox()] == [changed, sampled]

    anyio.run(scenario)
