"""CPU-ms per call by tier over both backend transports, and A/B of two checkouts side by side.

    python -m bench.worker_cpu                           # this checkout: one run, both backends
    python -m bench.worker_cpu --ab BASE_TREE --rounds 3 # alternate BASE_TREE and this checkout, medians
    python -m bench.worker_cpu --direct [--ab ...]       # the worker's call path alone, 16 calls a message

On a box other loads share, calls/s says little and even CPU time per call moves with the load (caches,
frequency), so a change is measured against its base in the same sitting: runs alternate between the two
checkouts, each in its own processes, and the report gives median [min-max] per side. Each run starts an
embedded Redis (its CPU is the broker's alone, not the shared server's), a web process and one worker per
server, then pipelines `whoami` (examples/servers/probe.py, 64 in flight over one WebSocket) to a stdio
backend and to a Streamable HTTP one (the same server with `--http`). Per call: CPU of the worker process
(`worker`), the web processes, Redis and the backend process (`bench.cpu.CPUMeter`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("pstdio", "phttp")
METRICS = ("switches_per_call", "worker_cpu_ms_per_call", "web_cpu_ms_per_call", "redis_cpu_ms_per_call",
           "backend_cpu_ms_per_call", "calls_per_message", "calls_per_s")
NO_REDIS = "redis://127.0.0.1:1/0"  # nothing answers there: `ensure_redis` starts an embedded one


@contextlib.contextmanager
def probe_backends(tree: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """The probe server of `tree` twice: over stdio (`pstdio`) and as a Streamable HTTP server of its own
    (`phttp`, started here, its process returned: its CPU is that backend's); yields the config naming both."""
    from cli.devrun import free_port

    port = free_port()
    probe = str(tree / "examples" / "servers" / "probe.py")
    http = subprocess.Popen([sys.executable, probe, "--http", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "mcp_servers.json"
            settings = {"concurrency": 16, "timeout_s": 30}
            config.write_text(json.dumps({"mcpServers": {
                "pstdio": {"command": sys.executable, "args": [probe], "broker": settings},
                "phttp": {"url": f"http://127.0.0.1:{port}/mcp", "broker": settings}}}))
            time.sleep(1.0)  # the HTTP backend's start-up (the first calls retry past it anyway)
            yield config, http
    finally:
        http.kill()
        http.wait(10)


def run_direct(tree: Path, calls: int, per_message: int = 16) -> dict[str, Any]:
    """The worker's call path alone (`workers.execute.run_calls_now`, what the Celery task runs), in this
    process, `per_message` calls a message, messages one after another: no web, no Celery, no coalescing
    that varies with the load, so the CPU per call is the worker code's own. Process CPU (every thread of it;
    the stdio backend is a child, not counted) and the embedded Redis's, per call."""
    os.chdir(tree)
    sys.path.insert(0, str(tree))
    import uuid

    import psutil

    from bench.cpu import redis_server_process
    from cli.devrun import EmbeddedRedis

    embedded = EmbeddedRedis(aof=False)
    out: dict[str, Any] = {}
    with probe_backends(tree) as (config, _http):
        try:
            os.environ["REDIS_URL"] = embedded.start()
            os.environ["MCP_BROKER_CONFIG"] = str(config)
            from broker.calls import Call
            from workers.execute import run_calls_now

            redis_proc = redis_server_process(os.environ["REDIS_URL"])
            me = psutil.Process()

            def message(server: str, count: int) -> list[Any]:
                now = time.time()
                return [Call.from_message({
                    "call_id": uuid.uuid4().hex, "server": server, "tool": "whoami", "arguments": {},
                    "reply_to": "bench:replies", "keep_s": 60, "expires_at": now + 300, "queued_at": now})
                    for _ in range(count)]

            for server in SERVERS:
                for attempt in range(60):  # the first call opens the backend (the HTTP one may still be starting)
                    run_calls_now(message(server, 1), "bench")
                    if attempt >= 2:
                        break
                    time.sleep(0.5)
                run_calls_now(message(server, per_message), "bench")
                redis_before = sum(redis_proc.cpu_times()[:2]) if redis_proc else 0.0
                cpu_before, started, switches = me.cpu_times(), time.monotonic(), _wakeups()
                for _ in range(calls // per_message):
                    run_calls_now(message(server, per_message), "bench")
                cpu_after, elapsed = me.cpu_times(), time.monotonic() - started
                done = calls // per_message * per_message
                out[server] = {
                    "worker_cpu_ms_per_call": 1000 * (cpu_after.user + cpu_after.system - cpu_before.user
                                                      - cpu_before.system) / done,
                    "redis_cpu_ms_per_call": 1000 * ((sum(redis_proc.cpu_times()[:2]) - redis_before)
                                                     if redis_proc else 0.0) / done,
                    # thread wake-ups (a hop between the worker's threads, a wait on a socket): load-independent
                    "switches_per_call": (_wakeups() - switches) / done,
                    "calls_per_message": float(per_message), "calls_per_s": done / elapsed}
        finally:
            from broker.metrics import RECORDER

            with contextlib.suppress(Exception):  # the last metrics, while their Redis still runs (not at exit)
                RECORDER.flush()
            embedded.stop()
    return out


def _wakeups() -> int:
    """Voluntary context switches of every thread of this process (psutil's count is the main thread's)."""
    total = 0
    for status in Path("/proc/self/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread ended
            continue
        total += sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("voluntary_ctxt"))
    return total


def run_once(tree: Path, calls: int, window: int = 64) -> dict[str, Any]:
    """One stack of the checkout at `tree` (its code: imported from there); CPU-ms per call of each tier, per
    backend transport."""
    os.chdir(tree)
    sys.path.insert(0, str(tree))
    from bench.stack import running_stack

    out: dict[str, Any] = {}
    with probe_backends(tree) as (config, http), running_stack(NO_REDIS, config=config, announce=False) as stack:
        for server in SERVERS:
            meter = tier_meter(stack, server, http)
            out[server] = asyncio.run(_measure(stack.ws_url, f"{server}__whoami", calls, window, meter))
    return out


def tier_meter(stack: Any, server: str, http: subprocess.Popen[bytes]) -> Any:
    """A `CPUMeter` of `server`'s tiers on a `probe_backends` stack: its (first) worker process, the web, the
    stack's Redis and the backend (the worker's stdio child for `pstdio`, the HTTP server `http` for `phttp`)."""
    import psutil

    from bench.cpu import CPUMeter, redis_server_process

    worker = psutil.Process(stack.worker_pids(server)[0])
    backend = worker.children(recursive=True) if server == "pstdio" else [psutil.Process(http.pid)]
    return CPUMeter(lambda: {
        "worker": [worker], "web": stack.web_processes(), "backend": backend,
        "redis": [p for p in [redis_server_process(stack.stack.redis_url)] if p]},
        messages=lambda: stack.queue_messages(server))


async def _measure(url: str, tool: str, calls: int, window: int, meter: Any) -> dict[str, Any]:
    from bench.wsclient import RawSession

    session = await RawSession.open(url)
    try:
        await session.pipelined(tool, lambda i: {}, min(500, calls), window, 120)  # warm: sessions, pools
        meter.start()
        result = await session.pipelined(tool, lambda i: {}, calls, window, 600)
        return {"calls_per_s": calls / result.elapsed_s, "errors": result.errors,
                **meter.stop(calls, result.elapsed_s)}
    finally:
        await session.close()


def ab(base: Path, rounds: int, calls: int, direct: bool, after: Path = ROOT) -> dict[str, list[dict[str, Any]]]:
    """Alternate runs of `base` and this checkout, each a process of its own running the other's code (this
    file with `--tree`: an older checkout need not have it)."""
    from bench.ab import alternate  # here, not at the top: a run with `--tree` imports from that tree

    return alternate(__file__, [base, after], rounds, ["--calls", str(calls), *(["--direct"] if direct else [])],
                     "worker_cpu_ms_per_call", SERVERS)


def render(runs: dict[str, list[dict[str, Any]]]) -> str:
    from bench.ab import render as render_runs

    return render_runs(runs, SERVERS, METRICS, "backend")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="measured calls per backend per run")
    parser.add_argument("--ab", type=Path, metavar="BASE_TREE", help="a checkout to compare with (git worktree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--b", type=Path, default=ROOT, metavar="TREE", help="the other side of --ab (default: here)")
    parser.add_argument("--json", action="store_true", help="one run, its JSON on the last line")
    parser.add_argument("--direct", action="store_true", help="the worker's call path alone (`run_direct`)")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose code runs (default: this one)")
    args = parser.parse_args(argv)
    if args.ab is not None:
        print(render(ab(args.ab.resolve(), args.rounds, args.calls, args.direct, args.b.resolve())))
        return 0
    result = (run_direct if args.direct else run_once)(args.tree.resolve(), args.calls)
    if args.json:
        print(json.dumps(result))
    else:
        print(render({"this checkout": [result]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
