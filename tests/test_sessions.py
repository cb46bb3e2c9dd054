"""Sessions survive reconnects: to another web process, across a web restart; unknown ids are refused."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from websockets.exceptions import InvalidStatus

from broker.replies import ReplyHub
from tests.stack import Stack, free_port
from tests.wsclient import RawClient


@pytest.fixture(scope="module")
def two_webs(stack: Stack) -> Stack:
    if len(stack.web_ports) < 2:
        stack.start_web()
    return stack


def session_of(client: RawClient) -> str:
    header = client.ws.response.headers["Mcp-Session-Id"]
    assert client.init_result is not None
    assert client.init_result["_meta"]["io.mcp-broker/sessionId"] == header
    return header


def resume(stack: Stack, index: int, session_id: str, via: str = "header") -> RawClient:
    if via == "header":
        return RawClient(stack.ws_url(index), initialize=False, additional_headers={"Mcp-Session-Id": session_id})
    return RawClient(f"{stack.ws_url(index)}?session={session_id}", initialize=False)


def test_a_call_finished_while_away_is_delivered_on_another_web_process(two_webs: Stack) -> None:
    with RawClient(two_webs.ws_url(0)) as client:
        session_id = session_of(client)
        client.send({"jsonrpc": "2.0", "id": "away", "method": "tools/call",
                     "params": {"name": "echo__slow", "arguments": {"seconds": 0.5, "steps": 1}}})
        time.sleep(0.1)  # it reached the queue
    time.sleep(1.5)  # ... and finished while nobody was connected
    with resume(two_webs, 1, session_id) as again:
        assert again.ws.response.headers["Mcp-Session-Id"] == session_id
        message = again.response()
        assert message["id"] == "away" and message["result"]["structuredContent"]["result"] == "slept 0.5s"
        # the resumed session keeps its negotiated state and serves new calls
        assert again.call("echo__echo", {"text": "after"})["result"]["structuredContent"]["result"] == "after"


def test_an_in_flight_call_is_delivered_when_done_after_reconnecting(two_webs: Stack) -> None:
    with RawClient(two_webs.ws_url(1)) as client:
        session_id = session_of(client)
        client.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                     "params": {"name": "echo__slow", "arguments": {"seconds": 2.0, "steps": 1}}})
        time.sleep(0.2)
    with resume(two_webs, 0, session_id, via="query") as again:
        message = again.response(timeout=20)
        assert message["id"] == 7 and message["result"]["structuredContent"]["result"] == "slept 2.0s"
        # delivered once: nothing more is pending for this session (its forget goes out when the reply hub's
        # burst ends, just after the answer was sent: `broker.held`)
        deadline = time.monotonic() + 10
        while two_webs.redis().hlen(f"mcpb:session:{session_id}:calls"):
            assert time.monotonic() < deadline, "the delivered call is still pending in its session"
            time.sleep(0.05)


def test_session_survives_a_restart_of_its_web_process(stack: Stack) -> None:
    port = free_port()
    web = stack.start_web(port)
    index = stack.web_ports.index(port)
    with RawClient(stack.ws_url(index), version="2025-06-18") as client:
        session_id = session_of(client)
        client.send({"jsonrpc": "2.0", "id": "r1", "method": "tools/call",
                     "params": {"name": "echo__slow", "arguments": {"seconds": 1, "steps": 1}}})
        time.sleep(0.2)
    web.stop()
    stack.procs.remove(web)
    stack.start_web(port)
    with resume(stack, index, session_id) as again:
        message = again.response(timeout=20)
        assert message["id"] == "r1" and message["result"]["structuredContent"]["result"] == "slept 1.0s"
        # the negotiated revision came back from Redis: 2025-06-18 rules still apply to bad arguments
        assert again.call("echo__add", {"a": "x", "b": 1})["error"]["code"] == -32602


def test_unknown_session_is_refused_before_the_upgrade(stack: Stack) -> None:
    with pytest.raises(InvalidStatus) as refused:
        resume(stack, 0, "no-such-session")
    assert refused.value.response.status_code == 404
    assert b"Unknown or expired session" in refused.value.response.body


def test_idle_session_expires_after_its_ttl(stack: Stack) -> None:
    port = free_port()
    stack.start_web(port, env={"MCP_BROKER_SESSION_TTL_S": "1"})
    index = stack.web_ports.index(port)
    with RawClient(stack.ws_url(index)) as client:
        session_id = session_of(client)
    time.sleep(2.5)
    with pytest.raises(InvalidStatus) as refused:
        resume(stack, index, session_id)
    assert refused.value.response.status_code == 404


def test_heartbeat_closes_a_dead_peer(stack: Stack) -> None:
    """A peer that completes the handshake but never answers pings is dropped; its session stays resumable."""
    port = free_port()
    stack.start_web(port, env={"MCP_BROKER_PING_INTERVAL": "0.5"})
    raw = socket.create_connection(("127.0.0.1", port))
    raw.sendall(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Protocol: mcp\r\n\r\n")
    handshake = raw.recv(4096)
    assert b"101" in handshake.split(b"\r\n")[0]
    session_id = next(line.split(b":", 1)[1].strip() for line in handshake.split(b"\r\n")
                      if line.lower().startswith(b"mcp-session-id")).decode()
    raw.settimeout(10)
    received = b""
    deadline = time.monotonic() + 10
    closed = False
    while time.monotonic() < deadline:  # pings arrive; we never pong; the server must close
        chunk = raw.recv(4096)
        if not chunk:
            closed = True
            break
        received += chunk
    raw.close()
    assert closed, "the server kept a peer that never answered its pings"
    assert b"\x89" in received  # it did ping us (opcode 0x9)
    assert stack.redis().exists(f"mcpb:session:{session_id}")


def test_writes_held_in_a_burst_go_out_together_when_it_ends(redis_url: str) -> None:
    """The reply hub hands a burst of answers over inside `broker.held`: their sessions forget them when the
    burst ends (one round trip, one HDEL per session), each as a lone forget would have. Their SSE events are
    written at once, held or not: that write is the answer's delivery (a resume with Last-Event-ID must find it)."""
    import uuid

    import redis

    from broker import keys
    from broker.events import EventLog
    from broker.held import held
    from broker.held import pipeline as held_pipeline
    from broker.sessions import SessionStore
    from web.services import push_calls

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    store, events = SessionStore(r, ttl_s=3600, delivered_ttl_s=30), EventLog(r)
    sessions = [uuid.uuid4().hex, uuid.uuid4().hex]
    calls = [{"call_id": uuid.uuid4().hex, "session": sessions[i % 2], "rid": i, "server": "echo"} for i in range(3)]
    queue = f"mcp.test-{uuid.uuid4().hex}"  # the records go with a queue message (`push_calls`): dropped
    push_calls(r, store, queue, calls)
    for call in calls:
        r.set(keys.result(call["call_id"]), json.dumps({"call_id": call["call_id"], "result": {}}), ex=3600)
    with held(r):
        with held(r):  # nested (a handler that holds too): the outer block writes
            store.forget(sessions[0], [calls[0]["call_id"]])
        store.forget(sessions[1], [calls[1]["call_id"]])
        store.forget(sessions[0], [calls[2]["call_id"]])
        events.append(sessions[0], "p1", {"jsonrpc": "2.0", "id": 0, "result": {}})
        assert set(store.pending(sessions[0])) == {calls[0]["call_id"], calls[2]["call_id"]}
        assert set(store.pending(sessions[1])) == {calls[1]["call_id"]}
        assert r.xlen(keys.sse_stream(sessions[0], "p1")) == 1  # not held
        held_now = held_pipeline()
        assert held_now is not None  # the forgets join it at the end: one HDEL per session (two, not three),
        assert held_now.command_stack == []  # and one command for the three outcomes' EXPIREs
    assert store.pending(sessions[0]) == {} and store.pending(sessions[1]) == {}
    for call in calls:
        assert 0 < r.ttl(keys.result(call["call_id"])) <= 30
    sent: list[list[str]] = []
    with held(r):
        store.forget(sessions[0], ["a", "b"])
        store.forget(sessions[1], ["c"])
        pipe = held_pipeline()
        assert pipe is not None
        execute = pipe.execute
        pipe.execute = lambda: (sent.append([str(args[0]) for args, _ in pipe.command_stack]), execute())[1]
    assert sent == [["HDEL", "HDEL", "EVAL"]]  # 3 forgets: 2 sessions' HDELs, the 3 EXPIREs in one command
    assert [m for _, m in events.read(sessions[0], "p1", "0", 1)] == [{"jsonrpc": "2.0", "id": 0, "result": {}}]
    assert 0 < r.ttl(keys.sse_stream(sessions[0], "p1")) <= events.ttl_s
    with held(r):  # nothing held: nothing sent
        store.forget(sessions[0], [])
    lone = {"call_id": uuid.uuid4().hex, "session": sessions[0], "rid": 9, "server": "echo"}
    push_calls(r, store, queue, [lone])
    r.delete(queue)
    store.forget(sessions[0], [lone["call_id"]])  # outside a burst: written at once
    assert store.pending(sessions[0]) == {}
    events.append(sessions[0], "p2", {"jsonrpc": "2.0", "id": 1, "result": {}})
    assert r.xlen(keys.sse_stream(sessions[0], "p2")) == 1


