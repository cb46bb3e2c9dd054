"""Authentication settings, session ownership and expiry, and the 2026 `requestState`, on the real stack.

Issue 13, findings 2, 3 and 4 (second item): a key setting that holds no key stops the broker instead of
switching authentication off; an unkeyed web process serves loopback peers only however gunicorn was
started; `allow: []` allows nothing; an expired session is gone everywhere and cannot be taken over;
Streamable HTTP use refreshes a session and abandoned conversations are evicted; a `requestState` is bound
to its key and request and is single-use.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from broker.security import KeysConfigError, hash_key, load_keyring
from tests.stack import ROOT, VENV_BIN, Proc, Stack, free_port
from tests.wsclient import RawClient

TTL_S = 2
KEYS = {"alice": "k-alice-5a0e", "bob": "k-bob-77c1"}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
JSON_ONLY = {"Accept": "application/json", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
MODERN = "2026-07-28"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {"sampling": {}},
            "io.modelcontextprotocol/clientInfo": {"name": "tests", "version": "1"}}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_exit(proc: Proc, timeout: float = 30) -> int:
    try:
        return proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.stop()
        raise AssertionError(f"{proc.name} kept running:\n{proc.log()[-3000:]}") from None


def gunicorn(stack: Stack, name: str, bind: str, env: dict[str, str], *extra: str) -> Proc:
    argv = [str(VENV_BIN / "gunicorn"), "-k", "gevent", "-w", "1", *extra, "-b", bind, "web.app:create_app()"]
    return stack._spawn(name, argv, {k: v for k, v in env.items()})


def unkeyed_env(stack: Stack) -> dict[str, str]:
    return {k: v for k, v in stack.env.items()
            if k not in ("MCP_BROKER_API_KEYS", "MCP_BROKER_KEYS_FILE", "MCP_BROKER_BIND_HOST")}


# ---------------------------------------------------------------- finding 2: key settings


@pytest.mark.parametrize("setting", ["api_keys_commas", "keys_file_empty"])
def test_a_key_setting_without_a_usable_key_stops_the_start_naming_it(stack: Stack, tmp_path: Path,
                                                                       setting: str) -> None:
    env = unkeyed_env(stack)
    if setting == "api_keys_commas":
        env["MCP_BROKER_API_KEYS"] = ","
        named = "MCP_BROKER_API_KEYS"
    else:
        empty = tmp_path / "keys.json"
        empty.write_text(json.dumps({"keys": []}))
        env["MCP_BROKER_KEYS_FILE"] = str(empty)
        named = "MCP_BROKER_KEYS_FILE"
    # gunicorn as the Procfile starts it (gunicorn.conf.py read from the working directory): nothing is bound
    port = free_port()
    proc = gunicorn(stack, f"web-nokeys-{setting}-{port}", f"0.0.0.0:{port}", env)
    assert wait_for_exit(proc) != 0
    assert named in proc.log() and "holds no key" in proc.log()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    # gunicorn that never reads gunicorn.conf.py: the app refuses to boot, and gunicorn stops
    port = free_port()
    proc = gunicorn(stack, f"web-nokeys-noconf-{setting}-{port}", f"0.0.0.0:{port}", env, "-c", "/dev/null")
    assert wait_for_exit(proc) != 0
    assert named in proc.log() and "holds no key" in proc.log()
    # the CLI: check-config and run refuse it too, before starting anything
    for command in (["check-config"], ["run", "--port", str(free_port())]):
        done = subprocess.run([sys.executable, "-m", "broker", *command], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 1 and named in done.stderr, (command, done.stdout, done.stderr)


def test_key_loading_rules() -> None:
    with pytest.raises(KeysConfigError, match="MCP_BROKER_API_KEYS"):
        load_keyring({"MCP_BROKER_API_KEYS": " , "})
    ring = load_keyring({"MCP_BROKER_API_KEYS": "none:k1:,all:k2,plain-key,some:k3:echo__*"})
    by_id = {p.id: p for p in ring.principals.values()}
    assert by_id["none"].allow == () and not by_id["none"].may("echo", "echo")
    assert by_id["all"].allow == ("*",) and by_id["env3"].allow == ("*",)
    assert by_id["some"].allow == ("echo__*",)
    assert load_keyring({"MCP_BROKER_API_KEYS": ""}).enabled is False  # unset or empty: no keys


def test_a_key_with_an_empty_allow_list_may_use_nothing(stack: Stack, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [{"id": "filenone", "hash": hash_key("k-file-none"), "allow": []}]}))
    port = free_port()
    stack.start_web(port, env={"MCP_BROKER_API_KEYS": "envnone:k-env-none:", "MCP_BROKER_KEYS_FILE": str(keys_file)})
    try:
        for key in ("k-env-none", "k-file-none"):
            with RawClient(f"ws://127.0.0.1:{port}/mcp", additional_headers={"Authorization": f"Bearer {key}"}) as c:
                assert c.request("tools/list")["result"]["tools"] == []
                assert c.request("prompts/list")["result"]["prompts"] == []
                refused = c.call("echo__echo", {"text": "x"})
                assert refused["error"]["code"] == -32003, refused
    finally:
        stack.web_proc(port).stop()
        stack.web_ports.remove(port)


# ---------------------------------------------------------------- finding 2: loopback without keys


def test_unkeyed_app_refuses_non_loopback_peers_when_gunicorn_ignores_its_config(stack: Stack) -> None:
    """`--chdir /` and `-c /dev/null`: gunicorn reads no gunicorn.conf.py and binds 0.0.0.0 as told; the app
    itself serves loopback peers only. Tests send traffic to loopback addresses alone (never to this machine's
    other addresses), so the refusal of a non-loopback peer is checked on the peer address the WSGI environ
    reports, in the next test."""
    port = free_port()
    proc = gunicorn(stack, f"web-noconf-{port}", f"0.0.0.0:{port}", unkeyed_env(stack), "--chdir", "/",
                    "-c", "/dev/null")
    try:
        wait_for(lambda: _listening(port), 30, "the web process to listen")
        listening = {c.laddr.ip for c in psutil.Process(proc.popen.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening == {"0.0.0.0"}  # gunicorn did bind every interface: the app is the guard
        with httpx2.Client(timeout=10) as http:
            local = http.post(f"http://127.0.0.1:{port}/mcp", json=INIT, headers=ACCEPT)
            assert local.status_code == 200
        assert "no API keys configured" in proc.log()
    finally:
        proc.stop()


def test_unkeyed_app_checks_the_peer_address_the_wsgi_environ_reports(stack: Stack,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rule at the WSGI level, on the real app: a peer is what REMOTE_ADDR
    says; MCP_BROKER_BIND_HOST is the operator's explicit opt-out."""
    from web.app import create_app

    for name in ("MCP_BROKER_API_KEYS", "MCP_BROKER_KEYS_FILE", "MCP_BROKER_BIND_HOST"):
        monkeypatch.delenv(name, raising=False)
    client = create_app().test_client()
    for peer in ("192.0.2.10", "10.1.2.3", "::ffff:192.0.2.10", "2001:db8::1"):
        answer = client.get("/healthz", environ_base={"REMOTE_ADDR": peer})
        assert answer.status_code == 403 and answer.get_json()["error"]["code"] == "forbidden_remote", peer
    for peer in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert client.get("/healthz", environ_base={"REMOTE_ADDR": peer}).status_code == 200, peer
    monkeypatch.setenv("MCP_BROKER_BIND_HOST", "0.0.0.0")
    opted_out = create_app().test_client()
    assert opted_out.get("/healthz", environ_base={"REMOTE_ADDR": "192.0.2.10"}).status_code == 200


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- finding 3: sessions


