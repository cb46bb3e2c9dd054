"""The fault proxy itself (tests/faultproxy.py), against the real test Redis: it forwards, delays, partitions
half-open (silence, not a reset), heals, and resets."""

from __future__ import annotations

import socket
import time

import pytest
import redis

from tests.faultproxy import FaultProxy


def _client(url: str, timeout: float = 1.0) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True)


def test_forwards_and_delays_each_direction(redis_url: str) -> None:
    with FaultProxy.for_url(redis_url) as proxy:
        r = _client(proxy.url_for(redis_url))
        assert r.ping()
        r.set("faultproxy:k", "v")
        assert r.get("faultproxy:k") == "v"
        proxy.set_latency(up=0.15, down=0.1)
        start = time.monotonic()
        assert r.get("faultproxy:k") == "v"
        assert time.monotonic() - start >= 0.25  # a lower bound: the two delays add up on one round trip
        assert proxy.bytes["up"] > 0 and proxy.bytes["down"] > 0


def test_partition_is_silence_then_heal_resumes(redis_url: str) -> None:
    with FaultProxy.for_url(redis_url) as proxy:
        r = _client(proxy.url_for(redis_url), timeout=0.5)
        assert r.ping()
        proxy.partition()
        with pytest.raises(redis.TimeoutError):  # silence: a read times out; no reset, no EOF
            r.ping()
        raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5)  # new connections: silent too
        raw.sendall(b"PING\r\n")
        with pytest.raises(TimeoutError):
            raw.recv(16)
        proxy.heal()
        assert r.ping()  # the client reconnects (its timed-out connection was dropped) and is answered
        deadline = time.monotonic() + 5
        data = b""
        while b"PONG" not in data and time.monotonic() < deadline:  # the held connection resumes, in order
            try:
                data += raw.recv(16)
            except TimeoutError:
                continue
        assert b"+PONG" in data
        raw.close()


def test_reset_aborts_open_connections_only(redis_url: str) -> None:
    with FaultProxy.for_url(redis_url) as proxy:
        raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        raw.sendall(b"PING\r\n")
        assert raw.recv(16) == b"+PONG\r\n"
        proxy.wait_for_connections(1)
        proxy.reset()
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            raw.sendall(b"PING\r\n")
            raw.recv(16)
            raw.sendall(b"PING\r\n")
            raw.recv(16)
        assert _client(proxy.url_for(redis_url)).ping()
