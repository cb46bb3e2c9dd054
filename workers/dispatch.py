"""Sending calls to the per-server queues (the web tier's only use of Celery).

`run_calls` is declared with `ignore_result=True`, so sending it does not
subscribe to a Celery result channel: answers come back on the web process's
own Redis channel (and, for batch jobs, the batch's result stream).
"""

from __future__ import annotations

import time
from typing import Any

from workers.tasks import refresh_catalog, run_calls


def submit_calls(queue: str, calls: list[dict[str, Any]]) -> None:
    """One Celery message carrying these calls (all for the server behind `queue`)."""
    now = time.time()
    for call in calls:
        call.setdefault("queued_at", now)  # the worker measures the queue wait from here
    # argsrepr: Celery would otherwise saferepr() the whole payload for its logs on every send (~8% of the
    # web tier's CPU per call under load); our own per-call log lines say what the calls were.
    run_calls.apply_async(args=[calls], queue=queue, argsrepr=f"<{len(calls)} call(s)>", kwargsrepr="{}")


def submit_call(queue: str, call: dict[str, Any]) -> None:
    submit_calls(queue, [call])


def request_catalog(server: str, queue: str) -> None:
    refresh_catalog.apply_async(args=[server], queue=queue)
