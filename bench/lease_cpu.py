"""The worker's transport alone: CPU per message of taking a message with its lease and acking it.

    python -m bench.lease_cpu                                  # this checkout, one run
    python -m bench.lease_cpu --ab BASE_TREE --b . --rounds 5  # alternate two checkouts, median [min-max]

What Celery's consumer thread does per message besides running it (`workers.transport`: the lease written
in the fetch's transaction, the ack removing it), through kombu's own consumer API (`SimpleQueue.get` + ack
on `LeasedRedisTransport`), on an embedded Redis of its own: process CPU per message, the Redis side not
counted. Runs alternate between the two checkouts, each a process of its own running that checkout's code.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_once(tree: Path, messages: int, warm: int = 200) -> dict[str, float]:
    os.chdir(tree)
    sys.path.insert(0, str(tree))
    from kombu import Connection

    from cli.devrun import EmbeddedRedis
    from workers.transport import LeasedRedisTransport

    embedded = EmbeddedRedis(aof=False)
    try:
        with Connection(embedded.start(), transport=LeasedRedisTransport) as conn:
            queue = conn.SimpleQueue("bench.lease")
            for i in range(messages + warm):
                queue.put({"i": i})
            for _ in range(warm):
                queue.get(block=False).ack()
            started = time.process_time()
            for _ in range(messages):
                queue.get(block=False).ack()
            cpu = time.process_time() - started
            queue.close()
    finally:
        embedded.stop()
    return {"cpu_us_per_message": 1e6 * cpu / messages}


def ab(base: Path, after: Path, rounds: int, messages: int) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {"A": [], "B": []}
    for i in range(rounds):
        for side, tree in (("A", base), ("B", after)):
            argv = [sys.executable, __file__, "--json", "--tree", str(tree), "--messages", str(messages)]
            done = subprocess.run(argv, cwd=tree, capture_output=True, text=True, timeout=600, check=False)
            try:
                runs[side].append(json.loads(done.stdout.strip().splitlines()[-1])["cpu_us_per_message"])
            except (IndexError, KeyError, json.JSONDecodeError):
                print(f"round {i + 1} {side}: no result\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            print(f"round {i + 1} {side}: {runs[side][-1]:.1f} us", flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lease_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--ab", type=Path, metavar="BASE_TREE", help="a checkout to compare with (git worktree)")
    parser.add_argument("--b", type=Path, default=ROOT, metavar="TREE", help="the other side of --ab (default: here)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one run, its JSON on the last line")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose code runs (default: this one)")
    args = parser.parse_args(argv)
    if args.ab is None:
        result: Any = run_once(args.tree.resolve(), args.messages)
        us = result["cpu_us_per_message"]
        print(json.dumps(result) if args.json else f"CPU per message (lease + ack): {us:.1f} us")
        return 0
    runs = ab(args.ab.resolve(), args.b.resolve(), args.rounds, args.messages)
    for side, values in runs.items():
        if values:
            print(f"{side}: {statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}] us per message "
                  f"({len(values)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
