"""Backends done right (issue 7) and replicas (issue 4): real workers, real MCP servers, real processes.

This module runs its own broker (own config file, own Redis key prefix) so that
reloading the config or SIGKILLing a worker here cannot disturb the shared
stack of the other test modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import psutil
import pytest

from cli.devrun import free_port
from tests.stack import ROOT, VENV_BIN, Proc, Stack
from tests.wsclient import RawClient

PREFIX = f"mcpbt{uuid.uuid4().hex[:6]}"
SERVERS = ROOT / "examples" / "servers"
SECRET = "s3cret-" + uuid.uuid4().hex[:6]
# what eager_tiny's tool declares: its structured content ({"text", "pid"}) does not fit it
OUTPUT_SCHEMA = {"type": "object", "properties": {"words": {"type": "integer"}}, "required": ["words"]}


def server_config(http_port: int, replica_ports: tuple[int, int]) -> dict[str, Any]:
    py = sys.executable
    return {"mcpServers": {
        "iso_shared": {"command": py, "args": [str(SERVERS / "notes.py")], "broker": {"timeout_s": 10}},
        "iso_private": {"command": py, "args": [str(SERVERS / "notes.py")],
                        "broker": {"timeout_s": 10, "isolation": "per_client"}},
        "iso_capped": {"command": py, "args": [str(SERVERS / "echo.py")],
                       "broker": {"timeout_s": 10, "retries": 1, "isolation": "per_client", "max_clients": 2}},
        "tinyr": {"command": py, "args": [str(SERVERS / "tiny.py"), "--tag", "restarts"],
                  "broker": {"timeout_s": 10, "retries": 3}},
        "eager_tiny": {"command": py, "args": [str(SERVERS / "tiny.py"), "--tag", "eager"], "broker": {"eager": True},
                       "env": {"TINY_OUTPUT_SCHEMA": json.dumps(OUTPUT_SCHEMA)}},
        "idler": {"command": py, "args": [str(SERVERS / "tiny.py"), "--tag", "idler"], "broker": {"idle_s": 1}},
        "vars_stdio": {"command": py, "args": [str(SERVERS / "probe.py")],
                       "env": {"PROBE_SECRET": "${MCPB_TEST_SECRET}",
                               "PROBE_MIXED": "a-${MCPB_TEST_SECRET}-${MCPB_TEST_UNSET:-dflt}-$${LITERAL}"}},
        "vars_http": {"url": f"http://127.0.0.1:{http_port}/mcp", "headers": {"X-Api-Key": "${MCPB_TEST_SECRET}"},
                      "broker": {"forward_headers": ["X-User-Token"]}},
        "hangs": {"command": py, "args": [str(SERVERS / "tiny.py"), "--hang"],
                  "broker": {"timeout_s": 3, "retries": 0}},
        "broken": {"command": py, "args": [str(SERVERS / "tiny.py"), "--exit-at-start", "3"],
                   "broker": {"timeout_s": 8, "retries": 3}},
        "replicated": {"replicas": [{"url": f"http://127.0.0.1:{replica_ports[0]}/mcp"},
                                    {"url": f"http://127.0.0.1:{replica_ports[1]}/mcp"}],
                       "broker": {"timeout_s": 10, "retries": 3, "health_interval_s": 1}},
    }}


@dataclass
class BackendStack:
    stack: Stack
    config: dict[str, Any]
    replica_ports: tuple[int, int]
    http_servers: dict[str, subprocess.Popen[bytes]]

    def key(self, *parts: str) -> str:
        return ":".join([PREFIX, *parts])

    def start_worker(self) -> Proc:
        queues = ",".join(f"mcp.{name}" for name in self.config["mcpServers"])
        node = f"backends.{uuid.uuid4().hex[:6]}@%h"
        argv = [str(VENV_BIN / "celery"), "-A", "workers.app", "worker", "-Q", queues, "-P", "threads", "-c", "16",
                "-n", node, "--without-gossip", "--without-mingle", "-l", "info"]
        return self.stack._spawn(f"worker-backends-{len(self.stack.procs)}", argv)

    def workers(self) -> list[Proc]:
        return [p for p in self.stack.procs if p.name.startswith("worker-backends-") and p.alive()]

    def wait_for_catalog(self, servers: list[str], timeout: float = 90) -> None:
        r = self.stack.redis()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(r.exists(self.key("catalog", s)) for s in servers):
                return
            time.sleep(0.2)
        raise AssertionError(f"catalogs of {servers} not published; logs in {self.stack.log_dir}")

    def health(self, server: str) -> dict[int, dict[str, Any]]:
        raw = self.stack.redis().hgetall(self.key("health", server))
        return {int(k): json.loads(v) for k, v in raw.items()}


def start_probe(port: int, name: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(SERVERS / "probe.py"), "--http", str(port), "--name", name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx2.HTTPError):
            httpx2.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
            return proc
        time.sleep(0.1)
    raise AssertionError(f"probe server on {port} did not start")


@pytest.fixture(scope="module")
def bstack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendStack]:
    http_port, replica_ports = free_port(), (free_port(), free_port())
    config = server_config(http_port, replica_ports)
    path = tmp_path_factory.mktemp("backends") / "mcp_servers.json"
    path.write_text(json.dumps(config))
    stack = Stack(redis_url, config_path=path)
    os.environ["MCPB_TEST_SECRET"] = SECRET  # the stack's processes inherit the test's environment
    http_servers = {"vars": start_probe(http_port, "vars"), "a": start_probe(replica_ports[0], "a"),
                    "b": start_probe(replica_ports[1], "b")}
    original_env = type(stack).env

    def env_with_prefix(self: Stack) -> dict[str, str]:
        return {**original_env.fget(self), "MCP_BROKER_PREFIX": PREFIX}  # type: ignore[attr-defined]

    stack.__class__ = type("PrefixedStack", (Stack,), {"env": property(env_with_prefix)})
    bs = BackendStack(stack, config, replica_ports, http_servers)
    try:
        # "hangs" never starts, so it never lists a catalog of its own. Without one, the worker's start-up
        # listing and every web request for missing catalogs (any call to an unknown tool in the tests before,
        # every 10 s) each start it: one failed start apiece, and from the third it is unhealthy and waits out
        # a growing backoff in which a call fails at once with -32603 (README, "Crashes and health"). A
        # placeholder catalog keeps its starts to its own test (measured: 3 failures before that test ran).
        stack.redis().set(bs.key("catalog", "hangs"), json.dumps(
            {"server": "hangs", "digest": "placeholder", "tools": [], "resources": [], "resourceTemplates": [],
             "prompts": []}))
        bs.start_worker()
        stack.start_web()
        bs.wait_for_catalog([s for s in config["mcpServers"] if s not in ("broken", "hangs")])
        yield bs
    finally:
        stack.stop()
        for proc in http_servers.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def text_of(response: dict[str, Any]) -> Any:
    assert "result" in response, response
    structured = response["result"]["structuredContent"]  # non-object results come wrapped in "result"
    return structured["result"] if set(structured) == {"result"} else structured


# ---------------------------------------------------------------- isolation
def backend_children(bs: BackendStack, marker: str) -> list[psutil.Process]:
    """The live MCP server children of this module's workers whose command line contains `marker`."""
    found = []
    for worker in bs.workers():
        for child in psutil.Process(worker.popen.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if marker in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child)
    return found


