"""`python -m bench` (= `make bench`): start a broker, run the scenarios, print the table, save the JSON.

    python -m bench                      # everything, ~9-14 min on 2 cores (quiet to busy hour)
    python -m bench --quick              # small counts (CI smoke), ~3-5 min
    python -m bench --only overhead      # one scenario (repeat --only, or comma-separate, for more)
    python -m bench --profile            # also sample the broker with py-spy (bench/results/profile-*.txt)
    python -m bench --render FILE        # re-print a saved results file

Redis: `$MCP_BROKER_BENCH_REDIS_URL` or redis://127.0.0.1:6379/14 (flushed), else an embedded
one. Every load generator targets 127.0.0.1 only, is bounded in count and time, and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.settings import FULL, QUICK, Counts
from bench.stack import BENCH_DIR, BenchStack, running_stack

SCENARIOS = ("overhead", "throughput", "connections", "peers", "own_cpu", "serial", "context", "context_results")
RESULTS = BENCH_DIR / "results"


def raise_fd_limit() -> tuple[int, int]:
    """Soft open-files limit up to the hard one: the web and the generator inherit it (a socket is a fd)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def parse_only(values: list[str] | None) -> list[str]:
    if not values:
        return list(SCENARIOS)
    chosen = [v.strip() for value in values for v in value.split(",") if v.strip()]
    unknown = [c for c in chosen if c not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    return [s for s in SCENARIOS if s in chosen]


def run_scenario(name: str, stack: BenchStack, counts: Counts, redis_url: str) -> dict[str, Any]:
    """One scenario; a failure is recorded in the results instead of losing the others."""
    from bench import connections, context, context_results, overhead, own_cpu, peers, serial, throughput

    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "overhead": lambda: overhead.run(stack, counts),
        "throughput": lambda: throughput.run(stack, counts, redis_url),
        "connections": lambda: connections.run(stack, counts),
        "peers": lambda: peers.run(stack, counts),
        "own_cpu": lambda: own_cpu.run(counts),
        "serial": lambda: serial.run(stack, counts),
        "context": lambda: context.run(counts, redis_url),
        "context_results": lambda: context_results.run(redis_url),
    }
    started = time.monotonic()
    print(f"[{name}]", flush=True)
    try:
        result = runners[name]()
    except Exception as err:
        traceback.print_exc()
        result = {"error": f"{type(err).__name__}: {err}"}
    result["duration_s"] = time.monotonic() - started
    print(f"[{name}] done in {result['duration_s']:.0f} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts (~3-5 min), for CI smoke runs")
    parser.add_argument("--only", action="append", metavar="SCENARIO", help=f"one of {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="where the raw JSON goes")
    parser.add_argument("--redis-url", help="Redis to use (default $MCP_BROKER_BENCH_REDIS_URL or local db 14)")
    parser.add_argument("--profile", action="store_true", help="sample web/worker/backend with py-spy as well")
    parser.add_argument("--render", type=Path, metavar="FILE", help="print the table of a saved results file")
    args = parser.parse_args(argv)

    from bench import report

    if args.render:
        print(report.render(json.loads(args.render.read_text())))
        return 0
    chosen = parse_only(args.only)
    counts = QUICK if args.quick else FULL
    fd_limit = raise_fd_limit()
    results: dict[str, Any] = {"meta": {
        "mode": "quick" if args.quick else "full", "scenarios": chosen, "counts": counts.__dict__,
        "machine": report.machine(), "fd_limit": list(fd_limit),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }}
    started = time.monotonic()
    with running_stack(args.redis_url) as stack:
        redis_url = stack.stack.redis_url
        results["meta"]["redis_url"] = redis_url
        for name in chosen:
            results[name] = run_scenario(name, stack, counts, redis_url)
        if args.profile:
            from bench.profile import profile_run

            print("[profile]", flush=True)
            stack.scale("echo", 1)
            stack.warm("echo")
            results["profile"] = profile_run(stack, args.out.parent, seconds=8 if args.quick else 15)
    results["meta"]["duration_s"] = time.monotonic() - started
    results["meta"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print()
    print(report.render(results))
    print(f"\nraw results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
