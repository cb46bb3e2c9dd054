"""One Redis connection pool per process, configured from `REDIS_URL`.

redis-py pools are thread-safe (and greenlet-safe under gevent), so a single
client per process serves every socket and every worker thread; more pools
would only multiply connections, which the notes show run out at scale.

A dead link must be noticed in seconds, not in TCP's two hours (issue 12: a worker behind a half-open
partition logged nothing and renewed nothing for the rest of the test). So:

- every command that does not block by design has a read timeout of `MCP_BROKER_REDIS_TIMEOUT_S` (5 s;
  Redis answers those in well under a millisecond, and a 500 ms link in 0.5 s);
- a blocking read (BLPOP, XREAD BLOCK, ...) gets its own read timeout: the time it asked the server to block
  plus that same margin (`LinkRedis` below), so a long XREAD is not cut short and a dead link still shows;
- a connect times out after the same 5 s, and no command is retried by redis-py (a client built with
  `from_url` retries nothing; kept so: a retried stall doubles it, and a silent reconnect would hide a
  Redis restart from the reply hub, which must check whether Redis kept its state);
- TCP keepalive probes after 5 s idle, every 2 s, 3 times: a peer gone from the network is found in ~11 s
  even by a subscriber that reads nothing for minutes (pub/sub: see `pubsub_messages` for the in-band check).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from redis.client import EMPTY_RESPONSE, NEVER_DECODE, PubSub

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_lock = threading.Lock()
_client: redis.Redis | None = None
_pid: int | None = None

# commands the server holds open by design, and where their block time is (seconds, or BLOCK <ms>)
_BLOCK_LAST_ARG_S = frozenset({"BLPOP", "BRPOP", "BRPOPLPUSH", "BZPOPMIN", "BZPOPMAX"})
_BLOCK_ARG_S = {"BLMOVE": 5, "BLMPOP": 1, "BZMPOP": 1}  # index of the timeout argument
_BLOCK_OPTION_MS = frozenset({"XREAD", "XREADGROUP"})
_READ_TIMEOUT = "_mcpb_read_timeout"  # our option, carried from execute_command to parse_response
_NO_OVERRIDE = object()


def redis_url() -> str:
    return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)


def redis_timeout() -> float:
    """`MCP_BROKER_REDIS_TIMEOUT_S`: how long a Redis command (beyond its own blocking time) or a connect may
    take before the link counts as broken."""
    return max(0.5, float(os.environ.get("MCP_BROKER_REDIS_TIMEOUT_S") or 5))


def keepalive_options() -> dict[int, int]:
    """TCP keepalive tuned to seconds (Linux names; other platforms keep their defaults)."""
    wanted = {"TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 2, "TCP_KEEPCNT": 3}
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


def _block_seconds(args: tuple[Any, ...]) -> float | object | None:
    """How long the server may hold this command open (None: forever), or _NO_OVERRIDE for an ordinary one."""
    if not args or not isinstance(args[0], str):
        return _NO_OVERRIDE
    name = args[0].upper()
    try:
        if name in _BLOCK_LAST_ARG_S:
            seconds = float(args[-1])
        elif name in _BLOCK_ARG_S:
            seconds = float(args[_BLOCK_ARG_S[name]])
        elif name in _BLOCK_OPTION_MS:
            upper = [(a.decode("latin-1") if isinstance(a, bytes) else a).upper() if isinstance(a, str | bytes)
                     else "" for a in args]
            if "BLOCK" not in upper:
                return _NO_OVERRIDE
            seconds = float(args[upper.index("BLOCK") + 1]) / 1000
        else:
            return _NO_OVERRIDE
    except (ValueError, IndexError, TypeError):
        return _NO_OVERRIDE
    return None if seconds <= 0 else seconds


class LinkRedis(redis.Redis):
    """redis.Redis whose blocking commands read with a timeout of their own block time plus the margin,
    while every other command keeps the client's `socket_timeout`."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        block = _block_seconds(args)
        if block is not _NO_OVERRIDE:
            options[_READ_TIMEOUT] = None if block is None else float(block) + redis_timeout()  # type: ignore[arg-type]
        return super().execute_command(*args, **options)

    def parse_response(self, connection: Any, command_name: Any, **options: Any) -> Any:
        read_timeout = options.pop(_READ_TIMEOUT, _NO_OVERRIDE)
        if read_timeout is _NO_OVERRIDE:
            return super().parse_response(connection, command_name, **options)
        try:
            response = connection.read_response(disable_decoding=bool(options.pop(NEVER_DECODE, False)),
                                                timeout=read_timeout)
        except redis.ResponseError:
            if EMPTY_RESPONSE in options:
                return options[EMPTY_RESPONSE]
            raise
        options.pop(EMPTY_RESPONSE, None)
        options.pop("keys", None)
        if command_name in self.response_callbacks:
            return self.response_callbacks[command_name](response, **options)
        return response


def client_options() -> dict[str, Any]:
    """The connection settings of every Redis client of the broker (see the module docstring)."""
    timeout = redis_timeout()
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
        "health_check_interval": 30,
    }


def get_redis() -> redis.Redis:
    """The process's client (re-created after a fork: a pool must not cross processes)."""
    global _client, _pid
    if _client is None or _pid != os.getpid():
        with _lock:
            if _client is None or _pid != os.getpid():
                _client = LinkRedis.from_url(redis_url(), decode_responses=True, max_connections=1000,
                                             **client_options())
                _pid = os.getpid()
    return _client


def pubsub_messages(pubsub: PubSub, idle_ping_s: float | None = None, tick_s: float = 1.0) -> Iterator[dict[str, Any]]:
    """The published messages of a subscribed `pubsub`, forever; raises redis.TimeoutError when the link went
    silent. A subscriber only reads, so a half-open link would look like a quiet channel: after
    `idle_ping_s` without a word from the server, redis-py's health check sends PING on the subscribed
    connection, and a PING unanswered for `redis_timeout()` means the link is dead (the caller reconnects
    and subscribes again). (redis-py only sends that PING; it never notices a missing answer.)"""
    idle_ping_s = redis_timeout() if idle_ping_s is None else idle_ping_s
    unanswered_since: float | None = None
    while True:
        connection = pubsub.connection
        if connection is not None and connection.health_check_interval != idle_ping_s:
            connection.health_check_interval = idle_ping_s  # this connection only, not the pool's others
        message = pubsub.get_message(timeout=tick_s)
        if pubsub.health_check_response_counter > 0:  # a health PING is out, its PONG not read yet
            now = time.monotonic()
            if unanswered_since is None:
                unanswered_since = now
            elif now - unanswered_since > redis_timeout():
                raise redis.TimeoutError(f"no answer from Redis to a pub/sub PING within {redis_timeout():g}s")
        else:
            unanswered_since = None
        if message is not None and message.get("type") in ("message", "pmessage"):
            yield message
