"""Tenants that cannot hurt or read each other: issue 13's three-key scenario, end to end, on a real stack.

Keys: `alice:K1:echo__*` (an allow pattern), `bob:K2` (everything), `admin:K3`, and keys-file keys:
`meter` (max_in_flight 2, max_connections 4) and `carol` (allow `*__echo`). Two web processes share
Redis; the session stack's workers serve echo/notes/time, and this module adds backends of its own:
`dunder` (a tool named `x__echo`: the separator inside a tool name), `conformance` (resource templates
and completions) and `leaky` (prints its `${VAR}` secret on stderr and exits). Every transport is
played: WebSocket, Streamable HTTP of both eras, `/v1/calls`, `/v1/batches` and `/servers/<name>/mcp`.

Each conversation goes through `open_rpc(tenants, transport, key)`, which gives one `rpc(method, params)`
function per transport, so a case for another finding (a session taken over after expiry, a replayed
`requestState`) is one more test here over the same transports.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from websockets.exceptions import InvalidStatus

from broker import keys as redis_keys
from broker.config import ConfigError, parse_config
from broker.security import Principal, hash_key
from tests.stack import ROOT, TEST_CONFIG, Proc, Stack, free_port
from tests.wsclient import RawClient

KEYS = {"alice": "K1", "bob": "K2", "admin": "K3", "meter": "K4-meter-0c3e", "carol": "K5-carol-77a1"}
SECRET = "tenant-secret-5b1f9e"  # what the leaky backend's ${TENANT_SECRET} expands to
LEASE_S = 3.0
FORBIDDEN = -32003
TOO_MANY_IN_FLIGHT = -32006
MODERN = "2026-07-28"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "tenants", "version": "1"}}
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
TRANSPORTS = ("ws", "http", "modern")
RPC = Callable[[str, dict[str, Any]], dict[str, Any]]


class SecretStack(Stack):
    """The module's own processes: its workers get the secret the leaky backend's env names."""

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "TENANT_SECRET": SECRET}


@dataclass
class Tenants:
    stack: SecretStack
    ports: list[int]

    def base(self, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    def ws(self, path: str = "/mcp", index: int = 0) -> str:
        return f"ws://127.0.0.1:{self.ports[index]}{path}"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def _config(path: Path) -> Path:
    """The test config (absolute paths) plus `dunder` and `leaky`."""
    config = json.loads(TEST_CONFIG.read_text())
    for entry in config["mcpServers"].values():
        entry["args"] = [str((TEST_CONFIG.parent / a).resolve()) if a.startswith("../") else a for a in entry["args"]]
    config["mcpServers"]["dunder"] = {"command": "python", "args": [str(ROOT / "examples/servers/tiny.py")],
                                      "env": {"TINY_TOOL_NAME": "x__echo"}}
    config["mcpServers"]["conformance"] = {"command": "python",  # resource templates and completions
                                           "args": [str(ROOT / "examples/servers/conformance.py")]}
    config["mcpServers"]["leaky"] = {"command": "python", "args": [str(ROOT / "tests/servers/leaky.py")],
                                     "env": {"LEAKY_TOKEN": "${TENANT_SECRET}"},
                                     "broker": {"timeout_s": 5, "retries": 0}}
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def tenants(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    folder = tmp_path_factory.mktemp("tenants")
    keys_file = folder / "keys.json"
    keys_file.write_text(json.dumps({"keys": [
        {"id": "meter", "hash": hash_key(KEYS["meter"]), "max_in_flight": 2, "max_connections": 4},
        {"id": "carol", "hash": hash_key(KEYS["carol"]), "allow": ["*__echo"]},
    ]}))
    env = {"MCP_BROKER_API_KEYS": "alice:K1:echo__*,bob:K2,admin:K3", "MCP_BROKER_KEYS_FILE": str(keys_file),
           "MCP_BROKER_LEASE_S": str(LEASE_S), "MCP_BROKER_ALLOWED_HOSTS": "127.0.0.1,localhost,.broker.example"}
    own = SecretStack(stack.redis_url, config_path=_config(folder / "mcp_servers.json"))
    try:
        own.start_worker("dunder")
        own.start_worker("leaky")
        own.start_worker("conformance")
        ports = [free_port(), free_port()]
        for port in ports:
            own.start_web(port, env=env)
        own.wait_for_catalog(["echo", "notes", "time", "dunder", "conformance"])
        yield Tenants(own, ports)
    finally:
        own.stop()


# ---------------------------------------------------------------- one conversation per transport
@contextlib.contextmanager
def open_rpc(t: Tenants, transport: str, key: str, scope: str | None = None, index: int = 0) -> Iterator[RPC]:
    """`rpc(method, params)` → the JSON-RPC answer, over `transport`: `ws` (WebSocket), `http` (Streamable HTTP,
    handshake era, a session), `modern` (2026-07-28, one stateless POST per request)."""
    path = f"/servers/{scope}/mcp" if scope else "/mcp"
    if transport == "ws":
        with RawClient(t.ws(path, index), additional_headers=bearer(key)) as client:
            yield lambda method, params: client.request(method, params)
        return
    with httpx2.Client(base_url=t.base(index), timeout=30) as http:
        if transport == "http":
            headers = {"Accept": "application/json", "Content-Type": "application/json", **bearer(key)}
            opened = http.post(path, json=INIT, headers=headers)
            assert opened.status_code == 200, opened.text
            headers["Mcp-Session-Id"] = opened.headers["Mcp-Session-Id"]
            http.post(path, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)

            def handshake_rpc(method: str, params: dict[str, Any]) -> dict[str, Any]:
                body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
                return http.post(path, json=body, headers=headers).json()  # type: ignore[no-any-return]

            yield handshake_rpc
        else:
            def modern_rpc(method: str, params: dict[str, Any]) -> dict[str, Any]:
                body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": ENVELOPE}}
                headers = {"Accept": "application/json", "Content-Type": "application/json",
                           "MCP-Protocol-Version": MODERN, "Mcp-Method": method, **bearer(key)}
                if method in ("tools/call", "prompts/get", "resources/read"):
                    headers["Mcp-Name"] = params.get("name") or params["uri"]
                return http.post(path, content=json.dumps(body), headers=headers).json()  # type: ignore[no-any-return]

            yield modern_rpc


def v1(t: Tenants, method: str, path: str, key: str, body: Any = None, index: int = 0,
       content_type: str = "application/json") -> httpx2.Response:
    content = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    headers = {**bearer(key), **({"Content-Type": content_type} if content is not None else {})}
    return httpx2.request(method, t.base(index) + path, content=content, headers=headers, timeout=30)


def wait_until(check: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------- finding 4: the allow-list on every method
ALICE_REFUSED = [  # (method, params, transports it exists on)
    ("tools/call", {"name": "time__get_current_time", "arguments": {"timezone": "UTC"}}, TRANSPORTS),
    ("prompts/get", {"name": "notes__summarize", "arguments": {}}, TRANSPORTS),
    ("completion/complete", {"ref": {"type": "ref/prompt", "name": "notes__summarize"},
                             "argument": {"name": "style", "value": "s"}}, TRANSPORTS),
    ("completion/complete", {"ref": {"type": "ref/resource", "uri": "conformance+test://template/{id}/data"},
                             "argument": {"name": "id", "value": "te"}}, TRANSPORTS),
    ("resources/read", {"uri": "notes+notes://all"}, TRANSPORTS),
    ("resources/subscribe", {"uri": "notes+notes://all"}, ("ws", "http")),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_alice_uses_only_her_pattern_on_every_method(tenants: Tenants, transport: str) -> None:
    with open_rpc(tenants, transport, "alice") as rpc:
        tools = {tool["name"] for tool in rpc("tools/list", {})["result"]["tools"]}
        assert tools and all(name.startswith("echo__") for name in tools - {"broker__read_result"})
        assert rpc("prompts/list", {})["result"]["prompts"] == []
        assert rpc("resources/list", {})["result"]["resources"] == []
        assert rpc("resources/templates/list", {})["result"]["resourceTemplates"] == []
        for method, params, where in ALICE_REFUSED:
            if transport in where:
                error = rpc(method, params).get("error")
                assert error is not None and error["code"] == FORBIDDEN, (method, params, error)
                assert "may not use" in error["message"]
        assert rpc("tools/call", {"name": "echo__echo", "arguments": {"text": "mine"}})["result"][
            "structuredContent"]["result"] == "mine"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_per_server_endpoint_applies_the_same_allow_list(tenants: Tenants, transport: str) -> None:
    with open_rpc(tenants, transport, "alice", scope="notes") as rpc:
        assert rpc("tools/list", {})["result"]["tools"] == []
        completion = {"ref": {"type": "ref/prompt", "name": "summarize"}, "argument": {"name": "style", "value": "s"}}
        assert rpc("completion/complete", completion)["error"]["code"] == FORBIDDEN
        assert rpc("completion/complete", {"ref": {"type": "ref/resource", "uri": "notes://all"},
                                           "argument": {"name": "x", "value": "y"}})["error"]["code"] == FORBIDDEN
        assert rpc("tools/call", {"name": "list_notes", "arguments": {}})["error"]["code"] == FORBIDDEN
    with open_rpc(tenants, transport, "alice", scope="echo") as rpc:
        assert rpc("tools/call", {"name": "echo", "arguments": {"text": "scoped"}})["result"][
            "structuredContent"]["result"] == "scoped"


def test_bob_is_forwarded_what_alice_is_refused(tenants: Tenants) -> None:
    """The refusals above are the allow-list's, not the method's: an unrestricted key reaches the backend."""
    with open_rpc(tenants, "ws", "bob") as rpc:
        answer = rpc("completion/complete", ALICE_REFUSED[2][1])
        assert "result" in answer or answer["error"]["code"] != FORBIDDEN  # notes' own answer
        completed = rpc("completion/complete", ALICE_REFUSED[3][1])
        assert completed["result"]["completion"]["values"] == ["test", "testing"]
        assert rpc("resources/templates/list", {})["result"]["resourceTemplates"]  # what alice's list hides
        assert "result" in rpc("prompts/get", {"name": "notes__summarize", "arguments": {}})
        assert "result" in rpc("resources/read", {"uri": "notes+notes://all"})


def test_the_http_api_applies_the_allow_list(tenants: Tenants) -> None:
    refused = v1(tenants, "POST", "/v1/calls", "alice", {"tool": "time__get_current_time",
                                                         "arguments": {"timezone": "UTC"}})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    allowed = v1(tenants, "POST", "/v1/calls", "alice", {"tool": "echo__echo", "arguments": {"text": "a"}})
    assert allowed.status_code == 200
    batch = v1(tenants, "POST", "/v1/batches", "alice", {"calls": [
        {"tool": "echo__echo", "arguments": {"text": "a"}}, {"tool": "notes__list_notes", "arguments": {}}]})
    assert batch.status_code == 403 and batch.json()["error"]["code"] == "forbidden"


def test_patterns_match_server_and_tool_apart(tenants: Tenants) -> None:
    """`*__echo` is "the tool echo of any server", not a glob over `server__tool`, which also matched the tool
    `x__echo` of the server `dunder` (the separator inside a backend's tool name)."""
    with RawClient(tenants.ws(), additional_headers=bearer("carol")) as client:
        tools = {tool["name"] for tool in client.request("tools/list")["result"]["tools"]}
        assert "echo__echo" in tools and "dunder__x__echo" not in tools
        assert client.call("dunder__x__echo", {"text": "x"})["error"]["code"] == FORBIDDEN
        assert client.call("echo__echo", {"text": "ok"})["result"]["structuredContent"]["result"] == "ok"
    assert v1(tenants, "POST", "/v1/calls", "carol", {"tool": "dunder__x__echo", "arguments": {}}).status_code == 403
    assert v1(tenants, "POST", "/v1/batches", "carol",
              {"calls": [{"tool": "dunder__x__echo", "arguments": {}}]}).status_code == 403
    with RawClient(tenants.ws(), additional_headers=bearer("bob")) as client:  # the tool itself works
        assert client.call("dunder__x__echo", {"text": "x"})["result"]["structuredContent"]["text"] == "x"
    # the pattern's own split: a server whose name ends with the separator's start cannot be configured
    assert not Principal("p", allow=("echo__*",)).may("echo_", "x")
    assert Principal("p", allow=("echo",)).may("echo", "anything")  # no separator: the whole server
    with pytest.raises(ConfigError, match="must not end with the start of the separator"):
        parse_config({"mcpServers": {"echo_": {"command": "python"}}})


# ---------------------------------------------------------------- sessions and batches of another key
def test_sessions_and_batches_of_another_key_are_not_found(tenants: Tenants) -> None:
    with RawClient(tenants.ws(), additional_headers=bearer("bob")) as client:
        ws_session = client.ws.response.headers["Mcp-Session-Id"]
    with pytest.raises(InvalidStatus) as refused:
        RawClient(tenants.ws(index=1), initialize=False,
                  additional_headers={**bearer("alice"), "Mcp-Session-Id": ws_session})
    assert refused.value.response.status_code == 404
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    with httpx2.Client(base_url=tenants.base(), timeout=30) as http:
        http_session = http.post("/mcp", json=INIT, headers={**headers, **bearer("bob")}).headers["Mcp-Session-Id"]
        for session in (http_session, ws_session):
            taken = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                              headers={**headers, **bearer("alice"), "Mcp-Session-Id": session})
            assert taken.status_code == 404
    batch = v1(tenants, "POST", "/v1/batches", "bob", {"calls": [{"tool": "echo__echo", "arguments": {"text": "b"}}]})
    assert batch.status_code == 202
    batch_id = batch.json()["batch_id"]
    for method, path in (("GET", ""), ("GET", "/results?wait=0"), ("DELETE", "")):
        assert v1(tenants, method, f"/v1/batches/{batch_id}{path}", "alice", index=1).status_code == 404
    assert v1(tenants, "GET", f"/v1/batches/{batch_id}", "admin").status_code == 200  # admins see every batch


