"""kombu's Redis transport, with each fetched message leased to the worker process in the same transaction.

With late acks on Redis, kombu keeps a fetched message in its `unacked` hash until the ack, and gives it
back only after the visibility timeout (an hour). `workers.control` shortens that to seconds: a live
worker restores the messages a dead worker held. For that, which worker holds which message must be
written in the very transaction that moves the message into `unacked`: recorded any later (say from
Celery's `task_received` signal) and a SIGKILL in between leaves the message in `unacked` with no owner,
back only in an hour. The ack (and any restore) removes the lease with the unacked entry, again in one
transaction.

A live worker's own messages can be orphaned too: an ack (or a reject) that fails because Redis is down
leaves the message in `unacked` under a worker that is alive, and nobody else restores it. So this process
also keeps in memory the tags it holds (added before the lease is written, dropped once Celery has acked or
rejected the message, whether or not that reached Redis); `workers.control` restores any tag leased to
this process that it no longer holds.

Fetching: kombu takes a message with BRPOP, which removes it from Redis before the reply reaches the
worker. A reply lost on the way (a half-open link: issue 12 lost every call sent in the first second of a
partition) loses the message. So a channel that consumes one Redis list (a worker of one server) fetches
with BLMOVE into a list of its own (`keys.worker_fetching`), and the lease transaction above removes the
message from that list. What a lost reply leaves there goes back to its queue: restored by the channel
itself before its next fetch (it knows its last fetch's reply never came; a new channel, as after a lost
connection, looks once), or by the reaper of a dead worker (`workers.control.reclaim_dead_workers`). A
channel that consumes several lists keeps kombu's BRPOP.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from broker import keys
from workers.node import hold, node_name, release

log = logging.getLogger(__name__)

# Put a fetch list's messages back on their queue, at the end consumers take from (next to be consumed).
RESTORE_FETCHED = """
local n = 0
while true do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'RIGHT')
  if not v then return n end
  n = n + 1
end
"""


# The lease of a fetched message, in one atomic step: the unacked entry and its index (kombu's), the worker's
# tag (ours), off the channel's fetch list when it was taken with BLMOVE (ARGV[4]: its raw bytes, or "").
LEASE = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], '')
if ARGV[4] ~= '' then redis.call('LREM', KEYS[4], 1, ARGV[4]) end
return 1
"""
# The ack: the unacked entry, its index and the worker's tag, in one atomic step.
ACK = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""


class LeasedQoS(kombu_redis.QoS):
    """kombu's QoS with the lease: written with the unacked entry (`append`), removed with it (`ack`).

    Each is one Lua script (EVALSHA), not a MULTI/EXEC pipeline of 4-6 commands: the same atomicity, one
    command for redis-py to pack and one reply to parse. And a message taken with BLMOVE is stored in the
    unacked hash as its fetched bytes (kombu's JSON of `[message, exchange, routing_key]` built around
    them), not encoded again from the dict they were decoded into. Measured, kombu's consumer alone
    (BLMOVE, lease, ack; drain_events, a 6-call message, 3,000 a run, 6 runs a side alternating, loaded
    box): 464 -> 385 CPU-us a message (median; min 388 -> 308)."""

    _lease: Any = None  # the scripts (redis-py `Script`s: EVALSHA, loaded again if Redis lost them)
    _ack: Any = None

    def _scripts(self, client: Any) -> tuple[Any, Any]:
        if self._lease is None:
            self._lease, self._ack = client.register_script(LEASE), client.register_script(ACK)
        return self._lease, self._ack

    def append(self, message: Any, delivery_tag: str) -> None:
        # before the lease is written: a leased tag is never taken for an orphan; `workers.control` makes sure
        # the lease's heartbeat runs before this process holds anything (`workers.node.on_before_hold`)
        hold(delivery_tag)
        delivery = message.delivery_info
        fetched = getattr(self.channel, "fetched", None)
        route = f"{dumps(delivery['exchange'])}, {dumps(delivery['routing_key'])}]"
        if fetched is not None:  # taken with BLMOVE: leased now, so off the channel's fetch list
            raw = fetched[1]
            entry = "[" + (raw.decode() if isinstance(raw, bytes) else raw) + ", " + route
        else:
            entry = "[" + dumps(message._raw) + ", " + route
        if self.channel.global_keyprefix:  # kombu's prefixing client: its own commands, in a pipeline
            self._append_pipelined(message, delivery_tag, entry, fetched)
        else:
            with self.channel.conn_or_acquire() as client:
                lease, _ = self._scripts(client)
                lease(keys=[self.unacked_index_key, self.unacked_key, keys.worker_tags(node_name()),
                            fetched[0] if fetched is not None else self.unacked_key],
                      args=[delivery_tag, time.time(), entry, fetched[1] if fetched is not None else ""],
                      client=client)
        virtual.QoS.append(self, message, delivery_tag)

    def _append_pipelined(self, message: Any, delivery_tag: str, entry: str, fetched: tuple[str, bytes] | None) -> None:
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, entry)
            pipe.hset(keys.worker_tags(node_name()), delivery_tag, "")
            if fetched is not None:
                pipe.lrem(fetched[0], 1, fetched[1])
            pipe.execute()

    def restore_unacked(self, client: Any = None) -> None:
        """kombu puts a channel's held messages back when the channel closes. On a lost connection that
        fails (Redis is down, or the channel already lost its connection: an AttributeError, which Celery
        took for an unrecoverable error and stopped the worker on a Redis restart). The messages keep their
        lease: running ones are acked when done, the rest are restored by `workers.control` once Redis
        answers (by this process, or by a reaper if it exits)."""
        try:
            super().restore_unacked(client)
        except Exception as err:
            log.warning("could not put back %d held message(s) now (%r); they stay leased to this worker",
                        len(self._delivered), err)

    def ack(self, delivery_tag: str) -> None:
        self._settle(delivery_tag, lambda: self._ack_now(delivery_tag), "ack")

    def _ack_now(self, delivery_tag: str) -> None:
        if self.channel.global_keyprefix:
            super().ack(delivery_tag)
            return
        with self.channel.conn_or_acquire() as client:
            _, ack = self._scripts(client)
            ack(keys=[self.unacked_index_key, self.unacked_key, keys.worker_tags(node_name())], args=[delivery_tag],
                client=client)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._settle(delivery_tag, lambda: super(LeasedQoS, self).reject(delivery_tag, requeue), "reject")

    def _settle(self, delivery_tag: str, settle: Callable[[], None], what: str) -> None:
        """Ack or reject; if that cannot reach Redis (down, or this channel closed by a lost connection:
        kombu then fails with an AttributeError that, raised from Celery's consumer while it reconnects,
        wedged the worker), the message stays leased to this process and `workers.control` restores it
        once Redis answers. Either way this process no longer holds it."""
        try:
            settle()
        except Exception as err:
            log.warning("%s of message %s failed (%r): it is restored to its queue when Redis answers", what,
                        delivery_tag, err)
            virtual.QoS.ack(self, delivery_tag)  # forget it here; its lease stays in Redis
        finally:
            release(delivery_tag)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        return super()._remove_from_indices(delivery_tag, pipe).hdel(keys.worker_tags(node_name()), delivery_tag)


