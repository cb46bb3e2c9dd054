"""A worker logs and counts a message's calls once they are all answered (`observe.worker_outcomes`): the
same lines and metrics as one call at a time (`observe.worker_outcome`), in one write and one lock."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from broker import observe
from broker.calls import Call
from broker.metrics import Recorder


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
    done: list[observe.Finished] = [(call, outcome, observe.queue_wait(call, now + 0.002), 0.004 * (i + 1))
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
        for single, batched in zip(lines[:3], lines[3:], strict=True):
            assert single.pop("ts") <= batched.pop("ts")
            assert single == batched
        assert [line["outcome"] for line in lines[3:]] == ["ok", "timeout", "tool_error"]
        assert lines[4]["batch"] == "job" and lines[4]["tool"] == "resources/read" and lines[5]["attempts"] == 2
    finally:
        for h in list(observe.log.handlers):
            observe.log.removeHandler(h)
            h.close()
        monkeypatch.setitem(observe._configured, "pid", 0)


def test_celery_logs_no_info_line_per_message_in_a_worker() -> None:
    """Celery's "Task ... received" / "succeeded" lines (one each per message) are off: the call lines say
    more, for less CPU. Its warnings and errors stay."""
    import workers.app  # noqa: F401  (sets the levels)

    for name in ("celery.worker.strategy", "celery.app.trace"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)
        assert logging.getLogger(name).isEnabledFor(logging.WARNING)