# ---------------------------------------------------------------- finding 5: browsers
def test_cross_origin_and_text_plain_requests_are_refused_on_every_route(stack: Stack) -> None:
    """The session stack's web has no keys: loopback only, and what a browser page could send is refused."""
    base = stack.http_url()
    evil = {"Origin": "http://evil.example"}
    with httpx2.Client(base_url=base, timeout=30) as http:
        call = {"tool": "echo__echo", "arguments": {"text": "csrf"}}
        assert http.post("/v1/calls", json=call, headers=evil).status_code == 403
        plain = http.post("/v1/calls", content=json.dumps(call), headers={"Content-Type": "text/plain"})
        assert plain.status_code == 415 and plain.json()["error"]["code"] == "unsupported_media_type"
        batch = json.dumps({"calls": [call]})
        assert http.post("/v1/batches", content=batch, headers={"Content-Type": "text/plain"}).status_code == 415
        assert http.post("/v1/batches", content=batch, headers=evil | {"Content-Type": "application/json"}
                         ).status_code == 403
        lines = http.post("/v1/batches", content=json.dumps(call) + "\n",
                          headers={"Content-Type": "application/x-ndjson"})
        assert lines.status_code == 202
        refused = http.post("/v1/admin/reload", headers=evil)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden_origin"
        assert http.delete(f"/v1/batches/{lines.json()['batch_id']}", headers=evil).status_code == 403
        assert http.post("/v1/calls", json=call, headers={"Origin": "http://localhost:5173"}).status_code == 200
        # DNS rebinding: the attacker's name in Host
        for path in ("/status.json", "/metrics", "/status", "/v1/batches/0"):
            rebound = http.get(path, headers={"Host": "evil.example"})
            assert rebound.status_code == 421 and rebound.json()["error"]["code"] == "host_not_allowed", path
        assert http.get("/status.json", headers={"Host": f"localhost:{stack.web_ports[0]}"}).status_code == 200
        assert http.get("/healthz", headers={"Host": "evil.example"}).status_code == 200  # probes: by IP
        public = http.get("/readyz", headers={"Host": "evil.example"}).json()
        assert "servers" not in public and "servers_total" in public  # nothing per server to a rebound page
        assert "servers" in http.get("/readyz").json()
    with pytest.raises(InvalidStatus) as refused_ws:
        RawClient(stack.ws_url().replace("/mcp", "/servers/echo/mcp"), additional_headers=evil)
    assert refused_ws.value.response.status_code == 403


