"""Per-process background duties of a worker: cancellation and leases on held messages.

Cancellation: `revoke(terminate=True)` would kill a pool process and the warm
session with it, and does nothing on the threads pool. Instead every worker
process listens on one Redis channel; a cancelled call id found running here
has its cancel scope cancelled, and the SDK sends the backend MCP
`notifications/cancelled`.

Leases: with late acks on Redis, a SIGKILLed worker's messages come back only
after the transport's visibility timeout (an hour). Each worker process keeps
a heartbeat and the set of delivery tags it holds (written by
`workers.transport` in the transaction that fetches the message, removed in
the one that acks it); any live worker that sees a heartbeat expire puts that
worker's messages back on their queues with kombu's own `restore_by_tag`, so
a killed worker's calls are redelivered in seconds. Results are written once
per call id, so a rerun answers nobody twice.

Its own orphans: a message whose ack failed while Redis was down (or restarting) stays in `unacked` under
this LIVE worker, where no reaper looks; measured: after a Redis restart such messages waited for the
one-hour visibility timeout. Every 2 s (`_reaper`) restores the tags leased to this process that it no longer
holds (`workers.node.hold`/`release`, kept by `workers.transport`), so they come back within seconds of Redis.

The other side of a lease: a worker that cannot renew its own (Redis unreachable, a half-open link) logs
it at the first failed renewal (within HEARTBEAT_S + the Redis timeout, ~7 s), keeps trying, and once the
lease has lapsed (LEASE_TTL_S without a renewal) exits with status 75, so its supervisor restarts it; its
messages are restored by the others meanwhile. A shorter outage heals by itself (every Redis client
reconnects; see `broker.redisconn`), and so does one of Redis itself (connections refused: it is down or
restarting, not cut off from this worker alone).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import signals

from broker import keys
from broker.calls import Call
from broker.fleet import lease_value
from broker.redisconn import get_redis, pubsub_messages, redis_timeout
from workers.dispatch import send_calls
from workers.node import holds, node_name, on_before_hold
from workers.transport import RESTORE_FETCHED

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
LEASE_TTL_S = 10
WATCHDOG_TICK_S = 0.5
EXIT_LEASE_LOST = 75  # EX_TEMPFAIL: the worker lost its lease (Redis unreachable); a restart is the remedy
_state: dict[str, Any] = {"started": False, "renewed": time.monotonic()}
_lock = threading.Lock()


def reclaim_dead_workers(app: Any) -> int:
    """Restore the held messages of every worker whose heartbeat has expired; how many were restored."""
    r = get_redis()
    restored = 0
    for node in r.smembers(keys.WORKERS):
        if node == node_name() or r.exists(keys.worker_alive(node)):
            continue
        restored += restore_fetching(node)
        # claim the dead worker's tags atomically, so two reapers never restore the same message twice
        claimed = f"{keys.worker_tags(node)}:reaping:{node_name()}"
        try:
            r.rename(keys.worker_tags(node), claimed)
        except redis.ResponseError:  # no such key: nothing held, or another reaper took it
            r.srem(keys.WORKERS, node)
            restored += drain_direct_queue(app, node)
            continue
        tags = r.hkeys(claimed)
        with app.connection_for_write() as conn:
            qos = conn.default_channel.qos
            for tag in tags:
                qos.restore_by_tag(tag)
                restored += 1
        r.delete(claimed)
        r.srem(keys.WORKERS, node)
        log.warning("worker %s died: %d held message(s) restored to their queues", node, len(tags))
        restored += drain_direct_queue(app, node)
    return restored


def restore_own_orphans(app: Any) -> int:
    """Put back on their queues the messages leased to this process that it no longer holds (acked or
    rejected while Redis was unreachable); how many. A tag acked meanwhile has no `unacked` entry left, and
    `restore_by_tag` then restores nothing."""
    r = get_redis()
    orphans = [tag for tag in r.hkeys(keys.worker_tags(node_name())) if not holds(tag)]
    if not orphans:
        return 0
    with app.connection_for_write() as conn:
        qos = conn.default_channel.qos
        for tag in orphans:
            if not holds(tag):
                qos.restore_by_tag(tag)
    log.warning("%d message(s) of this worker left unacked (Redis was unreachable) restored to their queues",
                len(orphans))
    return len(orphans)


def restore_fetching(node: str) -> int:
    """Put back on their queues the messages a dead worker had fetched but not leased (`workers.transport`:
    a fetch reply lost with the worker or its link). LMOVE moves each message once, whoever else reaps."""
    r = get_redis()
    moved = 0
    for queue in r.smembers(keys.worker_fetch_queues(node)):
        moved += int(r.eval(RESTORE_FETCHED, 2, keys.worker_fetching(node, queue), queue))
    r.delete(keys.worker_fetch_queues(node))
    if moved:
        log.warning("worker %s died: %d fetched message(s) it never leased restored to their queues", node, moved)
    return moved


def drain_direct_queue(app: Any, node: str) -> int:
    """A dead worker's own queue (per_client calls sent to the sessions it held) is consumed by nobody:
    its calls go back to their servers' queues, where a live worker takes the client over (the client's
    backend state is lost with the dead worker, its calls are not). How many calls were moved."""
    r = get_redis()
    queue = keys.direct_queue(node)
    moved = 0
    while True:
        raw = r.rpop(queue)  # kombu pushes on the left and consumes on the right
        if raw is None:
            return moved
        try:
            message = json.loads(raw)
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            calls = [Call.from_message(call) for call in args[0]]
        except (ValueError, KeyError, IndexError, TypeError):
            log.exception("dropping an unreadable message of dead worker %s", node)
            continue
        by_server: dict[str, list[dict[str, Any]]] = {}
        for call in calls:
            by_server.setdefault(call.server, []).append(dataclasses.replace(call, hops=0).to_message())
        for server, server_calls in by_server.items():
            send_calls(f"mcp.{server}", server_calls)
            moved += len(server_calls)
        log.warning("worker %s died: %d call(s) of its own queue sent back to their servers", node, len(calls))


def _cancel_listener(pool_getter: Any, on_config: Any = None) -> None:
    while True:
        pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(keys.CANCEL_CHANNEL, keys.CONFIG_CHANGED)
            for message in pubsub_messages(pubsub):  # raises once the link is silent (a PING unanswered)
                if message.get("channel") == keys.CONFIG_CHANGED:
                    if on_config is not None:  # off this thread: applying may talk to Celery and backends
                        threading.Thread(target=on_config, name="config-reload", daemon=True).start()
                    continue
                with contextlib.suppress(Exception):  # one call id, or several (`broker.calls.cancel_calls`)
                    pool_getter().cancel(*str(message["data"]).split())
        except redis.RedisError as err:
            log.warning("cancel listener: Redis connection lost (%s); resubscribing", err)
            time.sleep(0.5)
        finally:
            with contextlib.suppress(redis.RedisError):
                pubsub.close()


def _lease(app: Any) -> str:
    """The heartbeat's value: the queues this process consumes, so `/readyz` and the status page can tell
    which servers have a live worker (`broker.fleet`)."""
    try:
        queues = sorted(app.amqp.queues.consume_from)
    except Exception:  # outside a worker (tests calling the tasks directly): no queues to name
        queues = []
    return lease_value(queues, socket.gethostname(), os.getpid(), float(_state.get("started_at") or time.time()))


def _renew(app: Any) -> None:
    """Write this process's lease (one round trip) and note when it last succeeded."""
    pipe = get_redis().pipeline(transaction=False)
    pipe.set(keys.worker_alive(node_name()), _lease(app), ex=LEASE_TTL_S)
    pipe.sadd(keys.WORKERS, node_name())
    pipe.execute()
    _state["renewed"] = time.monotonic()