def test_per_client_isolation_keeps_state_apart_and_shared_shares_it(bstack: BackendStack) -> None:
    with RawClient(bstack.stack.ws_url()) as a, RawClient(bstack.stack.ws_url()) as b:
        # shared (one worker here: "shared" is the worker's one warm session): B sees what A wrote
        marker = f"shared-{uuid.uuid4().hex[:6]}"
        a.call("iso_shared__add_note", {"text": marker})
        assert marker in text_of(b.call("iso_shared__list_notes"))

        # per_client, with two workers: each client has its own backend, and its calls stick to it
        bstack.start_worker()
        time.sleep(3)
        for i in range(8):
            assert text_of(a.call("iso_private__add_note", {"text": f"a-{i}"})) == i + 1
        assert text_of(b.call("iso_private__add_note", {"text": "b-only"})) == 1
        assert text_of(a.call("iso_private__list_notes")) == [f"a-{i}" for i in range(8)]
        assert text_of(b.call("iso_private__list_notes")) == ["b-only"]

        # A's session ends (expired or deleted): its backend session is closed, B's stays
        before = len(backend_children(bstack, "notes.py"))
        bstack.stack.redis().delete(bstack.key("session", a.init_result["_meta"]["io.mcp-broker/sessionId"]))
        deadline = time.monotonic() + 20
        while len(backend_children(bstack, "notes.py")) >= before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(backend_children(bstack, "notes.py")) == before - 1
        assert text_of(b.call("iso_private__list_notes")) == ["b-only"]


