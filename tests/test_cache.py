"""The shared result cache: opt-in per tool, shared by all clients, errors never cached."""

from __future__ import annotations

import time
import uuid

from tests.stack import Stack
from tests.wsclient import RawClient


def stamp(client: RawClient, key: str, **meta: object) -> dict:
    params: dict = {"name": "echo__stamp", "arguments": {"key": key}}
    if meta:
        params["_meta"] = meta
    return client.request("tools/call", params)["result"]["structuredContent"]


def runs(client: RawClient, tool: str) -> int:
    return int(client.call("echo__runs", {"tool": tool})["result"]["structuredContent"][tool])


def test_second_call_is_served_from_the_cache_by_any_client(stack: Stack) -> None:
    key = uuid.uuid4().hex
    with RawClient(stack.ws_url()) as first, RawClient(stack.ws_url()) as second:
        before = runs(first, "stamp")
        original = stamp(first, key)
        assert runs(first, "stamp") == before + 1
        assert stamp(second, key) == original  # another client, same arguments: the cached answer
        assert runs(first, "stamp") == before + 1  # the backend did not run again
        other = stamp(second, key + "-other")  # different arguments miss
        assert other["key"] == key + "-other" and runs(first, "stamp") == before + 2


def test_cache_key_ignores_argument_order_and_counts_hits(stack: Stack) -> None:
    r = stack.redis()
    key = uuid.uuid4().hex
    with RawClient(stack.ws_url()) as client:
        hits_before = int(r.hget("mcpb:cache:stats", "echo__stamp:hits") or 0)
        stamp(client, key)
        stamp(client, key)
        assert int(r.hget("mcpb:cache:stats", "echo__stamp:hits")) == hits_before + 1
        assert int(r.hget("mcpb:cache:stats", "echo__stamp:misses")) >= 1


def test_ttl_expiry_and_bypass(stack: Stack) -> None:
    key = uuid.uuid4().hex
    with RawClient(stack.ws_url()) as client:
        first = stamp(client, key)
        assert stamp(client, key) == first
        bypassed = stamp(client, key, cache=False)  # _meta.cache false: runs the tool
        assert bypassed["run"] != first["run"]
        assert stamp(client, key) == bypassed  # ... and refreshed the cache
        time.sleep(2.3)  # echo's stamp TTL is 2 s
        assert stamp(client, key)["run"] != bypassed["run"]


def test_errors_are_never_cached(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        before = runs(client, "fail")
        for _ in range(3):
            assert client.call("echo__fail", {"message": "same"})["result"]["isError"] is True
        assert runs(client, "fail") == before + 3


def test_uncached_tools_always_run(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        before = runs(client, "echo")
        client.call("echo__echo", {"text": "x"})
        client.call("echo__echo", {"text": "x"})
        assert runs(client, "echo") == before + 2


def test_hits_answered_from_the_web_process_memory_are_counted_too(stack: Stack) -> None:
    """Hot entries are served from the web process's copy; every hit still reaches the Redis counter."""
    r = stack.redis()
    key = uuid.uuid4().hex
    with RawClient(stack.ws_url()) as client:
        before_runs = runs(client, "stamp")
        hits_before = int(r.hget("mcpb:cache:stats", "echo__stamp:hits") or 0)
        answers = [stamp(client, key) for _ in range(6)]
        assert all(a == answers[0] for a in answers)
        assert runs(client, "stamp") == before_runs + 1
        deadline = time.monotonic() + 10
        while int(r.hget("mcpb:cache:stats", "echo__stamp:hits") or 0) < hits_before + 5:
            assert time.monotonic() < deadline, "local hits were not flushed to the shared counter"
            time.sleep(0.1)
        assert int(r.hget("mcpb:cache:stats", "echo__stamp:hits")) == hits_before + 5
