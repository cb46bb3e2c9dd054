"""The broker's own tools: served by the web process itself, never queued for a backend.

`BROKER_TOOLS` is the table, one `BrokerTool` row per tool: its short name (listed as
`broker__<short>`, a namespace no backend tool can have: `broker.context.names`), its description and
input schema (what `tools/list` shows), its handler, and when `tools/list` lists it. Adding a broker tool
is one row here and a handler module:

    BrokerTool("read_result", "Read one page of a long result ...", {"type": "object", ...},
               read_result.handle, listed=lambda conversation: True)

A handler is `handle(conversation, request_id, arguments, meta) -> result | DEFERRED`: `arguments` have
already been checked against `input_schema` (a mismatch is answered as for a backend tool: an `isError`
result from 2025-11-25 on, -32602 before: `Era.invalid_arguments`); `meta` is the request's `_meta`. It
returns a `CallToolResult` dict, or hands the request on (`broker__call_tool` gives it to
`forward.tools_call`, which answers later: DEFERRED). It raises `RPCError` or `Refused` for what a
direct call would be refused with, so errors read the same whichever way a tool is reached.

This module and its handlers import nothing of `broker.protocol` at import time (`forward` is imported
where it is called): `broker/protocol/__init__.py` loads the conversation, whose handlers import this
table, so importing this module first must not need the protocol package loaded.

`tools_call` is `tools/call`'s handler (`broker.protocol.registry`): a broker tool's name is answered
here, any other goes to `forward.tools_call`. The outer request has already paid its rate token
(the row's admission), as any `tools/call` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker.argcheck import ArgumentCheck
from broker.context import call_tool, read_result, search_tool
from broker.context.modes import offers_search
from broker.context.names import broker_tool_name, short_name
from broker.context.shaping import READ_TOOL, gets_shaped_results

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation

Handler = Callable[["Conversation", Any, dict[str, Any], dict[str, Any]], Any]


@dataclass(frozen=True)
class BrokerTool:
    """One tool the broker serves itself."""

    short: str  # listed as broker<separator><short>
    description: str
    input_schema: dict[str, Any]
    handler: Handler
    listed: Callable[[Conversation], bool]  # whether tools/list shows it to this conversation
    annotations: dict[str, Any] = field(default_factory=dict)
    output_schema: dict[str, Any] | None = None

    def definition(self, separator: str) -> dict[str, Any]:
        """The tool as `tools/list` shows it."""
        tool: dict[str, Any] = {"name": broker_tool_name(self.short, separator), "description": self.description,
                                "inputSchema": self.input_schema}
        if self.annotations:
            tool["annotations"] = self.annotations
        if self.output_schema is not None:
            tool["outputSchema"] = self.output_schema
        return tool

    def argument_errors(self, arguments: dict[str, Any]) -> str | None:
        """The first way `arguments` break `input_schema`, or None (`broker.argcheck`)."""
        check = _CHECKS.get(self.short)
        if check is None:
            check = _CHECKS[self.short] = ArgumentCheck(self.input_schema)
        return check.errors(arguments)


_CHECKS: dict[str, ArgumentCheck] = {}


BROKER_TOOLS: dict[str, BrokerTool] = {tool.short: tool for tool in (
    BrokerTool("search_tools", search_tool.DESCRIPTION, search_tool.INPUT_SCHEMA, search_tool.handle,
               listed=offers_search, output_schema=search_tool.OUTPUT_SCHEMA,
               annotations={"title": "Search tools", "readOnlyHint": True, "openWorldHint": False}),
    BrokerTool("call_tool", call_tool.DESCRIPTION, call_tool.INPUT_SCHEMA, call_tool.handle, listed=offers_search,
               annotations={"title": "Call a tool by name", "openWorldHint": True}),
    BrokerTool(READ_TOOL, read_result.DESCRIPTION, read_result.INPUT_SCHEMA, read_result.handle,
               listed=gets_shaped_results, annotations=read_result.ANNOTATIONS),
)}


def find(conversation: Conversation, name: str) -> BrokerTool | None:
    """The broker tool `name` names (as listed: `broker__<short>`), or None."""
    short = short_name(name, conversation.services.config.separator)
    return BROKER_TOOLS.get(short) if short is not None else None


def listed_broker_tools(conversation: Conversation) -> list[dict[str, Any]]:
    """The broker tools `tools/list` shows this conversation, by name."""
    services = conversation.services
    listed = [tool.definition(services.config.separator) for tool in BROKER_TOOLS.values() if tool.listed(conversation)]
    if offers_search(conversation):
        services.tool_index.warm(services.catalog)  # the model's first search finds the index built
    return sorted(listed, key=lambda tool: tool["name"])


def tools_call(conversation: Conversation, request_id: Any, params: dict[str, Any]) -> Any:
    """`tools/call` (params loaded by `CallToolParamsSchema`): a broker tool here, any other to its backend."""
    tool = find(conversation, params["name"])
    if tool is None:
        from broker.protocol.handlers import forward  # here: broker.protocol's package imports this table

        return forward.tools_call(conversation, request_id, params)
    arguments = params["arguments"] or {}
    problem = tool.argument_errors(arguments)
    if problem is not None:
        return conversation.era.invalid_arguments(conversation, f"Invalid arguments for tool {params['name']}: "
                                                                f"{problem}")
    return tool.handler(conversation, request_id, arguments, params["_meta"] or {})