def _heartbeat(app: Any) -> None:
    """Renew the lease every HEARTBEAT_S. Reaping dead workers runs in its own thread (`_reaper`): restoring
    many messages over a slow link must not delay the renewal past the lease."""
    failing_since: float | None = None
    while True:
        try:
            _renew(app)
            if failing_since is not None:
                log.warning("Redis reachable again: lease renewed after %.1fs of failures",
                            time.monotonic() - failing_since)
                failing_since = None
        except Exception as err:
            if failing_since is None:
                failing_since = time.monotonic()
            # refused (Redis down or restarting, its host answering) or silent (timeouts: a broken link)
            _state["refused_at"] = time.monotonic() if isinstance(err, redis.ConnectionError) else None
            log.warning("lease heartbeat failed: Redis unreachable from this worker (%s: %s); lease last renewed "
                        "%.1fs ago, this worker exits if it is not renewed within %ds", type(err).__name__, err,
                        time.monotonic() - _state["renewed"], LEASE_TTL_S)
        # failing: try again soon, so a link back within the lease renews it with time to spare
        time.sleep(HEARTBEAT_S if failing_since is None else HEARTBEAT_S / 4)


def _reaper(app: Any) -> None:
    while True:
        try:
            reclaim_dead_workers(app)
            restore_own_orphans(app)
        except redis.RedisError as err:  # the heartbeat reports an unreachable Redis; no traceback every 2 s
            log.warning("restoring dead workers' messages failed: %s: %s", type(err).__name__, err)
        except Exception:
            log.warning("restoring dead workers' messages failed", exc_info=True)
        time.sleep(HEARTBEAT_S)


