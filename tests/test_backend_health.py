"""Backend session health in the worker: hung backends, slot waits, one call's poison input.

Issue 12 finding 4: a backend stopped with SIGSTOP under steady traffic must be detected as hung,
restarted, and the calls waiting on it run on the fresh one. Issue 12 finding 7: a call that ran out
of time waiting for a concurrency slot says so, and does not blame the backend. Issue 13 finding 1:
a call whose input cannot be encoded for the backend (a lone surrogate) is that call's error; the
shared session, its other callers and the backend's health never notice.

Its own broker (config, Redis key prefix, worker): SIGSTOPping a backend here disturbs no other module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from tests.stack import ROOT, VENV_BIN, Proc, Stack
from tests.wsclient import RawClient

PREFIX = f"mcpbh{uuid.uuid4().hex[:6]}"
ECHO = str(ROOT / "examples" / "servers" / "echo.py")
TINY = str(ROOT / "examples" / "servers" / "tiny.py")  # starts in milliseconds: restarts are quick even under load
LONG = {"io.mcp-broker/timeoutS": 60}  # a call's own limit, well past the hang's detection and restart


def server_config() -> dict[str, Any]:
    py = sys.executable
    return {"mcpServers": {
        "stopped": {"command": py, "args": [TINY], "broker": {"timeout_s": 3, "concurrency": 4, "retries": 3}},
        "narrow": {"command": py, "args": [ECHO], "broker": {"timeout_s": 10, "concurrency": 1}},
        "shared_echo": {"command": py, "args": [ECHO], "broker": {"timeout_s": 10, "concurrency": 8}},
    }}


@dataclass
class HealthStack:
    stack: Stack
    worker: Proc

    def key(self, *parts: str) -> str:
        return ":".join([PREFIX, *parts])

    def health(self, server: str) -> dict[str, Any]:
        """The record of the server's one endpoint (empty before any worker reported)."""
        raw = self.stack.redis().hget(self.key("health", server), "0")
        return json.loads(raw) if raw else {}


@pytest.fixture(scope="module")
def hstack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HealthStack]:
    config = server_config()
    path = tmp_path_factory.mktemp("health") / "mcp_servers.json"
    path.write_text(json.dumps(config))
    stack = Stack(redis_url, config_path=path)
    original_env = type(stack).env

    def env_with_prefix(self: Stack) -> dict[str, str]:
        return {**original_env.fget(self), "MCP_BROKER_PREFIX": PREFIX}  # type: ignore[attr-defined]

    stack.__class__ = type("PrefixedStack", (Stack,), {"env": property(env_with_prefix)})
    queues = ",".join(f"mcp.{name}" for name in config["mcpServers"])
    argv = [str(VENV_BIN / "celery"), "-A", "workers.app", "worker", "-Q", queues, "-P", "threads", "-c", "16",
            "-n", f"health.{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle", "-l", "info"]
    try:
        worker = stack._spawn("worker-health", argv)
        stack.start_web()
        r = stack.redis()
        deadline = time.monotonic() + 90
        while not all(r.exists(f"{PREFIX}:catalog:{s}") for s in config["mcpServers"]):
            assert time.monotonic() < deadline, f"catalogs not published; logs in {stack.log_dir}"
            assert worker.alive(), worker.log()[-4000:]
            time.sleep(0.2)
        yield HealthStack(stack, worker)
    finally:
        stack.stop()