def test_configured_hosts_hold_on_a_keyed_broker(tenants: Tenants) -> None:
    with httpx2.Client(base_url=tenants.base(), timeout=30) as http:
        assert http.get("/status.json", headers={**bearer("admin"), "Host": "evil.example"}).status_code == 421
        assert http.get("/status.json", headers={**bearer("admin"), "Host": "ops.broker.example"}).status_code == 200


# ---------------------------------------------------------------- finding 6: a backend's stderr
def test_a_backend_secret_on_stderr_reaches_no_client_and_no_record(tenants: Tenants) -> None:
    r = tenants.stack.redis()

    def record() -> dict[str, Any]:
        raw = r.hget(redis_keys.health("leaky"), "0")
        return json.loads(raw) if raw else {}

    assert wait_until(lambda: "leaky: login refused" in (record().get("stderr") or ""), timeout=60)
    health = record()
    assert SECRET not in json.dumps(health) and "[redacted]" in health["stderr"]
    assert "login refused" not in (health["error"] or "")  # the kind of failure, apart from its words
    with httpx2.Client(base_url=tenants.base(), timeout=30) as http:
        public = http.get("/readyz")
        assert SECRET not in public.text and "leaky" not in public.text and "servers" not in public.json()
        for name in ("alice", "bob"):
            shown = http.get("/readyz", headers=bearer(name))
            assert "leaky" not in shown.text and SECRET not in shown.text
        admin = http.get("/readyz", headers=bearer("admin")).json()
        assert "[redacted]" in admin["servers"]["leaky"]["backend"]["replicas"]["0"]["stderr"]
        assert SECRET not in json.dumps(admin)
        status = http.get("/status.json", headers=bearer("admin"))
        assert status.status_code == 200 and SECRET not in status.text
        assert "[redacted]" in json.dumps(status.json())
    with RawClient(tenants.ws(), additional_headers=bearer("bob")) as client:
        error = client.call("leaky__anything", {}, timeout=20)["error"]
        assert "leaky" in error["message"] and SECRET not in json.dumps(error)
        assert "login refused" not in json.dumps(error)
    worker_log = "".join(p.log() for p in tenants.stack.procs if p.name.startswith("worker-leaky"))
    assert "[leaky] leaky: login refused for token [redacted]" in worker_log and SECRET not in worker_log


