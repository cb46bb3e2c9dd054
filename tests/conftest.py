"""Fixtures: a real broker stack (Redis, one Celery worker per server, gunicorn web) per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.stack import Stack, redis_answers, start_embedded_redis

TEST_DB = "15"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database for the tests alone (flushed at start): the local server, or an embedded one."""
    url = os.environ.get("MCP_BROKER_TEST_REDIS_URL") or f"redis://127.0.0.1:6379/{TEST_DB}"
    embedded = None
    if not redis_answers(url):
        url, embedded = start_embedded_redis()
    import redis

    redis.Redis.from_url(url).flushdb()
    os.environ["REDIS_URL"] = url  # this process's own broker clients (tests that use the Celery app directly)
    yield url
    if embedded is not None:
        embedded.shutdown()


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