def test_a_per_client_session_is_recreated_elsewhere_when_its_worker_dies(bstack: BackendStack) -> None:
    while len(bstack.workers()) < 2:
        bstack.start_worker()
        time.sleep(3)
    r = bstack.stack.redis()
    with RawClient(bstack.stack.ws_url()) as a:
        assert text_of(a.call("iso_private__add_note", {"text": "before"})) == 1
        session_id = a.init_result["_meta"]["io.mcp-broker/sessionId"]
        owner = r.get(bstack.key("owner", "iso_private", session_id))
        [victim] = [w for w in bstack.workers() if w.popen.pid == int(owner.rsplit(":", 1)[1])]
        victim.stop(signal.SIGKILL)
        # the next call reaches a live worker (after the dead one's lease expires), on a fresh backend
        assert text_of(a.call("iso_private__list_notes", timeout=60)) == []
        assert text_of(a.call("iso_private__add_note", {"text": "after"})) == 1
        assert r.get(bstack.key("owner", "iso_private", session_id)) not in (None, owner)


def test_past_max_clients_the_least_recently_used_idle_client_session_is_closed(bstack: BackendStack) -> None:
    while len(bstack.workers()) > 1:  # the limit is per worker process: every client on one
        bstack.workers()[-1].stop(signal.SIGTERM)

    def backend_pid(client: RawClient) -> int:
        return int(text_of(client.call("iso_capped__whoami"))["pid"])

    with RawClient(bstack.stack.ws_url()) as a, RawClient(bstack.stack.ws_url()) as b, \
            RawClient(bstack.stack.ws_url()) as c:
        pid_a, pid_b = backend_pid(a), backend_pid(b)
        assert pid_a != pid_b
        assert backend_pid(a) == pid_a  # now b's is the least recently used
        pid_c = backend_pid(c)  # a third client: b's session is closed to make room
        assert pid_c not in (pid_a, pid_b)
        assert backend_pid(a) == pid_a and backend_pid(c) == pid_c
        pid_b2 = backend_pid(b)  # b starts afresh (a's, least recently used now, makes room)
        assert pid_b2 not in (pid_a, pid_b, pid_c)
        wait_for(lambda: exited(pid_b), timeout=10)  # the closed session's backend process ended

        # both held sessions busy: a new client's call is retried, then refused naming the limit
        for client in (b, c):
            client.send({"jsonrpc": "2.0", "id": "busy", "method": "tools/call",
                         "params": {"name": "iso_capped__slow", "arguments": {"seconds": 4, "steps": 8},
                                    "_meta": {"progressToken": "busy"}}})
        for client in (b, c):  # its first progress note: the slow call is running (for 3.5 s more)
            while client.recv(timeout=30).get("method") != "notifications/progress":
                pass
        with RawClient(bstack.stack.ws_url()) as d:
            refused = d.call("iso_capped__whoami", timeout=30)
        assert "max_clients=2" in refused["error"]["message"], refused
        for client in (b, c):
            assert client.response(timeout=10)["result"]["isError"] is False


# ---------------------------------------------------------------- lifecycle
def test_backends_start_lazily_or_eagerly_and_idle_ones_close(bstack: BackendStack) -> None:
    # eager: up in every worker, with no call
    wait_for(lambda: len(backend_children(bstack, "--tag eager")) == len(bstack.workers()), timeout=30)
    with RawClient(bstack.stack.ws_url()) as client:
        wait_for(lambda: not backend_children(bstack, "--tag idler"), timeout=30)  # listed at start, then idle
        assert client.call("idler__echo", {"text": "wake"})["result"]["structuredContent"]["text"] == "wake"
        assert len(backend_children(bstack, "--tag idler")) == 1  # started by the call
        wait_for(lambda: not backend_children(bstack, "--tag idler"), timeout=30)  # closed after idle_s
        assert client.call("idler__echo", {"text": "again"})["result"]["structuredContent"]["text"] == "again"
    assert "backend idler: idle for" in "".join(worker.log() for worker in bstack.workers())


