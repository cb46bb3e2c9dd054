"""The worker's backend pool stopping under running calls: they finish (or their message is redelivered),
never cut off with the message acked unanswered."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest
from celery.exceptions import Reject

from broker.config import BrokerConfig
from workers.backends.pool import BackendPool


def test_close_waits_for_calls_still_running() -> None:
    pool = BackendPool(BrokerConfig(servers={}))
    started = threading.Event()

    async def call() -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "answered"

    with concurrent.futures.ThreadPoolExecutor(1) as threads:
        result = threads.submit(pool.run, call)
        assert started.wait(5)
        pool.close()  # the loop would cancel the call if close did not wait for it
        assert result.result(timeout=5) == "answered"
    with pytest.raises(RuntimeError, match="closed"):
        pool.run(call)


def test_a_message_cancelled_by_the_stop_is_redelivered(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import tasks

    def cancelled(_calls: object, _worker: str) -> None:
        raise concurrent.futures.CancelledError

    monkeypatch.setattr(tasks, "run_calls_now", cancelled)
    with pytest.raises(Reject) as rejected:
        tasks.run_calls.run([])
    assert rejected.value.requeue is True
