"""Full-jitter exponential backoff: spreads a herd of retries after a backend restart (the worker's call
retries, `workers.execute`, and its catalog listings, `workers.runtime`)."""

from __future__ import annotations

import random

BACKOFF_BASE_S = 0.2
BACKOFF_MAX_S = 5.0


def backoff(attempt: int) -> float:
    """Full-jitter exponential backoff: spreads a herd of retries after a backend restart."""
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt))
