"""The worker's Streamable HTTP client alone: CPU-ms per call of the SDK client over the worker's transport
(`workers.backends.keepalive.streamable_http`), and of the backend, A/B of two checkouts.

    python -m bench.http_client_cpu                                 # this checkout, both eras
    python -m bench.http_client_cpu --ab ../base --b . --rounds 6   # alternate checkouts, median [min-max]

`bench.worker_cpu --direct` measures the worker's whole call path, where the HTTP client is about half of
the loop thread's time; this isolates it: one process, the SDK `Client` (the worker's `forward_unchecked`
applied) calling `whoami` of examples/servers/probe.py --http, 16 at a time, per protocol era (`legacy`:
the handshake, answers over SSE; `modern`: 2026-07-28, answers as JSON). Process CPU per call (`client`)
and the backend process's (`backend`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ERAS = {"legacy": "legacy", "modern": "2026-07-28"}
METRICS = ("client_cpu_ms_per_call", "backend_cpu_ms_per_call", "calls_per_s")
IN_FLIGHT = 16


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(url: str, mode: str, calls: int, backend: Any) -> dict[str, float]:
    import anyio
    from mcp import Client

    from workers.backends.keepalive import streamable_http
    from workers.backends.methods import forward_unchecked

    async with Client(streamable_http(url), mode=mode, cache=None) as client:
        forward_unchecked(client)

        async def batch() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(IN_FLIGHT):
                    tg.start_soon(client.call_tool, "whoami", {})

        for _ in range(20):  # warm: connections, pools
            await batch()
        backend_before, cpu_before, started = sum(backend.cpu_times()[:2]), _cpu_s(), time.monotonic()
        rounds = max(1, calls // IN_FLIGHT)
        for _ in range(rounds):
            await batch()
        done = rounds * IN_FLIGHT
        return {"client_cpu_ms_per_call": 1000 * (_cpu_s() - cpu_before) / done,
                "backend_cpu_ms_per_call": 1000 * (sum(backend.cpu_times()[:2]) - backend_before) / done,
                "calls_per_s": done / (time.monotonic() - started)}


def run_once(tree: Path, calls: int) -> dict[str, Any]:
    """Each era against its own probe backend, with `tree`'s code."""
    os.chdir(tree)
    sys.path.insert(0, str(tree))
    import anyio
    import psutil

    from cli.devrun import free_port

    out: dict[str, Any] = {}
    for era, mode in ERAS.items():
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(tree / "examples" / "servers" / "probe.py"), "--http", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            out[era] = anyio.run(_measure, f"http://127.0.0.1:{port}/mcp", mode, calls, psutil.Process(proc.pid))
        finally:
            proc.kill()
            proc.wait(10)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_client_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="measured calls per era per run")
    parser.add_argument("--ab", type=Path, metavar="BASE_TREE", help="a checkout to compare with (git worktree)")
    parser.add_argument("--b", type=Path, default=ROOT, metavar="TREE", help="the other side of --ab (default: here)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one run, its JSON on the last line")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose code runs (default: this one)")
    args = parser.parse_args(argv)
    if args.ab is not None:
        from bench.ab import alternate, render
        runs = alternate(__file__, [args.ab.resolve(), args.b.resolve()], args.rounds, ["--calls", str(args.calls)],
                         "client_cpu_ms_per_call", tuple(ERAS))
        print(render(runs, tuple(ERAS), METRICS, "era"))
        return 0
    result = run_once(args.tree.resolve(), args.calls)  # imports its code from that tree
    if args.json:
        print(json.dumps(result))
    else:
        from bench.ab import render as render_runs

        print(render_runs({"this checkout": [result]}, tuple(ERAS), METRICS, "era"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