def test_results_pass_unchanged_whether_or_not_they_fit_the_output_schema(bstack: BackendStack) -> None:
    """The broker forwards a result as the server sent it; checking structured content against the output
    schema is the client's (it has the schema from the listing). The worker once ran the SDK's check and
    answered a result that did not fit with an internal error."""
    with RawClient(bstack.stack.ws_url()) as client:
        listed = {t["name"]: t for t in client.request("tools/list")["result"]["tools"]}
        assert listed["eager_tiny__echo"]["outputSchema"] == OUTPUT_SCHEMA
        reply = client.call("eager_tiny__echo", {"text": "unfit"}, timeout=30)
    assert "error" not in reply, reply
    assert reply["result"]["structuredContent"]["text"] == "unfit" and reply["result"]["isError"] is False
    assert "words" not in reply["result"]["structuredContent"]


def test_a_stopping_worker_closes_its_backends(bstack: BackendStack) -> None:
    worker = bstack.start_worker()
    wait_for(lambda: worker.alive() and any(
        "--tag eager" in command_line(c) for c in psutil.Process(worker.popen.pid).children()), timeout=60)
    children = psutil.Process(worker.popen.pid).children()
    worker.stop(signal.SIGTERM)
    assert not worker.alive()
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


# ---------------------------------------------------------------- forwarding
def test_variables_reach_stdio_env_and_http_headers_and_named_client_headers_pass(bstack: BackendStack) -> None:
    headers = {"X-User-Token": "tok-of-a", "X-Other": "not-forwarded"}
    with RawClient(bstack.stack.ws_url(), additional_headers=headers) as client:
        secret = text_of(client.call("vars_stdio__env", {"name": "PROBE_SECRET"}))
        assert secret == {"name": "PROBE_SECRET", "value": SECRET}
        mixed = text_of(client.call("vars_stdio__env", {"name": "PROBE_MIXED"}))["value"]
        assert mixed == f"a-{SECRET}-dflt-${{LITERAL}}"
        seen = text_of(client.call("vars_http__headers"))
        assert seen["x-api-key"] == SECRET
        assert seen["x-user-token"] == "tok-of-a"
        assert "x-other" not in seen
    with RawClient(bstack.stack.ws_url()) as anonymous:  # no token: none forwarded (another backend session)
        assert "x-user-token" not in text_of(anonymous.call("vars_http__headers"))


# ---------------------------------------------------------------- crashes
def test_backend_exiting_at_start_gives_a_clear_error_and_is_unhealthy(bstack: BackendStack) -> None:
    r = bstack.stack.redis()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and bstack.health("broken").get(0, {}).get("state") != "unhealthy":
        time.sleep(0.2)
    record = bstack.health("broken")[0]
    assert record["healthy"] is False and record["state"] == "unhealthy" and record["failures"] >= 3
    assert "failed to start" in record["error"] and record["retry_at"] > time.time() - 60
    # its stderr is kept apart from the error clients may see (issue 13 finding 6): for admins only
    assert "refusing to start" in record["stderr"] and "refusing to start" not in record["error"]
    # the backend's stderr is in the worker's log, prefixed with the server's name
    logs = "".join(p.log() for p in bstack.stack.procs if p.name.startswith("worker-backends-"))
    assert "[broken] tiny: refusing to start" in logs
    ready = httpx2.get(f"{bstack.stack.http_url()}/readyz", timeout=10).json()["servers"]["broken"]
    assert ready["ready"] is False and "failed to start" in ready["reason"]
    assert ready["backend"]["replicas"]["0"]["state"] == "unhealthy"
    assert "refusing to start" in ready["backend"]["replicas"]["0"]["stderr"]  # no keys: everyone is the admin
    with RawClient(bstack.stack.ws_url()) as client:
        # no catalog (it never started): the error says why
        error = client.call("broken__echo", {"text": "x"}, timeout=8)["error"]
        assert error["code"] == -32602 and "unhealthy" in error["message"] and "failed to start" in error["message"]
        assert "refusing to start" not in error["message"]  # the kind of failure, never the backend's stderr
        # with a catalog (it worked once, now it dies at start): a -32603 naming the server, within its timeout
        tiny_tools = json.loads(r.get(bstack.key("catalog", "tinyr")))
        r.set(bstack.key("catalog", "broken"), json.dumps({**tiny_tools, "server": "broken", "digest": "x"}))
        r.incr(bstack.key("catalog", "version"))
        time.sleep(1.5)  # the web re-reads the catalog version at most once a second
        error = client.call("broken__echo", {"text": "x"}, timeout=8)["error"]
        assert error["code"] == -32603 and error["data"]["server"] == "broken"
        assert "broken" in error["message"] and ("unhealthy" in error["message"] or "start" in error["message"])


