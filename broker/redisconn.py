"""One Redis connection pool per process, configured from `REDIS_URL`.

redis-py pools are thread-safe (and greenlet-safe under gevent), so a single
client per process serves every socket and every worker thread; more pools
would only multiply connections, which the notes show run out at scale.
"""

from __future__ import annotations

import os
import threading

import redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_lock = threading.Lock()
_client: redis.Redis | None = None
_pid: int | None = None


def redis_url() -> str:
    return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)


def get_redis() -> redis.Redis:
    """The process's client (re-created after a fork: a pool must not cross processes)."""
    global _client, _pid
    if _client is None or _pid != os.getpid():
        with _lock:
            if _client is None or _pid != os.getpid():
                # socket_timeout=None: redis-py 8 reads with a 5 s timeout by default, which breaks every
                # blocking read longer than that (an SSE stream's XREAD, a worker's BLPOP for a client's
                # answer); a dead peer is found by TCP keepalive and the 30 s health check instead.
                _client = redis.Redis.from_url(
                    redis_url(), decode_responses=True, max_connections=1000, health_check_interval=30,
                    socket_timeout=None, socket_keepalive=True,
                )
                _pid = os.getpid()
    return _client
