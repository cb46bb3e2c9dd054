"""The conformance suite's fixture server, as a broker backend.

`@modelcontextprotocol/conformance` (npm) tests a SERVER by calling fixture
tools, resources and prompts with fixed names (`test_simple_text`,
`test://static-text`, `test_prompt_with_arguments`, ...) and checking what
comes back. Run behind the broker (`examples/conformance.json`, endpoint
`/servers/conformance/mcp`), it makes the suite test the broker's fidelity:
every check then passes only if the broker carries content, progress, log
messages, sampling, elicitation, subscriptions and completions through
unchanged. Written with the `mcp` SDK (MCPServer), mirroring the suite's own
reference "everything" server; `python conformance.py` serves it on stdio.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import anyio
import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.prompts.base import Prompt, UserMessage
from mcp.shared.exceptions import MCPError

log = logging.getLogger("conformance")

# A 1x1 PNG and a minimal WAV: the suite only checks type, mimeType and that data is there.
TEST_IMAGE_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
TEST_AUDIO_BASE64 = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
JSON_SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"

server = MCPServer("mcp-conformance-test-server", instructions="Fixtures of the MCP conformance suite.")
_subscriptions: set[str] = set()


def _image() -> types.ImageContent:
    return types.ImageContent(type="image", data=TEST_IMAGE_BASE64, mime_type="image/png")


# ---------------------------------------------------------------- tools: content of every type
@server.tool()
def test_simple_text() -> str:
    """Tests simple text content response."""
    return "This is a simple text response for testing."


@server.tool()
def test_image_content() -> list[types.ImageContent]:
    """Tests image content response."""
    return [_image()]


@server.tool()
def test_audio_content() -> list[types.AudioContent]:
    """Tests audio content response."""
    return [types.AudioContent(type="audio", data=TEST_AUDIO_BASE64, mime_type="audio/wav")]


@server.tool()
def test_embedded_resource() -> list[types.EmbeddedResource]:
    """Tests embedded resource content response."""
    resource = types.TextResourceContents(uri="test://embedded-resource", mime_type="text/plain",
                                          text="This is an embedded resource content.")
    return [types.EmbeddedResource(type="resource", resource=resource)]


@server.tool()
def test_multiple_content_types() -> list[types.TextContent | types.ImageContent | types.EmbeddedResource]:
    """Tests a response with text, image and embedded resource content."""
    resource = types.TextResourceContents(uri="test://mixed-content-resource", mime_type="application/json",
                                          text=json.dumps({"test": "data", "value": 123}))
    return [types.TextContent(type="text", text="Multiple content types test:"), _image(),
            types.EmbeddedResource(type="resource", resource=resource)]


@server.tool()
def test_error_handling() -> str:
    """Always fails: the client must get `isError: true` content, not a JSON-RPC error."""
    raise ToolError("This tool intentionally returns an error for testing")


def json_schema_2020_12_tool(name: str | None = None, address: dict[str, Any] | None = None,
                             contactMethod: str | None = None, phone: str | None = None,  # noqa: N803
                             email: str | None = None) -> str:
    """Tool with JSON Schema 2020-12 features."""
    return f"name={name}, address={json.dumps(address)}, contact={contactMethod}: {phone or email}"


server.add_tool(json_schema_2020_12_tool, name="json_schema_2020_12_tool",
                description="Tool with JSON Schema 2020-12 features")
# The advertised schema must keep `$schema`, `$defs`, `additionalProperties` (SEP-1613) and the composition,
# conditional and `$anchor` keywords (SEP-2106) end to end.
server._tool_manager.get_tool("json_schema_2020_12_tool").parameters = {  # type: ignore[union-attr]
    "$schema": JSON_SCHEMA_2020_12,
    "type": "object",
    "$defs": {"address": {"$anchor": "addressDef", "type": "object",
                          "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"},
                   "contactMethod": {"type": "string", "enum": ["phone", "email"]},
                   "phone": {"type": "string"}, "email": {"type": "string"}},
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def test_custom_header_tool(region: str, query: str = "") -> str:
    """SEP-2243: `region` is mirrored in the `Mcp-Param-Region` header (the broker checks that they agree)."""
    return f"region={region}, query={query}"


server.add_tool(test_custom_header_tool, name="test_custom_header_tool",
                description="A tool whose region argument travels in the Mcp-Param-Region header too")
server._tool_manager.get_tool("test_custom_header_tool").parameters = {  # type: ignore[union-attr]
    "type": "object",
    "properties": {"region": {"type": "string", "description": "Where to run", "x-mcp-header": "Region"},
                   "query": {"type": "string", "description": "Not mirrored"}},
    "required": ["region"],
}


# ---------------------------------------------------------------- tools: notifications during a call
@server.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    """Sends three info log messages while it runs."""
    await ctx.log("info", "Tool execution started")
    await anyio.sleep(0.05)
    await ctx.log("info", "Tool processing data")
    await anyio.sleep(0.05)
    await ctx.log("info", "Tool execution completed")
    return "Tool with logging executed successfully"


@server.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Reports progress 0, 50 and 100 of 100."""
    for step in (0, 50, 100):
        await ctx.report_progress(step, 100, f"Completed step {step} of 100")
        if step < 100:
            await anyio.sleep(0.05)
    meta = ctx.request_context.meta
    return str(meta.progress_token if meta is not None and meta.progress_token is not None else 0)