def structured(response: dict[str, Any]) -> dict[str, Any]:
    assert "result" in response, response
    return response["result"]["structuredContent"]


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ---------------------------------------------------------------- a hung backend (issue 12, finding 4)
def test_a_hung_backend_under_traffic_is_restarted_and_its_waiting_calls_run_on_the_fresh_one(
        hstack: HealthStack) -> None:
    ws = hstack.stack.ws_url()
    with RawClient(ws) as client:
        old_pid = structured(client.call("stopped__echo", {"text": "warm"}))["pid"]
        stop = threading.Event()
        traffic: list[dict[str, Any]] = []
        seen: list[dict[str, Any]] = []  # every distinct health record the server showed

        def load() -> None:  # steady traffic with the server's own 3 s limit, as many callers as its slots
            with RawClient(ws) as other:
                while not stop.is_set():
                    traffic.append(other.call("stopped__echo", {"text": "steady"}, timeout=30))

        def watch() -> None:
            while not stop.is_set():
                record = hstack.health("stopped")
                if record and (not seen or record != seen[-1]):
                    seen.append(record)
                time.sleep(0.05)

        threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        threads.append(threading.Thread(target=watch, daemon=True))
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(traffic) >= 20, 30, "steady traffic")
            os.kill(old_pid, signal.SIGSTOP)
            # a call with the server's own limit: it, or the traffic holding every slot, times out on the backend
            client.send({"jsonrpc": "2.0", "id": "t0", "method": "tools/call",
                         "params": {"name": "stopped__echo", "arguments": {"text": "t0"}}})
            # calls sent now (limits of their own) queue behind the traffic on the hung session
            waiting = [f"w{i}" for i in range(6)]
            for call_id in waiting:
                client.send({"jsonrpc": "2.0", "id": call_id, "method": "tools/call",
                             "params": {"name": "stopped__echo", "arguments": {"text": call_id}, "_meta": LONG}})
            answers: dict[str, list[dict[str, Any]]] = {}
            for _ in range(len(waiting) + 1):
                response = client.response(timeout=90)
                answers.setdefault(response["id"], []).append(response)
            assert answers.pop("t0")[0]["error"]["code"] == -32001
            # each answered once, by a fresh backend
            assert sorted(answers) == sorted(waiting)
            assert all(structured(found[0])["text"] == call_id for call_id, found in answers.items()), answers
            pids = {structured(found[0])["pid"] for found in answers.values()}
            assert old_pid not in pids and len(pids) == 1, answers
            client.send({"jsonrpc": "2.0", "id": "after", "method": "ping"})
            assert client.response()["id"] == "after"  # nothing answered twice
            # later calls succeed (the traffic too), and the health record comes back to healthy
            new_pid = pids.pop()
            assert structured(client.call("stopped__echo", {"text": "later"}))["pid"] == new_pid
            count = len(traffic)
            wait_for(lambda: len(traffic) >= count + 8 and all("result" in t for t in traffic[-4:]), 30,
                     "traffic succeeding again")
            wait_for(lambda: hstack.health("stopped").get("state") == "healthy", 30, "healthy again")
        finally:
            stop.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(old_pid, signal.SIGCONT)
            for thread in threads:
                thread.join(40)
        # the hung one was not just left behind: it is gone (killed and reaped by its worker)
        wait_for(lambda: not psutil.pid_exists(old_pid), 30, "the hung backend to be reaped")
        # the timeouts counted as health failures before the restart, and the record says why
        failures = [r for r in seen if r.get("state") != "healthy"]
        assert failures, seen
        errors = " | ".join(str(r.get("error")) for r in failures)
        assert "in a row" in errors, errors
        timeouts = [t for t in traffic if "error" in t]
        assert timeouts and all(t["error"]["code"] == -32001 for t in timeouts), timeouts[:3]
        # the restart's own reason (also written to the record, where the fresh session's first answer may
        # replace it before a 50 ms sample sees it: the worker's log line is the lasting word): a ping went
        # unanswered, so the session was hung, not slow
        restarts = [line for line in hstack.worker.log().splitlines() if "restarting hung session" in line]
        unanswered_ping = "a ping (which takes no call slot) went unanswered"
        assert restarts and all(unanswered_ping in line for line in restarts), restarts


# ---------------------------------------------------------------- slot waits (issue 12, finding 7)
def test_a_call_that_runs_out_of_time_waiting_for_a_slot_says_so_and_does_not_blame_the_backend(
        hstack: HealthStack) -> None:
    with RawClient(hstack.stack.ws_url()) as client:
        structured(client.call("narrow__whoami"))
        client.send({"jsonrpc": "2.0", "id": "blocker", "method": "tools/call",
                     "params": {"name": "narrow__slow", "arguments": {"seconds": 4, "steps": 4},
                                "_meta": {"progressToken": "p"}}})
        # the blocker holds narrow's one slot once its first progress arrives
        while not any(n.get("method") == "notifications/progress" for n in client.notifications):
            message = client.recv(15)
            assert message.get("id") != "blocker", message
            client.notifications.append(message)
        queued = client.request("tools/call", {"name": "narrow__echo", "arguments": {"text": "behind"},
                                               "_meta": {"io.mcp-broker/timeoutS": 1}})
        error = queued["error"]
        assert error["code"] == -32001
        assert re.search(r"waited [\d.]+s for one of the 1 call slots of server 'narrow'", error["message"]), error
        assert "did not answer" not in error["message"]
        assert error["data"]["reason"] == "slot_wait"
        assert client.response(timeout=20)["id"] == "blocker"
        record = hstack.health("narrow")
        assert record["state"] == "healthy" and record["failures"] == 0, record


