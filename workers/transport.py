"""kombu's Redis transport, with each fetched message leased to the worker process in the same transaction.

With late acks on Redis, kombu keeps a fetched message in its `unacked` hash until the ack, and gives it
back only after the visibility timeout (an hour). `workers.control` shortens that to seconds: a live
worker restores the messages a dead worker held. For that, which worker holds which message must be
written in the very transaction that moves the message into `unacked`: recorded any later (say from
Celery's `task_received` signal) and a SIGKILL in between leaves the message in `unacked` with no owner,
back only in an hour. The ack (and any restore) removes the lease with the unacked entry, again in one
transaction.
"""

from __future__ import annotations

import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

from broker import keys


class LeasedQoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        from workers import control

        control.ensure_started()  # the lease's heartbeat runs before this process holds anything
        delivery = message.delivery_info
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag,
                      dumps([message._raw, delivery["exchange"], delivery["routing_key"]]))
            pipe.hset(keys.worker_tags(control.node_name()), delivery_tag, "")
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        from workers.control import node_name

        return super()._remove_from_indices(delivery_tag, pipe).hdel(keys.worker_tags(node_name()), delivery_tag)


class LeasedChannel(kombu_redis.Channel):
    QoS = LeasedQoS


class LeasedRedisTransport(kombu_redis.Transport):
    """Selected for `redis://` and `rediss://` broker URLs by `workers.app`."""

    Channel = LeasedChannel
