"""Cancellation that clients rely on (issue 17 part 3), with real clients and a backend call that sends nothing.

The backend is the echo server's `nap` (tests/mcp_servers.test.json: examples/servers/echo.py): it sleeps
without progress or logs, and `naps(key)` says whether the backend saw its cancellation ("cancelled"), so
each test checks the backend itself, not only the broker's bookkeeping. Every nap asks for a 120 s limit
(`io.mcp-broker/timeoutS`), far beyond each test's bounded wait, so a timeout cannot pass for a cancel.

- Modern era over HTTP: the official Python SDK (`mcp.Client`, mode 2026-07-28) cancels by closing the
  response stream, nothing else; the broker's socket watcher notices and cancels the backend call. A raw
  client that closes mid-call, and one that pipelines its next request on the same keep-alive connection
  (which must not read as gone).
- `notifications/cancelled` POSTed in the modern era: 202, no body, and the named request of the same key
  is cancelled; another client's request with another id is not; another API key's notice naming the
  same id cancels nothing.
- Handshake era over HTTP: `DELETE` of the session cancels its running and its queued calls: the SDK's
  transport sends it when its session closes; the TypeScript SDK's `terminateSession()` sends it; the
  TypeScript SDK's AbortController cancels one call (its `notifications/cancelled`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCRequest

from tests.installs import installed
from tests.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
TS_CLIENT = ROOT / "tests" / "clients" / "cancel_client.mjs"
MODERN = "2026-07-28"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "cancel-tests", "version": "1"}}
LONG = {"io.mcp-broker/timeoutS": 120}  # the nap's own limit: far beyond any wait below
WAIT_S = 45.0
NAPS_DIR = Path(tempfile.gettempdir()) / "mcp-broker-naps"  # where the echo server's naps write their state


def nap_state(key: str) -> str:
    """What the backend recorded of nap `key` (examples/servers/echo.py writes it to a file per key)."""
    path = NAPS_DIR / key
    return path.read_text() if path.exists() else "unknown"


def wait_for_nap(key: str, wanted: str) -> None:
    deadline = time.monotonic() + WAIT_S
    state = ""
    while time.monotonic() < deadline:
        state = nap_state(key)
        if state == wanted:
            return
        time.sleep(0.1)
    pytest.fail(f"nap {key} is {state!r}, not {wanted!r}, after {WAIT_S:g}s")


def start_naps(post: Callable[[str, int, str, float], None],
               naps: list[tuple[str, int, str, float]]) -> list[threading.Thread]:
    """Each nap `(name, request id, key, seconds)` posted on a thread of its own; back once every one has started."""
    threads = [threading.Thread(target=post, args=nap) for nap in naps]
    for thread in threads:
        thread.start()
    for _, _, key, _ in naps:
        wait_for_nap(key, "started")
    return threads


def modern_body(rid: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": {**params, "_meta": {**ENVELOPE, **LONG}}}


def modern_request_bytes(port: int, body: dict[str, Any]) -> bytes:
    """A raw HTTP/1.1 modern-era tools/call POST (keep-alive), as a client library writes it."""
    payload = json.dumps(body).encode()
    head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: {MODERN}\r\n"
            f"Mcp-Method: {body['method']}\r\nMcp-Name: {body['params']['name']}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n")
    return head.encode() + payload


# ---------------------------------------------------------------- modern era: closing the stream
def test_python_sdk_modern_closing_the_stream_cancels_a_silent_backend_call(stack: Stack) -> None:
    key = f"sdk-modern-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with Client(f"{stack.http_url()}/mcp", mode=MODERN) as client, anyio.create_task_group() as tg:
            async def call() -> None:
                await client.call_tool("echo__nap", {"key": key, "seconds": 90}, meta=LONG)

            tg.start_soon(call)
            await anyio.to_thread.run_sync(wait_for_nap, key, "started")
            tg.cancel_scope.cancel()  # the SDK aborts the POST: its stream closes, nothing else is sent

    anyio.run(scenario)
    wait_for_nap(key, "cancelled")


def test_raw_client_closing_mid_call_cancels_but_a_pipelined_one_is_answered(stack: Stack) -> None:
    port = stack.web_ports[0]
    gone, kept = f"raw-gone-{uuid.uuid4().hex[:8]}", f"raw-kept-{uuid.uuid4().hex[:8]}"
    with socket.create_connection(("127.0.0.1", port)) as closer:
        closer.sendall(modern_request_bytes(port, modern_body(1, "tools/call", {
            "name": "echo__nap", "arguments": {"key": gone, "seconds": 90}})))
        wait_for_nap(gone, "started")
    wait_for_nap(gone, "cancelled")

    # keep-alive: the next request is already sent on the connection while the first one runs (bytes wait
    # unread in the socket), and the client reads nothing for a while: neither means it left
    with socket.create_connection(("127.0.0.1", port)) as piped:
        first = modern_body(1, "tools/call", {"name": "echo__nap", "arguments": {"key": kept, "seconds": 2}})
        second = modern_body(2, "tools/call", {"name": "echo__echo", "arguments": {"text": "after"}})
        piped.sendall(modern_request_bytes(port, first) + modern_request_bytes(port, second))
        wait_for_nap(kept, "finished")
        piped.settimeout(30)
        received = b""
        while b"after" not in received:
            chunk = piped.recv(65536)
            assert chunk, f"the connection closed early: {received!r}"
            received += chunk
    assert b"napped 2" in received


def test_a_client_that_reads_nothing_while_events_stream_is_not_taken_for_gone(stack: Stack) -> None:
    """An SSE answer (progress first) to a client that reads nothing until the call has ended: the events pile
    up unread on its side while the watcher runs; the call still runs to its end and the answer is there."""
    port = stack.web_ports[0]
    body = modern_body(5, "tools/call", {"name": "echo__slow", "arguments": {"seconds": 2, "steps": 40}})
    body["params"]["_meta"]["progressToken"] = "slow-reader"
    with socket.create_connection(("127.0.0.1", port)) as sleepy:
        sleepy.sendall(modern_request_bytes(port, body))
        time.sleep(4)  # the call (2 s) ends while nothing is read; not a timing assertion: any delay will do
        sleepy.settimeout(30)
        received = b""
        while b"slept 2" not in received:
            chunk = sleepy.recv(65536)
            assert chunk, f"the stream ended without the answer: {received[-500:]!r}"
            received += chunk
    assert received.count(b"notifications/progress") == 40


# ---------------------------------------------------------------- modern era: notifications/cancelled
def test_modern_notifications_cancelled_cancels_the_named_request_only(stack: Stack) -> None:
    url = f"{stack.http_url()}/mcp"
    named, other = f"notified-{uuid.uuid4().hex[:8]}", f"untouched-{uuid.uuid4().hex[:8]}"
    answers: dict[str, httpx2.Response] = {}

    def post(name: str, rid: int, key: str, seconds: float) -> None:
        body = modern_body(rid, "tools/call", {"name": "echo__nap", "arguments": {"key": key, "seconds": seconds}})
        answers[name] = httpx2.post(url, json=body, timeout=120, headers={
            "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call", "Mcp-Name": "echo__nap"})

    threads = start_naps(post, [("named", 41, named, 90), ("other", 42, other, 3)])
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled",
              "params": {"requestId": 41, "reason": "user gave up", "_meta": ENVELOPE}}
    sent = httpx2.post(url, json=cancel, timeout=30, headers={
        "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "notifications/cancelled"})
    assert sent.status_code == 202 and sent.content == b"" and "content-type" not in sent.headers
    wait_for_nap(named, "cancelled")
    for thread in threads:
        thread.join(WAIT_S)
    assert answers["named"].status_code in (200, 204) and b'"result"' not in answers["named"].content
    assert nap_state(other) == "finished" and b"napped 3" in answers["other"].content


def test_a_key_cannot_cancel_another_keys_request_over_http(stack: Stack) -> None:
    """Two API keys on a keyed web process, the same client name and the same request id: key B's
    `notifications/cancelled` naming A's request 41 is answered 202 and cancels nothing. That B's notice was
    heard before A's call ended is proven by order, not time: A then cancels its own second nap, and the one
    reply hub hears the notices of its channel in the order they were published."""
    keyring = {"tenant-a": "k-cancel-a-31f0", "tenant-b": "k-cancel-b-9c2e"}
    env = {"MCP_BROKER_API_KEYS": ",".join(f"{name}:{key}" for name, key in keyring.items())}
    victim, control = f"tenant-a-{uuid.uuid4().hex[:8]}", f"tenant-a-ctl-{uuid.uuid4().hex[:8]}"
    answers: dict[str, httpx2.Response] = {}

    def headers(tenant: str, method: str) -> dict[str, str]:
        return {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN,
                "Mcp-Method": method, "Authorization": f"Bearer {keyring[tenant]}",
                **({"Mcp-Name": "echo__nap"} if method == "tools/call" else {})}

    with stack.extra_webs(env, count=1) as (port,):
        stack.wait_web_ready(port)
        url = f"http://127.0.0.1:{port}/mcp"

        def nap(name: str, rid: int, key: str, seconds: float) -> None:
            body = modern_body(rid, "tools/call", {"name": "echo__nap", "arguments": {"key": key, "seconds": seconds}})
            answers[name] = httpx2.post(url, json=body, timeout=120, headers=headers("tenant-a", "tools/call"))

        def cancel(tenant: str, rid: int) -> None:
            notice = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                      "params": {"requestId": rid, "reason": "not yours", "_meta": ENVELOPE}}
            sent = httpx2.post(url, json=notice, timeout=30, headers=headers(tenant, "notifications/cancelled"))
            assert sent.status_code == 202, sent.text

        threads = start_naps(nap, [("victim", 41, victim, 6), ("control", 42, control, 90)])
        cancel("tenant-b", 41)  # another tenant, A's request id and client name
        cancel("tenant-a", 42)  # A's own: heard after B's notice
        wait_for_nap(control, "cancelled")
        assert nap_state(victim) != "cancelled"
        for thread in threads:
            thread.join(WAIT_S)
    assert nap_state(victim) == "finished" and b"napped 6" in answers["victim"].content, answers["victim"].text


# ---------------------------------------------------------------- handshake era: DELETE
def test_python_sdk_closing_its_handshake_session_deletes_it_and_cancels_running_and_queued(stack: Stack) -> None:
    """`solo` runs one call at a time: of two naps, one runs and the other waits for the slot (which one is up
    to the two POSTs' race). The SDK's transport sends DELETE when its session closes (the calls were sent as
    bare requests, so no notifications/cancelled could do the cancelling instead)."""
    naps = [f"del-a-{uuid.uuid4().hex[:8]}", f"del-b-{uuid.uuid4().hex[:8]}"]
    running: list[str] = []

    def wait_for_one_started() -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            running.extend(key for key in naps if nap_state(key) == "started")
            if running:
                return
            time.sleep(0.1)
        pytest.fail(f"neither of {naps} started within {WAIT_S:g}s")

    async def scenario() -> None:
        async with (streamable_http_client(f"{stack.http_url()}/mcp") as (read, write),
                    ClientSession(read, write) as session):
            await session.initialize()
            for rid, key in enumerate(naps, start=901):
                request = JSONRPCRequest(jsonrpc="2.0", id=rid, method="tools/call", params={
                    "name": "solo__nap", "arguments": {"key": key, "seconds": 90}, "_meta": LONG})
                await write.send(SessionMessage(request))
            await anyio.to_thread.run_sync(wait_for_one_started)
        # leaving the transport's block sent DELETE (terminate_on_close)

    anyio.run(scenario)
    assert len(running) == 1, running  # one slot
    queued = next(key for key in naps if key not in running)
    wait_for_nap(running[0], "cancelled")
    # `solo` runs one call at a time, in the order they wait: had the queued nap survived, it would run
    # before this one
    httpx2.post(f"{stack.http_url()}/v1/calls", timeout=120,
                json={"tool": "solo__nap", "arguments": {"key": "after-" + queued, "seconds": 0.1}}).raise_for_status()
    assert nap_state(queued) == "unknown"


# ---------------------------------------------------------------- a third-party client: the TypeScript SDK
@pytest.fixture(scope="module")
def ts_client() -> Iterator[Path]:
    """The TypeScript SDK, installed once into tests/.cancel-node (git-ignored) from the pinned package file."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed (Node 20 is on the machine and in CI)")
    script = installed("cancel-node") / TS_CLIENT.name
    shutil.copy(TS_CLIENT, script)  # beside its node_modules, so its imports resolve
    yield script


