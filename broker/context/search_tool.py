"""`broker__search_tools`: find tools anywhere in the catalog the key may use, with their full schemas.

In search mode a client lists only the pinned tools and the broker's own; a model describes what it
needs in its own words (`query`), optionally narrowed to one server, and gets the best matches
(`broker.context.index`: BM25 over names, descriptions and parameters, fused with sentence embeddings),
each with its name, description and complete `inputSchema`, ready to call (directly by that name, or
through `broker__call_tool`).

Allow-lists apply as to a direct call: a tool the key may not use is never a result
(`Admission.may`, the same check `tools/call` makes), and a server filter naming a server the key may
not see reads as an unknown server. On a per-server endpoint the search covers that server, and names
are unprefixed as everything else there.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from broker import wire
from broker.context.index import Document
from broker.context.keeper import off_the_event_loop
from broker.security import split_pattern

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation

DEFAULT_LIMIT = 5
MAX_LIMIT = 25
DESCRIPTION = ("Search every tool available to you (most are not in your tool list) by what you want to do, "
               "in plain words. Returns the best matching tools with their full input schemas; call one "
               "directly by its name, or with broker__call_tool.")
INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 1000,
                  "description": "What you want to do, e.g. 'open an issue in a GitHub repository'"},
        "server": {"type": "string", "minLength": 1, "maxLength": 64,
                   "description": "Only tools of this server (the part of a tool name before '__')"},
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT,
                  "description": "How many tools to return"},
    },
    "required": ["query"],
    "additionalProperties": False,
}
OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"tools": {"type": "array", "items": {"type": "object"}}},
    "required": ["tools"],
}


def handle(conversation: Conversation, _request_id: Any, arguments: dict[str, Any], _meta: dict[str, Any]) -> Any:
    services, admission, scope = conversation.services, conversation.admission, conversation.scope
    separator = services.config.separator
    server = arguments.get("server")
    if scope is not None and server is not None and server != scope:
        return conversation.era.invalid_arguments(conversation, f"Unknown server {server!r}: this endpoint serves "
                                                                f"{scope} alone")
    only = scope or server
    if only is not None and (only not in services.config.servers or not may_see_server(conversation, only)):
        return conversation.era.invalid_arguments(conversation, f"Unknown server {only!r}")

    def accept(document: Document) -> bool:
        return (only is None or document.server == only) and admission.principal.may(document.server, document.tool,
                                                                                      separator)

    index = services.tool_index.index(services.catalog)
    limit = int(arguments.get("limit") or DEFAULT_LIMIT)
    # p50 111 ms over the WebSocket at 2,379 tools (`make bench`): BM25, the query's vector, the fusion
    found = off_the_event_loop(lambda: index.search(arguments["query"], limit, accept))
    tools = [found_tool(conversation, document) for document in found]
    return {"content": [{"type": "text", "text": wire.dumps(tools_text(tools))}], "structuredContent": {"tools": tools},
            "isError": False}


def may_see_server(conversation: Conversation, server: str) -> bool:
    """Whether any allow pattern of the key names `server` (else the server reads as unknown to it)."""
    separator = conversation.services.config.separator
    return any(fnmatch.fnmatchcase(server, split_pattern(pattern, separator)[0])
               for pattern in conversation.principal.allow)


def found_tool(conversation: Conversation, document: Document) -> dict[str, Any]:
    """A result: the tool as the client names it, its description and complete input schema."""
    definition = document.definition
    name = document.tool if conversation.scope else conversation.services.catalog.namespaced(document.server,
                                                                                             document.tool)
    tool: dict[str, Any] = {"name": name, "description": definition.get("description") or "",
                            "inputSchema": definition.get("inputSchema") or {"type": "object"}}
    return tool


def tools_text(tools: list[dict[str, Any]]) -> dict[str, Any]:
    if not tools:
        return {"tools": [], "hint": "No tool matches; try other words, or no server filter."}
    return {"tools": tools}