# ---------------------------------------------------------------- finding 7: limits per key
def _leases(r: Any, kind: str, key: str) -> int:
    return int(r.zcount(redis_keys.lease(kind, key), time.time(), "+inf"))


LONGER = {"io.mcp-broker/timeoutS": 60}  # echo's own timeout_s is 5
SLOW = {"name": "echo__slow", "arguments": {"seconds": 4, "steps": 1}, "_meta": LONGER}


def test_max_in_flight_holds_per_key_across_sessions_processes_and_paths(tenants: Tenants) -> None:
    r = tenants.stack.redis()
    with RawClient(tenants.ws(index=0), additional_headers=bearer("meter")) as a, \
            RawClient(tenants.ws(index=1), additional_headers=bearer("meter")) as b:
        a.send({"jsonrpc": "2.0", "id": "slow-a", "method": "tools/call", "params": SLOW})
        b.send({"jsonrpc": "2.0", "id": "slow-b", "method": "tools/call", "params": SLOW})
        assert wait_until(lambda: _leases(r, "calls", "meter") == 2)
        # a third session, on either process and any transport, is over the key's 2
        third = a.call("echo__echo", {"text": "3"})["error"]
        assert third["code"] == TOO_MANY_IN_FLIGHT and third["data"]["retryAfterMs"] > 0
        with open_rpc(tenants, "modern", "meter", index=1) as rpc:
            assert rpc("tools/call", {"name": "echo__echo", "arguments": {"text": "4"}})["error"]["code"] == \
                TOO_MANY_IN_FLIGHT
        refused = v1(tenants, "POST", "/v1/calls", "meter", {"tool": "echo__echo", "arguments": {"text": "5"}})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_in_flight"
        assert "Retry-After" in refused.headers
        with RawClient(tenants.ws(), additional_headers=bearer("bob")) as other:  # other keys are not affected
            assert "result" in other.call("echo__echo", {"text": "bob"})
        assert {a.response(timeout=30)["id"], b.response(timeout=30)["id"]} == {"slow-a", "slow-b"}
        assert wait_until(lambda: _leases(r, "calls", "meter") == 0)
        assert "result" in a.call("echo__echo", {"text": "free again"})
    assert v1(tenants, "POST", "/v1/calls", "meter", {"tool": "echo__echo", "arguments": {"text": "6"}}
              ).status_code == 200


