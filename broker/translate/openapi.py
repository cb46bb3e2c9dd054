"""`/openapi.json`: the broker's `/v1` API and one `POST /v1/tools/<name>` operation per tool, as OpenAPI 3.1.

What OpenAPI tool hosts (Open WebUI's tool servers, generated clients) read to call tools: each operation's
`operationId` is the function name their model sees, so it is the tool's OpenAI name (broker.translate.names:
`[a-zA-Z0-9_-]{1,64}`, stable); its request body is the tool's input schema (OpenAPI 3.1 schemas are JSON
Schema 2020-12, so the schema is used as the server wrote it, less `$schema`). A `$ref` inside it would be read
against the whole document, not the tool's schema, so references are inlined (broker/translate/schemas.py);
a schema that cannot be inlined (recursive, too large) is placed whole under `components/schemas/<operationId>`
with its references rewritten to point there. The document is per caller: it lists the tools the caller's key
may use, and the admin operations only to an admin key.

`security_schemes` is the hook for other ways to authenticate (OAuth): a scheme added there is offered on every
operation alongside the bearer key.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from broker.translate.names import provider_name
from broker.translate.schemas import Unexpressible, description_of, inline_refs, schema_problem

OPENAPI_VERSION = "3.1.0"
BEARER = {"type": "http", "scheme": "bearer", "description": "An API key of the broker "
          "(MCP_BROKER_API_KEYS / MCP_BROKER_KEYS_FILE), sent as `Authorization: Bearer <key>`."}
_ERROR = {"$ref": "#/components/schemas/Error"}
COMPONENT_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string", "description": "stable, machine-readable"},
                       "message": {"type": "string"}}}}},
    "CallToolResult": {"type": "object", "description": "The MCP tools/call result, as the backend gave it.",
                       "required": ["content"], "properties": {
                           "content": {"type": "array", "items": {"type": "object"}},
                           "structuredContent": {"type": "object"}, "isError": {"type": "boolean"}}},
    "ToolCall": {"type": "object", "required": ["tool"], "properties": {
        "tool": {"type": "string"}, "arguments": {"type": "object"},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0}}},
    "Batch": {"type": "object", "properties": {
        "batch_id": {"type": "string"}, "total": {"type": "integer"}, "state": {"type": "string"},
        "status_url": {"type": "string"}, "results_url": {"type": "string"}}},
}
ERRORS = {  # status → when (every operation may answer these)
    "400": "Bad request: the body or query is invalid (the error names the problem)",
    "401": "No key, or a wrong key",
    "403": "The key may not do this",
    "429": "Rate limit or calls in flight: retry after Retry-After",
    "503": "The broker's Redis is unreachable: retry shortly",
}
CALL_ERRORS = {
    "404": "No such tool (or not one the key may see)",
    "413": "The arguments are over the size limit",
    "502": "The backend failed the call (not a tool error: those are results with isError true)",
    "504": "No answer within the call's time limit",
}


def _json(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"description": description or "OK", "content": {"application/json": {"schema": schema}}}


def _responses(ok: dict[str, Any], extra: dict[str, str] | None = None) -> dict[str, Any]:
    errors = {**ERRORS, **(extra or {})}
    return {"200": ok, **{status: _json(_ERROR, text) for status, text in sorted(errors.items())}}


def _rebased(node: Any, base: str) -> Any:
    """`node` with every local `$ref` (`#/...`) rewritten to point under `base` (a components pointer)."""
    if isinstance(node, list):
        return [_rebased(item, base) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _rebased(value, base) for key, value in node.items()}
    ref = node.get("$ref")
    if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
        out["$ref"] = base + ref[1:]
    return out


def body_schema(schema: Any, operation_id: str, components: dict[str, Any]) -> dict[str, Any]:
    """The request body's schema for a tool's input schema: inlined, or placed under components (see above)."""
    if not isinstance(schema, dict) or not schema or schema_problem(schema) is not None:
        schema = {"type": "object"}  # none, or broken: any JSON object (the backend judges the arguments)
    schema = {k: v for k, v in schema.items() if k != "$schema"}
    try:
        return inline_refs(schema)
    except Unexpressible:
        pointer = f"#/components/schemas/{operation_id}"
        components[operation_id] = _rebased(schema, pointer)
        return {"$ref": pointer}


def tool_operation(tool: dict[str, Any], components: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(path, path item) of `POST /v1/tools/<name>` for one tool."""
    name = str(tool["name"])
    operation_id = provider_name(name, "openai")
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": str(tool.get("title") or (tool.get("annotations") or {}).get("title") or name),
        "tags": ["tools"],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": body_schema(tool.get("inputSchema") or {}, operation_id, components)}}},
        "responses": _responses(_json({"$ref": "#/components/schemas/CallToolResult"},
                                      "The tool's result (a tool error too: isError true)"), CALL_ERRORS),
    }
    if description := description_of(tool):
        operation["description"] = description
    return f"/v1/tools/{quote(name, safe='')}", {"post": operation}


