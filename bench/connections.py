"""Scenario 3, connections: N concurrent WebSocket sessions held open and calling, web RSS watched.

The sockets live in ONE separate process (bench/conn_gen.py) so this process stays free to
sample the web tier's memory (gunicorn master + worker, via psutil) while they are held.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import threading
import time
from typing import Any

import psutil

from bench.settings import Counts
from bench.stack import ROOT, BenchStack

SAMPLE_S = 0.5


class RSSSampler:
    """Peak and last RSS of the web tier, sampled on a thread while a run goes on."""

    def __init__(self, stack: BenchStack) -> None:
        self.stack = stack
        self.peak = 0
        self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.last = self.stack.web_rss_bytes()
            self.peak = max(self.peak, self.last)
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def web_fd_limits(stack: BenchStack) -> list[int] | None:
    """The gunicorn worker's open-files limit (soft, hard): each socket costs it one descriptor."""
    procs = stack.web_processes()
    with contextlib.suppress(psutil.Error, IndexError):
        return list(procs[-1].rlimit(psutil.RLIMIT_NOFILE))
    return None


def hold_sockets(stack: BenchStack, sockets: int, counts: Counts) -> dict[str, Any]:
    """Run the generator for `sockets` sessions; its report plus the web tier's memory."""
    baseline = stack.web_rss_bytes()
    argv = [sys.executable, "-m", "bench.conn_gen", "--url", stack.ws_url, "--sockets", str(sockets),
            "--hold", str(counts.hold_s), "--interval", str(counts.call_interval_s)]
    budget = counts.hold_s + 120 + sockets / 20  # connect time grows with N; a hung run still ends
    with RSSSampler(stack) as rss:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=budget, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"sockets": sockets, "error": f"generator exited {proc.returncode}: {proc.stderr[-1500:]}"}
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    report.update(
        web_rss_baseline_mib=baseline / 2**20,
        web_rss_peak_mib=rss.peak / 2**20,
        web_rss_per_socket_kib=(rss.peak - baseline) / 1024 / sockets if sockets else 0.0,
        web_processes=len(stack.web_processes()),
    )
    return report


def run(stack: BenchStack, counts: Counts, log: Any = print) -> dict[str, Any]:
    stack.scale("echo", 1)
    stack.warm("echo")
    out: dict[str, Any] = {
        "web_fd_limit": web_fd_limits(stack),
        "bench_fd_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "runs": [],
    }
    for sockets in counts.sockets:
        t0 = time.monotonic()
        report = hold_sockets(stack, sockets, counts)
        out["runs"].append(report)
        if "error" in report:
            log(f"  {sockets} sockets: {report['error'][:300]}")
        else:
            log(f"  {sockets} sockets: all connected={report['all_stayed_connected']} "
                f"p99={report['call_p99_ms']:.1f} ms web RSS peak={report['web_rss_peak_mib']:.0f} MiB "
                f"({time.monotonic() - t0:.0f}s)")
    return out
