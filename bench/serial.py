"""Scenario serial: a backend that serves one call at a time, and what more worker processes make of it.

Issue 19's serial-backend row. Many real stdio servers answer one call, then read the next; `block`
(examples/servers/serial.py) holds its process `serial_block_ms` (10 ms) that way. One backend's own rate is
measured first, through a direct SDK session with 64 calls in flight (they queue in its pipe); then the
broker with 1, 2, 4 worker processes for the server (each with its own backend), 64 in flight on one
WebSocket. The target: N workers serve >= 0.9 x N x that rate, for N up to the cores available (a sleeping
backend needs no core, but the broker's own per-call CPU does; on 2 cores N = 4 is held to 2 x the rate).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from mcp import Client, StdioServerParameters

from bench.direct import sdk_pipelined
from bench.fmt import table, x
from bench.settings import Counts
from bench.stack import ROOT, BenchStack
from bench.stats import summarize_ms
from bench.wsclient import RawSession

SERVER = "serial"  # in bench/mcp_servers.bench.json; no worker until this scenario scales it (stack.ON_DEMAND)
SERIAL_SERVER = ROOT / "examples" / "servers" / "serial.py"
WINDOW = 64
DEADLINE_S = 300.0
TARGET_SHARE = 0.9


async def _direct(counts: Counts) -> float:
    """One backend's own rate: `block` calls/s with 64 in flight over a direct SDK stdio session."""
    params = StdioServerParameters(command=sys.executable, args=[str(SERIAL_SERVER)], cwd=str(ROOT))
    arguments = {"ms": counts.serial_block_ms}
    async with Client(params, mode="legacy") as client:
        await sdk_pipelined(client, 8, WINDOW, "block", lambda i: arguments)
        result = await sdk_pipelined(client, counts.serial_calls_per_worker, WINDOW, "block", lambda i: arguments)
    if result.errors:
        raise RuntimeError(f"direct session to {SERIAL_SERVER.name}: {result.errors} errors")
    return result.calls_per_s


async def _broker(url: str, calls: int, counts: Counts) -> dict[str, Any]:
    session = await RawSession.open(url)
    arguments = {"ms": counts.serial_block_ms}
    try:
        await session.pipelined(f"{SERVER}__block", lambda i: arguments, min(calls, 4 * WINDOW), WINDOW, DEADLINE_S)
        result = await session.pipelined(f"{SERVER}__block", lambda i: arguments, calls, WINDOW, DEADLINE_S)
    finally:
        await session.close()
    summary = summarize_ms(result.latencies_s)
    return {"calls": calls, "calls_per_s": result.calls_per_s, "p50_ms": summary["p50_ms"],
            "p99_ms": summary["p99_ms"], "errors": result.errors, "first_error": result.first_error}


def run(stack: BenchStack, counts: Counts, log: Any = print) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    rate = asyncio.run(_direct(counts))
    log(f"  one {SERIAL_SERVER.name} backend, direct SDK session, block({counts.serial_block_ms:g} ms): "
        f"{rate:.0f} calls/s")
    out: dict[str, Any] = {"block_ms": counts.serial_block_ms, "window": WINDOW, "cores": cores,
                           "backend_calls_per_s": rate, "rows": []}
    try:
        for workers in counts.serial_workers:
            stack.scale(SERVER, workers)
            stack.warm(SERVER)
            row = asyncio.run(_broker(stack.ws_url, workers * counts.serial_calls_per_worker, counts))
            counted = min(workers, cores)
            row.update(workers=workers, vs_backend=row["calls_per_s"] / rate,
                       target_calls_per_s=TARGET_SHARE * counted * rate, counted_workers=counted)
            row["met"] = row["calls_per_s"] >= row["target_calls_per_s"]
            out["rows"].append(row)
            log(f"  broker, {workers} worker(s): {row['calls_per_s']:.0f} calls/s = {row['vs_backend']:.2f} x one "
                f"backend (target >= {TARGET_SHARE} x {counted} = {TARGET_SHARE * counted:.1f}x)")
    finally:
        stack.scale(SERVER, 0)
    return out


def render(result: dict[str, Any]) -> str:
    rows = [["one backend, direct SDK session", "-", result["backend_calls_per_s"], "1.00x", "-", "-", "-", ""]]
    for r in result["rows"]:
        rows.append([f"broker, raw ws, {r['workers']} worker(s)", r["workers"], r["calls_per_s"], x(r["vs_backend"]),
                     f">= {TARGET_SHARE * r['counted_workers']:.2f}x", r["p50_ms"], r["p99_ms"],
                     f"{r['errors']} errors" if r["errors"] else ""])
    return (f"7. Serial backend: block({result['block_ms']:g} ms), one call at a time per backend, "
            f"{result['window']} in flight; N workers = N backends (target counts N up to {result['cores']} cores)\n"
            + table(["path", "workers", "calls/s", "vs one backend", "target", "p50 ms", "p99 ms", "note"], rows))


def targets(result: dict[str, Any], add: Callable[..., None]) -> None:
    for r in result.get("rows", []):
        share = TARGET_SHARE * r["counted_workers"]
        add(f"serial backend, {r['workers']} worker(s) / one backend (calls/s)", r["vs_backend"],
            f">= {share:.2f}x ({TARGET_SHARE} x {r['counted_workers']})", r["met"] and not r["errors"],
            f"{r['calls_per_s']:.0f} vs {result['backend_calls_per_s']:.0f} calls/s")