def run_ts(script: Path, stack: Stack, key: str, mode: str) -> dict[str, Any]:
    done = subprocess.run(["node", str(script), f"{stack.http_url()}/mcp", key, mode], capture_output=True, text=True,
                          timeout=120, cwd=script.parent, env={**os.environ, "NODE_NO_WARNINGS": "1"})
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_typescript_sdk_abort_controller_cancels_a_silent_backend_call(stack: Stack, ts_client: Path) -> None:
    key = f"ts-abort-{uuid.uuid4().hex[:8]}"
    assert run_ts(ts_client, stack, key, "abort")["aborted"] is True
    wait_for_nap(key, "cancelled")


def test_typescript_sdk_terminate_session_cancels_its_calls(stack: Stack, ts_client: Path) -> None:
    key = f"ts-delete-{uuid.uuid4().hex[:8]}"
    assert run_ts(ts_client, stack, key, "terminate")["terminated"] is True
    wait_for_nap(key, "cancelled")


# ---------------------------------------------------------------- whose request a notification may cancel
def test_a_cancel_reaches_only_the_same_key_endpoint_and_client() -> None:
    """The registry every web process keeps of its waiting modern requests: a notice published by one key never
    cancels another key's request with the same id, nor one on another endpoint, nor another client's."""
    from broker import keys
    from web.transports import modern_cancel

    cancelled: list[str] = []
    entries = [("tenant-a", None, 7, "app", "a"), ("tenant-b", None, 7, "app", "b"),
               ("tenant-a", "echo", 7, "app", "a-echo"), ("tenant-a", None, 7, "other-app", "a-other"),
               ("tenant-a", None, 8, "app", "a-8")]
    with contextlib.ExitStack() as stack:
        for principal, scope, rid, client, name in entries:
            stack.enter_context(modern_cancel.cancellable(principal, scope, rid, client,
                                                          lambda name=name: cancelled.append(name)))
        notice = {"principal": "tenant-a", "scope": "", "requestId": 7, "client": "app"}
        modern_cancel.on_message(keys.MODERN_CANCEL_CHANNEL, json.dumps(notice))
        assert cancelled == ["a"]
        # a notice naming no client while two clients of the key wait with id 7: ambiguous, ignored
        modern_cancel.on_message(keys.MODERN_CANCEL_CHANNEL, json.dumps({**notice, "client": None}))
        assert cancelled == ["a"]
        # ... but with one request of that id waiting, it is the one meant
        modern_cancel.on_message(keys.MODERN_CANCEL_CHANNEL, json.dumps({**notice, "requestId": 8, "client": None}))
        assert cancelled == ["a", "a-8"]
        modern_cancel.on_message(keys.CATALOG_CHANGED, json.dumps(notice))  # another channel: ignored
        assert len(cancelled) == 2
    modern_cancel.on_message(keys.MODERN_CANCEL_CHANNEL, json.dumps(notice))  # the requests ended: nothing left
    assert len(cancelled) == 2


