"""Scenario own_cpu: the broker's own CPU per uncached trivial call, on both paths users take, each era.

Issue 19's first acceptance row. Two paths, each in both protocol eras (handshake: `initialize` with
2025-11-25; modern: the 2026-07-28 per-request envelope), trivial `whoami` calls (examples/servers/probe.py):
- (a) WebSocket front end (`/mcp`, the raw client of bench/wsclient.py) + a stdio backend (`pstdio`);
- (b) Streamable HTTP front end (`/servers/phttp/mcp`, the official SDK client `mcp.Client`) + a
  Streamable HTTP backend (`phttp`, the same server with `--http`).
Per row: the broker's CPU-ms per call at 64 in flight from the /proc CPU time of its processes over the run
(web + the server's worker + Redis; the backend's own shown apart), calls/s, and the sequential p50 against a
direct SDK session to the same backend in the same era (the overhead target of both transports).

A stack of its own (bench.worker_cpu.probe_backends, the backends `python -m bench.worker_cpu` measures) with
an embedded Redis, so the Redis CPU is the broker's alone even when the bench's Redis is a shared server.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

from mcp import Client, StdioServerParameters

from bench.cpu import CPUMeter
from bench.direct import sdk_pipelined, sdk_sequential
from bench.fmt import table
from bench.settings import Counts
from bench.stack import ROOT, BenchStack, running_stack
from bench.stats import summarize_ms
from bench.worker_cpu import NO_REDIS, probe_backends, tier_meter
from bench.wsclient import PipelineResult, RawSession

ERAS = {"handshake": "legacy", "modern": "2026-07-28"}  # era -> mcp.Client(mode=...)
OWN = ("web", "worker", "redis")  # the broker's own processes, summed into own_cpu_ms_per_call
TOOL = "whoami"
DEADLINE_S = 300.0
PATH_WS, PATH_HTTP = "WebSocket + stdio backend", "Streamable HTTP + Streamable HTTP backend"
SHORT = {PATH_WS: "WS + stdio", PATH_HTTP: "HTTP + HTTP"}
CPU_TARGET_MS = {PATH_WS: 0.6, PATH_HTTP: 1.0}  # issue 19: the broker's own CPU-ms per call
OVERHEAD_TARGET_MS = 2.0  # sequential p50 over a direct SDK session, both transports


def _none(_i: int) -> dict[str, Any]:
    return {}


async def _sdk_runs(connect: Callable[[], AbstractAsyncContextManager[Client]], tool: str, counts: Counts,
                    meter: CPUMeter | None = None) -> tuple[PipelineResult, PipelineResult, dict[str, float]]:
    """Sequential calls, then `own_cpu_calls` with 64 in flight (metered when `meter` is given), one SDK session."""
    async with connect() as client:
        await sdk_sequential(client, counts.warmup, tool, _none)
        seq = await sdk_sequential(client, counts.own_cpu_sequential, tool, _none)
        await sdk_pipelined(client, min(200, counts.own_cpu_calls), counts.direct_window, tool, _none)
        if meter is not None:
            meter.start()
        pipe = await sdk_pipelined(client, counts.own_cpu_calls, counts.direct_window, tool, _none)
        return seq, pipe, meter.stop(counts.own_cpu_calls, pipe.elapsed_s) if meter is not None else {}


async def _ws_runs(url: str, era: str, counts: Counts, meter: CPUMeter
                   ) -> tuple[PipelineResult, PipelineResult, dict[str, float]]:
    session = await RawSession.open(url, era=era)
    try:
        tool = f"pstdio__{TOOL}"
        await session.sequential(tool, _none, counts.warmup)
        seq = await session.sequential(tool, _none, counts.own_cpu_sequential)
        await session.pipelined(tool, _none, min(200, counts.own_cpu_calls), counts.direct_window, DEADLINE_S)
        meter.start()
        pipe = await session.pipelined(tool, _none, counts.own_cpu_calls, counts.direct_window, DEADLINE_S)
        return seq, pipe, meter.stop(counts.own_cpu_calls, pipe.elapsed_s)
    finally:
        await session.close()


def _row(path: str, era: str, client: str, direct: tuple[PipelineResult, ...], broker: tuple[Any, ...]
         ) -> dict[str, Any]:
    direct_seq, direct_pipe, _ = direct
    seq, pipe, cpu = broker
    direct_p50 = summarize_ms(direct_seq.latencies_s)["p50_ms"]
    summary = summarize_ms(seq.latencies_s)
    own = sum(cpu.get(f"{tier}_cpu_ms_per_call", 0.0) for tier in OWN)
    return {"path": path, "era": era, "client": client, "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"],
            "direct_p50_ms": direct_p50, "p50_overhead_ms": summary["p50_ms"] - direct_p50,
            "calls_per_s": pipe.calls_per_s, "direct_calls_per_s": direct_pipe.calls_per_s,
            "window": 64, "own_cpu_ms_per_call": own, **cpu,
            "errors": direct_seq.errors + direct_pipe.errors + seq.errors + pipe.errors,
            "first_error": seq.first_error or pipe.first_error}


def measure(stack: BenchStack, backend_url: str, http: subprocess.Popen[bytes], counts: Counts,
            log: Callable[[str], object] = print) -> list[dict[str, Any]]:
    """Every path in every era on a running `probe_backends` stack."""
    stdio = StdioServerParameters(command=sys.executable, args=[str(ROOT / "examples" / "servers" / "probe.py")],
                                  cwd=str(ROOT))
    endpoint = f"{stack.http_url}/servers/phttp/mcp"
    rows = []
    for era, mode in ERAS.items():
        direct = asyncio.run(_sdk_runs(partial(Client, stdio, mode=mode), TOOL, counts))
        broker = asyncio.run(_ws_runs(stack.ws_url, era, counts, tier_meter(stack, "pstdio", http)))
        rows.append(_row(PATH_WS, era, "raw ws (bench/wsclient.py)", direct, broker))
        direct = asyncio.run(_sdk_runs(partial(Client, backend_url, mode=mode), TOOL, counts))
        broker = asyncio.run(_sdk_runs(partial(Client, endpoint, mode=mode), TOOL, counts,
                                       tier_meter(stack, "phttp", http)))
        rows.append(_row(PATH_HTTP, era, "mcp SDK Client", direct, broker))
        for row in rows[-2:]:
            log(f"  {row['path']}, {era}: own CPU {row['own_cpu_ms_per_call']:.2f} ms/call, "
                f"{row['calls_per_s']:.0f} calls/s, p50 {row['p50_ms']:.2f} ms (direct {row['direct_p50_ms']:.2f})")
    return rows


def run(counts: Counts, log: Callable[[str], object] = print) -> dict[str, Any]:
    with probe_backends(ROOT) as (config, http), running_stack(NO_REDIS, config=config, announce=False) as stack:
        backend_url = json.loads(config.read_text())["mcpServers"]["phttp"]["url"]
        return {"rows": measure(stack, backend_url, http, counts, log), "redis": "embedded (the broker's alone)"}


def _tiers(row: dict[str, Any]) -> str:
    return "/".join(f"{row.get(f'{tier}_cpu_ms_per_call', 0.0):.2f}" for tier in OWN)


def render(result: dict[str, Any]) -> str:
    rows = [[r["path"], r["era"], r["client"], r["own_cpu_ms_per_call"], _tiers(r),
             r.get("backend_cpu_ms_per_call"), r["calls_per_s"], r["direct_calls_per_s"], r["p50_ms"],
             r["direct_p50_ms"], r["p50_overhead_ms"], f"{r['errors']} errors" if r["errors"] else ""]
            for r in result["rows"]]
    return ("6. The broker's own CPU per uncached trivial call (whoami; 64 in flight; embedded Redis), each path and "
            "era; p50 sequential against a direct SDK session to the same backend\n"
            + table(["path", "era", "client", "own CPU-ms/call", "web/worker/redis", "backend CPU-ms", "calls/s",
                     "direct calls/s", "p50 ms", "direct p50 ms", "p50 - direct ms", "note"], rows))


def targets(result: dict[str, Any], add: Callable[..., None]) -> None:
    for r in result.get("rows", []):
        limit = CPU_TARGET_MS[r["path"]]
        add(f"own CPU per call, {SHORT[r['path']]}, {r['era']} (ms)", r["own_cpu_ms_per_call"], f"<= {limit} ms",
            r["own_cpu_ms_per_call"] <= limit, f"web/worker/redis {_tiers(r)}, {r['calls_per_s']:.0f} calls/s")
    for r in result.get("rows", []):
        add(f"p50 overhead over direct SDK, {SHORT[r['path']]}, {r['era']} (ms)", r["p50_overhead_ms"],
            f"<= {OVERHEAD_TARGET_MS:g} ms", r["p50_overhead_ms"] <= OVERHEAD_TARGET_MS,
            f"{r['p50_ms']:.2f} - {r['direct_p50_ms']:.2f}")