def test_a_closed_socket_keeps_its_running_call_counted(tenants: Tenants) -> None:
    """Closing the socket does not end a running call: reconnecting cannot double the key's share."""
    r = tenants.stack.redis()
    with RawClient(tenants.ws(), additional_headers=bearer("meter")) as client:
        client.send({"jsonrpc": "2.0", "id": "left", "method": "tools/call",
                     "params": {"name": "echo__slow", "arguments": {"seconds": 3, "steps": 1}}})
        assert wait_until(lambda: _leases(r, "calls", "meter") == 1)
    assert _leases(r, "calls", "meter") == 1  # the socket is gone, the call still runs
    assert wait_until(lambda: _leases(r, "calls", "meter") == 0, timeout=30)  # released once its outcome is stored


def test_max_connections_per_key_is_refused_before_the_upgrade(tenants: Tenants) -> None:
    r = tenants.stack.redis()
    with contextlib.ExitStack() as held:
        for index in (0, 1, 0):
            held.enter_context(RawClient(tenants.ws(index=index), additional_headers=bearer("meter")))
        http = held.enter_context(httpx2.Client(base_url=tenants.base(1), timeout=30))
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
                   **bearer("meter")}
        session = http.post("/mcp", json=INIT, headers={**headers, "Accept": "application/json"})
        stream = held.enter_context(http.stream("GET", "/mcp", headers={
            **headers, "Mcp-Session-Id": session.headers["Mcp-Session-Id"]}))  # an open event stream counts too
        assert stream.status_code == 200
        assert wait_until(lambda: _leases(r, "connections", "meter") == 4)
        with pytest.raises(InvalidStatus) as refused:
            RawClient(tenants.ws(index=1), additional_headers=bearer("meter"))
        assert refused.value.response.status_code == 429
        assert json.loads(refused.value.response.body)["error"]["code"] == "too_many_connections"
        over = v1(tenants, "POST", "/v1/calls", "meter", {"tool": "echo__echo", "arguments": {"text": "x"}})
        assert over.status_code == 429 and over.json()["error"]["code"] == "too_many_connections"
        with RawClient(tenants.ws(), additional_headers=bearer("bob")) as other:  # other keys and probes go on
            assert "result" in other.call("echo__echo", {"text": "bob"})
        assert httpx2.get(tenants.base() + "/healthz", timeout=10).status_code == 200
        session_id = session.headers["Mcp-Session-Id"]
    # the sockets are closed; the server notices the event stream's client left at its next write (a
    # keep-alive, 15 s): ending the session ends the stream at once
    assert httpx2.delete(tenants.base() + "/mcp", headers={**bearer("meter"), "Mcp-Session-Id": session_id},
                         timeout=10).status_code == 200
    assert wait_until(lambda: _leases(r, "connections", "meter") == 0)
    with RawClient(tenants.ws(index=1), additional_headers=bearer("meter")) as again:
        assert "result" in again.call("echo__echo", {"text": "room again"})


