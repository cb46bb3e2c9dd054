"""Where the CPU goes during a run: CPU seconds per process group, per call.

On a 2-core box throughput is a CPU budget, so the most useful number next to calls/s is
how many CPU-milliseconds each tier spends per call: it says which tier to optimise and
why adding worker processes stops helping once both cores are busy.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import psutil

Groups = Callable[[], dict[str, list[psutil.Process]]]


def redis_server_process(redis_url: str) -> psutil.Process | None:
    """The redis-server listening on the URL's port on this machine, if it is local and visible."""
    parts = urlsplit(redis_url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    port = parts.port or 6379
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return psutil.Process(conn.pid)
    return None


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (empty if it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu_s(procs: Iterable[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


@dataclass
class CPUMeter:
    """Snapshot CPU time of named process groups before and after a run."""

    groups: Groups
    messages: Callable[[], int] | None = None  # queue messages received so far (to report calls per message)
    _messages_before: int = 0
    _before: dict[str, float] = field(default_factory=dict)
    _procs: dict[str, list[psutil.Process]] = field(default_factory=dict)
    _box_before: float = 0.0

    def start(self) -> None:
        self._procs = self.groups()
        self._before = {name: _cpu_s(procs) for name, procs in self._procs.items()}
        self._box_before = _box_busy_s()
        self._messages_before = self.messages() if self.messages else 0

    def stop(self, calls: int, wall_s: float) -> dict[str, float]:
        """CPU-ms per call for each group, plus the whole box's busy cores over the run."""
        out: dict[str, float] = {}
        for name, procs in self._procs.items():
            used = _cpu_s(procs) - self._before.get(name, 0.0)
            out[f"{name}_cpu_ms_per_call"] = 1000.0 * used / calls if calls else 0.0
        box = _box_busy_s() - self._box_before
        out["box_busy_cores"] = box / wall_s if wall_s > 0 else 0.0
        out["cores"] = float(os.cpu_count() or 1)
        if self.messages is not None:
            sent = self.messages() - self._messages_before
            out["calls_per_message"] = calls / sent if sent > 0 else 0.0
        return out


def _box_busy_s() -> float:
    """CPU seconds the whole machine spent not idle (all processes, ours or not)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))
