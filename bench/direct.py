"""The floor: the same trivial calls over a direct warm stdio session to examples/servers/echo.py.

Two floors, measured in the bench process itself:
- `sdk`: the official SDK (`mcp.Client(StdioServerParameters(...))`), the way an MCP host
  would talk to the server without a broker. This is the reference (a) of the report.
- `raw`: newline-delimited JSON-RPC written to the server's stdin by hand, so the client
  costs almost nothing; the difference between the two is the SDK client's own share.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

from bench.wsclient import PipelineResult, failure_of

ROOT = Path(__file__).resolve().parent.parent
ECHO_SERVER = ROOT / "examples" / "servers" / "echo.py"


def echo_params() -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=[str(ECHO_SERVER)], cwd=str(ROOT),
                                 env={"ECHO_MARKER": "direct"})


@asynccontextmanager
async def sdk_session() -> AsyncIterator[Client]:
    """A warm SDK session (the handshake done, like a broker worker's), closed on exit."""
    async with Client(echo_params(), mode="legacy") as client:
        await client.call_tool("echo", {"text": "warm-up"})
        yield client


Arguments = Callable[[int], dict[str, Any]]


def _text(i: int) -> dict[str, Any]:
    return {"text": str(i)}


async def sdk_sequential(client: Client, count: int, tool: str = "echo", arguments: Arguments = _text
                         ) -> PipelineResult:
    """`count` calls one after the other with any SDK client (direct stdio, the broker, a peer); `arguments`
    of the i-th call (default: echo's `text`)."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        result = await client.call_tool(tool, arguments(0))
        latencies.append(time.perf_counter() - t0)
        errors += bool(result.is_error)
    return PipelineResult(time.perf_counter() - start, latencies, errors)


async def sdk_pipelined(client: Client, count: int, window: int, tool: str = "echo", arguments: Arguments = _text
                        ) -> PipelineResult:
    """`count` calls with `window` in flight over the one session (the SDK matches replies by id)."""
    latencies: list[float] = []
    errors = 0
    counter = itertools.count()

    async def lane() -> None:
        nonlocal errors
        while (i := next(counter)) < count:
            t0 = time.perf_counter()
            result = await client.call_tool(tool, arguments(i))
            latencies.append(time.perf_counter() - t0)
            errors += bool(result.is_error)

    start = time.perf_counter()
    await asyncio.gather(*[lane() for _ in range(window)])
    return PipelineResult(time.perf_counter() - start, latencies, errors)


class RawStdio:
    """The echo server driven over its pipes by hand: one JSON line out, one JSON line back."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._ids = itertools.count(1)

    @classmethod
    @asynccontextmanager
    async def open(cls) -> AsyncIterator[RawStdio]:
        params = echo_params()
        proc = await asyncio.create_subprocess_exec(
            params.command, *params.args, cwd=params.cwd, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, limit=16 * 1024 * 1024,
        )
        raw = cls(proc)
        try:
            await raw.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                             "clientInfo": {"name": "bench", "version": "1"}})
            await raw._write({"jsonrpc": "2.0", "method": "notifications/initialized"})
            yield raw
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def _write(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        await self.proc.stdin.drain()

    async def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not line:
            raise ConnectionError("the echo server closed its stdout")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        request_id = next(self._ids)
        await self._write({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        while True:
            reply = await self._read()
            if reply.get("id") == request_id:
                return reply

    async def sequential(self, count: int) -> PipelineResult:
        latencies: list[float] = []
        errors = 0
        start = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter()
            reply = await self.request("tools/call", {"name": "echo", "arguments": {"text": "x"}})
            latencies.append(time.perf_counter() - t0)
            errors += failure_of(reply) is not None
        return PipelineResult(time.perf_counter() - start, latencies, errors)
