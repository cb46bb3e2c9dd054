"""Scenario 2, throughput: trivial calls/s with many in flight, by number of worker processes.

Each broker run is 10,000 `echo` calls pipelined on ONE WebSocket (64 outstanding)
with 1, 2 and 4 worker processes for the echo server; the batch API is loaded the same way
when it exists; a direct SDK session pipelining the same calls (64 in flight) is the
reference, measured in the same run. Per-tier CPU-ms per call comes with every run: on two
cores, calls/s is at most 2000 / (sum of CPU-ms per call), whatever the worker count.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psutil

from bench import batch_api
from bench.cpu import CPUMeter, redis_server_process
from bench.direct import sdk_pipelined, sdk_session
from bench.overhead import CACHED_TOOL, UNCACHED_TOOL, probe_cache
from bench.settings import Counts
from bench.stack import BenchStack
from bench.stats import summarize_ms
from bench.wsclient import PipelineResult, RawSession

DEADLINE_S = 180.0
COALESCING_ENV = "MCP_BROKER_MAX_BATCH"  # calls per queue message from the web's outbox (1 = no coalescing)


def _row(result: PipelineResult, calls: int, cpu: dict[str, float], **labels: Any) -> dict[str, Any]:
    summary = summarize_ms(result.latencies_s)
    return {**labels, "calls": calls, "elapsed_s": result.elapsed_s,
            "calls_per_s": calls / result.elapsed_s if result.elapsed_s > 0 else 0.0,
            "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"], "errors": result.errors,
            "first_error": result.first_error, **cpu}


def broker_groups(stack: BenchStack, redis_url: str) -> dict[str, list[psutil.Process]]:
    """web (gunicorn tree), workers (celery processes), backends (their stdio servers), redis, bench."""
    workers: list[psutil.Process] = []
    backends: list[psutil.Process] = []
    for procs in stack.workers.values():
        for proc in procs:
            try:
                parent = psutil.Process(proc.popen.pid)
            except psutil.NoSuchProcess:
                continue
            workers.append(parent)
            backends += parent.children(recursive=True)
    groups = {"web": stack.web_processes(), "workers": workers, "backends": backends,
              "bench": [psutil.Process(os.getpid())]}
    server = redis_server_process(redis_url)
    if server is not None:
        groups["redis"] = [server]
    return groups


async def _direct(counts: Counts) -> tuple[PipelineResult, dict[str, float]]:
    async with sdk_session() as client:
        await sdk_pipelined(client, counts.warmup * 5, counts.direct_window)
        me = psutil.Process(os.getpid())
        meter = CPUMeter(lambda: {"bench": [me], "backends": me.children(recursive=True)})
        meter.start()
        result = await sdk_pipelined(client, counts.throughput_calls, counts.direct_window)
        return result, meter.stop(counts.throughput_calls, result.elapsed_s)


async def _pipelined(url: str, tool: str, counts: Counts, window: int, meter: CPUMeter,
                     same_args: bool = False) -> tuple[PipelineResult, dict[str, float]]:
    session = await RawSession.open(url)
    try:
        arguments = (lambda i: {"text": "cached"}) if same_args else (lambda i: {"text": str(i)})
        await session.pipelined(tool, arguments, min(500, counts.throughput_calls), window, DEADLINE_S)
        meter.start()
        result = await session.pipelined(tool, arguments, counts.throughput_calls, window, DEADLINE_S)
        return result, meter.stop(counts.throughput_calls, result.elapsed_s)
    finally:
        await session.close()


async def _batches(http_url: str, counts: Counts, meter: CPUMeter) -> tuple[PipelineResult, dict[str, float]]:
    await batch_api.run(http_url, UNCACHED_TOOL, min(500, counts.throughput_calls), counts.batch_size)
    meter.start()
    result = await batch_api.run(http_url, UNCACHED_TOOL, counts.throughput_calls, counts.batch_size,
                                 counts.batch_concurrency, deadline_s=DEADLINE_S)
    return result, meter.stop(counts.throughput_calls, result.elapsed_s)


async def _cache_works(url: str) -> bool:
    session = await RawSession.open(url)
    try:
        return bool((await probe_cache(session, {"text": "cached"}))["implemented"])
    finally:
        await session.close()


def _without_coalescing(stack: BenchStack, counts: Counts, meter: Callable[[], CPUMeter],
                        log: Any) -> dict[str, Any]:
    """The same pipelined run with the web's outbox sending one queue message per call (MCP_BROKER_MAX_BATCH=1),
    so the gain of coalescing is measured rather than assumed; the web is restarted with defaults after."""
    window = counts.windows[0]
    try:
        stack.restart_web({COALESCING_ENV: "1"})
        stack.warm("echo")
        # fewer calls: it is the slowest run, and a rate needs no more to be compared with the others
        baseline = replace(counts, throughput_calls=counts.baseline_calls)
        result, cpu = asyncio.run(_pipelined(stack.ws_url, UNCACHED_TOOL, baseline, window, meter()))
    finally:
        stack.restart_web()
        stack.warm("echo")
    row = _row(result, counts.baseline_calls, cpu, workers=1, window=window)
    log(f"  broker ws, coalescing off ({COALESCING_ENV}=1), 1 worker, {window} in flight: "
        f"{row['calls_per_s']:.0f} calls/s")
    return row


def run(stack: BenchStack, counts: Counts, redis_url: str, log: Any = print) -> dict[str, Any]:
    out: dict[str, Any] = {"calls": counts.throughput_calls, "broker": [], "batch": [], "cached": None}
    direct, cpu = asyncio.run(_direct(counts))
    out["direct_sdk"] = _row(direct, counts.throughput_calls, cpu, window=counts.direct_window)
    log(f"  direct SDK pipelined: {out['direct_sdk']['calls_per_s']:.0f} calls/s")
    batch_problem = asyncio.run(batch_api.probe(stack.http_url, UNCACHED_TOOL))
    out["batch_api"] = "available" if batch_problem is None else batch_problem

    def meter() -> CPUMeter:
        return CPUMeter(lambda: broker_groups(stack, redis_url), messages=lambda: stack.queue_messages("echo"))

    for workers in counts.worker_counts:
        stack.scale("echo", workers)
        stack.warm("echo")
        for window in counts.windows:
            result, cpu = asyncio.run(_pipelined(stack.ws_url, UNCACHED_TOOL, counts, window, meter()))
            row = _row(result, counts.throughput_calls, cpu, workers=workers, window=window)
            out["broker"].append(row)
            log(f"  broker ws, {workers} worker(s), {window} in flight: {row['calls_per_s']:.0f} calls/s")
        if batch_problem is None:
            result, cpu = asyncio.run(_batches(stack.http_url, counts, meter()))
            row = _row(result, counts.throughput_calls, cpu, workers=workers, batch_size=counts.batch_size,
                       batches_in_flight=counts.batch_concurrency)
            out["batch"].append(row)
            log(f"  broker batch API, {workers} worker(s): {row['calls_per_s']:.0f} calls/s")
    stack.scale("echo", 1)
    out["coalescing_off"] = _without_coalescing(stack, counts, meter, log)
    if asyncio.run(_cache_works(stack.ws_url)):
        result, cpu = asyncio.run(_pipelined(stack.ws_url, CACHED_TOOL, counts, counts.direct_window, meter(),
                                             same_args=True))
        out["cached"] = _row(result, counts.throughput_calls, cpu, workers=1, window=counts.direct_window)
        log(f"  broker ws cached: {out['cached']['calls_per_s']:.0f} calls/s")
    else:
        out["cached"] = {"na": "cache not implemented"}
    return out
