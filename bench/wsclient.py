"""A minimal raw MCP-over-WebSocket client: JSON text frames on a `websockets` asyncio socket.

The bench talks to the broker with this rather than with the SDK (`AsyncMCPBrokerClient`)
so the client's own cost stays small next to the broker's: the SDK validates every message
with pydantic and runs a task group per session, which on a 2-core box would steal CPU from
the very processes being measured. The SDK path is measured too, separately, as what a
real SDK user sees.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

PROTOCOL_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
MODERN_ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                   "io.modelcontextprotocol/clientCapabilities": {},
                   "io.modelcontextprotocol/clientInfo": {"name": "mcp-broker-bench", "version": "1"}}
"""What a modern-era request carries in its `_meta` instead of a handshake (the broker reads the era per request)."""
MAX_FRAME = 16 * 1024 * 1024


class RPCFailure(RuntimeError):
    """The server answered a request with a JSON-RPC error."""


@dataclass
class PipelineResult:
    """What a pipelined run produced: wall time, per-call latencies (s), and the failures seen."""

    elapsed_s: float
    latencies_s: list[float]
    errors: int
    first_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def calls_per_s(self) -> float:
        return len(self.latencies_s) / self.elapsed_s if self.elapsed_s > 0 else 0.0


def call_frame(request_id: int, tool: str, arguments: dict[str, Any], meta: dict[str, Any] | None = None) -> str:
    """One `tools/call` request as the text frame the broker expects (`meta`: the modern era's envelope)."""
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    if meta is not None:
        params["_meta"] = meta
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params},
                      separators=(",", ":"))


def failure_of(message: dict[str, Any]) -> str | None:
    """A short description if the response is a JSON-RPC error or a tool error, else None."""
    if "error" in message:
        return f"rpc error {message['error'].get('code')}: {message['error'].get('message')}"
    result = message.get("result") or {}
    if result.get("isError"):
        content = result.get("content") or [{}]
        return f"tool error: {content[0].get('text', '')[:200]}"
    return None


class RawSession:
    """One MCP session over one WebSocket, driven by hand: initialized (the handshake era), or with every
    request in the modern era's envelope (`era="modern"`: no handshake, the socket carries no state)."""

    def __init__(self, ws: ClientConnection, meta: dict[str, Any] | None = None) -> None:
        self.ws = ws
        self.meta = meta
        self._ids = itertools.count(1)
        self.init_result: dict[str, Any] = {}

    @classmethod
    async def open(cls, url: str, subprotocol: str | None = "mcp", initialize: bool = True,
                   open_timeout: float = 30.0, era: str = "handshake") -> RawSession:
        protocols = [Subprotocol(subprotocol)] if subprotocol else None
        ws = await connect(url, subprotocols=protocols, open_timeout=open_timeout, max_size=MAX_FRAME,
                           compression=None, ping_interval=None)
        session = cls(ws, MODERN_ENVELOPE if era == "modern" else None)
        if initialize and session.meta is None:
            session.init_result = await session.request("initialize", {
                "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                "clientInfo": {"name": "mcp-broker-bench", "version": "1"},
            })
            await session.notify("notifications/initialized")
        return session

    async def close(self) -> None:
        await self.ws.close()

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self.ws.send(json.dumps(message))

    async def request(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """Send one request and wait for its response (other frames are skipped); its result."""
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None or self.meta is not None:
            message["params"] = {**(params or {}), **({"_meta": self.meta} if self.meta is not None else {})}
        await self.ws.send(json.dumps(message, separators=(",", ":")))
        async with asyncio.timeout(timeout):
            while True:
                reply = json.loads(await self.ws.recv())
                if reply.get("id") == request_id:
                    break
        if "error" in reply:
            raise RPCFailure(f"{method}: {reply['error']}")
        return reply["result"]

    async def call(self, tool: str, arguments: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """`tools/call`; the raw result dict (check `isError` yourself)."""
        result: dict[str, Any] = await self.request("tools/call", {"name": tool, "arguments": arguments}, timeout)
        return result

    async def sequential(self, tool: str, arguments: Callable[[int], dict[str, Any]], count: int,
                         timeout: float = 30.0) -> PipelineResult:
        """`count` calls, each sent when the previous answered: per-call latency with nothing queued."""
        latencies: list[float] = []
        errors, first = 0, None
        start = time.perf_counter()
        for i in range(count):
            frame = call_frame(next(self._ids), tool, arguments(i), self.meta)
            t0 = time.perf_counter()
            await self.ws.send(frame)
            async with asyncio.timeout(timeout):
                reply = json.loads(await self.ws.recv())
            latencies.append(time.perf_counter() - t0)
            problem = failure_of(reply)
            if problem:
                errors += 1
                first = first or problem
        return PipelineResult(time.perf_counter() - start, latencies, errors, first)

    async def pipelined(self, tool: str, arguments: Callable[[int], dict[str, Any]], count: int, window: int,
                        deadline_s: float = 120.0) -> PipelineResult:
        """`count` calls with up to `window` in flight on this one socket; stops by itself at the deadline.

        One loop does both directions: each answer that arrives lets the next call go, so the
        client adds one `json.loads` and one `send` per call and nothing else.
        """
        sent_at: dict[int, float] = {}
        latencies: list[float] = []
        errors, first = 0, None
        next_index = 0
        base = 1_000_000 * next(self._ids)  # a block of ids no other request of this session uses

        async def send_next() -> None:
            nonlocal next_index
            request_id = base + next_index
            frame = call_frame(request_id, tool, arguments(next_index), self.meta)
            next_index += 1
            sent_at[request_id] = time.perf_counter()
            await self.ws.send(frame)

        start = time.perf_counter()
        async with asyncio.timeout(deadline_s):
            for _ in range(min(window, count)):
                await send_next()
            while len(latencies) + errors < count:
                reply = json.loads(await self.ws.recv())
                sent = sent_at.pop(reply.get("id"), None)
                if sent is None:
                    continue  # a notification or a stray frame
                now = time.perf_counter()
                problem = failure_of(reply)
                if problem:
                    errors += 1
                    first = first or problem
                else:
                    latencies.append(now - sent)
                if next_index < count:
                    await send_next()
        return PipelineResult(time.perf_counter() - start, latencies, errors, first)