class LeasedChannel(kombu_redis.Channel):
    QoS = LeasedQoS
    fetched: tuple[str, bytes] | None = None  # (fetch list, raw message) while the message is being leased
    _fetching: tuple[str, str] | None = None  # (queue, fetch list) of the BLMOVE in flight
    # a BLMOVE was sent and its reply never read (the link broke): restore the fetch list before the next one.
    # True for a new channel too: after a lost connection Celery opens a new one, and what the old channel's
    # lost reply left in this process's fetch list must go back (one EVAL per channel).
    _fetch_unread = True
    _fetch_lists: set[str] | None = None  # fetch lists registered in `keys.worker_fetch_queues`
    _sync_client: Any = None  # `conn_or_acquire`'s client, on the channel's (sync) pool

    @contextlib.contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """kombu builds a new `redis.Redis` on every use (each lease, each ack, each fetch's bookkeeping: about
        three a message), and a client's construction copies its ~250 response callbacks: ~6% of the worker's
        CPU under load (py-spy, 64 in flight). One client per channel instead, on the same connection pool (a
        client is thread-safe: every command takes a pool connection; pipelines stay one per use); a new pool
        (after a reconnect) gets a new client."""
        if client:
            yield client
            return
        cached = self._sync_client
        if cached is None or cached.connection_pool is not self.pool:
            cached = self._sync_client = self._create_client()
        yield cached

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        lists = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        if len(lists) != 1 or self.global_keyprefix:
            self._fetching = None
            return super()._brpop_start(timeout)
        queue, fetch_list = queues[0], keys.worker_fetching(node_name(), lists[0])
        with self.conn_or_acquire() as client:
            if self._fetch_lists is None:
                self._fetch_lists = set()
            if fetch_list not in self._fetch_lists:
                client.sadd(keys.worker_fetch_queues(node_name()), lists[0])
                self._fetch_lists.add(fetch_list)
            if self._fetch_unread:
                restored = client.eval(RESTORE_FETCHED, 2, fetch_list, lists[0])
                if restored:
                    kombu_redis.warning("%d message(s) whose fetch reply was lost went back to %s", restored, queue)
                self._fetch_unread = False
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self._fetching = (queue, fetch_list)
        self._fetch_unread = True
        self.client.connection.send_command("BLMOVE", lists[0], fetch_list, "RIGHT", "LEFT",
                                            (timeout if timeout is not None else self.brpop_timeout) or 0)

    def _brpop_read(self, **options: Any) -> bool:
        if self._fetching is None:
            return bool(super()._brpop_read(**options))
        queue, fetch_list = self._fetching
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            self._fetch_unread = False  # the reply is here: what it moved is `item`, leased just below
            if not item:
                raise kombu_redis.Empty()
            self._queue_cycle.rotate(queue)
            self.fetched = (fetch_list, item)
            try:
                self.connection._deliver(loads(bytes_to_str(item)), queue)
            except BaseException:
                self._fetch_unread = True  # the lease may not be written: look at the fetch list before the next
                raise
            finally:
                self.fetched = None
            return True
        finally:
            self._in_poll = None
            self._fetching = None
            self._flush_brpop_reauth()


class LeasedRedisTransport(kombu_redis.Transport):
    """Selected for `redis://` and `rediss://` broker URLs by `celeryconfig.py`."""

    Channel = LeasedChannel
