"""The client's WebSocket transport, against a real MCP server behind a minimal WebSocket bridge.

The broker's front end is not needed to test the transport: a tiny `websockets` server on
127.0.0.1 spawns `examples/servers/echo.py` (an MCP stdio server) per connection and pipes
one text frame to one stdin line and back. A few query parameters make the bridge misbehave
on purpose (garbage frames, dropping the socket, a broker-like `server/discover` refusal).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import mcp
import mcp_types
import pytest
from mcp import MCPError
from mcp.shared.message import SessionMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from client.async_broker_client import AsyncMCPBrokerClient, text
from client.broker_client import MCPBrokerClient
from client.websocket import WebSocketTransport, _parse_frame

ECHO_SERVER = [sys.executable, str(Path(__file__).resolve().parents[1] / "examples" / "servers" / "echo.py")]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # websockets' client is asyncio-only


# --------------------------------------------------------------------------- the bridge


@dataclass
class Connection:
    """What the bridge saw on one WebSocket connection."""

    path: str
    headers: Headers
    subprotocol: str | None
    child: asyncio.subprocess.Process | None = None
    methods: list[str] = field(default_factory=list)


class Bridge:
    """WebSocket <-> stdio: one MCP server child per connection, one frame per line."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.connections: list[Connection] = []
        self._session_ids = itertools.count(1)

    def tagged(self, tag: str) -> list[Connection]:
        return [c for c in self.connections if f"tag={tag}" in c.path]

    def process_response(self, conn: ServerConnection, request: Request, response: Response) -> Response:
        if "nosession" not in request.path:
            response.headers["Mcp-Session-Id"] = request.headers.get("Mcp-Session-Id") or f"s-{next(self._session_ids)}"
        return response

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        seen = Connection(ws.request.path, ws.request.headers, ws.subprotocol)
        self.connections.append(seen)
        query = parse_qs(urlsplit(ws.request.path).query)
        child = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            limit=64 * 1024 * 1024,
        )
        seen.child = child
        assert child.stdin is not None and child.stdout is not None
        stdin, stdout = child.stdin, child.stdout

        if "garbage" in query:
            await ws.send("this is not json")
            await ws.send('[{"jsonrpc": "2.0", "method": "notifications/x", "params": {}}, 42]')

        async def pump_stdout() -> None:
            while line := await stdout.readline():
                await ws.send(line.decode().rstrip("\n"))
            await ws.close()

        pump = asyncio.create_task(pump_stdout())
        try:
            async for frame in ws:
                message = json.loads(frame)
                method = message.get("method") if isinstance(message, dict) else None
                if method:
                    seen.methods.append(method)
                if method == "test/inject":  # send the given raw frames back, verbatim
                    for raw in message["params"]["frames"]:
                        await ws.send(raw)
                    continue
                if method == "test/close":
                    await ws.close(1000, "test/close")
                    break
                if method == "tools/call" and message["params"].get("arguments") == {"text": "DROP"}:
                    await ws.close(1011, "bridge drops the socket on purpose")
                    break
                if method == "server/discover" and "broker" in query:  # answer like the broker does
                    error = {"code": -32601, "message": "Method not found: server/discover"}
                    await ws.send(json.dumps({"jsonrpc": "2.0", "id": message["id"], "error": error}))
                    continue
                stdin.write((frame.encode() if isinstance(frame, str) else frame) + b"\n")
                await stdin.drain()
        except Exception:  # a test bridge: whatever broke, the child is stopped below
            pass
        finally:
            pump.cancel()
            await _stop_child(child)


async def _stop_child(child: asyncio.subprocess.Process) -> None:
    if child.returncode is not None:
        return
    with contextlib.suppress(Exception):
        assert child.stdin is not None
        child.stdin.close()
    try:
        await asyncio.wait_for(child.wait(), 3)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()


