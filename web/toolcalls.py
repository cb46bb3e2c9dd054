"""`POST /v1/calls` with a model's tool calls in an LLM API's shape, answered in that API's shape.

A chat completion, an Anthropic message, a Gemini response (see `broker.translate.call_formats`) is read
into tool calls; each call's function name is mapped back to the MCP tool it stands for among the tools the
caller may see (`broker.translate.names.resolve`: a name the caller could not have been shown resolves to
nothing), and every call then takes the native path (`web.call_path`: admission, allow-lists, argument checks,
time limits, workers, cache). All are queued before any is awaited, so a message's calls run side by side.
A call that cannot run is answered as a tool error in the provider's shape: the answer always has one entry
per tool call, in the model's order, which is what each API requires of the next request.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify

from broker.admission import Admission, Refused
from broker.services import BrokerServices
from broker.translate.arguments import drop_strict_nulls
from broker.translate.call_formats import CALL_FORMATS, UnknownShape, find_format
from broker.translate.names import resolve
from broker.translate.toolcalls import CallFormat, ShapeError, ToolCall, render
from web.call_path import ApiError, PendingCall, admit, await_call, queue_call


def call_format(body: Any, named: str | None) -> CallFormat | None:
    """The provider format of a `/v1/calls` body (None: a native call); 400 for an unknown or ambiguous one."""
    try:
        return find_format(body, named)
    except UnknownShape as err:
        raise ApiError(400, "invalid_call", str(err)) from None


def visible_tools(services: BrokerServices, admission: Admission) -> list[str]:
    """The MCP names of the tools the caller may see: what a provider name may resolve to."""
    services.catalog.ensure_fresh()
    return [t["name"] for t in services.catalog.tools if admission.visible("tools", t)]


def resolve_calls(services: BrokerServices, admission: Admission, calls: list[ToolCall]) -> None:
    """Set each runnable call's MCP tool, or its problem when no tool the caller may see has its name (in the
    name rule of the format the call was read in). Arguments of a format whose tools are offered in OpenAI
    strict form lose the nulls strict mode made the model send for optional properties."""
    visible = visible_tools(services, admission)
    for call in calls:
        if call.problem is not None:
            continue
        shape = CALL_FORMATS[call.format]
        call.tool = resolve(call.name, visible, shape.provider)
        if call.tool is None:
            call.problem = (f"unknown tool {call.name!r}: no tool this key may use has that "
                            f"{shape.provider} name (GET /v1/tools?format={shape.provider} lists them)")
            continue
        entry = services.catalog.lookup_tool(call.tool)
        if shape.strict_nulls and call.arguments and entry is not None:
            call.arguments = drop_strict_nulls(call.arguments, entry.definition.get("inputSchema"))


def read_calls(body: Any, shape: CallFormat) -> list[ToolCall]:
    try:
        calls = shape.read(body)
    except ShapeError as err:
        raise ApiError(400, "invalid_call", f"not a valid {shape.name} tool call body: {err}") from None
    for call in calls:
        call.format = shape.name
    return calls


def run_tool_calls(services: BrokerServices, body: Any, shape: CallFormat,
                   timeout_s: float | None = None) -> tuple[Response, int]:
    """Run every tool call of `body` (each within `timeout_s`, capped by its server's `max_timeout_s`) and answer
    with the provider's next message (one rate token for all)."""
    calls = read_calls(body, shape)
    admission = admit(services)
    resolve_calls(services, admission, calls)
    pending: list[PendingCall | None] = []
    for call in calls:
        started: PendingCall | None = None
        if call.problem is None and call.tool is not None:
            try:
                started = queue_call(services, admission, call.tool, call.arguments or {}, timeout_s)
            except (ApiError, Refused) as err:
                call.problem = err.message  # forbidden, too many in flight, bad arguments
        pending.append(started)
    answers = []
    for call, waiting in zip(calls, pending, strict=True):
        outcome: dict[str, Any] | None = None
        if waiting is not None:
            try:
                outcome = await_call(services, waiting)
            except ApiError as err:
                call.problem = err.message
        answers.append(shape.answer(call, render(outcome, call.problem)))
    return jsonify({"format": shape.name, **shape.reply(answers)}), 200