@server.tool()
async def test_reconnection(ctx: Context) -> str:
    """SEP-1699: closes its SSE stream mid-call (a no-op over stdio) and answers after a pause."""
    await ctx.log("info", "Before disconnect")
    await ctx.close_sse_stream()
    await anyio.sleep(0.2)
    await ctx.log("info", "After reconnect")
    return "Reconnection test completed"


# ---------------------------------------------------------------- tools: server-to-client requests
@server.tool()
async def test_sampling(prompt: str, ctx: Context) -> str:
    """Asks the client's model (sampling/createMessage) and returns its answer."""
    result = await ctx.session.create_message(
        messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))],
        max_tokens=100,
    )
    content = result.content
    return f"LLM response: {content.text if isinstance(content, types.TextContent) else 'No response'}"


async def _elicit(ctx: Context, message: str, schema: dict[str, Any]) -> types.ElicitResult:
    return await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_context.request_id)


@server.tool()
async def test_elicitation(message: str, ctx: Context) -> str:
    """Asks the client's user (elicitation/create) for a username and an email."""
    result = await _elicit(ctx, message, {
        "type": "object",
        "properties": {"username": {"type": "string", "description": "User's response"},
                       "email": {"type": "string", "description": "User's email address"}},
        "required": ["username", "email"],
    })
    return f"User response: action={result.action}, content={json.dumps(result.content or {})}"


@server.tool()
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """SEP-1034: an elicitation whose fields of every primitive type carry defaults."""
    result = await _elicit(ctx, "Please provide user information", {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {"type": "string", "description": "User status", "enum": ["active", "inactive", "pending"],
                       "default": "active"},
            "verified": {"type": "boolean", "description": "Verification status", "default": True},
        },
    })
    return f"Elicitation completed: action={result.action}, content={json.dumps(result.content or {})}"