class BridgeThread:
    """Runs the bridge on its own event loop, so sync clients and any test loop can reach it."""

    def __init__(self) -> None:
        self.bridge = Bridge(ECHO_SERVER)
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="ws-bridge", daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self.bridge.handler,
            "127.0.0.1",
            0,
            subprotocols=[Subprotocol("mcp")],
            process_response=self.bridge.process_response,
            max_size=None,
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            self.url = f"ws://127.0.0.1:{port}/mcp"
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> BridgeThread:
        self._thread.start()
        assert self._ready.wait(10), "bridge did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        for conn in self.bridge.connections:  # last resort: never leak a child, even if the loop hung
            if conn.child is not None and conn.child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(conn.child.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def bridge_thread() -> Iterator[BridgeThread]:
    with BridgeThread() as running:
        yield running
    leaked = [c.child.pid for c in running.bridge.connections if c.child is not None and c.child.returncode is None]
    assert not leaked, f"bridge left MCP server children running: {leaked}"


@pytest.fixture
def bridge(bridge_thread: BridgeThread) -> Bridge:
    return bridge_thread.bridge


@pytest.fixture
def url(bridge_thread: BridgeThread) -> str:
    return bridge_thread.url


def _request(request_id: int, method: str, params: dict[str, Any] | None = None) -> SessionMessage:
    if params is None:
        return SessionMessage(mcp_types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method))
    return SessionMessage(mcp_types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method, params=params))


# --------------------------------------------------------------------------- SDK client over the transport


@pytest.mark.anyio
async def test_sdk_client_lists_and_calls_tools(url: str, bridge: Bridge) -> None:
    transport = WebSocketTransport(f"{url}?tag=basic", headers={"Authorization": "Bearer t0ken"})
    async with mcp.Client(transport) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        added = await client.call_tool("add", {"a": 2, "b": 3})
        echoed = await client.call_tool("echo", {"text": "hi"})
        failed = await client.call_tool("fail", {"message": "boom"})

    assert names >= {"echo", "add", "slow", "fail", "runs", "whoami"}
    assert added.structured_content == {"result": 5.0} and not added.is_error
    assert text(echoed) == "hi"
    assert failed.is_error  # the SDK server hides the exception text: "Error executing tool fail"
    [conn] = bridge.tagged("basic")
    assert conn.subprotocol == "mcp"
    assert conn.headers["Authorization"] == "Bearer t0ken"
    assert transport.subprotocol == "mcp"
    assert transport.session_id is not None and transport.session_id.startswith("s-")


@pytest.mark.anyio
async def test_auto_mode_falls_back_to_initialize_when_discover_is_unknown(url: str, bridge: Bridge) -> None:
    # The echo server itself speaks 2026-07-28 and answers server/discover; the broker does not.
    async with mcp.Client(WebSocketTransport(f"{url}?tag=legacy&broker=1")) as client:
        version = client.protocol_version
        echoed = await client.call_tool("echo", {"text": "legacy"})

    assert version in HANDSHAKE_PROTOCOL_VERSIONS
    assert text(echoed) == "legacy"
    [conn] = bridge.tagged("legacy")
    assert conn.methods[:3] == ["server/discover", "initialize", "notifications/initialized"]


@pytest.mark.anyio
async def test_fifty_concurrent_calls_share_one_connection(url: str, bridge: Bridge) -> None:
    async with AsyncMCPBrokerClient(f"{url}?tag=many") as client:
        results: list[str] = [""] * 50

        async def one(i: int) -> None:
            results[i] = text(await client.call("echo", {"text": f"m{i}"}))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
        batch = await client.call_many([("add", {"a": i, "b": 1}) for i in range(50)], concurrency=7)
        runs = await client.call("runs")

    assert results == [f"m{i}" for i in range(50)]
    assert [r.structured_content for r in batch] == [{"result": float(i + 1)} for i in range(50)]
    assert runs.structured_content == {"echo": 50, "add": 50}  # one child process served them all
    assert len(bridge.tagged("many")) == 1