def _api_paths(formats: Iterable[str], admin: bool) -> dict[str, Any]:
    batch_id = [{"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    batch = _json({"$ref": "#/components/schemas/Batch"})
    paths: dict[str, Any] = {
        "/v1/tools": {"get": {
            "operationId": "list_tools", "tags": ["api"], "summary": "The caller's tools in an LLM API's shape",
            "parameters": [
                {"name": "format", "in": "query", "schema": {"type": "string", "enum": list(formats),
                                                             "default": "mcp"}},
                {"name": "strict", "in": "query", "schema": {"type": "boolean", "default": True},
                 "description": "OpenAI: strict schemas where the tool's schema has one"},
                {"name": "tools", "in": "query", "schema": {"type": "string", "enum": ["full", "search"]},
                 "description": "catalog mode (tool search)"}],
            "responses": _responses(_json({"type": "object", "properties": {
                "format": {"type": "string"}, "tools": {"type": "array"}, "unsupported": {"type": "array"},
                "adapted": {"type": "array"}, "renamed": {"type": "object"}}}))}},
        "/v1/calls": {"post": {
            "operationId": "call_tool", "tags": ["api"], "summary": "One tool call, answered when done",
            "description": "A native call ({tool, arguments}) or a model's tool calls in an LLM API's shape.",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ToolCall"}}}},
            "responses": _responses(_json({"type": "object"}), CALL_ERRORS)}},
        "/v1/batches": {"post": {
            "operationId": "submit_batch", "tags": ["api"], "summary": "Many calls, run as one durable batch",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"type": "object", "properties": {
                    "calls": {"type": "array", "items": {"$ref": "#/components/schemas/ToolCall"}}}}},
                "application/x-ndjson": {"schema": {"type": "string"}}}},
            "responses": {"202": batch, **_responses(batch, {"413": "The batch is too large"})}}},
        "/v1/batches/{batch_id}": {
            "get": {"operationId": "batch_status", "tags": ["api"], "parameters": batch_id,
                    "responses": _responses(batch, {"404": "No such batch", "410": "The batch was lost"})},
            "delete": {"operationId": "cancel_batch", "tags": ["api"], "parameters": batch_id,
                       "responses": {"202": batch, **_responses(batch, {"404": "No such batch"})}}},
        "/v1/batches/{batch_id}/results": {"get": {
            "operationId": "batch_results", "tags": ["api"], "parameters": batch_id,
            "summary": "Results as JSON Lines, streamed while the batch runs",
            "responses": _responses({"description": "JSON Lines", "content": {"application/x-ndjson": {
                "schema": {"type": "string"}}}}, {"404": "No such batch"})}},
    }
    if admin:
        paths["/v1/admin/reload"] = {"post": {
            "operationId": "reload_config", "tags": ["admin"], "summary": "Reload the servers' config everywhere",
            "responses": _responses(_json({"type": "object"}))}}
    return paths


def openapi_document(tools: Iterable[dict[str, Any]], *, server_url: str, formats: Iterable[str], admin: bool,
                     auth_required: bool = True, version: str = "1",
                     security_schemes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for one caller: `tools` are the tools its key may use (sorted by name here).
    A tool whose operationId another already has (an API operation's, or a name collision: see names.py) is
    left out rather than making the document invalid."""
    components: dict[str, Any] = dict(COMPONENT_SCHEMAS)
    paths = _api_paths(formats, admin)
    taken = {op["operationId"] for item in paths.values() for op in item.values()}
    for tool in sorted(tools, key=lambda t: str(t.get("name", ""))):
        path, item = tool_operation(tool, components)
        if item["post"]["operationId"] in taken:
            continue
        taken.add(item["post"]["operationId"])
        paths[path] = item
    schemes = {"bearer": BEARER, **(security_schemes or {})}
    security = [{name: []} for name in schemes] + ([] if auth_required else [{}])
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "mcp-broker", "version": version,
                 "description": "The broker's HTTP API, and every MCP tool this key may use as one operation: "
                                "POST /v1/tools/<name> with the tool's arguments as the JSON body."},
        "servers": [{"url": server_url}],
        "security": security,
        "tags": [{"name": "tools", "description": "The MCP tools of the broker's backends"},
                 {"name": "api", "description": "Calls, batches and tool definitions"}],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": schemes},
    }
