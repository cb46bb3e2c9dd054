"""Workers are pinned per server: a worker consumes its server's queue and nothing else."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from broker import keys
from tests.stack import Stack


def test_each_call_is_answered_by_a_worker_of_its_own_server(stack: Stack) -> None:
    from workers.dispatch import submit_calls

    r = stack.redis()
    channel = keys.replies(f"test-{uuid.uuid4().hex}")
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=1)
    calls = {}
    for i in range(30):
        server, tool, args = [("echo", "echo", {"text": str(i)}), ("time", "get_current_time", {"timezone": "UTC"}),
                              ("notes", "list_notes", {})][i % 3]
        call_id = uuid.uuid4().hex
        calls[call_id] = server
        submit_calls(f"mcp.{server}", [{"call_id": call_id, "server": server, "tool": tool, "arguments": args,
                                        "reply_to": channel}])
    answered: dict[str, str] = {}
    while len(answered) < len(calls):
        message = pubsub.get_message(timeout=20)
        assert message is not None, f"only {len(answered)} of {len(calls)} answered"
        outcome = json.loads(message["data"])
        assert "result" in outcome and outcome["result"]["isError"] is False
        answered[outcome["call_id"]] = outcome["worker"]
    for call_id, server in calls.items():
        assert answered[call_id].startswith(f"{server}."), (server, answered[call_id])
    pubsub.close()


def test_workers_consume_only_their_server_queue(stack: Stack) -> None:
    from workers.app import app

    replies = app.control.inspect(timeout=3).active_queues() or {}
    assert len(replies) == len(stack.servers)
    for node, queues in replies.items():
        server = node.split(".", 1)[0]
        assert [q["name"] for q in queues] == [f"mcp.{server}"]


def _without_ids(message: dict[str, Any]) -> dict[str, Any]:
    """A queue message with what differs between two sends of the same calls blanked: the task id (also the
    root id and correlation id), the delivery tag, and the sender (`origin`, `reply_to`: per process)."""
    copy = json.loads(json.dumps(message))
    copy["body"] = json.loads(base64.b64decode(copy["body"]))  # the same JSON values, however spaced
    for part, name in (("headers", "id"), ("headers", "root_id"), ("headers", "origin"),
                       ("properties", "correlation_id"), ("properties", "delivery_tag"), ("properties", "reply_to")):
        assert copy[part].pop(name), (part, name)
    return copy


def test_the_web_s_queue_message_is_the_one_celery_sends(stack: Stack) -> None:
    """The web tier pushes its calls' message itself (`workers.dispatch.run_calls_message`, in the pipeline of
    their sessions' records): the same JSON, field for field, that `app.send_task` writes for them, and its
    task id is what the worker takes as the task's."""
    from workers.dispatch import run_calls_message, send_calls

    r = stack.redis()
    queue = f"mcp.msgtest-{uuid.uuid4().hex[:8]}"
    calls = [{"call_id": uuid.uuid4().hex, "server": "echo", "tool": "echo", "arguments": {"text": "é ✓"},
              "reply_to": "nowhere", "keep_s": 30}, {"call_id": uuid.uuid4().hex, "server": "echo", "tool": "echo",
                                                     "arguments": {}, "reply_to": "nowhere", "keep_s": 30}]
    try:
        send_calls(queue, calls)
        celery_message = json.loads(r.lpop(queue))
        ours = json.loads(run_calls_message(queue, calls))
        assert _without_ids(ours) == _without_ids(celery_message)
        assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
        assert ours["properties"]["delivery_tag"] != ours["headers"]["id"]
        assert ours["headers"]["origin"].startswith("gen") and "@" in ours["headers"]["origin"]
    finally:
        r.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


def test_a_worker_runs_the_message_the_web_pushes_itself(stack: Stack) -> None:
    """A real Celery worker consumes and runs the message as the web pushes it (one LPUSH onto the queue's
    list), answering every call on its reply channel."""
    from workers.dispatch import run_calls_message

    r = stack.redis()
    channel = keys.replies(f"test-{uuid.uuid4().hex}")
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=1)
    calls = [{"call_id": uuid.uuid4().hex, "server": "echo", "tool": "echo", "arguments": {"text": f"{i} é ✓"},
              "reply_to": channel, "keep_s": 30} for i in range(5)]
    r.lpush("mcp.echo", run_calls_message("mcp.echo", calls))
    answered: dict[str, Any] = {}
    while len(answered) < len(calls):
        message = pubsub.get_message(timeout=20)
        assert message is not None, f"only {len(answered)} of {len(calls)} answered"
        outcome = json.loads(message["data"])
        answered[outcome["call_id"]] = outcome
    for i, call in enumerate(calls):
        outcome = answered[call["call_id"]]
        assert outcome["result"]["isError"] is False and outcome["worker"].startswith("echo.")
        assert f"{i} é ✓" in json.dumps(outcome["result"]["content"], ensure_ascii=False)  # UTF-8 in the body
    pubsub.close()


