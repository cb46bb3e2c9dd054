"""Sending calls to the per-server queues (the web tier's only use of Celery), by task name.

The web tier imports this module and nothing else of `workers/`: it names the tasks (`RUN_CALLS`,
`REFRESH_CATALOG`, the names on the wire) instead of importing them, so it loads neither the tasks, the
worker's runtime, the backends nor the SDK client.

`run_calls` is declared with `ignore_result=True`, and every send here says so too (`ignore_result`):
sending does not subscribe to a Celery result channel; answers come back on the web process's
own Redis channel (and, for batch jobs, the batch's result stream).
"""

from __future__ import annotations

import time
from typing import Any

from workers.app import app

RUN_CALLS = "mcp.run_calls"  # one or more calls of one server (`workers.tasks.run_calls`)
REFRESH_CATALOG = "mcp.refresh_catalog"  # list a server and publish its catalog (`workers.tasks.refresh_catalog`)


def submit_calls(queue: str, calls: list[dict[str, Any]]) -> None:
    """One Celery message carrying these calls (all for the server behind `queue`)."""
    now = time.time()
    for call in calls:
        call.setdefault("queued_at", now)  # the worker measures the queue wait from here
    send_calls(queue, calls)


def send_calls(queue: str, calls: list[dict[str, Any]]) -> None:
    """One message of calls, as they are (a worker passing calls on: forwarded to their owner, or sent back
    to their server's queue from a dead worker's own one)."""
    # argsrepr: Celery would otherwise saferepr() the whole payload for its logs on every send (~8% of the
    # web tier's CPU per call under load); our own per-call log lines say what the calls were.
    app.send_task(RUN_CALLS, args=[calls], queue=queue, ignore_result=True, argsrepr=f"<{len(calls)} call(s)>",
                  kwargsrepr="{}")


def request_catalog(server: str, queue: str) -> None:
    app.send_task(REFRESH_CATALOG, args=[server], queue=queue, ignore_result=True)
