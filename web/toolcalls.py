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
from broker.context.names import broker_tool_name, short_name
from broker.services import BrokerServices
from broker.translate.arguments import drop_strict_nulls
from broker.translate.call_formats import CALL_FORMATS, UnknownShape, find_format
from broker.translate.names import Resolver
from broker.translate.toolcalls import CallFormat, ShapeError, ToolCall, render
from web.call_path import ApiError, PendingCall, admit, await_call, queue_call
from web.v1_context import V1_HANDLERS, RunCall, run_broker_tool

MAX_TOOL_CALLS = 128  # tool calls in one message: OpenAI's own limit on the tools a request may offer


def call_format(body: Any, named: str | None) -> CallFormat | None:
    """The provider format of a `/v1/calls` body (None: a native call); 400 for an unknown or ambiguous one."""
    try:
        return find_format(body, named)
    except UnknownShape as err:
        raise ApiError(400, "invalid_call", str(err)) from None


def visible_tools(services: BrokerServices, admission: Admission) -> list[str]:
    """The MCP names of the tools the caller may see: what a provider name may resolve to. The broker's own
    tools `/v1` runs (`web.v1_context.V1_HANDLERS`: `GET /v1/tools?tools=search` lists them) are among them."""
    services.catalog.ensure_fresh()
    return ([broker_tool_name(short, services.config.separator) for short in V1_HANDLERS]
            + [t["name"] for t in services.catalog.tools if admission.visible("tools", t)])


def is_broker_tool(services: BrokerServices, name: str | None) -> bool:
    return name is not None and short_name(name, services.config.separator) is not None


def resolve_calls(services: BrokerServices, admission: Admission, calls: list[ToolCall],
                  runs_broker_tools: bool = False) -> None:
    """Set each runnable call's MCP tool, or its problem when no tool the caller may see has its name (in the
    name rule of the format the call was read in), or it is a broker tool and the caller does not run them
    (a durable batch: its calls run on the workers, the broker's tools in the web process). Arguments of a
    format whose tools are offered in OpenAI strict form lose the nulls strict mode made the model send for
    optional properties. The visible names and their provider mapping are built once per request
    (`Resolver`), not per call."""
    visible = visible_tools(services, admission)
    resolvers: dict[str, Resolver] = {}
    for call in calls:
        if call.problem is not None:
            continue
        shape = CALL_FORMATS[call.format]
        resolver = resolvers.get(shape.provider) or resolvers.setdefault(shape.provider,
                                                                          Resolver(visible, shape.provider))
        call.tool = resolver(call.name)
        if call.tool is None:
            call.problem = (f"unknown tool {call.name!r}: no tool this key may use has that "
                            f"{shape.provider} name (GET /v1/tools?format={shape.provider} lists them)")
            continue
        if is_broker_tool(services, call.tool) and not runs_broker_tools:
            call.problem = f"{call.tool} runs on POST /v1/calls (a model's message), not in a batch"
            continue
        entry = services.catalog.lookup_tool(call.tool)
        if shape.strict_nulls and call.arguments and entry is not None:
            try:
                call.arguments = drop_strict_nulls(call.arguments, entry.definition.get("inputSchema"))
            except ValueError as err:
                call.problem = f"the arguments of {call.name!r}: {err}"


def read_calls(body: Any, shape: CallFormat) -> list[ToolCall]:
    try:
        calls = shape.read(body)
    except ShapeError as err:
        raise ApiError(400, "invalid_call", f"not a valid {shape.name} tool call body: {err}") from None
    for call in calls:
        call.format = shape.name
    return calls


def _forget(services: BrokerServices, pending: list[PendingCall | None]) -> None:
    """Give back the slots of queued calls nobody will wait for, and drop their reply-hub entries."""
    for waiting in pending:
        if waiting is not None:
            services.hub.forget(waiting.call_id)
            waiting.admission.release_slot(waiting.call_id)


def _queue(services: BrokerServices, admission: Admission, call: ToolCall, covered: bool,
           timeout_s: float | None) -> PendingCall | None:
    """Queue one call (its rate token first, unless `covered` by the request's own token); a refusal becomes
    the call's problem: forbidden, rate limited, too many in flight, bad arguments."""
    try:
        if not covered:
            admission.take_rate("tool calls")
        return queue_call(services, admission, call.tool or "", call.arguments or {}, timeout_s)
    except (ApiError, Refused) as err:
        call.problem = err.message
    except RecursionError:
        call.problem = f"the arguments of {call.name!r} are nested too deeply"
    return None


def _run_broker_tool(services: BrokerServices, call: ToolCall, timeout_s: float | None,
                     run_call: RunCall) -> dict[str, Any] | None:
    """A broker tool's outcome, run as `POST /v1/calls` runs it (`web.v1_context.run_broker_tool`: its own
    admission and rate token; `broker__call_tool` runs the tool it names through `run_call`)."""
    try:
        ran = run_broker_tool(services, lambda: admit(services), call.tool or "", call.arguments or {}, timeout_s,
                              run_call)
    except (ApiError, Refused) as err:
        call.problem = err.message
        return None
    return {"result": ran[1]} if ran is not None else {"error": {"message": f"unknown tool {call.name!r}"}}


def run_tool_calls(services: BrokerServices, body: Any, shape: CallFormat, timeout_s: float | None,
                   run_call: RunCall) -> tuple[Response, int]:
    """Run every tool call of `body` (each within `timeout_s`, capped by its server's `max_timeout_s`) and answer
    with the provider's next message. Each call that runs takes one rate token, as a `POST /v1/calls` of it
    would (the request's own token pays for the first); a message holds at most `MAX_TOOL_CALLS`. The broker's
    own tools run after the others are queued, in the web process, as `POST /v1/calls` runs them (`run_call`)."""
    calls = read_calls(body, shape)
    if len(calls) > MAX_TOOL_CALLS:
        raise ApiError(413, "too_many_tool_calls", f"the message has {len(calls)} tool calls; the limit is "
                                                   f"{MAX_TOOL_CALLS} a message")
    admission = admit(services)
    resolve_calls(services, admission, calls, runs_broker_tools=True)
    pending: list[PendingCall | None] = []
    try:
        covered = True  # the request's own token pays for the first call that runs
        for call in calls:
            started: PendingCall | None = None
            if call.problem is None and call.tool is not None and not is_broker_tool(services, call.tool):
                started, covered = _queue(services, admission, call, covered, timeout_s), False
            pending.append(started)
        answers = []
        for index, call in enumerate(calls):
            waiting, pending[index] = pending[index], None  # await_call gives its slot back however it ends
            outcome: dict[str, Any] | None = None
            if waiting is not None:
                try:
                    outcome = await_call(services, waiting)
                except ApiError as err:
                    call.problem = err.message
            elif call.problem is None and is_broker_tool(services, call.tool):
                outcome = _run_broker_tool(services, call, timeout_s, run_call)
            answers.append(shape.answer(call, render(outcome, call.problem)))
    except BaseException:
        _forget(services, pending)  # calls queued but never awaited: their slots would be held until expiry
        raise
    return jsonify({"format": shape.name, **shape.reply(answers)}), 200
