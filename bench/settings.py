"""How much each scenario does: the full run (~9-14 minutes here) and `--quick` (smoke, ~3-5 min)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Counts:
    """Every count and duration the scenarios use; nothing else in the bench picks a number."""

    # 1. overhead: sequential calls per variant (after `warmup` unmeasured ones)
    sequential: int = 1500
    warmup: int = 100
    # 2. throughput: calls per run, calls in flight on the one socket, worker processes tried
    throughput_calls: int = 10_000
    baseline_calls: int = 3_000  # the coalescing-off run (one queue message per call): same rate, less time
    windows: tuple[int, ...] = (64,)
    worker_counts: tuple[int, ...] = (1, 2, 4)
    direct_window: int = 64
    batch_size: int = 2500
    batch_concurrency: int = 2
    # 3. connections: sockets held, for how long, one call per socket every `interval_s` on average
    sockets: tuple[int, ...] = (500, 1000, 2000)
    hold_s: float = 15.0
    call_interval_s: float = 10.0
    # 4. peers: sequential calls, then pipelined calls with `direct_window` in flight
    peer_sequential: int = 500
    peer_calls: int = 2000
    # 5. own_cpu: per path and era, sequential calls (p50 vs direct), then calls with `direct_window` in flight
    own_cpu_sequential: int = 300
    own_cpu_calls: int = 1000
    # 6. serial: a backend serving one `block` call at a time; calls per worker process (and for the direct rate)
    serial_block_ms: float = 10.0
    serial_calls_per_worker: int = 300
    serial_workers: tuple[int, ...] = (1, 2, 4)


FULL = Counts()
QUICK = Counts(
    sequential=200,
    warmup=20,
    throughput_calls=1000,
    baseline_calls=1000,
    windows=(64,),
    worker_counts=(1, 2),
    batch_size=250,
    sockets=(100, 200),
    hold_s=8.0,
    call_interval_s=2.0,
    peer_sequential=100,
    peer_calls=500,
    own_cpu_sequential=30,
    own_cpu_calls=120,
    serial_calls_per_worker=100,
    serial_workers=(1, 2),
)
