"""`broker__call_tool`: call any tool the key may use by name, for clients that only call what they listed.

In search mode a client lists a few tools; a model that found `github__create_issue` with
`broker__search_tools` may call it directly by that name (the broker serves every tool of the catalog,
listed or not), but some clients only send calls for tools in their own list: they call this one with
`{"name": "github__create_issue", "arguments": {...}}`. The call takes exactly the path of a direct
`tools/call` (`forward.tools_call`: the same admission check, argument check against the tool's schema,
cache, queue and result), so a refusal reads the same whichever way the tool was reached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcp_types import INVALID_PARAMS

from broker.context.names import short_name
from broker.rpc_error import RPCError

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation

DESCRIPTION = ("Call any tool found with broker__search_tools by its exact name, with its arguments. "
               "Use it when a tool you need is not in your tool list.")
INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 300,
                 "description": "The tool's exact name, as broker__search_tools returned it"},
        "arguments": {"type": "object", "description": "The tool's arguments, as its inputSchema describes them"},
    },
    "required": ["name"],
    "additionalProperties": False,
}


def handle(conversation: Conversation, request_id: Any, arguments: dict[str, Any], meta: dict[str, Any]) -> Any:
    name = arguments["name"]
    if short_name(name, conversation.services.config.separator) is not None:
        raise RPCError(INVALID_PARAMS, f"Invalid params: {name} is one of the broker's own tools: call it directly")
    params = {"name": name, "arguments": arguments.get("arguments") or {}, "_meta": meta}
    from broker.protocol.handlers import forward  # here: broker.protocol's package imports this table

    return forward.tools_call(conversation, request_id, params)
