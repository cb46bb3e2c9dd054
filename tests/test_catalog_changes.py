"""Catalog freshness and the rest of what backends offer: list_changed, resources, prompts, completion."""

from __future__ import annotations

import time
import uuid

from tests.stack import Stack
from tests.wsclient import RawClient


def test_a_backend_that_changes_its_tools_notifies_connected_clients(stack: Stack) -> None:
    name = f"grown_{uuid.uuid4().hex[:6]}"
    with RawClient(stack.ws_url()) as watcher, RawClient(stack.ws_url()) as actor:
        assert actor.call("crashy__grow", {"name": name})["result"]["isError"] is False
        # Another backend's catalog may change meanwhile (the shared stack's workers publish theirs too), so
        # a notice may be about that change: after each notice the client lists again, until its tool is there.
        deadline = time.monotonic() + 15
        notices, tools = 0, set()
        while time.monotonic() < deadline and f"crashy__{name}" not in tools:
            message = watcher.recv(timeout=15)
            if message.get("method") == "notifications/tools/list_changed":
                notices += 1
                tools = {t["name"] for t in watcher.request("tools/list")["result"]["tools"]}
        assert notices > 0
        assert f"crashy__{name}" in tools
        answer = watcher.call(f"crashy__{name}", {"text": "hi"})["result"]["structuredContent"]["result"]
        assert answer == f"{name}: hi"


def test_resources_and_prompts_are_listed_namespaced_and_routed(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        assert client.init_result is not None
        capabilities = client.init_result["capabilities"]
        assert capabilities["resources"] and capabilities["prompts"] and capabilities["tools"]["listChanged"]
        resources = client.request("resources/list")["result"]["resources"]
        assert {"uri": "notes+notes://all", "name": "notes__all_notes"}.items() <= next(
            r for r in resources if r["uri"] == "notes+notes://all").items()
        client.call("notes__add_note", {"text": "remember the milk"})
        read = client.request("resources/read", {"uri": "notes+notes://all"})["result"]
        assert read["contents"][0]["uri"] == "notes+notes://all"
        assert "remember the milk" in read["contents"][0]["text"]
        prompts = {p["name"]: p for p in client.request("prompts/list")["result"]["prompts"]}
        assert "notes__summarize" in prompts
        got = client.request("prompts/get", {"name": "notes__summarize", "arguments": {"style": "haiku"}})["result"]
        text = got["messages"][0]["content"]["text"]
        assert "haiku" in text and "remember the milk" in text
        assert "resourceTemplates" in client.request("resources/templates/list")["result"]


def test_unknown_resources_and_prompts_get_clear_errors(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        missing = client.request("resources/read", {"uri": "nowhere+x://y"})["error"]
        assert missing["code"] == -32002 and "nowhere+x://y" in missing["message"]
        assert client.request("prompts/get", {"name": "notes__nope"})["error"]["code"] == -32602
        assert client.request("resources/read", {})["error"]["code"] == -32602
        assert client.call("echo__echo", {"text": "fine"})["result"]["structuredContent"]["result"] == "fine"