@pytest.fixture(scope="module")
def short_lived(stack: Stack) -> Iterator[tuple[Stack, list[int]]]:
    """Two keyed web processes whose sessions expire after TTL_S seconds without traffic."""
    env = {"MCP_BROKER_API_KEYS": ",".join(f"{name}:{key}" for name, key in KEYS.items()),
           "MCP_BROKER_SESSION_TTL_S": str(TTL_S)}
    with stack.extra_webs(env) as ports:
        yield stack, ports


def session_key(session_id: str) -> str:
    return f"mcpb:session:{session_id}"


def test_an_expired_websocket_session_ends_and_cannot_be_taken_over(short_lived: tuple[Stack, list[int]]) -> None:
    stack, (port, _) = short_lived
    r = stack.redis()
    url = f"ws://127.0.0.1:{port}/mcp"
    alice = RawClient(url, additional_headers=bearer("alice"))
    try:
        session_id = alice.init_result["_meta"]["io.mcp-broker/sessionId"]  # type: ignore[index]
        with pytest.raises(InvalidStatus) as foreign:  # a live session is its owner's alone
            RawClient(f"{url}?session={session_id}", initialize=False, additional_headers=bearer("bob"))
        assert foreign.value.response.status_code == 404
        alice.send({"jsonrpc": "2.0", "id": "slow", "method": "tools/call",
                    "params": {"name": "echo__slow", "arguments": {"seconds": 3.5, "steps": 1}}})
        wait_for(lambda: not r.exists(session_key(session_id)), TTL_S + 10, "the idle session to expire")
        alice.send({"jsonrpc": "2.0", "id": "late", "method": "ping"})
        answer = alice.response()
        assert answer["id"] == "late" and "Session expired" in answer["error"]["message"], answer
        with pytest.raises(ConnectionClosed):
            for _ in range(10):
                alice.recv(timeout=10)
    finally:
        alice.close()
    assert not r.exists(session_key(session_id))  # the late frame did not bring it back
    for who in ("bob", "alice"):
        with pytest.raises(InvalidStatus) as refused:
            RawClient(f"{url}?session={session_id}", initialize=False, additional_headers=bearer(who))
        assert refused.value.response.status_code == 404


