"""Sending calls to the per-server queues (the web tier's only use of Celery).

`call_tool` is declared with `ignore_result=True`, so sending it does not
subscribe to a Celery result channel: the answer comes back on the web
process's own Redis channel instead.
"""

from __future__ import annotations

from typing import Any

from workers.tasks import call_tool, refresh_catalog


def submit_call(queue: str, call: dict[str, Any]) -> None:
    call_tool.apply_async(args=[call], queue=queue)


def request_catalog(server: str, queue: str) -> None:
    refresh_catalog.apply_async(args=[server], queue=queue)
