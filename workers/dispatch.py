"""Sending calls to the per-server queues (the web tier's only use of Celery), by task name.

The web tier imports this module and nothing else of `workers/`: it names the tasks (`RUN_CALLS`,
`REFRESH_CATALOG`, the names on the wire) instead of importing them, so it loads neither the tasks, the
worker's runtime, the backends nor the SDK client.

`run_calls` is declared with `ignore_result=True`, and every send here says so too (`ignore_result`):
sending does not subscribe to a Celery result channel; answers come back on the web process's
own Redis channel (and, for batch jobs, the batch's result stream).
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

from celery.utils.nodenames import anon_nodename

from broker import wire
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


_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def run_calls_message(queue: str, calls: list[dict[str, Any]]) -> str:
    """The message `send_calls` has Celery push onto `queue`, as kombu's Redis transport writes it (one LPUSH
    of this JSON onto the queue's list; priority_steps [0]: the list is the queue's name), built here so the
    web tier can push it in the same pipeline as its sessions' records (`web.services`): Celery's
    `send_task` machinery (producer pool, `Connection.ensure`, routing, a result object) and the LPUSH of its
    own cost ~3 % and ~9 % of the web's CPU at 64 in flight (py-spy), for one message of bytes that
    never change shape. The same fields, values and encoding as Celery 5.7's protocol 2 (task message
    headers, `[args, kwargs, embed]` body in base64, the anonymous exchange's delivery info); a test compares
    it with what `send_task` writes and has a real worker run it (tests/test_queues.py). Its JSON is written
    by `broker.wire.dumps` (orjson), compact where kombu's `json.dumps` puts spaces and escapes non-ASCII: the
    same values to the worker's JSON reader, and the body of 8 calls in 2.7-4.6 us instead of 28-38 (loops of
    20,000), ~4 us of the web's CPU per call."""
    task_id = str(uuid.uuid4())
    described = f"<{len(calls)} call(s)>"
    body = wire.dumps([[calls], {}, _EMBED])
    headers = {"lang": "py", "task": RUN_CALLS, "id": task_id, "shadow": None, "eta": None, "expires": None,
               "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id,
               "parent_id": None, "argsrepr": described, "kwargsrepr": "{}", "origin": anon_nodename(),
               "ignore_result": True, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {}}
    properties = {"correlation_id": task_id, "reply_to": app.thread_oid, "argsrepr": described, "kwargsrepr": "{}",
                  "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                  "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}
    return wire.dumps({"body": base64.b64encode(body.encode()).decode(), "content-encoding": "utf-8",
                       "content-type": "application/json", "headers": headers, "properties": properties})


def request_catalog(server: str, queue: str) -> None:
    app.send_task(REFRESH_CATALOG, args=[server], queue=queue, ignore_result=True)
