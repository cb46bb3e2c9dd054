"""The Celery app: one queue per configured backend server (`mcp.<server>`).

A worker started with `-Q mcp.time` consumes only the time server's calls and
holds that server's warm session; scaling a server is scaling its workers.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery, signals
from kombu import Queue

from broker.config import BrokerConfig, load_config
from workers.backends import BackendPool

log = logging.getLogger(__name__)

app = Celery("mcp_broker", include=["workers.tasks"])
app.config_from_object("celeryconfig")

_config: BrokerConfig | None = None
_pool: BackendPool | None = None
_pool_pid: int | None = None
_lock = threading.Lock()


def broker_config() -> BrokerConfig:
    global _config
    if _config is None:
        _config = load_config()
    return _config


app.conf.task_queues = [Queue(spec.queue, routing_key=spec.queue) for spec in broker_config().servers.values()]


def backend_pool() -> BackendPool:
    """This process's backend sessions (created after any fork, never inherited)."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        with _lock:
            if _pool is None or _pool_pid != os.getpid():
                from workers.tasks import refresh_catalog_now

                _pool = BackendPool(broker_config(), on_catalog_change=refresh_catalog_now)
                _pool_pid = os.getpid()
    return _pool


def served_servers(consumer: Any) -> list[str]:
    """The backend servers whose queues this worker consumes."""
    queues = consumer.app.amqp.queues.consume_from or {}
    by_queue = {spec.queue: name for name, spec in broker_config().servers.items()}
    return [by_queue[q] for q in queues if q in by_queue]


@signals.worker_ready.connect
def _warm_up(sender: Any = None, **_: Any) -> None:
    """Ask our own queue to list each served backend: the pool process that takes it opens the session
    (never the prefork parent) and publishes the catalog, so clients see the tools before the first call."""
    from workers.tasks import refresh_catalog

    for server in served_servers(sender):
        refresh_catalog.apply_async(args=[server], queue=broker_config().server(server).queue)


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _close_backends(**_: Any) -> None:
    if _pool is not None and _pool_pid == os.getpid():
        _pool.close()


def _install_control() -> None:
    from workers import control

    control.connect_signals(app, backend_pool)


_install_control()
