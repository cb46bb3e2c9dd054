"""Cold and moving web processes (issue 12, findings 5, 6, 7): first calls of a fresh process, a server whose
worker starts late, how long outcomes stay in Redis, a session resumed after its web process was SIGKILLed,
and readiness that one bad backend does not take away. Real stack: gunicorn web, Celery workers, Redis."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.stack import ROOT, VENV_BIN, Proc, Stack, free_port
from tests.test_observability import wait_until
from tests.wsclient import RawClient

SERVERS = ROOT / "examples" / "servers"


def text_of(message: dict[str, Any]) -> str:
    assert "result" in message, message
    return str(message["result"]["structuredContent"]["result"])


def config_with(tmp_path: Path, extra: dict[str, Any]) -> Path:
    """The test config's echo server plus `extra` servers (absolute paths: the file lives elsewhere)."""
    config = json.loads((ROOT / "tests" / "mcp_servers.test.json").read_text())
    echo = {**config["mcpServers"]["echo"], "args": [str(SERVERS / "echo.py")]}
    path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"mcpServers": {"echo": echo, **extra}}))
    return path


def start_worker(stack: Stack, server: str, config: Path) -> Proc:
    argv = [str(VENV_BIN / "celery"), "-A", "workers.app", "worker", "-Q", f"mcp.{server}", "-P", "threads", "-c", "4",
            "-n", f"{server}.{free_port()}@%h", "--without-gossip", "--without-mingle", "-l", "info"]
    return stack._spawn(f"worker-{server}-{len(stack.procs)}", argv, {**stack.env, "MCP_BROKER_CONFIG": str(config)})


@pytest.fixture
def own_web(stack: Stack) -> Iterator[Any]:
    """Start web processes of the test's own (stopped, and their ports forgotten, afterwards)."""
    started: list[tuple[Proc, int]] = []

    def start(env: dict[str, str] | None = None) -> tuple[Proc, int]:
        port = free_port()
        proc = stack.start_web(port, env=env)
        started.append((proc, port))
        return proc, stack.web_ports.index(port)

    yield start
    for proc, port in started:
        proc.stop()
        if port in stack.web_ports:
            stack.web_ports.remove(port)