def test_anonymous_clients_of_one_key_do_not_cancel_each_others_request() -> None:
    """mcp-remote numbers its requests from 0: two clients of one key (or every local client without keys) that
    name no client both have a request 0 waiting; a notice from either must cancel neither, and a named client's
    request is not cancelled by a named notice of another name nor, when another waits, by a nameless one."""
    from broker import keys
    from web.transports import modern_cancel

    cancelled: list[str] = []

    def notify(rid: int, client: str | None) -> None:
        notice = {"principal": "anon", "scope": "", "requestId": rid, "client": client}
        modern_cancel.on_message(keys.MODERN_CANCEL_CHANNEL, json.dumps(notice))

    with contextlib.ExitStack() as stack:
        for rid, client, name in [(0, None, "first-0"), (0, None, "second-0"), (1, "app", "app-1"),
                                  (1, None, "anon-1"), (2, "app", "app-2")]:
            stack.enter_context(modern_cancel.cancellable("anon", None, rid, client,
                                                          lambda name=name: cancelled.append(name)))
        notify(0, None)
        notify(0, "app")
        notify(1, None)
        notify(2, "other-app")
        assert cancelled == []
        notify(1, "app")  # the named client's own request, though a nameless one shares its id
        notify(2, None)  # the only request 2 waiting
        assert cancelled == ["app-1", "app-2"]
