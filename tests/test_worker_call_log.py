"""A worker logs and counts a message's answered calls in batches (`observe.worker_outcomes`): the same lines
and metrics as one call at a time (`observe.worker_outcome`), in one write and one lock a batch; the calls
answered so far while the message's others still run (`observe.Answered`), each once."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from broker import keys, observe
from broker.calls import Call
from broker.metrics import Recorder
from tests.stack import Stack


def fresh_recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder(redis_getter=lambda: None)  # type: ignore[arg-type,return-value]
    recorder._pid = os.getpid()  # no flush thread: nothing leaves this process
    monkeypatch.setattr(observe, "RECORDER", recorder)
    return recorder


def test_a_messages_call_lines_and_metrics_equal_the_one_by_one_ones_in_one_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "calls.log"
    monkeypatch.setenv("MCP_BROKER_CALL_LOG", str(target))
    monkeypatch.setitem(observe._configured, "pid", 0)  # configure anew for this file (once per process)
    observe.configure_call_log("worker")
    emitted: list[str] = []
    handler = observe.log.handlers[0]
    emit = handler.emit

    def counted(record: logging.LogRecord) -> None:
        emitted.append(record.getMessage())
        emit(record)

    monkeypatch.setattr(handler, "emit", counted)
    now = time.time()
    calls = [Call(call_id="a", server="s", tool="t", queued_at=now, session="sess"),
             Call(call_id="b", server="s", method="resources/read", batch="job"),
             Call(call_id="c", server="s", tool="t", attempts=2)]
    outcomes: list[dict[str, Any]] = [{"result": {"content": []}, "worker": "w"},
                                      {"error": {"code": -32001, "message": "timed out"}, "worker": "w"},
                                      {"result": {"isError": True}, "worker": "w"}]
    done: list[observe.Finished] = [(call, outcome, observe.queue_wait(call, now + 0.002), 0.004 * (i + 1),
                                     now + 0.01 * i)
                                    for i, (call, outcome) in enumerate(zip(calls, outcomes, strict=True))]
    try:
        one_by_one = fresh_recorder(monkeypatch)
        for item in done:
            observe.worker_outcome(item[0], item[1], "w", item[2], item[3])
        assert len(emitted) == 3
        together = fresh_recorder(monkeypatch)
        observe.worker_outcomes(done, "w")
        assert len(emitted) == 4  # the message's three lines: one record, one write
        assert together._counts == one_by_one._counts and together._hists == one_by_one._hists
        lines = [json.loads(line) for line in target.read_text().splitlines()]
        assert len(lines) == 6
        for i, (single, batched) in enumerate(zip(lines[:3], lines[3:], strict=True)):
            assert single.pop("ts") >= now and batched.pop("ts") == round(now + 0.01 * i, 6)  # when answered
            assert single == batched
        assert [line["outcome"] for line in lines[3:]] == ["ok", "timeout", "tool_error"]
        assert lines[4]["batch"] == "job" and lines[4]["tool"] == "resources/read" and lines[5]["attempts"] == 2
    finally:
        for h in list(observe.log.handlers):
            observe.log.removeHandler(h)
            h.close()
        monkeypatch.setitem(observe._configured, "pid", 0)


def worker_lines(stack: Stack, call_ids: set[str]) -> list[dict[str, Any]]:
    """The worker-side call lines of these calls in the stack's workers' logs (stderr: the call log's default)."""
    found = []
    for proc in stack.procs:
        if proc.name.startswith("worker-"):
            for text in proc.log().splitlines():
                if text.startswith('{"ts"') and '"side":"worker"' in text:
                    line = json.loads(text)
                    if line["call_id"] in call_ids:
                        found.append(line)
    return found


def test_a_fast_call_is_logged_while_a_slow_sibling_of_its_message_still_runs(stack: Stack) -> None:
    """A real worker runs a message of a fast call and a slow one (a nap past the echo server's 5 s timeout):
    the fast call's line is in the worker's log while the slow call is still unanswered (its waiting thread
    flushes what is answered every tick, `observe.Answered`), not only once the whole message is; the slow
    call's line follows when it times out, and each call has exactly one line, stamped when it was answered."""
    import uuid

    from workers.dispatch import run_calls_message

    r = stack.redis()
    channel = keys.replies(f"test-{uuid.uuid4().hex}")
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=1)
    fast, slow = uuid.uuid4().hex, uuid.uuid4().hex
    calls = [{"call_id": slow, "server": "echo", "tool": "nap", "arguments": {"key": slow, "seconds": 60},
              "reply_to": channel, "keep_s": 30},
             {"call_id": fast, "server": "echo", "tool": "echo", "arguments": {"text": "fast"},
              "reply_to": channel, "keep_s": 30}]
    r.lpush("mcp.echo", run_calls_message("mcp.echo", calls))
    try:
        message = pubsub.get_message(timeout=20)
        assert message is not None and json.loads(message["data"])["call_id"] == fast
        deadline = time.monotonic() + 30
        while not worker_lines(stack, {fast}):
            assert time.monotonic() < deadline, "the fast call's line was never written"
            time.sleep(0.05)
        assert not r.exists(keys.result(slow)), "the slow call was answered before the fast one's line was seen"
        message = pubsub.get_message(timeout=30)
        assert message is not None and json.loads(message["data"])["call_id"] == slow
        deadline = time.monotonic() + 30
        while len(lines := worker_lines(stack, {fast, slow})) < 2:
            assert time.monotonic() < deadline, "the slow call's line was never written"
            time.sleep(0.05)
        time.sleep(1)  # two more ticks of the worker's: nothing is logged twice
        lines = worker_lines(stack, {fast, slow})
        assert [(line["call_id"], line["outcome"]) for line in lines] == [(fast, "ok"), (slow, "timeout")]
        assert lines[0]["ts"] < lines[1]["ts"]  # each stamped when answered, not when the message ended
    finally:
        pubsub.close()


def test_celery_logs_no_info_line_per_message_in_a_worker() -> None:
    """Celery's "Task ... received" / "succeeded" lines (one each per message) are off: the call lines say
    more, for less CPU. Its warnings and errors stay."""
    import workers.app  # noqa: F401  (sets the levels)

    for name in ("celery.worker.strategy", "celery.app.trace"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)
        assert logging.getLogger(name).isEnabledFor(logging.WARNING)
