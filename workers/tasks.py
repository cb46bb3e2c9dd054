"""The Celery tasks a worker runs; what they do is in `workers.execute` (calls) and `workers.runtime`
(catalogs). Their names (`workers.dispatch`) are what travels on the wire: senders name them, never
import this module."""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Any

from celery.exceptions import Reject

from broker.calls import Call
from broker.outage import is_redis_down
from workers.app import app
from workers.dispatch import REFRESH_CATALOG, RUN_CALLS
from workers.execute import run_calls_now
from workers.runtime import refresh_catalog_now

log = logging.getLogger(__name__)


@app.task(name=RUN_CALLS, ignore_result=True, bind=True)
def run_calls(self: Any, calls: list[dict[str, Any]]) -> None:
    """One or more calls of one server; outcomes go to Redis (stored once, published to their caller).

    Redis unreachable before every call is answered: the message is rejected for redelivery (requeued if
    Redis is back, else left with this worker's lease for `workers.control` to restore once it is), never
    acked with calls unanswered; calls answered meanwhile are skipped when it comes back."""
    try:
        run_calls_now([Call.from_message(call) for call in calls], self.request.hostname or "")
    except concurrent.futures.CancelledError as err:  # the worker stopped under them (`BackendPool.close`)
        log.warning("message %s: cancelled before all %d call(s) were answered; redelivering it",
                    self.request.id, len(calls))
        raise Reject("cancelled by the worker's stop", requeue=True) from err
    except Exception as err:
        if not is_redis_down(err):
            raise
        log.warning("message %s: Redis unreachable before all %d call(s) were answered (%r); redelivering it",
                    self.request.id, len(calls), err)
        raise Reject(f"Redis unreachable: {err!r}", requeue=True) from err


@app.task(name=REFRESH_CATALOG, ignore_result=True)
def refresh_catalog(server: str) -> None:
    refresh_catalog_now(server)
