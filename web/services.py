"""Build the per-process broker services the web endpoints share.

Created lazily at the first request, never at import: under gunicorn+gevent a
thread or Redis client made before the worker forks (or before monkey
patching) would be shared or blocking.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from flask import current_app
from kombu.exceptions import OperationalError
from mcp_types import INTERNAL_ERROR

from broker import keys, observe, outage, reload
from broker.cache import ResultCache
from broker.catalog import Catalog
from broker.config import BrokerConfig, load_config
from broker.held import held
from broker.leases import LEASE_S, LeaseKeeper
from broker.metrics import RECORDER
from broker.outbox import Outbox
from broker.protocol import RPCError
from broker.redisconn import get_redis
from broker.replies import ReplyHub
from broker.router import Router
from broker.security import RateLimiter
from broker.services import BrokerServices
from broker.sessions import DEFAULT_TTL_S, DELIVERED_TTL_S, SessionStore
from web.transports import modern_cancel
from workers.dispatch import request_catalog, run_calls_message

_lock = threading.Lock()
_applied: dict[str, Any] = {"version": 0, "checked": 0.0}  # the reload version this process serves
CONFIG_CHECK_S = 2.0  # how often a request looks for a reload whose announcement this process missed
config_listeners: list[Callable[[BrokerConfig], None]] = []  # told of every applied reload (the Flask app)
_services: BrokerServices | None = None
_pid: int | None = None


MAYBE_SENT_MESSAGE = ("Service unavailable: the broker's Redis stopped answering while this call was being "
                      "enqueued; it may or may not run. Retry it if that is safe")


class MaybeSent(Exception):
    """A queue message's script (`_PUSH`) went out but its reply did not come back (the link broke or timed out):
    Redis may have run it, so its calls may run."""


def enqueue_error(err: Exception) -> RPCError:
    """What the caller of a call that `push_calls` could not enqueue hears: retry shortly if nothing went out,
    may or may not run if the transaction did (`MaybeSent`)."""
    if isinstance(err, MaybeSent):
        return outage.unavailable_error(MAYBE_SENT_MESSAGE)
    if isinstance(err, (*outage.REDIS_DOWN, OperationalError)):  # kombu wraps redis-py's errors
        return outage.unavailable_error(f"Could not enqueue the call: {outage.MESSAGE}")
    return RPCError(INTERNAL_ERROR, f"Could not enqueue the call: {err!r}")


# A queue message and its calls' session records, in one script (atomic as MULTI/EXEC was): KEYS[1] the queue,
# then each session's calls hash; ARGV[1] the message, ARGV[2] the records' TTL, then per hash its number of
# fields and their names and values. One command instead of five (MULTI, HSET, EXPIRE, LPUSH, EXEC): five to
# pack and six replies to parse in redis-py, and four commands fewer for Redis, per message. A session's records
# go in HSETs of at most PUSH_HSET_VALUES values (an even number: whole pairs): `unpack` of more than ~8,000
# failed ("too many results to unpack", Lua's LUAI_MAXCSTACK), a message of ~4,000 calls of one session.
PUSH_HSET_VALUES = 1000
_PUSH = f"""
local at = 3
for i = 2, #KEYS do
  local last = at + 2 * tonumber(ARGV[at])
  for from = at + 1, last, {PUSH_HSET_VALUES} do
    redis.call('HSET', KEYS[i], unpack(ARGV, from, math.min(from + {PUSH_HSET_VALUES - 1}, last)))
  end
  redis.call('EXPIRE', KEYS[i], ARGV[2])
  at = last + 1
