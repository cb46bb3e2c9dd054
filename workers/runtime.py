"""A worker process's runtime: its config, its backend pool, its reaction to reloads, and the Celery
signals that warm it up and shut it down.

Nothing here runs at import but connecting signal handlers: the config is read when first needed (at
`worker_init` in a worker: a broken file stops the worker there, as it did when it was read at import),
and the pool is created after any fork, never inherited. A worker loads this module through
`workers.tasks` (`workers.app`'s `include`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from typing import Any

from celery import signals

from broker import keys, reload
from broker.catalog import store_server_catalog
from broker.config import BrokerConfig, ConfigError
from broker.context import vectors
from broker.redisconn import get_redis
from workers import control
from workers.app import app
from workers.backends.errors import BackendRPCError, BackendTimeout, BackendUnavailable
from workers.backends.pool import BackendPool
from workers.backoff import backoff
from workers.dispatch import request_catalog
from workers.node import node_name
from workers.owners import release_owner

log = logging.getLogger(__name__)

_config: BrokerConfig | None = None
_pool: BackendPool | None = None
_pool_pid: int | None = None
_lock = threading.Lock()
_worker: dict[str, Any] = {"hostname": None, "version": 0}  # this worker's Celery node name, config version


def broker_config() -> BrokerConfig:
    global _config
    if _config is None:
        _config = reload.load_running(get_redis())
    return _config


def backend_pool() -> BackendPool:
    """This process's backend sessions (created after any fork, never inherited)."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        with _lock:
            if _pool is None or _pool_pid != os.getpid():
                _pool = BackendPool(broker_config(), on_catalog_change=refresh_catalog_now,
                                    clients_gone=clients_gone, on_client_closed=release_owner)
                _pool_pid = os.getpid()
    return _pool


def refresh_catalog_now(server: str) -> None:
    """List everything the backend offers and publish it as the server's catalog document."""
    spec = broker_config().server(server)
    backend_pool().listed.add(server)  # opening the session below must not ask for another listing
    session = backend_pool().session(server)
    for attempt in range(spec.settings.retries + 1):
        try:
            listing = backend_pool().portal.call(session.list_catalog, spec.settings.timeout_s)
            store_server_catalog(get_redis(), server, listing)
            log.info("catalog of %s published: %d tools", server, len(listing["tools"]))
            vectors.publish_in_background(get_redis(), server)  # for tool search: embedded once, here
            return
        except (BackendUnavailable, BackendRPCError, BackendTimeout) as err:
            log.warning("listing %s failed (attempt %d): %s", server, attempt + 1, err)
            time.sleep(backoff(attempt))
    log.error("catalog of %s could not be listed", server)


def clients_gone(client_keys: list[str]) -> set[str]:
    """Which per_client sessions' clients are over: their client session (or batch job) left Redis."""
    pipe = get_redis().pipeline(transaction=False)
    for key in client_keys:
        pipe.exists(keys.batch(key[6:]) if key.startswith("batch:") else keys.session(key))
    return {key for key, found in zip(client_keys, pipe.execute(), strict=True) if not found}


def known_server(name: str) -> bool:
    """A server of the running config; a name we do not know may come from a reload not applied here yet."""
    if name in broker_config().servers:
        return True
    apply_published_config()
    return name in broker_config().servers


def apply_published_config() -> None:
    """Switch to the config published by a reload (see broker/reload.py), if it is newer than ours:
    sessions of removed/changed servers close, this worker consumes added servers' queues (until they get
    workers of their own) and stops consuming removed ones, and catalogs of added/changed ones are listed."""
    global _config
    with _lock:
        found = reload.published(get_redis())
        if found is None or found[0] <= _worker["version"]:
            return
        version, new = found
        old, _config = broker_config(), new
        _worker["version"] = version
    changes = reload.diff(old, new)
    if _pool is not None and _pool_pid == os.getpid():
        _pool.apply_config(new)
        _pool.served |= set(changes.added)
    hostname = _worker["hostname"]
    for server in changes.added:
        if hostname:
            app.control.add_consumer(new.server(server).queue, destination=[hostname], reply=False)
    served = _pool.served if _pool is not None else set()
    if hostname and not _worker.get("direct") and any(new.server(s).settings.isolation == "per_client"
                                                       for s in served if s in new.servers):
        app.control.add_consumer(keys.direct_queue(node_name()), destination=[hostname], reply=False)
        _worker["direct"] = True
    for server in changes.removed:
        if hostname:
            app.control.cancel_consumer(old.server(server).queue, destination=[hostname], reply=False)
    for server in changes.added + changes.changed:
        request_catalog(server, new.server(server).queue)
    log.warning("worker applied config version %d: %s", version, changes.as_dict())


def reload_config_file() -> None:
    """SIGHUP: validate the file and publish it to every process; a bad file changes nothing."""
    try:
        result = reload.reload_from_file(get_redis(), broker_config())
    except ConfigError as err:
        log.error("config reload rejected; the running config keeps serving:\n%s", err)
        return
    log.warning("config reload published: %s", result)


def served_servers(consumer: Any) -> list[str]:
    """The backend servers whose queues this worker consumes."""
    queues = consumer.app.amqp.queues.consume_from or {}
    by_queue = {spec.queue: name for name, spec in broker_config().servers.items()}
    return [by_queue[q] for q in queues if q in by_queue]


@signals.worker_init.connect
def _load_config(**_: Any) -> None:
    """A worker whose config file is broken (and no published config to fall back on) does not start."""
    try:
        broker_config()
    except ConfigError as err:
        log.critical("%s", err)
        raise SystemExit(1) from err


@signals.worker_ready.connect
def _warm_up(sender: Any = None, **_: Any) -> None:
    """Backends start lazily: only an `eager` server, or one whose catalog nobody has published yet (its
    tools must be listed before clients can see them), is started now, by asking our own queue to list
    it (the pool process that takes it opens the session, never a prefork parent). Also: consume this
    process's direct queue when it serves a per_client server (calls that must reach the sessions held
    here), and take SIGHUP."""
    _worker["hostname"] = getattr(sender, "hostname", None)
    with contextlib.suppress(Exception):
        _worker["version"] = int(get_redis().hget(keys.CONFIG, "version") or 0)
    served = served_servers(sender)
    backend_pool().served |= set(served)
    r = get_redis()
    for server in served:
        spec = broker_config().server(server)
        if spec.settings.eager or not r.exists(keys.catalog(server)):
            request_catalog(server, spec.queue)
    if any(broker_config().server(s).settings.isolation == "per_client" for s in served):
        with contextlib.suppress(Exception):
            sender.add_task_queue(keys.direct_queue(node_name()))
            _worker["direct"] = True
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload_config_file, daemon=True).start())


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _close_backends(**_: Any) -> None:
    if _pool is not None and _pool_pid == os.getpid():
        _pool.close()


control.connect_signals(app, backend_pool, apply_published_config)
