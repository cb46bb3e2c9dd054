"""resources/subscribe through the broker: a backend's notifications/resources/updated reaches every client
that subscribed (in its own namespace, on either transport), and the backend is unsubscribed only when the
last subscribed session leaves (fan-in with reference counts)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import anyio
import psutil
from mcp import Client
from mcp_types import ResourceUpdatedNotification

from tests.stack import Stack
from tests.wsclient import RawClient

UPDATED = "notifications/resources/updated"


def updates(client: RawClient, at_least: int = 0, timeout: float = 20) -> list[str]:
    """The resource uris the client was told changed so far, once there are `at_least` of them (or the
    deadline passed). A ping flushes what the web process sent before it, but an update is not ordered with
    the caller's result: the worker's SDK session hands a backend's notification to its handler in a task of
    its own (`JSONRPCDispatcher._dispatch_notification`, `start_soon`) while the response wakes the call at
    once, so under load the caller's result (and a ping right after it) can come before the update. Expecting
    none (`at_least=0`) asks once."""
    deadline = time.monotonic() + timeout
    while True:
        client.request("ping")
        seen = [n["params"]["uri"] for n in client.notifications if n.get("method") == UPDATED]
        if len(seen) >= at_least or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def test_updates_reach_subscribers_until_the_last_one_leaves(stack: Stack) -> None:
    scoped_url = stack.ws_url().replace("/mcp", "/servers/notes/mcp")
    with RawClient(stack.ws_url()) as aggregate, RawClient(scoped_url) as scoped, RawClient(stack.ws_url()) as caller:
        assert aggregate.init_result is not None and aggregate.init_result["capabilities"]["resources"]["subscribe"]
        assert aggregate.request("resources/subscribe", {"uri": "notes+notes://all"})["result"] == {}
        assert scoped.request("resources/subscribe", {"uri": "notes://all"})["result"] == {}

        caller.call("notes__add_note", {"text": "subscribed"})
        assert updates(aggregate, 1) == ["notes+notes://all"]
        assert updates(scoped, 1) == ["notes://all"]
        assert updates(caller) == []  # it did not subscribe

        # one subscriber leaves: the backend stays subscribed for the other
        assert aggregate.request("resources/unsubscribe", {"uri": "notes+notes://all"})["result"] == {}
        caller.call("notes__add_note", {"text": "one left"})
        assert updates(aggregate) == ["notes+notes://all"]
        assert updates(scoped, 2) == ["notes://all", "notes://all"]

        assert scoped.request("resources/unsubscribe", {"uri": "notes://all"})["result"] == {}
        caller.call("notes__add_note", {"text": "nobody listens"})
        assert updates(scoped) == ["notes://all", "notes://all"]

        unknown = aggregate.request("resources/subscribe", {"uri": "nope+x://y"})["error"]
        assert unknown["code"] == -32002
        assert aggregate.request("resources/subscribe", {})["error"]["code"] == -32602


def test_sdk_http_client_hears_updates_on_its_stream(stack: Stack) -> None:
    seen: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            seen.append(str(message.params.uri))

    async def scenario() -> None:
        async with Client(f"{stack.http_url()}/servers/notes/mcp", mode="legacy", message_handler=on_message) as c:
            await c.subscribe_resource("notes://all")
            await c.call_tool("add_note", {"text": "over http"})
            with anyio.fail_after(15):
                while not seen:
                    await anyio.sleep(0.05)
            await c.unsubscribe_resource("notes://all")

    anyio.run(scenario)
    assert seen == ["notes://all"]


def notes_backends(stack: Stack) -> list[psutil.Process]:
    """The notes.py processes the stack's notes workers hold."""
    found = []
    for proc in stack.procs:
        if proc.name.startswith("worker-notes-") and proc.alive():
            for child in psutil.Process(proc.popen.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if any("notes.py" in part for part in child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                        found.append(child)
    return found


def test_a_restarted_backend_is_subscribed_again(stack: Stack) -> None:
    """Subscriptions live in the backend process: when it dies, the worker subscribes its successor to
    every resource clients still listen to, before any call runs on it."""
    with RawClient(stack.ws_url()) as subscriber, RawClient(stack.ws_url()) as caller:
        assert subscriber.request("resources/subscribe", {"uri": "notes+notes://all"})["result"] == {}
        caller.call("notes__add_note", {"text": "before the crash"})
        assert updates(subscriber, 1) == ["notes+notes://all"]

        [backend] = notes_backends(stack)
        backend.kill()
        backend.wait(timeout=10)
        after = caller.call("notes__add_note", {"text": "after the crash"}, timeout=30)
        assert after["result"]["structuredContent"] == {"result": 1}  # a fresh backend: its first note
        assert [p.pid for p in notes_backends(stack)] != [backend.pid]
        assert updates(subscriber, 2) == ["notes+notes://all", "notes+notes://all"]
        assert subscriber.request("resources/unsubscribe", {"uri": "notes+notes://all"})["result"] == {}
