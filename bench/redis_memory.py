"""Redis memory at steady state under a steady call load: what a call's outcome costs while it is kept.

`python -m bench.redis_memory --seconds 240` starts the bench stack (one web, one echo worker), keeps
`--window` calls in flight on one WebSocket for `--seconds`, and every 10 s prints the calls/s, Redis's
`used_memory` above the idle baseline and the keys by kind (`result`, `answered`, other). Steady state
is reached once the longest-lived of them (the `answered` markers: a call's queue window + 60 s, ~150 s
for a 30 s tool) turn over; the last line gives the bytes per 1,000 calls/s (README, "What Redis holds").
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import redis

from bench.stack import running_stack
from bench.wsclient import RawSession
from broker import keys

RATE_WINDOW_S = 60.0  # calls/s over the last minute (the longest-lived keys see a minute and more of calls)


def key_counts(r: redis.Redis) -> dict[str, int]:
    counts = {"result": 0, "answered": 0, "other": 0}
    for key in r.scan_iter(count=5000):
        name = key.decode() if isinstance(key, bytes) else key
        kind = name.split(":")[1] if name.startswith(f"{keys.PREFIX}:") else ""
        counts[kind if kind in counts else "other"] += 1
    return counts


async def drive(url: str, seconds: float, window: int, done: list[int]) -> None:
    session = await RawSession.open(url)
    try:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            result = await session.pipelined("echo__echo", lambda i: {"text": f"m{i}"}, 4 * window, window)
            done[0] += len(result.latencies_s)
    finally:
        await session.close()


async def measure(url: str, redis_url: str, seconds: float, window: int, every: float) -> dict[str, Any]:
    r = redis.Redis.from_url(redis_url)
    base = int(r.info("memory")["used_memory"])
    done = [0]
    load = asyncio.create_task(drive(url, seconds, window, done))
    started = time.monotonic()
    history: list[tuple[float, int]] = [(started, 0)]
    row: dict[str, Any] = {}
    while not load.done():
        await asyncio.sleep(every)
        now = time.monotonic()
        history.append((now, done[0]))
        then, calls_then = next((t, c) for t, c in history if t >= now - RATE_WINDOW_S - every / 2)
        rate = (done[0] - calls_then) / (now - then) if now > then else 0.0
        used = int(r.info("memory")["used_memory"]) - base
        counts = await asyncio.to_thread(key_counts, r)
        row = {"t_s": round(now - started), "calls": done[0], "calls_per_s": round(rate), "redis_bytes": used,
               **counts, "bytes_per_1k_calls_per_s": round(used / rate * 1000) if rate else None}
        print(row, flush=True)
    await load
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--window", type=int, default=64, help="calls in flight on the socket")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--redis-url", help="Redis to use (default $MCP_BROKER_BENCH_REDIS_URL or local db 14)")
    args = parser.parse_args(argv)
    with running_stack(args.redis_url) as bench:
        row = asyncio.run(measure(bench.ws_url, bench.stack.redis_url, args.seconds, args.window, args.every))
    print(f"steady state: {row.get('redis_bytes', 0) / 1e6:.1f} MB at {row.get('calls_per_s')} calls/s = "
          f"{(row.get('bytes_per_1k_calls_per_s') or 0) / 1e6:.1f} MB per 1,000 calls/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
