"""Smoke tests of the benchmarks: `python -m bench --quick --only overhead,own_cpu,serial` (the overhead scenario
and issue 19's rows, one run) runs and writes sane JSON.

No timing assertions (the box is shared and small): only that every variant produced positive
latencies without errors, that the cache verdict is recorded, and that the table renders.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.stack import ROOT

BENCH_REDIS_URL = "redis://127.0.0.1:6379/13"  # not the tests' db: the bench flushes its own


def quick_bench(tmp_path: Path, scenarios: str, timeout: float) -> tuple[str, dict[str, Any]]:
    """`python -m bench --quick --only SCENARIOS`: what it printed and the results it wrote (it must exit 0)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", scenarios, "--out", str(out),
         "--redis-url", BENCH_REDIS_URL],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """One quick bench run of every scenario the tests read: each run starts the bench's stack (Redis flush,
    web, workers, the peers' checks) and imports the bench anew, ~15-30 s on the loaded box; the two tests ran
    it once each (overhead alone: 42 s in the suite, the rows of issue 19: 146 s, at load ~3-4)."""
    return quick_bench(tmp_path_factory.mktemp("bench"), "overhead,own_cpu,serial", 480)


def test_overhead_scenario_writes_results(quick_run: tuple[str, dict[str, Any]]) -> None:
    stdout, results = quick_run
    assert results["meta"]["mode"] == "quick"
    assert results["meta"]["machine"]["nproc"] >= 1
    overhead = results["overhead"]
    assert "error" not in overhead, overhead
    for variant in ("direct_sdk", "direct_raw", "broker_raw", "broker_sdk"):
        summary = overhead[variant]
        assert summary["n"] == results["meta"]["counts"]["sequential"], variant
        assert summary["errors"] == 0, (variant, summary.get("first_error"))
        assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"], (variant, summary)
    cache = overhead["cache"]
    assert cache["same_answer"] is True
    cached = overhead["broker_cached_raw"]
    assert ("na" in cached) != cache["implemented"]
    if cache["implemented"]:
        assert cached["p50_ms"] > 0 and cached["errors"] == 0
    assert "1. Overhead" in stdout and "Targets" in stdout


def test_issue19_rows_run_and_reach_the_targets_table(quick_run: tuple[str, dict[str, Any]]) -> None:
    """The own-CPU rows (both paths, both eras) and the serial-backend rows run and land in the Targets table."""
    stdout, results = quick_run
    own = results["own_cpu"]
    assert "error" not in own, own
    assert {(r["path"], r["era"]) for r in own["rows"]} == {
        (path, era) for path in ("WebSocket + stdio backend", "Streamable HTTP + Streamable HTTP backend")
        for era in ("handshake", "modern")}
    for row in own["rows"]:
        assert row["errors"] == 0, (row["path"], row["era"], row["first_error"])
        assert row["own_cpu_ms_per_call"] > 0 and row["calls_per_s"] > 0 and row["direct_calls_per_s"] > 0, row
        assert row["direct_p50_ms"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"], row
    serial = results["serial"]
    assert "error" not in serial, serial
    assert serial["backend_calls_per_s"] > 0
    assert [r["workers"] for r in serial["rows"]] == list(results["meta"]["counts"]["serial_workers"])
    for row in serial["rows"]:
        assert row["errors"] == 0 and row["calls_per_s"] > 0, row
    for heading in ("6. The broker's own CPU", "7. Serial backend", "own CPU per call, HTTP + HTTP, modern",
                    "serial backend, 2 worker(s) / one backend"):
        assert heading in stdout, heading
