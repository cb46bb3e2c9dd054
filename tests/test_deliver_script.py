"""A worker delivers outcomes with EVALSHA (broker.results.ResultWriter.adeliver), through the write lane in
batches of one event-loop turn (broker.writelane): a Redis that lost its
script cache (restarted, or SCRIPT FLUSH) still gets every outcome, exactly once. An embedded Redis of the
test's own: flushing the scripts of the shared one would touch other users of it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
import redis

from broker import keys
from broker.calls import Call
from broker.results import ResultWriter
from broker.writelane import WriteLane
from cli.devrun import EmbeddedRedis


@pytest.fixture(scope="module")
def own_redis() -> Iterator[redis.Redis]:
    embedded = EmbeddedRedis(db=0)
    embedded.start()
    try:
        yield redis.Redis.from_url(embedded.url, decode_responses=True)
    finally:
        embedded.stop()


def call(call_id: str) -> Call:
    return Call.from_message({"call_id": call_id, "server": "echo", "tool": "echo", "arguments": {"text": "x"},
                              "expires_at": time.time() + 60, "keep_s": 60})


def test_outcomes_are_delivered_once_with_or_without_a_cached_script(own_redis: redis.Redis) -> None:
    writer = ResultWriter(own_redis, lane=WriteLane(own_redis))

    async def deliver(call_id: str) -> bool:
        return await writer.adeliver(call(call_id), {"result": {"content": [], "isError": False}})

    assert asyncio.run(deliver("c1")) is True
    own_redis.script_flush()  # what a Redis restart does to the script cache
    assert asyncio.run(deliver("c2")) is True  # NOSCRIPT: the body is sent, and cached again
    assert asyncio.run(deliver("c3")) is True
    assert asyncio.run(deliver("c2")) is False  # answered already: exactly once
    for call_id in ("c1", "c2", "c3"):
        stored = json.loads(own_redis.get(keys.result(call_id)))
        assert stored["call_id"] == call_id and stored["result"] == {"content": [], "isError": False}


def test_writes_of_one_loop_turn_share_a_round_trip_and_keep_their_own_replies(own_redis: redis.Redis) -> None:
    """The lane's `run` (broker.writelane._LoopBatch): 40 coroutines writing at once get one pipeline, each its
    own replies; a write that fails (a bad command, an ops that raises) fails alone."""
    lane = WriteLane(own_redis)
    own_redis.set("lane:str", "text")

    def broken(_pipe: object) -> None:
        raise ValueError("an ops that raises")

    async def all_at_once() -> list[object]:
        writes = [lane.run(lambda pipe, i=i: pipe.incrby(f"lane:n{i}", i)) for i in range(40)]
        writes.append(lane.run(lambda pipe: pipe.incr("lane:str")))  # WRONGTYPE: an error reply
        writes.append(lane.run(broken))
        return await asyncio.gather(*writes, return_exceptions=True)

    replies = asyncio.run(all_at_once())
    assert replies[:40] == [[i] for i in range(40)]
    assert isinstance(replies[40], redis.ResponseError)
    assert isinstance(replies[41], ValueError)
    assert lane.round_trips <= 2  # the first write may start the lane's thread alone; the rest go together
    assert asyncio.run(all_at_once())[:40] == [[2 * i] for i in range(40)]  # again, on another loop
