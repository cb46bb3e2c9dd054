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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

from broker import keys

log = logging.getLogger(__name__)


class LeasedQoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        from workers import control

        control.ensure_started()  # the lease's heartbeat runs before this process holds anything
        control.hold(delivery_tag)  # before the lease is written: a leased tag is never taken for an orphan
        delivery = message.delivery_info
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag,
                      dumps([message._raw, delivery["exchange"], delivery["routing_key"]]))
            pipe.hset(keys.worker_tags(control.node_name()), delivery_tag, "")
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)

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
        self._settle(delivery_tag, lambda: super(LeasedQoS, self).ack(delivery_tag), "ack")

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._settle(delivery_tag, lambda: super(LeasedQoS, self).reject(delivery_tag, requeue), "reject")

    def _settle(self, delivery_tag: str, settle: Callable[[], None], what: str) -> None:
        """Ack or reject; if that cannot reach Redis (down, or this channel closed by a lost connection:
        kombu then fails with an AttributeError that, raised from Celery's consumer while it reconnects,
        wedged the worker), the message stays leased to this process and `workers.control` restores it
        once Redis answers. Either way this process no longer holds it."""
        from workers import control

        try:
            settle()
        except Exception as err:
            log.warning("%s of message %s failed (%r): it is restored to its queue when Redis answers", what,
                        delivery_tag, err)
            virtual.QoS.ack(self, delivery_tag)  # forget it here; its lease stays in Redis
        finally:
            control.release(delivery_tag)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        from workers.control import node_name

        return super()._remove_from_indices(delivery_tag, pipe).hdel(keys.worker_tags(node_name()), delivery_tag)


class LeasedChannel(kombu_redis.Channel):
    QoS = LeasedQoS


class LeasedRedisTransport(kombu_redis.Transport):
    """Selected for `redis://` and `rediss://` broker URLs by `workers.app`."""

    Channel = LeasedChannel
