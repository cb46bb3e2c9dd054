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
from mcp.server.mcpserver.prompts.base import UserMessage

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


def json_schema_2020_12_tool(name: str | None = None, address: dict[str, Any] | None = None) -> str:
    """Tool with JSON Schema 2020-12 features."""
    return f"name={name}, address={json.dumps(address)}"


server.add_tool(json_schema_2020_12_tool, name="json_schema_2020_12_tool",
                description="Tool with JSON Schema 2020-12 features")
# The advertised schema must keep `$schema`, `$defs` and `additionalProperties` (SEP-1613) end to end.
server._tool_manager.get_tool("json_schema_2020_12_tool").parameters = {  # type: ignore[union-attr]
    "$schema": JSON_SCHEMA_2020_12,
    "type": "object",
    "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
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
