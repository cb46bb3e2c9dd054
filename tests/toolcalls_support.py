"""What the translator's tests share: a stack with keys, recorded model responses, the providers' own validators."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from anthropic.types import MessageParam, ToolResultBlockParam
from google.genai import types as gemini
from openai.types.chat import ChatCompletionToolMessageParam
from openai.types.responses import ResponseInputItemParam
from pydantic import TypeAdapter

from broker.security import hash_key
from cli.devrun import free_port
from tests.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "llm"
TEST_CONFIG = Path(__file__).resolve().parent / "mcp_servers.test.json"
KEYS = {"full": "tc-full-key", "narrow": "tc-narrow-key", "slow": "tc-slow-key"}
SLOW_BURST = 3  # the slow key's rate tokens: three, and practically none refilled within a test
SERVERS = ("echo", "time", "conformance")
MAX_BATCH_CALLS = 40  # a batch file with more tool calls is refused whole


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def config(path: Path) -> Path:
    """echo and time of the test config (absolute paths) plus the conformance fixtures (every content type)."""
    servers = json.loads(TEST_CONFIG.read_text())["mcpServers"]
    chosen = {name: servers[name] for name in ("echo", "time")}
    for entry in chosen.values():
        entry["args"] = [str((TEST_CONFIG.parent / a).resolve()) if a.startswith("../") else a for a in entry["args"]]
        entry.setdefault("broker", {})["timeout_s"] = 30  # nothing here is about time: room for a loaded machine
    chosen["conformance"] = {"command": "python", "args": [str(ROOT / "examples/servers/conformance.py")],
                             "broker": {"timeout_s": 30}}
    path.write_text(json.dumps({"mcpServers": chosen}))
    return path


def start(redis_url: str, folder: Path) -> tuple[Stack, str]:
    stack = Stack(redis_url, config_path=config(folder / "mcp_servers.json"))
    keys_file = folder / "keys.json"
    keys_file.write_text(json.dumps({"keys": [{"id": "slow", "hash": hash_key(KEYS["slow"]), "rate_per_s": 0.0001,
                                               "burst": SLOW_BURST}]}))
    env = {"MCP_BROKER_API_KEYS": f"full:{KEYS['full']},narrow:{KEYS['narrow']}:echo__echo",
           "MCP_BROKER_KEYS_FILE": str(keys_file), "MCP_BROKER_MAX_BATCH_CALLS": str(MAX_BATCH_CALLS)}
    for server in SERVERS:
        stack.start_worker(server)
    port = free_port()
    stack.start_web(port, env=env)
    stack.wait_for_catalog(list(SERVERS))
    stack.wait_web_ready(port)
    return stack, f"http://127.0.0.1:{port}"


def http(base: str, method: str, path: str, body: Any = None, key: str = "full",
         ctype: str = "application/json", timeout: float = 60) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {KEYS[key]}"}
    if data is not None:
        headers["Content-Type"] = ctype
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def stream(base: str, path: str, key: str = "full", timeout: float = 60) -> Iterator[dict[str, Any]]:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {KEYS[key]}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for line in response:
            if line.strip():
                yield json.loads(line)


# ---------------------------------------------------------------- the providers' own types
def _force(value: Any) -> Any:
    """Pydantic validates `Iterable` fields lazily: walk the value so every part is really checked."""
    if isinstance(value, Iterator):  # pydantic_core's ValidatorIterator
        return [_force(v) for v in value]
    if isinstance(value, dict):
        return {k: _force(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_force(v) for v in value]
    return value


OPENAI_TOOL_MESSAGE = TypeAdapter(ChatCompletionToolMessageParam)
OPENAI_INPUT_ITEM = TypeAdapter(ResponseInputItemParam)
ANTHROPIC_MESSAGE = TypeAdapter(MessageParam)
ANTHROPIC_TOOL_RESULT = TypeAdapter(ToolResultBlockParam)


def valid_openai(message: dict[str, Any]) -> dict[str, Any]:
    checked = _force(OPENAI_TOOL_MESSAGE.validate_python(message))
    assert checked["role"] == "tool" and isinstance(checked["content"], str)
    return message


def valid_openai_responses(item: dict[str, Any]) -> dict[str, Any]:
    checked = _force(OPENAI_INPUT_ITEM.validate_python(item))
    assert checked["type"] == "function_call_output"
    return item


def valid_anthropic_block(block: dict[str, Any]) -> dict[str, Any]:
    checked = _force(ANTHROPIC_TOOL_RESULT.validate_python(block))
    assert checked["type"] == "tool_result"
    return block


def valid_anthropic_message(message: dict[str, Any]) -> dict[str, Any]:
    _force(ANTHROPIC_MESSAGE.validate_python(message))
    for block in message["content"]:
        valid_anthropic_block(block)
    return message


def valid_gemini_part(part: dict[str, Any]) -> gemini.Part:
    checked = gemini.Part.model_validate(part)
    assert checked.function_response is not None and checked.function_response.name
    return checked


def valid_gemini_content(content: dict[str, Any]) -> gemini.Content:
    checked = gemini.Content.model_validate(content)
    for part in content["parts"]:
        valid_gemini_part(part)
    return checked
