"""The translator's HTTP routes: tool definitions in LLM API shapes, the OpenAPI document, tools as operations.

    GET  /v1/tools?format=mcp|openai|openai-responses|anthropic|gemini[&strict=false][&tools=full|search]
    GET  /openapi.json                  OpenAPI 3.1: /v1 and one operation per tool, for this caller
    POST /v1/tools/<name>               run one tool, the JSON body its arguments; answers its MCP result

Everything is per caller, as `tools/list` is: the same allow-lists (`Admission.visible`), the same catalog
modes (`broker.context.modes`: `?tools=search` lists only pinned tools and the broker's search tools), the same
auth (web.auth runs first). The shapes are `broker.translate`'s; a tool runs on `POST /v1/calls`'s path
(`web.api.run_call`: admission, the durable call, time limits).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from marshmallow import ValidationError

from broker import wire
from broker.schemas import BatchSubmitQuerySchema, first_error
from broker.translate.definitions import FORMATS, DefinitionCache, UnknownFormat, tool_definitions
from broker.translate.openapi import openapi_document
from web.api import run_call, share_error_handlers
from web.call_path import ApiError, admit, read_body
from web.services import current_services
from web.transports.common import catalog_mode_problem, requested_catalog_mode
from web.v1_context import visible_tools

translator = Blueprint("translator", __name__)
share_error_handlers(translator)
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
DEFINITIONS = DefinitionCache()  # this process's adapted definitions, reused while a tool is unchanged


def _ordered(document: dict[str, Any]) -> Response:
    """JSON with the keys in the order they were written (`jsonify` sorts them): a schema's properties stay in
    the server's order, which is the order a model fills them in."""
    return Response(wire.dumps(document), mimetype="application/json")


def _query_problem() -> None:
    problem = catalog_mode_problem()
    if problem is not None:
        raise ApiError(400, "invalid_request", problem)


@translator.get("/v1/tools")
def get_tools() -> Response:
    """The caller's tools as one LLM API's tool definitions (broker.translate.definitions)."""
    _query_problem()
    format_name = request.args.get("format", "mcp")
    if format_name not in FORMATS:
        raise ApiError(400, "unknown_format", str(UnknownFormat(format_name[:40])), formats=list(FORMATS))
    strict = BOOLEANS.get(request.args.get("strict", "true").lower())
    if strict is None:
        raise ApiError(400, "invalid_request", "?strict= must be true or false")
    services = current_services()
    tools = visible_tools(services, admit(services), requested_catalog_mode())
    return _ordered(tool_definitions(tools, format_name, strict, DEFINITIONS))


@translator.get("/openapi.json")
def get_openapi() -> Response:
    """OpenAPI 3.1 for this caller: the /v1 API and one `POST /v1/tools/<name>` per tool it may use."""
    _query_problem()
    services = current_services()
    admission = admit(services)
    keyring = current_app.config.get("KEYRING")
    tools = visible_tools(services, admission, requested_catalog_mode())
    document = openapi_document(tools, server_url=request.url_root.rstrip("/"),
                                formats=FORMATS, admin=admission.principal.admin,
                                auth_required=bool(keyring is not None and keyring.enabled),
                                security_schemes=current_app.config.get("OPENAPI_SECURITY_SCHEMES"))
    return _ordered(document)


@translator.post("/v1/tools/<path:name>")
def post_tool(name: str) -> tuple[Response, int, dict[str, str]]:
    """Run tool `name` with the JSON body as its arguments, as `POST /v1/calls` does; the answer is the MCP
    result itself (`content`, `structuredContent`, `isError`: a tool's own error is a result the model reads,
    answered 200), the call id in `X-Call-Id`. What stops the call is a JSON error with its status."""
    services = current_services()
    data = read_body(services.max_frame_bytes, "request_too_large")
    try:
        arguments = wire.loads(data) if data.strip() else {}
    except (ValueError, RecursionError) as err:
        raise ApiError(400, "invalid_arguments", f"the body is not valid JSON: {err}") from None
    if not isinstance(arguments, dict):
        raise ApiError(400, "invalid_arguments", f"the body must be a JSON object (the tool's arguments), not "
                                                 f"{type(arguments).__name__}")
    where = wire.lone_surrogate(arguments)
    if where is not None:
        raise ApiError(400, "invalid_arguments", wire.describe_surrogate(where))
    timeout_s = _timeout()
    try:
        call_id, result = run_call(services, name, arguments, timeout_s)
    except ApiError as err:
        if err.code == "unknown_tool":
            raise ApiError(404, "unknown_tool", err.message) from None
        raise
    return jsonify(result), 200, {"X-Call-Id": call_id} if call_id else {}


def _timeout() -> float | None:
    try:
        return BatchSubmitQuerySchema().load(request.args)["timeout_s"]  # type: ignore[no-any-return]
    except ValidationError as err:
        raise ApiError(400, "invalid_request", f"query string: {first_error(err)}") from None


def register_translator(app: Flask) -> None:
    """Mount the routes. `app.config["OPENAPI_SECURITY_SCHEMES"]` (a dict of OpenAPI security schemes) adds ways
    to authenticate to the document beside the bearer key (the hook for OAuth)."""
    app.register_blueprint(translator)
