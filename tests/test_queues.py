"""Workers are pinned per server: a worker consumes its server's queue and nothing else."""

from __future__ import annotations

import json
import uuid

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
