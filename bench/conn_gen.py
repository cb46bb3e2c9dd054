"""The connections load generator, run as its own process: `python -m bench.conn_gen --url ... --sockets N`.

One asyncio process holds every socket, so the bench measures the broker's web tier and not
thousands of client threads. It opens N sessions (a bounded number of handshakes at a time),
then each session calls `echo` about once per interval (randomised start, so calls spread
evenly), for a bounded time; at the end every session sends one `ping` to prove it is still
connected. It prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from typing import Any

from websockets.exceptions import ConnectionClosed

from bench.stats import summarize_ms
from bench.wsclient import RawSession, failure_of

CALL_TIMEOUT_S = 30.0


def raise_fd_limit(wanted: int) -> tuple[int, int]:
    """Lift the soft open-files limit toward `wanted` (at most the hard limit); the new (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Held:
    """Counters shared by all sessions of one run."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.timeline: list[tuple[float, float]] = []  # (s after the hold began, latency s) per answered call
        self.call_errors = 0
        self.timeouts = 0
        self.dropped = 0
        self.first_error: str | None = None
        self.started = time.monotonic()
        self.started_pc = time.perf_counter()
        self.error_window_s: list[float] = []  # when (s after the hold began) the first and last errors came

    def error(self, text: str) -> None:
        self.call_errors += 1
        self.first_error = self.first_error or text
        at = round(time.monotonic() - self.started, 2)
        self.error_window_s = [self.error_window_s[0] if self.error_window_s else at, at]


async def _open(url: str, gate: asyncio.Semaphore) -> RawSession | str:
    async with gate:
        try:
            return await RawSession.open(url, open_timeout=60)
        except Exception as err:  # any failure to connect is a result to report, not a crash
            return f"{type(err).__name__}: {err}"[:200]


async def _drive(session: RawSession, held: Held, until: float, interval: float, tool: str) -> bool:
    """Call about once per `interval` until `until`; False if the socket was closed under us."""
    await asyncio.sleep(random.uniform(0, interval))
    while time.monotonic() < until:
        t0 = time.perf_counter()
        try:
            reply = await session.call(tool, {"text": "hi"}, timeout=CALL_TIMEOUT_S)
        except TimeoutError:
            held.timeouts += 1
        except ConnectionClosed:
            held.dropped += 1
            return False
        except Exception as err:
            held.error(f"{type(err).__name__}: {err}"[:200])
        else:
            held.latencies.append(time.perf_counter() - t0)
            held.timeline.append((t0 - held.started_pc, held.latencies[-1]))
            problem = failure_of({"result": reply})
            if problem:
                held.error(problem)
        await asyncio.sleep(max(0.0, random.uniform(0.8, 1.2) * interval - (time.perf_counter() - t0)))
    return True


async def _still_there(session: RawSession) -> bool:
    try:
        await session.request("ping", timeout=CALL_TIMEOUT_S)
        return True
    except Exception:
        return False


async def hold(url: str, sockets: int, hold_s: float, interval: float, tool: str, connect_concurrency: int,
               timeline: str | None = None) -> dict[str, Any]:
    held = Held()
    gate = asyncio.Semaphore(connect_concurrency)
    t0 = time.monotonic()
    opened = await asyncio.gather(*[_open(url, gate) for _ in range(sockets)])
    sessions = [s for s in opened if isinstance(s, RawSession)]
    connect_failures = [s for s in opened if isinstance(s, str)]
    connect_s = time.monotonic() - t0
    print(f"open {len(sessions)}/{sockets} in {connect_s:.1f}s", file=sys.stderr, flush=True)
    until = time.monotonic() + hold_s
    held.started = time.monotonic()
    held.started_pc = time.perf_counter()
    kept = await asyncio.gather(*[_drive(s, held, until, interval, tool) for s in sessions])
    alive = await asyncio.gather(*[_still_there(s) for s, ok in zip(sessions, kept, strict=True) if ok])
    print("held", file=sys.stderr, flush=True)
    await asyncio.gather(*[s.close() for s in sessions], return_exceptions=True)
    if timeline:
        with open(timeline, "w") as out:
            json.dump(sorted((round(t, 4), round(lat * 1000, 3)) for t, lat in held.timeline), out)
    return {
        "sockets": sockets,
        "opened": len(sessions),
        "connect_failures": len(connect_failures),
        "first_connect_failure": connect_failures[0] if connect_failures else None,
        "connect_s": connect_s,
        "hold_s": hold_s,
        "call_interval_s": interval,
        "offered_calls_per_s": len(sessions) / interval if interval else 0.0,
        "connected_at_end": sum(alive),
        "all_stayed_connected": len(sessions) == sockets and sum(alive) == sockets,
        "dropped": held.dropped,
        "call_errors": held.call_errors,
        "call_timeouts": held.timeouts,
        "first_error": held.first_error,
        "error_window_s": held.error_window_s,
        **{f"call_{k}": v for k, v in summarize_ms(held.latencies).items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.conn_gen", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--sockets", type=int, required=True)
    parser.add_argument("--hold", type=float, default=30.0, help="seconds every socket is held and calling")
    parser.add_argument("--interval", type=float, default=5.0, help="mean seconds between one socket's calls")
    parser.add_argument("--tool", default="echo__echo")
    parser.add_argument("--connect-concurrency", type=int, default=100)
    parser.add_argument("--timeline", metavar="FILE", help="also write [start s, latency ms] of every call (JSON)")
    args = parser.parse_args(argv)
    if not args.url.startswith(("ws://127.0.0.1", "ws://localhost", "ws://[::1]")):
        parser.error("the load generator only targets this machine (ws://127.0.0.1...)")
    if not 0 < args.sockets <= 10_000 or not 0 < args.hold <= 600:
        parser.error("--sockets must be 1..10000 and --hold 0..600 s")
    soft, hard = raise_fd_limit(args.sockets + 256)
    result = asyncio.run(hold(args.url, args.sockets, args.hold, args.interval, args.tool, args.connect_concurrency,
                                args.timeline))
    result["generator_fd_limit"] = [soft, hard]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["generator_cpu_s"] = usage.ru_utime + usage.ru_stime
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