class BurstRecorder:
    """A reply hub's `burst` context (the web's is `broker.held`) that records the call ids handled in each
    burst (`handled`): `bursts` in order, `ended` set as each ends."""

    def __init__(self) -> None:
        self.bursts: list[list[str]] = []
        self.current: list[str] = []
        self.ended = threading.Event()

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        self.current.clear()
        yield
        self.bursts.append(list(self.current))
        self.ended.set()

    def handled(self, message: dict) -> None:
        self.current.append(message["call_id"])


def recorded_hub(redis_url: str) -> tuple[redis.Redis, ReplyHub, BurstRecorder]:
    """A reply hub on its own channel only (no other process's broadcasts in its bursts), bursts recorded."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    hub = ReplyHub(r)
    hub.extra_channels = []
    hub.burst = recorder = BurstRecorder()
    return r, hub, recorder


def test_the_reply_hub_hands_a_burst_of_answers_over_inside_its_batch(redis_url: str) -> None:
    """Outcomes already readable when the hub is in a burst are handed over in that burst, inside one `burst`
    context (the web's `broker.held`), each handler once. Deterministic: the first answer's handler holds
    the burst open until the other 49 are published and in the hub's socket (a PING after the PUBLISHes:
    Redis wrote every pending reply, the subscriber's included, before it reads the next command)."""
    r, hub, recorder = recorded_hub(redis_url)
    entered, release = threading.Event(), threading.Event()
    call_ids = [uuid.uuid4().hex for _ in range(50)]

    def first(message: dict) -> None:
        recorder.handled(message)
        entered.set()
        release.wait(20)

    hub.start()
    try:
        hub.expect(call_ids[0], first, None, 30)
        for call_id in call_ids[1:]:
            hub.expect(call_id, recorder.handled, None, 30)
        r.publish(hub.channel, json.dumps({"call_id": call_ids[0], "result": {}}))
        assert entered.wait(20)  # the hub is inside the first answer's burst
        pipe = r.pipeline(transaction=False)
        for call_id in call_ids[1:]:
            pipe.publish(hub.channel, json.dumps({"call_id": call_id, "result": {}}))
        pipe.execute()
        r.ping()
        release.set()
        assert recorder.ended.wait(20), recorder.bursts
        assert recorder.bursts == [call_ids]  # one burst, in order, each once
    finally:
        release.set()
        hub.stop()


def test_a_loaded_reply_hub_keeps_its_burst_open_for_later_answers(redis_url: str) -> None:
    """With `hold_at` calls or more waiting, a burst stays open up to `hold_s` for answers published later (its
    held writes go out once for them all); each answer is handed over as it arrives, never held; and the burst
    ends as soon as fewer than `hold_at` calls wait (a lone call's burst ends with it, as before)."""
    r, hub, recorder = recorded_hub(redis_url)
    hub.hold_s, hub.hold_at = 60.0, 2  # far longer than the test: only fewer waiting calls end the burst
    handled = {call_id: threading.Event() for call_id in (uuid.uuid4().hex for _ in range(4))}
    call_ids = list(handled)
    ended = recorder.ended
    bursts = recorder.bursts

    def answered(message: dict) -> None:
        recorder.handled(message)
        handled[message["call_id"]].set()

    hub.start()
    try:
        for call_id in call_ids:
            hub.expect(call_id, answered, None, 30)
        for call_id in call_ids[:2]:  # one at a time: each is handed over before the next is published
            r.publish(hub.channel, json.dumps({"call_id": call_id, "result": {}}))
            assert handled[call_id].wait(20)
            assert not ended.is_set()  # 3, then 2 calls still wait: the burst stays open
        r.publish(hub.channel, json.dumps({"call_id": call_ids[2], "result": {}}))
        assert ended.wait(20)  # one call left waiting, fewer than hold_at: the burst ended with this answer
        assert bursts == [call_ids[:3]]
        ended.clear()
        r.publish(hub.channel, json.dumps({"call_id": call_ids[3], "result": {}}))
        assert ended.wait(20)
        assert bursts == [call_ids[:3], call_ids[3:]]
    finally:
        hub.stop()


def test_a_stopping_reply_hub_sends_its_open_bursts_held_writes_first(redis_url: str) -> None:
    """A web worker's exit (`web.services.stop_services`, gunicorn's `worker_exit`) stops its reply hub with a
    wait: a burst held open for later answers ends then, so the held writes of the answers already sent (their
    sessions' forgets) go out; without them a session resumed elsewhere would get those answers again."""
    r, hub, recorder = recorded_hub(redis_url)
    hub.hold_s, hub.hold_at = 600.0, 2  # held open far longer than the test, while 2 calls or more wait
    handled = threading.Event()
    call_ids = [uuid.uuid4().hex for _ in range(3)]
    bursts = recorder.bursts

    def answered(message: dict) -> None:
        recorder.handled(message)
        handled.set()

    hub.start()
    for call_id in call_ids:
        hub.expect(call_id, answered, None, 30)
    r.publish(hub.channel, json.dumps({"call_id": call_ids[0], "result": {}}))
    assert handled.wait(20)
    assert bursts == []  # two calls still wait: the burst is held open
    hub.stop(wait_s=10)
    assert bursts == [call_ids[:1]]  # the stop closed it: its held writes went out before stop returned