@pytest.mark.anyio
async def test_call_many_errors(url: str) -> None:
    calls: list[tuple[str, dict[str, Any] | None]] = [
        ("echo", {"text": "a"}),
        ("slow", {"seconds": 5, "steps": 1}),
        ("fail", None),
    ]
    async with AsyncMCPBrokerClient(url) as client:
        mixed = await client.call_many(calls, timeout=0.5, return_exceptions=True)
        with pytest.raises(MCPError) as raised:
            await client.call_many(calls, timeout=0.5)
        assert text(await client.call("echo", {"text": "still usable"})) == "still usable"

    first, second, third = mixed
    assert isinstance(first, mcp_types.CallToolResult) and text(first) == "a"
    assert isinstance(second, MCPError) and second.code == mcp_types.REQUEST_TIMEOUT
    assert isinstance(third, mcp_types.CallToolResult) and third.is_error  # a tool failure is a result
    assert raised.value.code == mcp_types.REQUEST_TIMEOUT  # raised as is, not as an ExceptionGroup


@pytest.mark.anyio
async def test_list_tools_returns_tool_models(url: str) -> None:
    async with AsyncMCPBrokerClient(url) as client:
        tools = await client.list_tools()
        assert client.client.session is not None
    assert all(isinstance(t, mcp_types.Tool) for t in tools)
    assert {t.name for t in tools} >= {"echo", "add"}


# --------------------------------------------------------------------------- session id


@pytest.mark.anyio
async def test_session_id_is_kept_and_can_be_resumed(url: str, bridge: Bridge) -> None:
    async with AsyncMCPBrokerClient(f"{url}?tag=resume", session_id="resume-me") as client:
        await client.call("echo", {"text": "x"})
        resumed = client.session_id
    [conn] = bridge.tagged("resume")
    assert conn.headers["Mcp-Session-Id"] == "resume-me"
    assert resumed == "resume-me"

    transport = WebSocketTransport(f"{url}?nosession")
    async with transport:
        assert transport.session_id is None


# --------------------------------------------------------------------------- raw transport behaviour


@pytest.mark.anyio
async def test_malformed_frames_become_exceptions_and_batches_are_split(url: str) -> None:
    frames = [
        "{not json",
        '[{"jsonrpc": "2.0", "id": 7, "result": {}}, {"jsonrpc": "2.0", "method": "x/y"}, {"bad": 1}]',
        "[1, 2",
    ]
    async with WebSocketTransport(url) as (read_stream, write_stream):
        await write_stream.send(_request(1, "test/inject", {"frames": frames}))
        with anyio.fail_after(5):
            items = [await read_stream.receive() for _ in range(5)]
            await write_stream.send(_request(2, "ping"))  # the connection survived
            pong = await read_stream.receive()

    assert isinstance(items[0], ValueError)
    assert isinstance(items[1], SessionMessage) and isinstance(items[1].message, mcp_types.JSONRPCResponse)
    assert items[1].message.id == 7
    assert isinstance(items[2], SessionMessage) and isinstance(items[2].message, mcp_types.JSONRPCNotification)
    assert isinstance(items[3], ValueError)
    assert isinstance(items[4], ValueError)
    assert isinstance(pong, SessionMessage) and isinstance(pong.message, mcp_types.JSONRPCResponse)
    assert pong.message.id == 2


@pytest.mark.anyio
async def test_sdk_client_survives_garbage_and_reports_it(url: str) -> None:
    seen: list[object] = []

    async def on_message(message: object) -> None:
        seen.append(message)

    async with mcp.Client(WebSocketTransport(f"{url}?garbage=1"), message_handler=on_message) as client:
        echoed = await client.call_tool("echo", {"text": "alive"})

    assert text(echoed) == "alive"
    assert sum(isinstance(m, Exception) for m in seen) == 2  # the bad frame and the bad batch element


@pytest.mark.anyio
async def test_read_stream_ends_cleanly_when_the_server_closes(url: str) -> None:
    async with WebSocketTransport(url) as (read_stream, write_stream):
        await write_stream.send(_request(1, "test/close"))
        with anyio.fail_after(5):
            leftover = [item async for item in read_stream]
    assert leftover == []