# ---------------------------------------------------------------- finding 5: a cold web process
def test_a_fresh_web_process_serves_the_catalog_in_redis_to_its_very_first_callers(stack: Stack, own_web: Any) -> None:
    """Every catalog is in Redis; a NEW web process gets 40 WebSocket and 40 HTTP calls at once, its first."""
    _, index = own_web()
    base = stack.http_url(index)
    sockets = [RawClient(stack.ws_url(index)) for _ in range(40)]  # initialize does not read the catalog
    start = threading.Barrier(80)
    answers: list[Any] = []

    def over_ws(client: RawClient, i: int) -> None:
        start.wait(30)
        answers.append(client.call("echo__echo", {"text": f"ws{i}"}, timeout=30))

    def over_http(i: int) -> None:
        start.wait(30)
        response = httpx2.post(f"{base}/v1/calls", json={"tool": "echo__echo", "arguments": {"text": f"h{i}"}},
                               timeout=30)
        answers.append(response.json() if response.status_code != 200 else {"result": response.json()["result"]})

    threads = [threading.Thread(target=over_ws, args=(c, i)) for i, c in enumerate(sockets)]
    threads += [threading.Thread(target=over_http, args=(i,)) for i in range(40)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for client in sockets:
            client.close()
    failed = [a for a in answers if "result" not in a]
    assert len(answers) == 80 and not failed, failed[:3]
    assert sorted(text_of(a) for a in answers) == sorted([f"ws{i}" for i in range(40)] + [f"h{i}" for i in range(40)])
    ready = httpx2.get(f"{base}/readyz", timeout=10).json()
    assert ready["web"]["catalog_loaded"] is True and ready["web"]["catalogs"] == len(stack.servers)


def test_a_readyz_probe_asks_the_workers_again_for_a_missing_catalog(stack: Stack, own_web: Any) -> None:
    """A worker gives up listing a backend slower to start than its `timeout_s` (a loaded machine), and nothing
    asked again until a client listed tools: `make run` waited for its banner, a test stack for its fixture.
    A fresh web process finds the catalog missing, and its /readyz asks the workers to list it."""
    from broker import keys

    r = stack.redis()
    r.delete(keys.catalog("time"))  # as a listing that failed leaves it
    _, index = own_web()

    def probe() -> dict[str, Any]:
        """/readyz's body (a web process still booting answers late on a loaded machine: waited for)."""
        with contextlib.suppress(httpx2.HTTPError, ValueError):
            return dict(httpx2.get(f"{stack.http_url(index)}/readyz", timeout=60).json())
        return {}

    deadline = time.monotonic() + 120
    while not r.exists(keys.catalog("time")):
        assert time.monotonic() < deadline, "no probe got the catalog listed again"
        probe()
        time.sleep(0.5)
    loaded = wait_until(lambda: probe().get("web", {}).get("missing") == [], 60)
    assert loaded, "the web process did not load the catalog listed again"


def test_a_call_to_a_server_still_starting_waits_for_its_tools_then_clients_hear_list_changed(
        stack: Stack, own_web: Any, tmp_path: Path) -> None:
    """`late` is configured but its worker starts only after the client listed the tools and called one."""
    late = {"command": "python", "args": [str(SERVERS / "echo.py")], "broker": {"timeout_s": 90}}
    config = config_with(tmp_path, {"late": late})
    stack.redis().delete("mcpb:catalog:late")
    _, index = own_web({"MCP_BROKER_CONFIG": str(config)})
    base = stack.http_url(index)
    with RawClient(stack.ws_url(index)) as client:
        tools = {t["name"] for t in client.request("tools/list")["result"]["tools"]}
        assert "echo__echo" in tools and not any(name.startswith("late__") for name in tools)
        client.send({"jsonrpc": "2.0", "id": "early", "method": "tools/call",
                     "params": {"name": "late__echo", "arguments": {"text": "waited"}}})
        over_http: dict[str, Any] = {}
        poster = threading.Thread(target=lambda: over_http.update(response=httpx2.post(
            f"{base}/v1/calls", json={"tool": "late__echo", "arguments": {"text": "waited too"}}, timeout=120)))
        poster.start()
        # the call waits (it is not refused while the server has no catalog): other requests are served meanwhile
        assert client.call("echo__echo", {"text": "meanwhile"})["result"]["structuredContent"]["result"] == "meanwhile"
        worker = start_worker(stack, "late", config)
        try:
            answer = client.response(timeout=90)
            assert answer["id"] == "early", answer
            assert text_of(answer) == "waited", worker.log()[-2000:]
            poster.join(90)
            assert over_http["response"].status_code == 200, over_http["response"].text
            assert over_http["response"].json()["result"]["structuredContent"]["result"] == "waited too"
            # the client that listed the tools during start-up hears that more arrived
            deadline = time.monotonic() + 20
            while not any(n.get("method") == "notifications/tools/list_changed" for n in client.notifications):
                client.notifications.append(client.recv(max(0.1, deadline - time.monotonic())))
            tools = {t["name"] for t in client.request("tools/list")["result"]["tools"]}
            assert "late__echo" in tools
        finally:
            worker.stop()


def test_a_call_to_a_server_that_never_publishes_fails_within_its_time_limit(
        stack: Stack, own_web: Any, tmp_path: Path) -> None:
    """No worker ever serves `ghost`: the wait ends at the call's own time limit, with the reason."""
    config = config_with(tmp_path, {"ghost": {"command": "python", "args": [str(SERVERS / "echo.py")],
                                              "broker": {"timeout_s": 2}}})
    _, index = own_web({"MCP_BROKER_CONFIG": str(config)})
    with RawClient(stack.ws_url(index)) as client:
        error = client.call("ghost__echo", {"text": "x"}, timeout=30)["error"]
        assert error["code"] == -32602 and "has not published its tools yet" in error["message"]


# ---------------------------------------------------------------- finding 7c: readiness is the broker's
def test_readyz_stays_ready_with_an_unhealthy_server_and_shows_it_in_the_body(
        stack: Stack, own_web: Any, tmp_path: Path) -> None:
    broken = {"command": "python", "args": [str(SERVERS / "tiny.py"), "--exit-at-start", "3"],
              "broker": {"timeout_s": 5}}
    config = config_with(tmp_path, {"broken": broken})
    stack.redis().delete("mcpb:health:broken", "mcpb:catalog:broken")
    _, index = own_web({"MCP_BROKER_CONFIG": str(config)})
    worker = start_worker(stack, "broken", config)
    url = f"{stack.http_url(index)}/readyz"
    try:
        def unhealthy() -> bool:
            body = httpx2.get(url, timeout=10).json()["servers"]["broken"]
            return body["workers"] >= 1 and body["backend"]["replicas"].get("0", {}).get("state") == "unhealthy"

        assert wait_until(unhealthy, timeout=60), worker.log()[-3000:]
        response = httpx2.get(url, timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "ready" and body["redis"]["ok"] and body["web"]["catalog_loaded"]
        bad = body["servers"]["broken"]
        assert bad["ready"] is False and "backend unhealthy: failed to start" in bad["reason"]
        assert "refusing to start" in bad["backend"]["replicas"]["0"]["stderr"]  # (admins see its stderr)
        assert body["servers"]["echo"]["ready"] is True and body["servers_ready"] == 1
    finally:
        worker.stop()


# ---------------------------------------------------------------- finding 6: how long outcomes stay
def test_delivered_outcomes_expire_soon_while_batch_and_undelivered_session_outcomes_stay(
        stack: Stack, own_web: Any) -> None:
    r = stack.redis()
    _, index = own_web({"MCP_BROKER_DELIVERED_TTL_S": "2", "MCP_BROKER_RESULT_TTL_S": "600"})
    base = stack.http_url(index)
    # a call delivered to its socket, and one answered over HTTP
    before = set(r.scan_iter("mcpb:answered:*"))
    with RawClient(stack.ws_url(index)) as client:
        assert text_of(client.call("echo__echo", {"text": "gone soon"})) == "gone soon"
    ws_calls = [key.rsplit(":", 1)[1] for key in set(r.scan_iter("mcpb:answered:*")) - before]
    assert len(ws_calls) == 1
    response = httpx2.post(f"{base}/v1/calls", json={"tool": "echo__echo", "arguments": {"text": "http"}}, timeout=30)
    assert response.status_code == 200, response.text
    http_call = response.json()["call_id"]
    # a session's call that ends while its client is away: kept for the session's TTL
    with RawClient(stack.ws_url(index)) as away:
        session_id = away.ws.response.headers["Mcp-Session-Id"]
        away.send({"jsonrpc": "2.0", "id": "away", "method": "tools/call",
                   "params": {"name": "echo__slow", "arguments": {"seconds": 0.3, "steps": 1}}})
        assert wait_until(lambda: r.hlen(f"mcpb:session:{session_id}:calls") == 1, timeout=10)
    away_call = next(iter(r.hkeys(f"mcpb:session:{session_id}:calls")))
    assert wait_until(lambda: r.exists(f"mcpb:result:{away_call}"), timeout=20)
    # a call its client cancels: nobody will read its outcome, whatever the session's TTL
    with RawClient(stack.ws_url(index)) as canceller:
        cancel_session = canceller.ws.response.headers["Mcp-Session-Id"]
        canceller.send({"jsonrpc": "2.0", "id": "drop", "method": "tools/call",
                        "params": {"name": "echo__slow", "arguments": {"seconds": 5, "steps": 5},
                                   "_meta": {"progressToken": "c"}}})
        assert canceller.recv(timeout=20)["method"] == "notifications/progress"  # it runs
        dropped = next(iter(r.hkeys(f"mcpb:session:{cancel_session}:calls")))
        canceller.notify("notifications/cancelled", {"requestId": "drop"})
        assert wait_until(lambda: r.exists(f"mcpb:result:{dropped}"), timeout=20)
    assert 0 < r.ttl(f"mcpb:result:{dropped}") <= 60
    # a batch
    batch = httpx2.post(f"{base}/v1/batches", json={"calls": [{"tool": "echo__echo", "arguments": {"text": str(i)}}
                                                              for i in range(3)]}, timeout=30).json()
    lines = httpx2.get(f"{base}{batch['results_url']}", timeout=60).text.splitlines()
    assert len(lines) == 3
    # the delivered ones go; their `answered` markers (what stops a redelivered message from running a call
    # twice) stay while a redelivery is possible
    assert wait_until(lambda: not r.exists(f"mcpb:result:{http_call}", *[f"mcpb:result:{c}" for c in ws_calls]),
                      timeout=20)
    assert r.exists(f"mcpb:answered:{http_call}") and r.ttl(f"mcpb:answered:{http_call}") > 30
    for i in range(3):
        assert r.exists(f"mcpb:result:{batch['batch_id']}.{i}") and r.ttl(f"mcpb:result:{batch['batch_id']}.{i}") > 60
    assert r.ttl(f"mcpb:result:{away_call}") > 60  # nobody got it yet
    # the client comes back: it gets the outcome, which then goes too
    with RawClient(f"{stack.ws_url(index)}?session={session_id}", initialize=False) as again:
        answer = again.response(timeout=20)
        assert answer["id"] == "away" and text_of(answer) == "slept 0.3s"
    assert wait_until(lambda: not r.exists(f"mcpb:result:{away_call}"), timeout=20)
    assert len(httpx2.get(f"{base}{batch['results_url']}", timeout=30).text.splitlines()) == 3  # still readable


# ---------------------------------------------------------------- finding 7a: a web process dies
def test_a_session_resumed_after_its_web_process_was_killed_gets_progress_and_result(
        stack: Stack, own_web: Any) -> None:
    first, index_a = own_web()
    _, index_b = own_web()
    with RawClient(stack.ws_url(index_a)) as client:
        session_id = client.ws.response.headers["Mcp-Session-Id"]
        client.send({"jsonrpc": "2.0", "id": "long", "method": "tools/call",
                     "params": {"name": "echo__slow", "arguments": {"seconds": 4, "steps": 16},
                                "_meta": {"progressToken": "p"}}})
        note = client.recv(timeout=20)  # it runs: its first progress note is here
        assert note.get("method") == "notifications/progress", note
        first.stop(signal.SIGKILL)
    with RawClient(f"{stack.ws_url(index_b)}?session={session_id}", initialize=False) as again:
        answer = again.response(timeout=30)
    assert answer["id"] == "long" and text_of(answer) == "slept 4.0s"
    progress = [n for n in again.notifications if n.get("method") == "notifications/progress"]
    assert progress, "progress of the still-running call reaches the process where the session resumed"
    assert all(n["params"]["progressToken"] == "p" for n in progress)
    assert progress[-1]["params"]["progress"] == 16