def test_a_session_record_without_an_owner_is_no_session(short_lived: tuple[Stack, list[int]]) -> None:
    """What the old touch/save left behind: a hash without `principal`. Nobody may resume it."""
    stack, (port, _) = short_lived
    r = stack.redis()
    r.hset(session_key("ownerless"), mapping={"protocolVersion": '"2025-11-25"', "initialized": "true"})
    r.expire(session_key("ownerless"), 60)
    with pytest.raises(InvalidStatus) as refused:
        RawClient(f"ws://127.0.0.1:{port}/mcp?session=ownerless", initialize=False, additional_headers=bearer("bob"))
    assert refused.value.response.status_code == 404
    with httpx2.Client(timeout=10) as http:
        answer = http.post(f"http://127.0.0.1:{port}/mcp", headers={**ACCEPT, **bearer("bob"),
                                                                    "Mcp-Session-Id": "ownerless"},
                           json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert answer.status_code == 404


def http_init(http: httpx2.Client, port: int, who: str) -> str:
    answer = http.post(f"http://127.0.0.1:{port}/mcp", json=INIT, headers={**JSON_ONLY, **bearer(who)})
    assert answer.status_code == 200, answer.text
    return str(answer.headers["mcp-session-id"])


def http_ping(http: httpx2.Client, port: int, who: str, session_id: str) -> httpx2.Response:
    return http.post(f"http://127.0.0.1:{port}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                     headers={**JSON_ONLY, **bearer(who), "Mcp-Session-Id": session_id})


def test_streamable_http_use_refreshes_the_session_and_expiry_ends_it(short_lived: tuple[Stack, list[int]]) -> None:
    stack, (port, _) = short_lived
    r = stack.redis()
    with httpx2.Client(timeout=10) as http:
        session_id = http_init(http, port, "alice")
        started = time.monotonic()
        while time.monotonic() - started < TTL_S * 2.5:  # in use for longer than its TTL
            assert http_ping(http, port, "alice", session_id).status_code == 200
            time.sleep(0.2)
        assert r.exists(session_key(session_id))
        assert http_ping(http, port, "bob", session_id).status_code == 404  # never another key's
        wait_for(lambda: not r.exists(session_key(session_id)), TTL_S + 10, "the idle session to expire")
        # this process still held the conversation: expired is gone here too, for its owner and for anyone
        assert http_ping(http, port, "alice", session_id).status_code == 404
        assert http_ping(http, port, "bob", session_id).status_code == 404
        assert not r.exists(session_key(session_id))


def test_a_deleted_http_session_is_gone_on_every_process(short_lived: tuple[Stack, list[int]]) -> None:
    _, (port_a, port_b) = short_lived
    with httpx2.Client(timeout=10) as http:
        session_id = http_init(http, port_a, "alice")
        assert http_ping(http, port_b, "alice", session_id).status_code == 200  # B now holds a conversation
        deleted = http.delete(f"http://127.0.0.1:{port_a}/mcp", headers={**bearer("alice"),
                                                                        "Mcp-Session-Id": session_id})
        assert deleted.status_code == 200
        assert http_ping(http, port_b, "alice", session_id).status_code == 404


def _proc_gauge(stack: Stack, pid: int, metric: str) -> float | None:
    r = stack.redis()
    for key in r.scan_iter(match=f"mcpb:metrics:proc:*:{pid}"):
        for field, value in r.hgetall(key).items():
            if metric in field:
                return float(value)
    return None


def test_abandoned_http_sessions_are_evicted(stack: Stack) -> None:
    """Sessions opened and abandoned: the web process lets go of their conversations once their TTL has
    passed (before: every one stayed in memory for good, +124 MiB at 20,000). The default suite opens
    2,000 (every one must be evicted, as at any size); the issue's full size, which took 60-180 s of the
    suite, is `MCP_BROKER_TEST_ABANDONED_SESSIONS=20000 make test PYTEST_ARGS='-k abandoned'` (`make soak`)."""
    total, threads = int(os.environ.get("MCP_BROKER_TEST_ABANDONED_SESSIONS", "2000")), 4
    port = free_port()
    proc = stack.start_web(port, env={"MCP_BROKER_SESSION_TTL_S": str(TTL_S)})
    try:
        worker = wait_for(lambda: psutil.Process(proc.popen.pid).children(), 10, "the gunicorn worker")[0]
        url = f"http://127.0.0.1:{port}/mcp"
        with httpx2.Client(timeout=10) as http:
            assert http.post(url, json=INIT, headers=JSON_ONLY).status_code == 200
        rss_before = worker.memory_info().rss
        failures: list[str] = []

        def open_sessions(count: int) -> None:
            with httpx2.Client(timeout=30) as http:
                for _ in range(count):
                    try:
                        answer = http.post(url, json=INIT, headers=JSON_ONLY)
                    except httpx2.HTTPError as err:
                        failures.append(repr(err))
                        return
                    if answer.status_code != 200:
                        failures.append(answer.text)

        started = time.monotonic()
        pool = [threading.Thread(target=open_sessions, args=(total // threads,)) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(600)
        elapsed = time.monotonic() - started
        assert not failures, failures[:3]
        rss_after = worker.memory_info().rss

        def drained() -> bool:
            with httpx2.Client(timeout=10) as http:  # any request lets the sweep run
                http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                          headers={**JSON_ONLY, "Mcp-Session-Id": "none"})
            held = _proc_gauge(stack, worker.pid, "mcp_broker_sessions_open")
            return held is not None and held == 0

        wait_for(drained, TTL_S * 4 + 30, "the abandoned conversations to be evicted")
        print(f"\n{total} sessions in {elapsed:.1f} s; worker RSS {rss_before / 2**20:.1f} MiB before, "
              f"{rss_after / 2**20:.1f} MiB after ({(rss_after - rss_before) / 2**20:+.1f} MiB); "
              f"sessions held after the sweep: 0")
        assert "evicted" in proc.log()
    finally:
        proc.stop()
        stack.web_ports.remove(port)


# ---------------------------------------------------------------- finding 4: requestState


def modern_post(http: httpx2.Client, port: int, who: str, params: dict[str, Any], rid: Any = 1) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {**params, "_meta": ENVELOPE}}
    headers = {**JSON_ONLY, **bearer(who), "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call",
               "Mcp-Name": params["name"]}
    answer: dict[str, Any] = http.post(f"http://127.0.0.1:{port}/mcp", content=json.dumps(body),
                                       headers=headers).json()
    return answer


def test_request_state_is_bound_to_its_key_and_request_and_single_use(short_lived: tuple[Stack, list[int]]) -> None:
    _, (port, other_port) = short_lived
    call = {"name": "echo__ask_model", "arguments": {"question": "bob's secret question"}}
    answer = {"role": "assistant", "content": {"type": "text", "text": "bob's answer"}, "model": "m"}
    with httpx2.Client(timeout=30) as http:
        first = modern_post(http, port, "bob", call)["result"]
        assert first["resultType"] == "input_required"
        (key, _), = first["inputRequests"].items()
        state = first["requestState"]
        assert "bob" not in state and "secret" not in state  # sealed, not merely signed

        stolen = modern_post(http, port, "alice", {**call, "requestState": state, "inputResponses": {key: answer}})
        assert stolen["error"]["code"] == -32602 and "result" not in stolen, stolen
        other_call = {"name": "echo__ask_model", "arguments": {"question": "another"}}
        moved = modern_post(http, port, "bob", {**other_call, "requestState": state,
                                                "inputResponses": {key: answer}})
        assert moved["error"]["code"] == -32602, moved

        final = modern_post(http, other_port, "bob", {**call, "requestState": state,
                                                      "inputResponses": {key: answer}}, rid=2)
        assert final["result"]["structuredContent"] == {"result": "bob's answer"}, final
        for who, where in (("bob", port), ("bob", other_port), ("alice", port)):  # used: on any process
            again = modern_post(http, where, who, {**call, "requestState": state, "inputResponses": {key: answer}},
                                rid=3)
            assert again["error"]["code"] == -32602 and "result" not in again, (who, again)
