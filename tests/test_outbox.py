"""The web tier's outbox: calls that arrive together share a queue message, and a loaded queue waits a
moment for more (the policy, with a recording sender; the real path runs in every other test module)."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from broker.outbox import Outbox
from broker.replies import ReplyHub


class Recorder:
    """A sender that records the messages it was given."""

    def __init__(self) -> None:
        self.messages: list[list[str]] = []
        self.sent = threading.Condition()

    def __call__(self, _queue: str, calls: list[dict[str, Any]]) -> None:
        with self.sent:
            self.messages.append([c["call_id"] for c in calls])
            self.sent.notify_all()

    def wait_for(self, calls: int, timeout: float = 5.0) -> list[list[str]]:
        with self.sent:
            self.sent.wait_for(lambda: sum(map(len, self.messages)) >= calls, timeout)
            return list(self.messages)


def call(i: int) -> dict[str, Any]:
    return {"call_id": f"c{i}", "server": "echo", "tool": "echo"}


def outbox(sender: Recorder, load: int, wait_s: float, max_batch: int = 4) -> Outbox:
    return Outbox(sender, lambda _call, _err: None, max_batch, load=lambda _server: load, coalesce_at=16,
                  coalesce_wait_s=wait_s)


def test_a_lightly_loaded_queue_sends_each_call_at_once() -> None:
    sender = Recorder()
    box = outbox(sender, load=3, wait_s=30.0)  # were it waiting, the second call would join the first
    box.put("mcp.echo", call(1))
    assert sender.wait_for(1) == [["c1"]]
    box.put("mcp.echo", call(2))
    assert sender.wait_for(2) == [["c1"], ["c2"]]


def test_a_loaded_queue_gathers_calls_until_the_message_is_full() -> None:
    sender = Recorder()
    box = outbox(sender, load=40, wait_s=30.0)
    for i in range(4):
        box.put("mcp.echo", call(i))
    assert sender.wait_for(4) == [["c0", "c1", "c2", "c3"]]  # full before the 30 s wait: sent then


def test_a_loaded_queue_sends_what_it_gathered_when_the_wait_is_over() -> None:
    sender = Recorder()
    box = outbox(sender, load=40, wait_s=0.2)
    box.put("mcp.echo", call(1))
    box.put("mcp.echo", call(2))
    assert sender.wait_for(2) == [["c1", "c2"]]


def test_the_reply_hub_counts_the_calls_it_waits_for_per_server() -> None:
    hub = ReplyHub(redis.Redis())  # never started: no connection is made
    for i in range(3):
        hub.expect(f"e{i}", lambda _m: None, None, 60, {"server": "echo"})
    hub.expect("t0", lambda _m: None, None, 60, {"server": "time"})
    hub.expect("x0", lambda _m: None, None, 60)  # no call info: counted nowhere
    hub.expect("e0", lambda _m: None, None, 60, {"server": "echo"})  # expected again: still one
    assert (hub.load("echo"), hub.load("time"), hub.load("notes")) == (3, 1, 0)
    hub.forget("e1")
    hub.deliver_local({"call_id": "e2", "result": {}})
    hub.deliver_local({"call_id": "t0", "error": {"code": 1, "message": "x"}})
    assert (hub.load("echo"), hub.load("time")) == (1, 0)


def test_a_gathering_sender_is_woken_only_by_the_call_that_fills_its_message() -> None:
    """While a loaded queue's sender waits for its message to fill, a call that does not fill it does not
    wake the sender (under gevent each wake was a greenlet switch and a new timeout, per call)."""
    sender = Recorder()
    box = outbox(sender, load=40, wait_s=30.0)
    box.put("mcp.echo", call(0))
    wakeup = box._wakeups["mcp.echo"]
    sets: list[int] = []
    original = wakeup.set

    def counted() -> None:
        sets.append(len(box._queues["mcp.echo"]))
        original()

    wakeup.set = counted  # type: ignore[method-assign]
    for _ in range(1000):  # until the sender took the first call and gathers
        if "mcp.echo" in box._gathering:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the sender never gathered")
    for i in range(1, 4):
        box.put("mcp.echo", call(i))
    assert sender.wait_for(4) == [["c0", "c1", "c2", "c3"]]
    assert sets == [4]  # the fourth call filled it: the one wake
