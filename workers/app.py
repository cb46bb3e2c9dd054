"""The Celery app: one queue per configured backend server (`mcp.<server>`).

A worker started with `-Q mcp.time` consumes only the time server's calls and
holds that server's warm session; scaling a server is scaling its workers.

The Celery object only, with no I/O at import: the web tier sends through it (`workers.dispatch`, by
task name) without loading the worker's runtime, tasks or backends. A worker (`celery -A workers.app
worker`) imports `workers.tasks` (the `include` below), which brings the runtime
(`workers.runtime`: config, backend pool, signals). The queues are not declared here: each one is
named when it is used (`-Q`, a send's `queue=`, `add_consumer`) and created by Celery then
(`task_create_missing_queues`); a send goes to the queue by name (Celery's direct anonymous
exchange), so the message is the same either way.
"""

from __future__ import annotations

import logging

from celery import Celery

# Celery's "Task ... received" and "Task ... succeeded" INFO lines per message cost the worker CPU at a high
# call rate and say less than our one JSON line per call (broker.observe): py-spy of the worker at 64 in
# flight had the "received" line (Celery's formatter, caller lookup, a write) at ~4% of its samples, as much
# as decoding the message. The bench counts messages from the workers' own counts (`celery inspect stats`).
logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)

app = Celery("mcp_broker", include=["workers.tasks"])
app.config_from_object("celeryconfig")
