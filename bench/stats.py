"""Latency summaries: the few numbers the report prints, computed one way everywhere."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100); NaN when empty.

    Nearest-rank, not interpolated: a p99 is then a latency some call really had.
    """
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summarize_ms(latencies_s: Sequence[float]) -> dict[str, Any]:
    """Count, mean, p50, p90, p99 and max of latencies given in seconds, reported in milliseconds."""
    values = sorted(x * 1000.0 for x in latencies_s)
    if not values:
        return {"n": 0, "mean_ms": math.nan, "p50_ms": math.nan, "p90_ms": math.nan, "p99_ms": math.nan,
                "max_ms": math.nan}
    return {
        "n": len(values),
        "mean_ms": sum(values) / len(values),
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "max_ms": values[-1],
    }


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, or None when either side is missing or the base is zero."""
    if value is None or base is None or not base or math.isnan(value) or math.isnan(base):
        return None
    return value / base
