"""An MCP server that serves a dumped catalog: the tools of a published server, with their exact schemas.

`python examples/servers/catalog.py PATH.json [PATH.json ...]` lists the tools of the `tools/list` dumps
(`../shared/catalogs/*.json`: {"server", "package", "tools": [...]}) exactly as their authors wrote them,
so the broker's catalog, tool search and token counts can be measured on real catalogs (tests and
`make bench`, scenario `context`) without their packages or credentials. A call is answered trivially:
the tool's name and the arguments it got, as text. A tool that declares an `outputSchema` answers with
`isError` (this fixture cannot make up structured content its schema accepts, and a client's SDK checks it).

Standard library only, like `tiny.py`: the bench starts one per published catalog (87), and an SDK server
takes ~0.5 s of CPU and ~40 MB to start; this one takes milliseconds. `tools/list` pages by 100 (a
catalog of 235 tools is listed in three pages, as real servers do).

`CATALOG_EXTRA_TOOL=name` adds one more tool (`name`, taking `text`), so a test can change a catalog.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

PAGE = 100


def load_tools(paths: list[str]) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    for path in paths:
        tools += json.loads(Path(path).read_text(encoding="utf-8"))["tools"]
    extra = os.environ.get("CATALOG_EXTRA_TOOL")
    if extra:
        tools.append({"name": extra, "description": "An extra tool added by the test.",
                      "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}})
    return tools


def answer(tools: list[dict[str, Any]], message: dict[str, Any]) -> dict[str, Any] | None:
    method, request_id, params = message.get("method"), message.get("id"), message.get("params") or {}
    if request_id is None:
        return None  # a notification
    if method == "initialize":
        result: dict[str, Any] = {"protocolVersion": params.get("protocolVersion") or "2025-06-18",
                                  "capabilities": {"tools": {}}, "serverInfo": {"name": "catalog", "version": "1"}}
    elif method == "ping":
        result = {}
    elif method == "tools/list":
        start = int(params.get("cursor") or 0)
        result = {"tools": tools[start:start + PAGE]}
        if start + PAGE < len(tools):
            result["nextCursor"] = str(start + PAGE)
    elif method == "tools/call":
        name, arguments = str(params.get("name")), params.get("arguments") or {}
        tool = next((t for t in tools if t["name"] == name), None)
        if tool is None:
            return {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32602, "message": f"Unknown tool: {name}"}}
        text = f"{name} called with {json.dumps(arguments, sort_keys=True)}"
        result = {"content": [{"type": "text", "text": text}], "isError": bool(tool.get("outputSchema"))}
    else:
        return {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": f"Method not found: {method}"}}
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def main(paths: list[str]) -> None:
    tools = load_tools(paths)
    for line in sys.stdin:
        try:
            reply = answer(tools, json.loads(line))
        except ValueError:
            continue
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
