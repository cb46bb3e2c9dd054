"""Keys, allow-lists, rate limits and input limits, on web processes started with keys configured."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from websockets.exceptions import InvalidStatus

from broker.security import hash_key
from tests.stack import Stack, free_port
from tests.wsclient import RawClient

KEYS = {"ops": "k-ops-4f1c", "fast": "k-fast-91aa", "narrow": "k-narrow-77de"}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


@pytest.fixture(scope="module")
def secured(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, list[int]]]:
    keys_file = tmp_path_factory.mktemp("keys") / "keys.json"
    keys_file.write_text(json.dumps({"keys": [
        {"id": "ops", "hash": hash_key(KEYS["ops"]), "admin": True},
        {"id": "fast", "hash": hash_key(KEYS["fast"]), "rate_per_s": 1, "burst": 3},
        {"id": "narrow", "hash": hash_key(KEYS["narrow"]), "allow": ["echo__*", "notes__summarize"],
         "max_in_flight": 1},
    ]}))
    env = {"MCP_BROKER_KEYS_FILE": str(keys_file), "MCP_BROKER_MAX_FRAME_BYTES": "4000",
           "MCP_BROKER_MAX_ARGUMENT_BYTES": "1000", "MCP_BROKER_MAX_RPC_BATCH": "3"}
    with stack.extra_webs(env) as ports:
        yield stack, ports


def url(port: int, path: str = "/mcp", scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{port}{path}"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def test_no_key_or_a_wrong_key_is_refused_before_any_work(secured: tuple[Stack, list[int]]) -> None:
    stack, (port, _) = secured
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic !!!"}):
        with pytest.raises(InvalidStatus) as refused:
            RawClient(url(port), additional_headers=headers)
        assert refused.value.response.status_code == 401
    with httpx2.Client(timeout=10) as http:
        response = http.post(url(port, scheme="http"), json=INIT, headers=ACCEPT)
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
        assert http.get(url(port, "/healthz", "http")).status_code == 200
        ok = http.post(url(port, scheme="http"), json=INIT, headers={**ACCEPT, **bearer("ops")})
        assert ok.status_code == 200
        basic = base64.b64encode(f"me:{KEYS['ops']}".encode()).decode()
        assert http.post(url(port, scheme="http"), json=INIT,
                         headers={**ACCEPT, "Authorization": f"Basic {basic}"}).status_code == 200
    log = stack.web_proc(port).log()
    assert "auth refused" in log and "wrong key" in log
    assert "nope" not in log and KEYS["ops"] not in log  # keys are never logged


def test_allow_list_filters_lists_and_refuses_calls(secured: tuple[Stack, list[int]]) -> None:
    _, (port, _) = secured
    with RawClient(url(port), additional_headers=bearer("narrow")) as client:
        tools = {t["name"] for t in client.request("tools/list")["result"]["tools"]}
        assert tools and all(name.startswith("echo__") for name in tools - {"broker__read_result"})
        prompts = {p["name"] for p in client.request("prompts/list")["result"]["prompts"]}
        assert prompts == {"notes__summarize"}
        assert client.request("resources/list")["result"]["resources"] == []
        refused = client.call("time__get_current_time", {"timezone": "UTC"})["error"]
        assert refused["code"] == -32003 and "may not use tool time__get_current_time" in refused["message"]
        assert client.call("echo__echo", {"text": "allowed"})["result"]["structuredContent"]["result"] == "allowed"
    with RawClient(url(port, "/servers/time/mcp"), additional_headers=bearer("narrow")) as client:
        assert client.request("tools/list")["result"]["tools"] == []
        assert client.call("get_current_time", {"timezone": "UTC"})["error"]["code"] == -32003


def test_rate_limit_holds_across_two_web_processes(secured: tuple[Stack, list[int]]) -> None:
    _, ports = secured
    with RawClient(url(ports[0]), additional_headers=bearer("fast")) as a, \
            RawClient(url(ports[1]), additional_headers=bearer("fast")) as b:
        outcomes = [client.call("echo__echo", {"text": str(i)}) for i, client in enumerate([a, b, a, b, a])]
        limited = [o for o in outcomes if "error" in o]
        assert len(outcomes) - len(limited) == 3  # the burst, whichever process served it
        assert all(o["error"]["code"] == -32005 and o["error"]["data"]["retryAfterMs"] > 0 for o in limited)
        time.sleep(limited[-1]["error"]["data"]["retryAfterMs"] / 1000 + 0.1)
        assert "result" in b.call("echo__echo", {"text": "later"})


def test_calls_in_flight_per_session_are_capped(secured: tuple[Stack, list[int]]) -> None:
    _, (port, _) = secured
    with RawClient(url(port), additional_headers=bearer("narrow")) as client:
        client.send({"jsonrpc": "2.0", "id": "slow", "method": "tools/call",
                     "params": {"name": "echo__slow", "arguments": {"seconds": 1, "steps": 1}}})
        second = client.call("echo__echo", {"text": "too many"})
        assert second["error"]["code"] == -32006
        assert client.response(timeout=20)["id"] == "slow"
        assert "result" in client.call("echo__echo", {"text": "now fine"})


def test_input_limits_answer_errors_and_keep_the_socket(secured: tuple[Stack, list[int]]) -> None:
    _, (port, _) = secured
    with RawClient(url(port), additional_headers=bearer("ops")) as client:
        client.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * 5000}}))
        assert client.response()["error"]["code"] == -32600
        big = client.call("echo__echo", {"text": "y" * 2000})["error"]
        assert big["code"] == -32602 and "over the limit of 1000 bytes" in big["message"]
        assert client.call("echo__echo", {"text": "small"})["result"]["structuredContent"]["result"] == "small"


def test_a_batch_over_the_limit_is_refused_whole_and_the_socket_stays(secured: tuple[Stack, list[int]]) -> None:
    _, (port, _) = secured
    pings = [{"jsonrpc": "2.0", "id": f"b{i}", "method": "ping"} for i in range(4)]
    with RawClient(url(port), additional_headers=bearer("ops")) as client:
        client.send(pings)
        refused = client.response()
        assert refused["id"] is None and refused["error"]["code"] == -32600
        assert "batch of 4 messages is over the limit of 3" in refused["error"]["message"]
        client.send(pings[:3])
        assert sorted(client.response()["id"] for _ in range(3)) == ["b0", "b1", "b2"]
    with httpx2.Client(timeout=10) as http:
        headers = {**ACCEPT, **bearer("ops")}
        session = http.post(url(port, scheme="http"), json=INIT, headers=headers).headers["Mcp-Session-Id"]
        response = http.post(url(port, scheme="http"), json=pings, headers={**headers, "Mcp-Session-Id": session})
        assert response.status_code == 400 and response.json()["error"]["code"] == -32600
        assert "over the limit of 3" in response.json()["error"]["message"]


def test_a_session_belongs_to_the_key_that_opened_it(secured: tuple[Stack, list[int]]) -> None:
    _, (port, _) = secured
    with RawClient(url(port), additional_headers=bearer("ops")) as client:
        session_id = client.ws.response.headers["Mcp-Session-Id"]
    with pytest.raises(InvalidStatus) as refused:
        RawClient(url(port), initialize=False, additional_headers={**bearer("narrow"), "Mcp-Session-Id": session_id})
    assert refused.value.response.status_code == 404
    with RawClient(url(port), initialize=False, additional_headers={**bearer("ops"), "Mcp-Session-Id": session_id}):
        pass


def test_unkeyed_broker_binds_loopback_and_says_so(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.stack import ROOT
    script = ("import runpy; cfg = runpy.run_path('gunicorn.conf.py'); print(cfg['bind'])")
    env = {"PATH": "/usr/bin:/bin", "PORT": "9999"}
    assert subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "127.0.0.1:9999"
    keyed = {**env, "MCP_BROKER_API_KEYS": "ops:k"}
    assert subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=keyed, capture_output=True, text=True,
                          check=True).stdout.strip() == "0.0.0.0:9999"


def test_unkeyed_web_told_to_bind_every_interface_listens_on_loopback_only(stack: Stack) -> None:
    """The Procfile says `-b 0.0.0.0:$PORT`; without keys gunicorn.conf.py narrows it before listening."""
    import socket

    import psutil

    from tests.stack import VENV_BIN

    port = free_port()
    argv = [str(VENV_BIN / "gunicorn"), "-k", "gevent", "-w", "1", "-b", f"0.0.0.0:{port}", "web.app:create_app()"]
    env = {k: v for k, v in stack.env.items() if k not in ("MCP_BROKER_API_KEYS", "MCP_BROKER_KEYS_FILE",
                                                          "MCP_BROKER_BIND_HOST")}
    proc = stack._spawn(f"web-public-{port}", argv, env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(proc.popen.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {("127.0.0.1", port)}
        assert "no API keys configured: binding 127.0.0.1" in proc.log()
    finally:
        proc.stop()
