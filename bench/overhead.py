"""Scenario 1, overhead: what one trivial call costs through the broker vs a direct session.

Sequential calls (one in flight) isolate per-call latency from queueing. Variants:
(a) direct SDK stdio session (the reference) and the raw-pipe floor beneath it;
(b) through the broker, uncached, with the raw WebSocket client (and with the SDK client);
(c) through the broker, cached: a tool whose config gives it a TTL, called with the same
    arguments; reported as n/a when the backend's own `runs` counter shows every call
    really ran (no cache yet).
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.direct import RawStdio, sdk_sequential, sdk_session
from bench.settings import Counts
from bench.stack import BenchStack
from bench.stats import summarize_ms
from bench.wsclient import PipelineResult, RawSession
from client.async_broker_client import AsyncMCPBrokerClient

UNCACHED_TOOL = "echo__echo"
CACHED_SERVER = "echo_cached"
CACHED_TOOL = f"{CACHED_SERVER}__echo"


def _summary(result: PipelineResult, client: str) -> dict[str, Any]:
    return {**summarize_ms(result.latencies_s), "errors": result.errors, "first_error": result.first_error,
            "client": client}


async def _direct(counts: Counts) -> dict[str, Any]:
    async with sdk_session() as client:
        await sdk_sequential(client, counts.warmup)
        sdk = await sdk_sequential(client, counts.sequential)
    async with RawStdio.open() as raw_stdio:
        await raw_stdio.sequential(counts.warmup)
        raw = await raw_stdio.sequential(counts.sequential)
    return {"direct_sdk": _summary(sdk, "mcp SDK Client over stdio"),
            "direct_raw": _summary(raw, "JSON lines on the pipes by hand")}


async def _broker_sdk(url: str, counts: Counts) -> PipelineResult:
    """The SDK client over the broker's WebSocket transport: what an SDK user of the broker sees."""
    async with AsyncMCPBrokerClient(url, mode="legacy") as broker:
        await sdk_sequential(broker.client, counts.warmup, UNCACHED_TOOL)
        return await sdk_sequential(broker.client, counts.sequential, UNCACHED_TOOL)


async def backend_runs(session: RawSession, server: str, tool: str) -> int:
    """How often `tool` really ran in the server's (single) backend process."""
    result = await session.call(f"{server}__runs", {"tool": tool})
    return int((result.get("structuredContent") or {}).get(tool, 0))


async def probe_cache(session: RawSession, arguments: dict[str, Any]) -> dict[str, Any]:
    """Call the cacheable tool twice with the same arguments; the backend's counter tells if both ran."""
    before = await backend_runs(session, CACHED_SERVER, "echo")
    first = await session.call(CACHED_TOOL, arguments)
    second = await session.call(CACHED_TOOL, arguments)
    after = await backend_runs(session, CACHED_SERVER, "echo")
    ran = after - before
    ok = not first.get("isError") and first.get("content") == second.get("content")
    return {"backend_runs_for_2_calls": ran, "implemented": ok and ran < 2, "same_answer": ok}


async def _broker(url: str, counts: Counts) -> dict[str, Any]:
    session = await RawSession.open(url)
    try:
        await session.sequential(UNCACHED_TOOL, lambda i: {"text": "x"}, counts.warmup)
        uncached = await session.sequential(UNCACHED_TOOL, lambda i: {"text": "x"}, counts.sequential)
        out: dict[str, Any] = {"broker_raw": _summary(uncached, "raw websockets client (bench/wsclient.py)")}
        arguments = {"text": "cached"}
        cache = await probe_cache(session, arguments)
        out["cache"] = cache
        if cache["implemented"]:
            await session.sequential(CACHED_TOOL, lambda i: arguments, counts.warmup)
            before = await backend_runs(session, CACHED_SERVER, "echo")
            cached = await session.sequential(CACHED_TOOL, lambda i: arguments, counts.sequential)
            cache["backend_runs_during_measurement"] = await backend_runs(session, CACHED_SERVER, "echo") - before
            out["broker_cached_raw"] = _summary(cached, "raw websockets client, same arguments every call")
        else:
            out["broker_cached_raw"] = {"na": "cache not implemented (the backend ran both identical calls)"}
    finally:
        await session.close()
    out["broker_sdk"] = _summary(await _broker_sdk(url, counts),
                                 "client.async_broker_client.AsyncMCPBrokerClient (mcp SDK)")
    return out


def run(stack: BenchStack, counts: Counts) -> dict[str, Any]:
    """Direct first, then the broker, one after the other in this process (nothing else of ours running)."""
    stack.scale("echo", 1)
    stack.warm("echo")
    result = asyncio.run(_direct(counts))
    result.update(asyncio.run(_broker(stack.ws_url, counts)))
    return result