def test_a_message_of_calls_goes_all_or_nothing_and_a_lost_reply_is_told_it_may_run(redis_url: str) -> None:
    """web.services.push_calls: the calls' session records and their queue message in one script, not
    retried. A link refused before anything went out: a plain connection error (its callers: "could not
    enqueue, retry shortly"). One whose reply is lost after the transaction went out (a fault proxy delays
    Redis's replies past the client's timeout): `MaybeSent`, and Redis did run it: records and message
    both, which is why its callers hear that the call may run."""
    import time

    import pytest
    import redis

    from broker.sessions import SessionStore
    from cli.devrun import free_port
    from tests.faultproxy import FaultProxy
    from web.services import MAYBE_SENT_MESSAGE, MaybeSent, enqueue_error, push_calls

    direct = redis.Redis.from_url(redis_url, decode_responses=True)
    session, queue = uuid.uuid4().hex, f"mcp.test-{uuid.uuid4().hex}"

    def calls() -> list[dict[str, Any]]:
        return [{"call_id": uuid.uuid4().hex, "session": session, "rid": 1, "server": "echo",
                 "method": "tools/call", "name": "echo", "arguments": {}}]

    try:
        nowhere = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1, decode_responses=True)
        with pytest.raises(redis.ConnectionError) as refused:
            push_calls(nowhere, SessionStore(nowhere), queue, calls())
        assert not isinstance(refused.value, MaybeSent)
        assert "retry shortly" in enqueue_error(refused.value).message
        with FaultProxy.for_url(redis_url) as proxy:
            slow = redis.Redis.from_url(proxy.url_for(redis_url), socket_timeout=0.5, decode_responses=True)
            assert slow.ping()  # connected before the replies slow down
            proxy.set_latency(down=2.0)
            sent = calls()
            with pytest.raises(MaybeSent):
                push_calls(slow, SessionStore(slow), queue, sent)
            assert enqueue_error(MaybeSent()).message == MAYBE_SENT_MESSAGE
            deadline = time.monotonic() + 10
            while not direct.llen(queue):
                assert time.monotonic() < deadline, "the script never ran"
                time.sleep(0.05)
            assert direct.hexists(keys.session_calls(session), sent[0]["call_id"])  # both, in one script
            assert direct.llen(queue) == 1
    finally:
        direct.delete(queue, keys.session_calls(session))


def test_a_message_and_its_records_of_several_sessions_go_in_one_command(redis_url: str) -> None:
    """`push_calls` writes each session's records (HSET + EXPIRE at the store's TTL) and the message in one
    script: one command for Redis, not MULTI, HSET, EXPIRE, LPUSH and EXEC (five to pack, six replies to
    parse). A call of no session gets no record and keeps its outcome briefly."""
    import redis

    from broker.sessions import SessionStore
    from web.services import push_calls

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    store = SessionStore(r, ttl_s=1234, delivered_ttl_s=7)
    queue, sessions = f"mcp.test-{uuid.uuid4().hex}", [uuid.uuid4().hex, uuid.uuid4().hex]
    calls = [{"call_id": uuid.uuid4().hex, "session": sessions[i % 2], "rid": i, "server": "echo",
              "method": "tools/call", "progress_token": "p" if i == 0 else None} for i in range(3)]
    calls.append({"call_id": uuid.uuid4().hex, "server": "echo", "method": "tools/call"})  # no session
    stats = lambda: {k: v["calls"] for k, v in r.info("commandstats").items()}  # noqa: E731
    try:
        before = stats()
        push_calls(r, store, queue, calls)
        after = stats()
        ran = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        ran.pop("cmdstat_info", None)
        assert ran == {"cmdstat_eval": 1, "cmdstat_hset": 2, "cmdstat_expire": 2, "cmdstat_lpush": 1}, ran
        assert r.llen(queue) == 1
        assert store.pending(sessions[0]) == {calls[0]["call_id"]: {"rid": 0, "method": "tools/call", "server": "echo",
                                                                    "progressToken": "p"},
                                              calls[2]["call_id"]: {"rid": 2, "method": "tools/call", "server": "echo"}}
        assert list(store.pending(sessions[1])) == [calls[1]["call_id"]]
        assert all(1200 < r.ttl(keys.session_calls(s)) <= 1234 for s in sessions)
        assert [c["keep_s"] for c in calls] == [1234, 1234, 1234, 7]
    finally:
        r.delete(queue, *(keys.session_calls(s) for s in sessions))


def test_a_message_of_thousands_of_calls_of_one_session_is_recorded_whole(redis_url: str) -> None:
    """`_PUSH` writes a session's records in HSETs of at most `PUSH_HSET_VALUES` values: one `unpack` of all
    a session's fields and values failed above ~8,000 of them (Lua's C stack, LUAI_MAXCSTACK), i.e. a
    message of ~4,000 calls of one session (MCP_BROKER_MAX_BATCH has no upper bound)."""
    import redis

    from broker.sessions import SessionStore
    from web.services import PUSH_HSET_VALUES, push_calls

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    store = SessionStore(r, ttl_s=600)
    queue, session = f"mcp.test-{uuid.uuid4().hex}", uuid.uuid4().hex
    count = 5 * PUSH_HSET_VALUES + 7  # 10,014 fields and values: 11 HSETs, the last one of 14
    calls = [{"call_id": uuid.uuid4().hex, "session": session, "rid": i, "server": "echo", "method": "tools/call"}
             for i in range(count)]
    try:
        push_calls(r, store, queue, calls)
        assert r.llen(queue) == 1
        pending = store.pending(session)
        assert len(pending) == count and pending[calls[-1]["call_id"]]["rid"] == count - 1
        assert pending[calls[0]["call_id"]] == {"rid": 0, "method": "tools/call", "server": "echo"}
    finally:
        r.delete(queue, keys.session_calls(session))
