"""The worker's transport leases a message taken with BLMOVE, and acks it, each in one Lua step
(`workers.transport.LEASE`, `ACK`): what is written is what kombu's pipelines wrote, the unacked entry holds
the message as fetched, a requeue restores it intact, and a Redis that lost its scripts still leases."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from broker import keys
from workers import node
from workers.transport import LeasedRedisTransport


@pytest.fixture
def queue(redis_url: str) -> Iterator[tuple[str, Queue]]:
    name = f"mcp.lease-{uuid.uuid4().hex[:8]}"
    yield name, Queue(name, Exchange(name, type="direct"), routing_key=name)
    r = redis.Redis.from_url(redis_url)
    r.delete(name, keys.worker_fetching(node.node_name(), name), keys.worker_tags(node.node_name()))


def consume_one(conn: Connection, q: Queue, on_message: Any) -> None:
    seen: list[Any] = []

    def callback(body: Any, message: Any) -> None:
        seen.append(message)
        on_message(body, message)

    with Consumer(conn, queues=[q], callbacks=[callback], prefetch_count=1):
        while not seen:
            conn.drain_events(timeout=5)


def test_a_blmove_fetch_is_leased_and_acked_in_one_step_each(redis_url: str, queue: tuple[str, Queue]) -> None:
    name, q = queue
    r = redis.Redis.from_url(redis_url)
    me = node.node_name()
    body = {"calls": [{"call_id": "x", "server": "echo", "tool": "echo", "arguments": {"text": "é \u2028 \"q\""}}]}
    with Connection(redis_url, transport=LeasedRedisTransport, transport_options={"priority_steps": [0]}) as conn:
        with conn.channel() as channel:
            Producer(channel).publish(body, exchange=q.exchange, routing_key=name, declare=[q])
        r.script_flush()  # a restarted Redis: the scripts are loaded again on their first use
        checked: list[str] = []

        def leased(got: Any, message: Any) -> None:
            qos = message.channel.qos
            tag = message.delivery_tag
            assert got == body and message.channel._fetching is not None  # taken with BLMOVE
            entry = json.loads(r.hget(qos.unacked_key, tag))
            assert entry == [message._raw, message.delivery_info["exchange"], message.delivery_info["routing_key"]]
            assert r.zscore(qos.unacked_index_key, tag) is not None and r.hexists(keys.worker_tags(me), tag)
            assert r.llen(keys.worker_fetching(me, name)) == 0 and r.llen(name) == 0
            message.ack()
            assert not r.hexists(qos.unacked_key, tag) and r.zscore(qos.unacked_index_key, tag) is None
            assert not r.hexists(keys.worker_tags(me), tag) and not node.holds(tag)
            checked.append(tag)

        consume_one(conn, q, leased)
        assert checked


def test_a_requeued_message_comes_back_as_it_was_sent(redis_url: str, queue: tuple[str, Queue]) -> None:
    name, q = queue
    r = redis.Redis.from_url(redis_url)
    body = {"calls": [{"call_id": "y", "server": "echo", "tool": "echo", "arguments": {}}]}
    with Connection(redis_url, transport=LeasedRedisTransport, transport_options={"priority_steps": [0]}) as conn:
        with conn.channel() as channel:
            Producer(channel).publish(body, exchange=q.exchange, routing_key=name, declare=[q])
        first: list[Any] = []

        def requeue(_got: Any, message: Any) -> None:
            first.append(message._raw)
            message.requeue()

        consume_one(conn, q, requeue)
        assert r.llen(name) == 1 and not r.hlen(keys.worker_tags(node.node_name()))
        again: list[Any] = []
        consume_one(conn, q, lambda got, message: (again.append((got, message._raw)), message.ack()))
        assert again[0][0] == body
        assert again[0][1]["properties"]["delivery_tag"] == first[0]["properties"]["delivery_tag"]