def test_leases_of_a_killed_web_process_lapse(tenants: Tenants) -> None:
    """Leases are renewed while held (a call longer than LEASE_S keeps its slot) and lapse once the web
    process that held them is gone: a crash never leaks a key's counts."""
    r = tenants.stack.redis()
    port = free_port()
    web = tenants.stack.start_web(port, env={
        "MCP_BROKER_API_KEYS": "alice:K1:echo__*,bob:K2,admin:K3",
        "MCP_BROKER_KEYS_FILE": str(Path(tenants.stack.config_path).parent / "keys.json"),
        "MCP_BROKER_LEASE_S": str(LEASE_S)})
    client = RawClient(f"ws://127.0.0.1:{port}/mcp", additional_headers=bearer("meter"))
    try:
        client.send({"jsonrpc": "2.0", "id": "long", "method": "tools/call",
                     "params": {"name": "echo__slow", "arguments": {"seconds": 15, "steps": 1}, "_meta": LONGER}})
        assert wait_until(lambda: _leases(r, "calls", "meter") == 1)
        time.sleep(LEASE_S * 2)  # past a lease's life: still held, because its process renews it
        assert _leases(r, "calls", "meter") == 1 and _leases(r, "connections", "meter") == 1
        web.stop(signal.SIGKILL)
        assert wait_until(lambda: _leases(r, "calls", "meter") == 0 and _leases(r, "connections", "meter") == 0,
                          timeout=LEASE_S * 4)
    finally:
        with contextlib.suppress(Exception):
            client.close()
        web.stop()