def _watchdog(exit: Callable[[int], Any] = os._exit) -> None:
    """Exit the process once its lease has lapsed on a silent link. Past LEASE_TTL_S without a renewal, other
    workers may restore this worker's messages: it is cut off from a Redis the others may still reach (a
    half-open link, where every thread that touches Redis can hang in some library), and a fresh process from
    the supervisor is the sure way back, while its held calls run elsewhere. Not while Redis refuses
    connections: then Redis itself is down or restarting, every worker is in the same boat, and this one
    puts its own messages back when Redis returns (`restore_own_orphans`). Reads no Redis itself, so nothing
    can hang it."""
    waiting_logged = False
    while True:
        time.sleep(WATCHDOG_TICK_S)
        now = time.monotonic()
        silent = now - _state["renewed"]
        refused_at = _state.get("refused_at")
        if silent >= LEASE_TTL_S and refused_at is not None and now - refused_at < 2 * HEARTBEAT_S + redis_timeout():
            if not waiting_logged:
                log.error("lease not renewed for %.1fs: Redis refuses connections (down or restarting); waiting "
                          "for it", silent)
                waiting_logged = True
            continue
        waiting_logged = waiting_logged and silent >= LEASE_TTL_S
        if silent >= LEASE_TTL_S:
            log.critical("lease not renewed for %.1fs (Redis unreachable): exiting with status %d so the supervisor "
                         "restarts this worker; other workers restore the messages it held", silent, EXIT_LEASE_LOST)
            for handler in logging.getLogger().handlers + log.handlers:
                with contextlib.suppress(Exception):
                    handler.flush()
            exit(EXIT_LEASE_LOST)
            return


def start(app: Any, pool_getter: Any, on_config: Any = None) -> None:
    """Start the listener and the heartbeat once per process."""
    with _lock:
        if _state["started"] and _state.get("pid") == os.getpid():
            return
        _state.update(started=True, pid=os.getpid())
    _state["started_at"] = time.time()
    _renew(app)
    threading.Thread(target=_cancel_listener, args=(pool_getter, on_config), name="cancel-listener",
                     daemon=True).start()
    threading.Thread(target=_heartbeat, args=(app,), name="lease-heartbeat", daemon=True).start()
    threading.Thread(target=_reaper, args=(app,), name="lease-reaper", daemon=True).start()
    threading.Thread(target=_watchdog, name="lease-watchdog", daemon=True).start()


def ensure_started() -> None:
    """Before this process holds its first message (`workers.transport`): its heartbeat must be running,
    or a reaper could not tell it is alive. A process that is not a worker (no signals connected) holds
    no lease."""
    if _state.get("args") is not None and not (_state["started"] and _state.get("pid") == os.getpid()):
        start(*_state["args"])


def connect_signals(app: Any, pool_getter: Any, on_config: Any = None) -> None:
    _state["args"] = (app, pool_getter, on_config)
    on_before_hold(ensure_started)

    @signals.worker_ready.connect(weak=False)
    def _on_ready(**_: Any) -> None:
        start(app, pool_getter, on_config)

    @signals.worker_shutdown.connect(weak=False)
    def _on_shutdown(**_: Any) -> None:
        with contextlib.suppress(redis.RedisError):
            r = get_redis()
            restore_fetching(node_name())  # normally nothing: a clean shutdown leaves no fetch in flight
            r.delete(keys.worker_alive(node_name()))
            r.srem(keys.WORKERS, node_name())
