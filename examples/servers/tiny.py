"""The smallest MCP server: stdlib only, one tool, starts in a few milliseconds.

For tests that restart a backend hundreds of times (an SDK server takes ~0.5 s
to start). `--exit-at-start CODE` makes it print a reason on stderr and exit at
once, like a server missing its credentials: the broker must say so quickly.
`--hang` makes it read its input and never answer, like a server stuck at start.
`TINY_TOOL_NAME` renames its tool (a name with the broker's separator in it, say); `TINY_OUTPUT_SCHEMA` (JSON)
gives it an output schema, which its structured content need not fit (what a client, not the broker, checks).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

TOOLS = [{"name": os.environ.get("TINY_TOOL_NAME", "echo"), "description": "Return the text and this process's pid.",
          "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}}]
if os.environ.get("TINY_OUTPUT_SCHEMA"):
    TOOLS[0]["outputSchema"] = json.loads(os.environ["TINY_OUTPUT_SCHEMA"])


def echo_call(name: str, arguments: dict) -> dict:
    """The one tool: its text back, with this process's pid (tests tell replicas apart by it)."""
    text = str(arguments.get("text", ""))
    return {"content": [{"type": "text", "text": text}], "structuredContent": {"text": text, "pid": os.getpid()},
            "isError": False}


def answer(message: dict, tools: list[dict] = TOOLS, call: Callable[[str, dict], dict] = echo_call) -> dict | None:
    """The reply to one message (None for a notification); `tools` and `call` let another server reuse it."""
    method, request_id = message.get("method"), message.get("id")
    if request_id is None:
        return None  # a notification
    if method == "initialize":
        version = (message.get("params") or {}).get("protocolVersion") or "2025-06-18"
        result: dict = {"protocolVersion": version, "capabilities": {"tools": {}},
                        "serverInfo": {"name": "tiny", "version": "1"}}
    elif method == "ping":
        result = {}
    elif method == "tools/list":
        result = {"tools": tools}
    elif method == "tools/call":
        params = message.get("params") or {}
        result = call(str(params.get("name", "")), params.get("arguments") or {})
    else:
        return {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": f"Method not found: {method}"}}
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def serve(reply_to: Callable[[dict], dict | None] = answer, hang: bool = False) -> None:
    """Read a message a line, answer it, then read the next: one call at a time, by construction."""
    for line in sys.stdin:
        if hang:
            continue
        try:
            reply = reply_to(json.loads(line))
        except ValueError:
            continue
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--exit-at-start":
        print("tiny: refusing to start (no credentials configured)", file=sys.stderr, flush=True)
        sys.exit(int(sys.argv[2]))
    serve(hang="--hang" in sys.argv)


if __name__ == "__main__":
    main()