@server.tool()
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """SEP-1330: an elicitation with all five enum schema variants."""
    result = await _elicit(ctx, "Please select values using different enum schema types", {
        "type": "object",
        "properties": {
            "untitledSingle": {"type": "string", "description": "Simple enum without titles",
                               "enum": ["option1", "option2", "option3"]},
            "titledSingle": {"type": "string", "description": "Enum with titled options", "oneOf": [
                {"const": "value1", "title": "First Option"}, {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"}]},
            "legacyEnum": {"type": "string", "description": "Legacy enum with enumNames",
                           "enum": ["opt1", "opt2", "opt3"], "enumNames": ["Option One", "Option Two", "Option Three"]},
            "untitledMulti": {"type": "array", "description": "Multi-select without titles",
                              "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
            "titledMulti": {"type": "array", "description": "Multi-select with titled options", "items": {"anyOf": [
                {"const": "value1", "title": "First Choice"}, {"const": "value2", "title": "Second Choice"},
                {"const": "value3", "title": "Third Choice"}]}},
        },
    })
    return f"Elicitation completed: action={result.action}, content={json.dumps(result.content or {})}"


# ---------------------------------------------------------------- 2026-07-28 fixtures
# The suite's 2026 scenarios expect `input_required` results. This backend speaks the handshake era to the
# broker and asks push-style, mid-call; the broker turns each question into an `input_required` round for a
# 2026 client. `io.mcp-broker/inputKey` in a question's `_meta` names it (the key the suite looks for).
INPUT_KEY = "io.mcp-broker/inputKey"


async def _ask_elicit(ctx: Context, key: str, message: str, properties: dict[str, Any]) -> types.ElicitResult:
    params = types.ElicitRequestFormParams(
        message=message, requested_schema={"type": "object", "properties": properties, "required": list(properties)},
        _meta={INPUT_KEY: key})
    return await ctx.session.send_request(types.ElicitRequest(params=params), types.ElicitResult)


async def _ask_sampling(ctx: Context, key: str, prompt: str, max_tokens: int = 100) -> types.CreateMessageResult:
    params = types.CreateMessageRequestParams(
        messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))],
        max_tokens=max_tokens, _meta={INPUT_KEY: key})
    return await ctx.session.send_request(types.CreateMessageRequest(params=params), types.CreateMessageResult)


def _text_of(result: types.CreateMessageResult) -> str:
    return result.content.text if isinstance(result.content, types.TextContent) else "(no text)"


@server.tool()
async def test_input_required_result_elicitation(ctx: Context) -> str:
    """One elicitation round (key `user_name`), then a greeting."""
    answer = await _ask_elicit(ctx, "user_name", "What is your name?", {"name": {"type": "string"}})
    return f"Hello, {(answer.content or {}).get('name', 'stranger')}!"


@server.tool()
async def test_input_required_result_sampling(ctx: Context) -> str:
    """One sampling round (key `capital_question`), then the model's answer."""
    return _text_of(await _ask_sampling(ctx, "capital_question", "What is the capital of France?"))


@server.tool()
async def test_input_required_result_list_roots(ctx: Context) -> str:
    """One roots/list round, then the roots it was given."""
    roots = await ctx.session.list_roots()
    return "Roots: " + ", ".join(str(root.uri) for root in roots.roots)


@server.tool()
async def test_input_required_result_request_state(ctx: Context) -> str:
    """One round whose answer only arrives with the echoed (broker-signed, broker-checked) requestState."""
    answer = await _ask_elicit(ctx, "confirm", "Please confirm", {"ok": {"type": "boolean"}})
    return f"state-ok: confirmed={json.dumps((answer.content or {}).get('ok'))}"


@server.tool()
async def test_input_required_result_tampered_state(ctx: Context) -> str:
    """One round; a retry with an altered requestState is refused by the broker."""
    answer = await _ask_elicit(ctx, "confirm", "Please confirm", {"ok": {"type": "boolean"}})
    return f"confirmed={json.dumps((answer.content or {}).get('ok'))}"


@server.tool()
async def test_input_required_result_multi_round(ctx: Context) -> str:
    """Two rounds (`step1`, then `step2`), each a new requestState."""
    name = await _ask_elicit(ctx, "step1", "Step 1: What is your name?", {"name": {"type": "string"}})
    color = await _ask_elicit(ctx, "step2", "Step 2: What is your favorite color?", {"color": {"type": "string"}})
    return f"{(name.content or {}).get('name')} likes {(color.content or {}).get('color')}"


@server.tool()
async def test_input_required_result_multiple_inputs(ctx: Context) -> str:
    """Elicitation, sampling and roots asked at once: the broker sends them in one input_required round."""
    answers: dict[str, Any] = {}

    async def ask(key: str, question: Any) -> None:
        answers[key] = await question

    async with anyio.create_task_group() as group:
        group.start_soon(ask, "name", _ask_elicit(ctx, "user_name", "What is your name?", {"name": {"type": "string"}}))
        group.start_soon(ask, "greeting", _ask_sampling(ctx, "greeting", "Generate a greeting", 50))
        group.start_soon(ask, "roots", ctx.session.list_roots())
    name = (answers["name"].content or {}).get("name")
    return f"{_text_of(answers['greeting'])} {name} ({len(answers['roots'].roots)} roots)"


@server.tool()
async def test_input_required_result_capabilities(ctx: Context) -> str:
    """Asks only for sampling: the suite's client declares sampling alone."""
    return _text_of(await _ask_sampling(ctx, "sample", "Say something"))


@server.tool()
async def test_missing_capability(ctx: Context) -> str:
    """Needs sampling; asked by a client that did not declare it, the broker answers -32021."""
    return _text_of(await _ask_sampling(ctx, "needed", "This needs sampling"))


# ---------------------------------------------------------------- tasks extension (SEP-2663) fixtures
# The broker makes the tasks: each tool's task support is in examples/conformance.json (`broker.tasks`). The
# sleeps say when a question comes relative to the broker's hold (250 ms, broker/protocol/handlers/tasks.py):
# `test_tool_with_task` asks at once (an input_required round before the task exists), `confirm_delete` and
# `multi_input` after 0.5 s (inside the task: `input_required` on tasks/get).

@server.tool()
def greet(name: str) -> str:
    """A synchronous tool (never a task)."""
    return f"Hello, {name}!"


@server.tool()
async def slow_compute(seconds: float = 1.0, label: str = "") -> str:
    """Task support optional: sleeps `seconds`."""
    await anyio.sleep(seconds)
    return f"computed {label or 'it'} after {seconds:g}s"


@server.tool()
async def failing_job() -> str:
    """Task support required: a tool error after a second (the task completes with isError)."""
    await anyio.sleep(1)
    raise ToolError("failing_job failed, as it always does")


@server.tool()
async def protocol_error_job() -> str:
    """Task support optional: a JSON-RPC error after a second (the task fails)."""
    await anyio.sleep(1)
    raise MCPError(types.INTERNAL_ERROR, "protocol_error_job: internal error, as it always does")


@server.tool()
async def confirm_delete(filename: str, ctx: Context) -> str:
    """Task support optional: asks for a confirmation (key `confirm`) inside the task."""
    await anyio.sleep(0.5)
    answer = await _ask_elicit(ctx, "confirm", f"Delete {filename}?", {"confirm": {"type": "boolean"}})
    return f"{filename}: {answer.action}, confirm={json.dumps((answer.content or {}).get('confirm'))}"


@server.tool()
async def multi_input(ctx: Context) -> str:
    """Task support optional: two questions at once (`first`, `second`) inside the task."""
    answers: dict[str, types.ElicitResult] = {}

    async def ask(key: str) -> None:
        answers[key] = await _ask_elicit(ctx, key, f"The {key} answer?", {"value": {"type": "string"}})

    await anyio.sleep(0.5)
    async with anyio.create_task_group() as group:
        group.start_soon(ask, "first")
        group.start_soon(ask, "second")
    return f"first={answers['first'].action}, second={answers['second'].action}"


@server.tool()
async def test_tool_with_task(ctx: Context) -> str:
    """Task support required: asks a name at once (before the task exists), then works a second."""
    answer = await _ask_elicit(ctx, "user_name", "What is your name?", {"name": {"type": "string"}})
    await anyio.sleep(1)
    return f"Hello, {(answer.content or {}).get('name', 'stranger')}!"


@server.tool()
async def test_logging_tool(ctx: Context) -> str:
    """Logs three messages: a 2026 client hears them only if its request set a logLevel."""
    for i in range(3):
        await ctx.log("info", f"log message {i + 1}")
    return "logged 3 messages"


@server.tool()
async def test_streaming_elicitation(ctx: Context) -> str:
    """Reports progress, then asks: the answer stream may carry notifications but never a request."""
    await ctx.report_progress(1, 2, "about to ask")
    answer = await _ask_elicit(ctx, "input", "Anything to add?", {"text": {"type": "string"}})
    return f"got {json.dumps(answer.content or {})}"


_grown = {"tools": 0, "prompts": 0}


@server.tool()
async def test_trigger_tool_change(ctx: Context) -> str:
    """Adds a tool and says so (notifications/tools/list_changed): a listen stream must hear of it."""
    _grown["tools"] += 1
    name = f"test_dynamic_tool_{_grown['tools']}"

    def dynamic() -> str:
        return f"{name} ran"

    server.add_tool(dynamic, name=name, description="A tool added at run time")
    await ctx.session.send_tool_list_changed()
    return f"added {name}"


@server.tool()
async def test_trigger_prompt_change(ctx: Context) -> str:
    """Adds a prompt and says so (notifications/prompts/list_changed)."""
    _grown["prompts"] += 1
    name = f"test_dynamic_prompt_{_grown['prompts']}"

    def dynamic() -> str:
        return f"{name} text"

    server.add_prompt(Prompt.from_function(dynamic, name=name, description="A prompt added at run time"))
    await ctx.session.send_prompt_list_changed()
    return f"added {name}"


@server.prompt()
async def test_input_required_result_prompt(ctx: Context) -> list[UserMessage]:
    """A prompt that asks (key `user_context`) before it can be rendered."""
    answer = await _ask_elicit(ctx, "user_context", "What context should the prompt use?",
                               {"context": {"type": "string"}})
    text = f"Use this context: {(answer.content or {}).get('context', '')}"
    return [UserMessage(role="user", content=types.TextContent(type="text", text=text))]


# ---------------------------------------------------------------- resources
@server.resource("test://static-text", mime_type="text/plain", description="A static text resource for testing")
def static_text() -> str:
    """A static text resource for testing."""
    return "This is the content of the static text resource."


@server.resource("test://static-binary", mime_type="image/png", description="A static binary resource (a PNG)")
def static_binary() -> bytes:
    """A static binary resource (image) for testing."""
    return base64.b64decode(TEST_IMAGE_BASE64)


@server.resource("test://template/{id}/data", mime_type="application/json",
                 description="A resource template with parameter substitution")
def template_data(id: str) -> str:
    """A resource template with parameter substitution."""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@server.resource("test://watched-resource", mime_type="text/plain", description="A resource to subscribe to")
def watched_resource() -> str:
    """A resource that can be subscribed to for updates."""
    return "Watched resource content"


async def _subscribe(_ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
    _subscriptions.add(str(params.uri))
    return types.EmptyResult()


async def _unsubscribe(_ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    _subscriptions.discard(str(params.uri))
    return types.EmptyResult()


async def _set_level(_ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
    log.info("log level set to %s", params.level)
    return types.EmptyResult()


_lowlevel = server._lowlevel_server  # handlers MCPServer has no decorator for
_lowlevel.add_request_handler("resources/subscribe", types.SubscribeRequestParams, _subscribe)
_lowlevel.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, _unsubscribe)
_lowlevel.add_request_handler("logging/setLevel", types.SetLevelRequestParams, _set_level)


# ---------------------------------------------------------------- prompts
@server.prompt()
def test_simple_prompt() -> list[UserMessage]:
    """A simple prompt without arguments."""
    text = "This is a simple prompt for testing."
    return [UserMessage(role="user", content=types.TextContent(type="text", text=text))]


@server.prompt()
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
    """A prompt with two required arguments."""
    text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
    return [UserMessage(role="user", content=types.TextContent(type="text", text=text))]


@server.prompt()
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:  # noqa: N803 - the suite's name
    """A prompt that embeds the resource it is given."""
    resource = types.TextResourceContents(uri=resourceUri, mime_type="text/plain",
                                          text="Embedded resource content for testing.")
    return [UserMessage(role="user", content=types.EmbeddedResource(type="resource", resource=resource)),
            UserMessage(role="user", content=types.TextContent(type="text",
                                                               text="Please process the embedded resource above."))]


@server.prompt()
def test_prompt_with_image() -> list[UserMessage]:
    """A prompt with image content."""
    return [UserMessage(role="user", content=_image()),
            UserMessage(role="user", content=types.TextContent(type="text", text="Please analyze the image above."))]


@server.completion()
async def complete(ref: Any, argument: types.CompletionArgument, _context: Any) -> types.Completion:
    """Suggestions for prompt arguments: a few fixed words that start with what was typed."""
    words = ["paris", "park", "party", "test", "testing"]
    values = [w for w in words if w.startswith(argument.value)]
    return types.Completion(values=values, total=len(values), has_more=False)


if __name__ == "__main__":
    server.run("stdio")