# ---------------------------------------------------------------- poison input (issue 13, finding 1)
def test_an_unencodable_call_is_its_own_error_and_never_hurts_the_shared_session(hstack: HealthStack) -> None:
    """Put straight on the worker's queue (the web edge refuses such input): lone surrogates in a call's
    arguments, its _meta and a prompts/get name, while another client's calls run on the same session."""
    from workers.dispatch import submit_calls

    r = hstack.stack.redis()
    tag = uuid.uuid4().hex[:8]
    poisons = []
    for round_ in range(5):
        poisons += [
            {"call_id": f"poison-{tag}-{round_}-args", "server": "shared_echo", "tool": "echo",
             "arguments": {"text": "bad \ud800"}},
            {"call_id": f"poison-{tag}-{round_}-meta", "server": "shared_echo", "tool": "echo",
             "arguments": {"text": "fine"}, "meta": {"note": "\udfff"}},
            {"call_id": f"poison-{tag}-{round_}-prompt", "server": "shared_echo", "method": "prompts/get",
             "params": {"name": "x\ud800"}},
        ]
    with RawClient(hstack.stack.ws_url()) as client:
        pid = structured(client.call("shared_echo__whoami"))["pid"]
        before = structured(client.call("shared_echo__runs", {"tool": "echo"}))["echo"]
        outcomes = []
        for round_ in range(5):
            submit_calls("mcp.shared_echo", poisons[3 * round_: 3 * round_ + 3])
            for _ in range(10):
                outcomes.append(client.call("shared_echo__whoami", timeout=30))
        assert all(structured(o)["pid"] == pid for o in outcomes), outcomes
        for poison in poisons:
            key = f"{PREFIX}:result:{poison['call_id']}"
            wait_for(lambda key=key: r.exists(key), 30, f"the outcome of {poison['call_id']}")
            error = json.loads(r.get(key))["error"]
            assert error["code"] == -32602, error
            assert "encode" in error["message"], error
        # still the same warm backend, never asked to run the poison, health untouched
        assert structured(client.call("shared_echo__whoami"))["pid"] == pid
        assert structured(client.call("shared_echo__runs", {"tool": "echo"}))["echo"] == before
    record = hstack.health("shared_echo")
    assert record["state"] == "healthy" and record["failures"] == 0, record
    assert "restarting" not in "\n".join(line for line in hstack.worker.log().splitlines() if "shared_echo" in line)


# ---------------------------------------------------------------- the write check itself
def test_the_write_check_refuses_unencodable_requests_and_turns_unencodable_answers_into_errors() -> None:
    """The one path the web edge cannot cover alone: an answer a client gives to a backend's own request."""
    import anyio
    from mcp.shared.message import SessionMessage
    from mcp_types import JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse

    from workers.streams import CheckedWriteStream, Unsendable

    async def main() -> list[Any]:
        send, receive = anyio.create_memory_object_stream[SessionMessage](10)
        checked = CheckedWriteStream(send)
        with pytest.raises(Unsendable, match="surrogates not allowed"):
            await checked.send(SessionMessage(JSONRPCRequest(jsonrpc="2.0", id=1, method="tools/call",
                                                             params={"name": "t", "arguments": {"x": "\ud800"}})))
        with pytest.raises(Unsendable):
            await checked.send(SessionMessage(JSONRPCNotification(jsonrpc="2.0", method="n", params={"x": "\udfff"})))
        await checked.send(SessionMessage(JSONRPCResponse(jsonrpc="2.0", id=7, result={"text": "\ud800"})))
        await checked.send(SessionMessage(JSONRPCRequest(jsonrpc="2.0", id=2, method="ping")))
        send.close()
        return [item.message async for item in receive]

    replaced, fine = anyio.run(main)
    assert isinstance(replaced, JSONRPCError) and replaced.id == 7 and replaced.error.code == -32603
    assert "could not be encoded" in replaced.error.message
    assert isinstance(fine, JSONRPCRequest) and fine.method == "ping"


def test_hang_timeouts_is_a_checked_broker_key() -> None:
    from broker.config import ConfigError, parse_config

    assert parse_config({"mcpServers": {"s": {"command": "x"}}}).server("s").settings.hang_timeouts == 1
    off = parse_config({"mcpServers": {"s": {"command": "x", "broker": {"hang_timeouts": 0}}}})
    assert off.server("s").settings.hang_timeouts == 0
    for bad in (-1, "two", 1.5):
        with pytest.raises(ConfigError, match=r"server s: field broker\.hang_timeouts"):
            parse_config({"mcpServers": {"s": {"command": "x", "broker": {"hang_timeouts": bad}}}})


def test_failures_of_a_running_session_arm_no_start_backoff() -> None:
    """Timeouts and a hang restart count as failures, but must not hold back the fresh start calls wait for."""
    from broker.health import Health

    health = Health()
    for _ in range(4):
        health.failed("a call was not answered within 3s", now=100.0, backoff=False)
    assert (health.state, health.failures, health.healthy) == ("unhealthy", 4, False)
    assert health.retry_at is None and health.backoff_left(now=100.0) == 0.0
    health.failed("failed to start", now=100.0)  # a start failure still backs off
    assert health.backoff_left(now=100.0) > 0