def test_a_backend_that_never_answers_its_handshake_costs_a_call_its_timeout_not_more(bstack: BackendStack) -> None:
    r = bstack.stack.redis()
    tiny_tools = json.loads(r.get(bstack.key("catalog", "tinyr")))
    r.set(bstack.key("catalog", "hangs"), json.dumps({**tiny_tools, "server": "hangs", "digest": "y"}))
    r.incr(bstack.key("catalog", "version"))
    time.sleep(1.5)  # the web re-reads the catalog version at most once a second
    assert not bstack.health("hangs"), "started before its test: a call in its backoff would fail at once"
    with RawClient(bstack.stack.ws_url()) as client:
        error = client.call("hangs__echo", {"text": "x"}, timeout=15)["error"]
        assert error["code"] == -32001 and "hangs" in error["message"]
    wait_for(lambda: "handshake" in str(bstack.health("hangs").get(0, {}).get("error")), timeout=30)
    assert not bstack.health("hangs")[0]["healthy"]


def exited(pid: int) -> bool:
    try:
        return is_zombie(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


def command_line(process: psutil.Process) -> str:
    """Its command line; "" once it has exited (children come and go while a test looks)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def is_zombie(process: psutil.Process) -> bool:
    """A zombie child; one reaped between listing and asking is gone, so not a zombie."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


RESTARTS = 80
"""Calls whose backend is SIGKILLed after each: every one starts a fresh backend (~0.14 s each here), so 80
show restarts never pile up children nor leave zombies as well as the 200 this ran before (28 s of the suite)."""


def test_killed_backends_are_reaped_and_none_outlives_a_sigkilled_worker(bstack: BackendStack) -> None:
    with RawClient(bstack.stack.ws_url()) as client:
        pids: set[int] = set()
        for i in range(RESTARTS):
            reply = client.call("tinyr__echo", {"text": str(i)}, timeout=30)
            assert reply["result"]["structuredContent"]["text"] == str(i), reply
            pids.add(reply["result"]["structuredContent"]["pid"])
            children = backend_children(bstack, "--tag restarts")
            assert len(children) <= len(bstack.workers())  # restarts never pile up children
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        assert len(pids) >= RESTARTS * 3 // 4  # the calls really ran on fresh backends
        for worker in bstack.workers():  # every killed child was reaped (a zombie or two may be in flight)
            zombies = [c for c in psutil.Process(worker.popen.pid).children() if is_zombie(c)]
            assert len(zombies) <= 2
    mcp_servers_before = [p.pid for p in our_mcp_servers()]
    assert mcp_servers_before
    for worker in bstack.workers():
        worker.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and [p for p in our_mcp_servers() if not owned_by_live_worker(p)]:
        time.sleep(0.2)
    orphans = [(p.pid, command_line(p)) for p in our_mcp_servers() if not owned_by_live_worker(p)]
    orphans = [(pid, line) for pid, line in orphans if psutil.pid_exists(pid)]
    assert orphans == []
    bstack.start_worker()
    bstack.wait_for_catalog(["tinyr"])


# ---------------------------------------------------------------- replicas (issue 4)
def replica_names(client: RawClient, calls: int) -> list[str]:
    return [text_of(client.call("replicated__whoami", timeout=30))["name"] for _ in range(calls)]


def test_replicas_share_calls_and_a_killed_one_leaves_and_returns(bstack: BackendStack) -> None:
    with RawClient(bstack.stack.ws_url()) as client:
        assert set(replica_names(client, 30)) == {"a", "b"}  # equal replicas share the load
        victim = bstack.http_servers.pop("b")
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(5)
        assert set(replica_names(client, 30)) == {"a"}  # every call still succeeds, on the live replica
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and bstack.health("replicated").get(1, {}).get("healthy", True):
            time.sleep(0.2)
        down = bstack.health("replicated")[1]
        assert down["healthy"] is False and down["endpoint"].endswith(f":{bstack.replica_ports[1]}/mcp")
        bstack.http_servers["b"] = start_probe(bstack.replica_ports[1], "b")
        deadline = time.monotonic() + 90  # the next health check after its backoff puts it back
        while time.monotonic() < deadline and not bstack.health("replicated").get(1, {}).get("healthy"):
            time.sleep(0.5)
        assert bstack.health("replicated")[1]["healthy"] is True
        assert "b" in replica_names(client, 30)


# ---------------------------------------------------------------- reload
def admin_reload(bs: BackendStack) -> httpx2.Response:
    return httpx2.post(f"{bs.stack.http_url()}/v1/admin/reload", timeout=30)


def tool_names(client: RawClient) -> set[str]:
    response = client.request("tools/list")
    assert "result" in response, response
    return {tool["name"] for tool in response["result"]["tools"]}


def wait_for(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    assert predicate()


def test_reload_adds_and_removes_servers_and_rejects_a_broken_file(bstack: BackendStack) -> None:
    path = bstack.stack.config_path
    original = path.read_text()
    changed = json.loads(original)
    changed["mcpServers"].pop("iso_shared")
    changed["mcpServers"]["added_probe"] = {"command": sys.executable, "args": [str(SERVERS / "probe.py")],
                                            "env": {"PROBE_NAME": "added"}}
    changed["mcpServers"]["vars_stdio"]["env"]["PROBE_MIXED"] = "changed by a reload"
    port = free_port()  # a web process with API keys, started while the file is still good
    bstack.stack.start_web(port, env={"MCP_BROKER_API_KEYS": "user:user-key,admin:admin-key"})
    url = f"http://127.0.0.1:{port}/v1/admin/reload"
    wait_for(lambda: httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200)  # app loaded
    try:
        with RawClient(bstack.stack.ws_url()) as client:
            assert "iso_shared__add_note" in tool_names(client)
            path.write_text(json.dumps(changed))
            answer = admin_reload(bstack)
            assert answer.status_code == 200, answer.text
            assert answer.json()["added"] == ["added_probe"] and answer.json()["removed"] == ["iso_shared"]
            assert answer.json()["changed"] == ["vars_stdio"]
            wait_for(lambda: "added_probe__whoami" in tool_names(client))
            assert not any(name.startswith("iso_shared__") for name in tool_names(client))
            assert any(n.get("method") == "notifications/tools/list_changed" for n in client.notifications)
            assert text_of(client.call("added_probe__whoami", timeout=30))["name"] == "added"
            assert "error" in client.call("iso_shared__list_notes")
            # a changed server restarts with its new settings
            mixed = text_of(client.call("vars_stdio__env", {"name": "PROBE_MIXED"}, timeout=30))["value"]
            assert mixed == "changed by a reload"

            # a broken file is rejected with the reason; the running config keeps serving
            path.write_text('{"mcpServers": {"x": {"command": "y",}}}')
            answer = admin_reload(bstack)
            assert answer.status_code == 400
            assert answer.json()["error"]["code"] == "invalid_config" and "not valid JSON" in answer.text
            path.write_text(json.dumps({"mcpServers": {"x": {"command": "y", "broker": {"isolation": "sometimes"}}}}))
            answer = admin_reload(bstack)
            assert answer.status_code == 400 and "server x: field broker.isolation" in answer.text
            assert text_of(client.call("added_probe__whoami", timeout=30))["name"] == "added"

            # only an admin key may reload
            refused = httpx2.post(url, headers={"Authorization": "Bearer user-key"}, timeout=30)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
            assert httpx2.post(url, timeout=30).status_code == 401
            allowed = httpx2.post(url, headers={"Authorization": "Bearer admin-key"}, timeout=30)
            assert allowed.status_code == 400  # an admin may; the file is still the broken one

            # SIGHUP to a worker reloads too: back to the original file
            path.write_text(original)
            os.kill(bstack.workers()[0].popen.pid, signal.SIGHUP)
            wait_for(lambda: "iso_shared__add_note" in tool_names(client) and
                     "added_probe__whoami" not in tool_names(client))
            assert text_of(client.call("iso_shared__list_notes", timeout=30)) is not None
    finally:
        path.write_text(original)


def our_mcp_servers() -> list[psutil.Process]:
    """Every running MCP server process of this checkout's example servers (any stack on the machine)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.info["cmdline"] or []
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(str(SERVERS) in part for part in cmdline) \
                    and "--http" not in cmdline:
                found.append(proc)
    return found


def owned_by_live_worker(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        parent = proc.parent()
        return parent is not None and parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE \
            and any("celery" in part for part in parent.cmdline())
    return False
