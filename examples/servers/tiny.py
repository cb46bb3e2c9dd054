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

TOOLS = [{"name": os.environ.get("TINY_TOOL_NAME", "echo"), "description": "Return the text and this process's pid.",
          "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}}]
if os.environ.get("TINY_OUTPUT_SCHEMA"):
    TOOLS[0]["outputSchema"] = json.loads(os.environ["TINY_OUTPUT_SCHEMA"])


def answer(message: dict) -> dict | None:
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
        result = {"tools": TOOLS}
    elif method == "tools/call":
        text = str(((message.get("params") or {}).get("arguments") or {}).get("text", ""))
        result = {"content": [{"type": "text", "text": text}], "structuredContent": {"text": text, "pid": os.getpid()},
                  "isError": False}
    else:
        return {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": f"Method not found: {method}"}}
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--exit-at-start":
        print("tiny: refusing to start (no credentials configured)", file=sys.stderr, flush=True)
        sys.exit(int(sys.argv[2]))
    hang = "--hang" in sys.argv
    for line in sys.stdin:
        if hang:
            continue
        try:
            reply = answer(json.loads(line))
        except ValueError:
            continue
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