@pytest.mark.anyio
async def test_pending_calls_fail_fast_when_the_socket_drops(url: str) -> None:
    async with AsyncMCPBrokerClient(url) as client:
        started = time.monotonic()
        outcomes = await client.call_many(
            [("slow", {"seconds": 20, "steps": 1}), ("echo", {"text": "DROP"})], return_exceptions=True
        )
    assert time.monotonic() - started < 10
    assert [isinstance(o, MCPError) and o.code == mcp_types.CONNECTION_CLOSED for o in outcomes] == [True, True]


@pytest.mark.anyio
async def test_oversized_frame_closes_the_connection(url: str) -> None:
    async with AsyncMCPBrokerClient(url, max_size=64 * 1024) as client:
        assert text(await client.call("echo", {"text": "small"})) == "small"
        with pytest.raises(MCPError) as raised:
            await client.call("echo", {"text": "x" * 200_000})
    assert raised.value.code == mcp_types.CONNECTION_CLOSED


@pytest.mark.anyio
async def test_connection_refused_raises(free_tcp_port: int) -> None:
    with pytest.raises(OSError):
        async with AsyncMCPBrokerClient(f"ws://127.0.0.1:{free_tcp_port}/mcp", open_timeout=5):
            pass


def test_transport_connects_only_once(url: str) -> None:
    async def twice() -> None:
        transport = WebSocketTransport(url)
        async with transport:
            pass
        with pytest.raises(RuntimeError):
            async with transport:
                pass

    anyio.run(twice)


def test_parse_frame_accepts_bytes_and_rejects_empty_batch() -> None:
    [from_bytes] = _parse_frame(b'{"jsonrpc": "2.0", "id": 1, "result": {}}')
    [empty] = _parse_frame("  []")
    assert isinstance(from_bytes, SessionMessage) and isinstance(from_bytes.message, mcp_types.JSONRPCResponse)
    assert isinstance(empty, ValueError)


# --------------------------------------------------------------------------- sync client


def _portal_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("mcp-broker-client-")]


def test_sync_one_liner_and_cleanup(url: str) -> None:
    assert text(MCPBrokerClient(url).call("echo", {"text": "one-liner"})) == "one-liner"
    gc.collect()
    assert _portal_threads() == []  # the forgotten client was closed by its finalizer


def test_sync_client_keeps_one_connection(url: str, bridge: Bridge) -> None:
    with MCPBrokerClient(f"{url}?tag=sync") as client:
        assert client.portal is None  # lazy
        added = client.call("add", {"a": 1, "b": 2})
        names = {t.name for t in client.list_tools()}
        batch = client.call_many([("echo", {"text": str(i)}) for i in range(20)], concurrency=5)
        assert client.portal is not None
    assert added.structured_content == {"result": 3.0}
    assert "echo" in names
    assert [text(r) for r in batch] == [str(i) for i in range(20)]
    assert len(bridge.tagged("sync")) == 1
    assert client.portal is None and _portal_threads() == []
    with pytest.raises(RuntimeError):
        client.call("echo", {"text": "closed"})


def test_sync_client_is_thread_safe(url: str, bridge: Bridge) -> None:
    out: dict[int, str] = {}
    with MCPBrokerClient(f"{url}?tag=threads") as client:

        def worker(i: int) -> None:
            out[i] = text(client.call("echo", {"text": f"t{i}"}))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert out == {i: f"t{i}" for i in range(8)}
    assert len(bridge.tagged("threads")) == 1


def test_sync_client_reconnects_after_a_dropped_socket(url: str, bridge: Bridge) -> None:
    with MCPBrokerClient(f"{url}?tag=reconnect") as client:
        assert text(client.call("echo", {"text": "before"})) == "before"
        first_session = client.session_id
        with pytest.raises(MCPError) as raised:
            client.call("echo", {"text": "DROP"})  # the bridge drops the socket instead of answering
        assert text(client.call("echo", {"text": "after"})) == "after"
    assert raised.value.code == mcp_types.CONNECTION_CLOSED
    first, second = bridge.tagged("reconnect")
    assert "Mcp-Session-Id" not in first.headers
    assert second.headers["Mcp-Session-Id"] == first_session  # the reconnect asks to resume the session
