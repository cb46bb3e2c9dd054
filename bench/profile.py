"""`--profile`: where the broker's CPU goes, sampled with py-spy during a pipelined run.

py-spy attaches to running processes without changing them (nonblocking sampling, GIL
holders only, so waiting is not counted as work). It records the web worker, the echo
Celery worker and its backend while the raw client pipelines calls, then folds the stacks
into "self" and "inclusive" shares per function, the first thing to read when a target is
missed. py-spy is a bench-only dependency (bench/requirements.txt), installed on demand.
"""

from __future__ import annotations

import asyncio
import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.stack import BENCH_DIR, BenchStack
from bench.wsclient import RawSession

REQUIREMENTS = BENCH_DIR / "requirements.txt"
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
OURS = ("broker/", "web/", "workers/")


def py_spy() -> str:
    """The py-spy binary, installing bench/requirements.txt into this venv first if needed."""
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found:
        return found
    print(f"  installing bench-only tools from {REQUIREMENTS.name} (py-spy)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                    str(REQUIREMENTS)], check=True)
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not found:
        raise RuntimeError("py-spy did not install")
    return found


def fold(raw: str) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    ours_incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = frames[1:]
        names = []
        for frame in frames:
            m = FRAME.match(frame)
            names.append(f"{m['func']} ({m['file']}:{m['line']})" if m and m["line"] else frame)
        if names:
            self_counts[names[-1]] += count
        for name in set(names):
            incl_counts[name] += count
            if any(part in name for part in OURS):
                ours_incl[name] += count

    def top(counter: collections.Counter[str], n: int = 20) -> list[tuple[str, float]]:
        return [(name, 100.0 * c / total) for name, c in counter.most_common(n)] if total else []

    return {"samples": total, "self": top(self_counts), "inclusive": top(incl_counts, 30),
            "ours_inclusive": top(ours_incl, 25)}


def profile_run(stack: BenchStack, out_dir: Path, seconds: float = 15.0, window: int = 64, chunk: int = 1000,
                ) -> dict[str, Any]:
    """Pipeline echo calls (`window` in flight) while py-spy samples the web, the worker and the backend."""
    binary = py_spy()
    web = stack.web_processes()
    worker_pid = stack.worker_pids("echo")[0]
    import psutil

    backends = psutil.Process(worker_pid).children(recursive=True)
    targets = {"web": web[-1].pid, "worker": worker_pid}
    if backends:
        targets["backend"] = backends[0].pid
    out_dir.mkdir(parents=True, exist_ok=True)
    spies = {}
    for name, pid in targets.items():
        path = out_dir / f"profile-{name}.raw.txt"
        argv = [binary, "record", "--pid", str(pid), "--format", "raw", "--output", str(path), "--rate", "200",
                "--duration", str(int(seconds)), "--nonblocking", "--gil", "--function"]
        spies[name] = (subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), path)

    async def load() -> float:
        """Keep calls flowing until every sampler has finished (bounded: 2x its duration)."""
        session = await RawSession.open(stack.ws_url)
        done, elapsed = 0, 0.0
        try:
            while any(p.poll() is None for p, _ in spies.values()) and elapsed < 2 * seconds:
                result = await session.pipelined("echo__echo", lambda i: {"text": str(i)}, chunk, window, 60)
                done += len(result.latencies_s)
                elapsed += result.elapsed_s
            return done / elapsed if elapsed else 0.0
        finally:
            await session.close()

    rate = asyncio.run(load())
    out: dict[str, Any] = {"calls_per_s_while_profiled": rate, "processes": {}}
    for name, (proc, path) in spies.items():
        try:
            proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if path.exists():
            folded = fold(path.read_text(errors="replace"))
            out["processes"][name] = folded
            summary = out_dir / f"profile-{name}.summary.txt"
            summary.write_text(render(name, folded))
        else:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            out["processes"][name] = {"error": err[-500:]}
    return out


def render(name: str, folded: dict[str, Any]) -> str:
    lines = [f"{name}: {folded['samples']} samples holding the GIL"]
    for title, key in (("self", "self"), ("inclusive, our code", "ours_inclusive"), ("inclusive, all", "inclusive")):
        lines.append(f"  {title}:")
        lines += [f"    {pct:5.1f}%  {fn}" for fn, pct in folded[key]]
    return "\n".join(lines) + "\n"