# ---------------------------------------------------------------- findings 3 and 4 (fixed by auth-sessions)
def _web_with_short_sessions(t: Tenants, ttl_s: int) -> tuple[Proc, int]:
    port = free_port()
    proc = t.stack.start_web(port, env={
        "MCP_BROKER_API_KEYS": "alice:K1:echo__*,bob:K2,admin:K3",
        "MCP_BROKER_KEYS_FILE": str(Path(t.stack.config_path).parent / "keys.json"),
        "MCP_BROKER_SESSION_TTL_S": str(ttl_s)})
    return proc, port


def test_an_expired_session_is_nobody_s_on_either_transport(tenants: Tenants) -> None:
    """Alice's sessions, once expired, can be resumed by no one (bob, or alice herself), over the socket or
    Streamable HTTP, whichever transport opened them."""
    r = tenants.stack.redis()
    web, port = _web_with_short_sessions(tenants, 2)
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    try:
        with RawClient(f"ws://127.0.0.1:{port}/mcp", additional_headers=bearer("alice")) as alice:
            ws_session = alice.ws.response.headers["Mcp-Session-Id"]
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            http_session = http.post("/mcp", json=INIT, headers={**headers, **bearer("alice")}
                                     ).headers["Mcp-Session-Id"]
            for session in (ws_session, http_session):
                assert wait_until(lambda s=session: not r.exists(redis_keys.session(s)), timeout=30)
            for who in ("bob", "alice"):
                for session in (ws_session, http_session):
                    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
                    assert http.post("/mcp", json=ping, headers={**headers, **bearer(who), "Mcp-Session-Id": session}
                                     ).status_code == 404
                    with pytest.raises(InvalidStatus) as refused:
                        RawClient(f"ws://127.0.0.1:{port}/mcp", initialize=False,
                                  additional_headers={**bearer(who), "Mcp-Session-Id": session})
                    assert refused.value.response.status_code == 404
        assert not r.exists(redis_keys.session(ws_session)) and not r.exists(redis_keys.session(http_session))
    finally:
        web.stop()


SAMPLING_ENVELOPE = {**ENVELOPE, "io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}


def _modern_frame(params: dict[str, Any], rid: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {**params, "_meta": SAMPLING_ENVELOPE}}


def test_request_state_is_the_key_s_own_on_every_transport(tenants: Tenants) -> None:
    """Bob's `requestState` answers bob's question only: alice cannot replay it over Streamable HTTP or a
    WebSocket, it does not move to another endpoint, and once bob used it (on any transport) it is spent."""
    call = {"name": "echo__ask_model", "arguments": {"question": "bob's question"}}
    answer = {"role": "assistant", "content": {"type": "text", "text": "bob's answer"}, "model": "m"}

    def http_post(who: str, params: dict[str, Any], path: str = "/mcp", rid: Any = 1) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Content-Type": "application/json", "MCP-Protocol-Version": MODERN,
                   "Mcp-Method": "tools/call", "Mcp-Name": params["name"], **bearer(who)}
        return httpx2.post(tenants.base() + path, content=json.dumps(_modern_frame(params, rid)), headers=headers,
                           timeout=30).json()  # type: ignore[no-any-return]

    def ws_post(who: str, params: dict[str, Any], rid: Any = 1) -> dict[str, Any]:
        with RawClient(tenants.ws(index=1), initialize=False, additional_headers=bearer(who)) as client:
            client.send(_modern_frame(params, rid))
            return client.response(timeout=30)

    first = http_post("bob", call)["result"]
    assert first["resultType"] == "input_required"
    (question, _), = first["inputRequests"].items()
    retry = {**call, "requestState": first["requestState"], "inputResponses": {question: answer}}
    assert http_post("alice", retry)["error"]["code"] == -32602
    assert ws_post("alice", retry)["error"]["code"] == -32602
    scoped = {**retry, "name": "ask_model"}
    assert http_post("bob", scoped, "/servers/echo/mcp")["error"]["code"] == -32602
    done = ws_post("bob", retry, rid=2)
    assert done["result"]["structuredContent"] == {"result": "bob's answer"}, done
    assert http_post("bob", retry, rid=3)["error"]["code"] == -32602  # spent