end
return redis.call('LPUSH', KEYS[1], ARGV[1])
"""


def push_calls(r: redis.Redis, sessions: SessionStore, queue: str, calls: list[dict[str, Any]]) -> None:
    """One queue message of calls, and their sessions' records before it, in one round trip and one script
    (`_PUSH`): all or nothing (an answer can never arrive for a call its session does not know, and a
    session never waits for a call that was not queued). The message is the one Celery's `send_task`
    would push (`workers.dispatch.run_calls_message`). Not retried, like every command of this process's
    client (`broker.redisconn`; Celery's publish retried ~0.6 s): a link that fails while connecting
    sent nothing (the caller hears "could not enqueue, retry shortly"); one that fails after the
    script went out may have queued it (`MaybeSent`: the caller hears it may run)."""
    now = time.time()
    for call in calls:
        call.setdefault("queued_at", now)  # the worker measures the queue wait from here
    records = sessions.records(calls)
    args: list[Any] = [run_calls_message(queue, calls), sessions.ttl_s]
    for entries in records.values():
        args.append(len(entries))
        for field_value in entries.items():
            args.extend(field_value)
    pipe = r.pipeline(transaction=False)
    pipe.eval(_PUSH, 1 + len(records), queue, *records, *args)
    pipe.connection = r.connection_pool.get_connection()  # connected here: a failure so far sent nothing
    try:
        pipe.execute()  # (releases the connection, whatever happens)
    except outage.REDIS_DOWN as err:
        raise MaybeSent(err) from err


def build_services(config: BrokerConfig) -> BrokerServices:
    r = get_redis()
    catalog = Catalog(r, config)
    hub = ReplyHub(r)
    lease_s = float(os.environ.get("MCP_BROKER_LEASE_S", str(LEASE_S)))  # how long a dead process's leases last
    sessions = SessionStore(r, int(os.environ.get("MCP_BROKER_SESSION_TTL_S", str(DEFAULT_TTL_S))),
                            int(os.environ.get("MCP_BROKER_DELIVERED_TTL_S", str(DELIVERED_TTL_S))))

    def enqueue_failed(call: dict[str, Any], err: Exception) -> None:
        hub.deliver_local({"call_id": call["call_id"], "error": enqueue_error(err).to_error()})

    def send(queue: str, calls: list[dict[str, Any]]) -> None:
        push_calls(r, sessions, queue, calls)

    services = BrokerServices(
        config=config,
        redis=r,
        catalog=catalog,
        router=Router(catalog),
        hub=hub,
        outbox=Outbox(send, enqueue_failed, int(os.environ.get("MCP_BROKER_MAX_BATCH", "32")), load=hub.load,
                      coalesce_at=int(os.environ.get("MCP_BROKER_COALESCE_AT", "16")),
                      coalesce_wait_s=float(os.environ.get("MCP_BROKER_COALESCE_WAIT_MS", "10")) / 1000),
        request_catalog=request_catalog,
        sessions=sessions,
        cache=ResultCache(r, config),
        page_size=int(os.environ.get("MCP_BROKER_PAGE_SIZE", "500")),
        limiter=RateLimiter(r),
        leases=LeaseKeeper(r, lease_s, lease_s / 3),
        max_frame_bytes=int(os.environ.get("MCP_BROKER_MAX_FRAME_BYTES", str(4 * 1024 * 1024))),
        max_argument_bytes=int(os.environ.get("MCP_BROKER_MAX_ARGUMENT_BYTES", str(1024 * 1024))),
        max_batch_messages=max(1, int(os.environ.get("MCP_BROKER_MAX_RPC_BATCH", "500"))),
    )

    def on_channel_message(channel: str, _data: str) -> None:
        if channel == keys.CATALOG_CHANGED:  # off the hub's thread: telling every client may take a while
            threading.Thread(target=services.on_catalog_changed, name="catalog-changed", daemon=True).start()

    hub.listeners.append(on_channel_message)
    hub.extra_channels.append(keys.MODERN_CANCEL_CHANNEL)  # a modern-era notifications/cancelled, from any process
    hub.listeners.append(modern_cancel.on_message)
    hub.extra_channels.append(keys.CONFIG_CHANGED)
    hub.listeners.append(lambda channel, _data: channel == keys.CONFIG_CHANGED and threading.Thread(
        target=apply_published_config, args=(services,), name="config-reload", daemon=True).start())
    @contextlib.contextmanager
    def burst() -> Iterator[None]:
        """A burst of answers: their Redis writes (forget, SSE events) in one round trip, their call lines in
        one write, their metrics under one lock."""
        with held(r), observe.lines_together(), observe.web_outcomes_together():
            yield

    hub.burst = burst
    # loaded (as many calls waiting here as make the outbox coalesce), a burst's held writes wait up to
    # MCP_BROKER_HOLD_MS for the next answers' (`ReplyHub._run`)
    hub.hold_s = float(os.environ.get("MCP_BROKER_HOLD_MS", "20")) / 1000
    hub.hold_at = int(os.environ.get("MCP_BROKER_COALESCE_AT", "16"))
    hub.observer = observe.web_outcome  # one metrics update and one JSON log line per answered call
    RECORDER.sample("mcp_broker_sessions_open", lambda: {(): float(len(services.connections))})
    RECORDER.sample("mcp_broker_calls_in_flight", lambda: {(): float(hub.in_flight)})
    RECORDER.start()
    return services


def apply_published_config(services: BrokerServices) -> None:
    """A reload was published (broker/reload.py): serve the new server set. Removed servers vanish from
    every list and route, added ones appear when a worker lists them; clients hear list_changed."""
    found = reload.published(services.redis)
    if found is None or found[0] <= _applied["version"]:
        return
    _applied["version"], new = found
    services.catalog.config = new  # (request_missing_catalogs skips a missing server no longer configured)
    services.cache.config = new
    services.config = new
    for listener in config_listeners:
        listener(new)
    services.on_catalog_changed()


def check_published_config(services: BrokerServices) -> None:
    """At most every few seconds: apply a reload this process did not hear of (its listener was not
    running yet, or the announcement was lost in a reconnect). One HGET when nothing changed."""
    now = time.monotonic()
    if now - _applied["checked"] < CONFIG_CHECK_S:
        return
    _applied["checked"] = now
    version = services.redis.hget(keys.CONFIG, "version")
    if version is not None and int(version) > _applied["version"]:
        apply_published_config(services)


def get_services(config: BrokerConfig | None = None) -> BrokerServices:
    global _services, _pid
    if _services is None or _pid != os.getpid():
        with _lock:
            if _services is None or _pid != os.getpid():
                _services = build_services(config or load_config())
                _pid = os.getpid()
    return _services


def stop_services(wait_s: float = 2.0) -> None:
    """At a web worker's exit (gunicorn's `worker_exit`): the reply hub closes its open burst, so the held
    writes of answers already sent go out (up to `wait_s`; a burst holds them `MCP_BROKER_HOLD_MS` at most)."""
    if _services is not None and _pid == os.getpid():
        _services.hub.stop(wait_s)


def current_services() -> BrokerServices:
    """The services of the app serving the current request (its config, as the latest reload left it)."""
    return get_services(current_app.config.get("BROKER_CONFIG"))
