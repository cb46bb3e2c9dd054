"""A/B of checkouts, alternating: the tier CPU benches (`bench.web_cpu`, `bench.worker_cpu`) run a script of
theirs once per checkout per round, each run a process of its own with `--tree` (so an older checkout need
not have the script), and print medians [min-max] of each metric. Alternating runs, not one block per
side, because other loads on a shared 2-core box move even CPU time per call between minutes.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

Runs = dict[str, list[dict[str, Any]]]


def alternate(script: str, trees: list[Path], rounds: int, argv: list[str], headline: str, rows: tuple[str, ...],
              timeout: float = 900) -> Runs:
    """Sides A, B, ... (one per tree), each round running `python script --json --tree TREE *argv` in each;
    a run prints its result as the last line of JSON. After each run, `headline` of every row is printed."""
    sides = list(zip("ABCDEFGH", trees, strict=False))
    runs: Runs = {side: [] for side, _ in sides}
    for i in range(rounds):
        for side, tree in sides:
            command = [sys.executable, script, "--json", "--tree", str(tree), *argv]
            done = subprocess.run(command, cwd=tree, capture_output=True, text=True, timeout=timeout, check=False)
            try:
                runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            except (IndexError, json.JSONDecodeError):
                print(f"round {i + 1} {side}: no result\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            print(f"round {i + 1} {side}: " + "  ".join(
                f"{row} {headline} {runs[side][-1][row][headline]:.3f}" for row in rows if row in runs[side][-1]),
                flush=True)
    return runs


def render(runs: Runs, rows: tuple[str, ...], metrics: tuple[str, ...], row_label: str) -> str:
    """One line per (row, metric): each side's median [min-max] (n) over its runs."""
    row_width = max(len(row_label), *(len(row) for row in rows)) + 1
    metric_width = max(len("metric"), *(len(metric) for metric in metrics)) + 1
    lines = [f"{row_label:{row_width}s}{'metric':{metric_width}s}"
             + " | ".join(f"{side}: median [min-max] (n)" for side in runs)]
    for row in rows:
        for metric in metrics:
            cells = []
            for side_runs in runs.values():
                values = [r[row][metric] for r in side_runs if row in r and metric in r[row]]
                cells.append(f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}] ({len(values)})"
                             if values else "-")
            lines.append(f"{row:{row_width}s}{metric:{metric_width}s}" + " | ".join(cells))
    return "\n".join(lines)
