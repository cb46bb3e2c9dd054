"""Marshmallow schemas: everything that enters the broker is validated here.

One module so a reader sees every accepted shape at once: the server config,
the JSON-RPC envelope and the params of the methods the broker handles itself.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import (
    EXCLUDE,
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

SERVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOOL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# how a worker's backend session negotiates (`mcp.Client`'s mode): the modes that negotiate the revision
# (initialize, or server/discover first), or a pinned modern revision
NEGOTIATING_MODES = ("legacy", "auto")
PROTOCOL_MODES = (*NEGOTIATING_MODES, "2026-07-28")
TASK_MODES = ("optional", "required", "forbidden")  # a tool's task support (the tasks extension)
CATALOG_MODES = ("full", "search")  # what tools/list shows (broker.context.modes)
ISOLATION_MODES = ("shared", "per_client")  # one warm backend session per worker, or one per client session
RESULT_FORMATS = ("raw", "compact", "toon")  # JSON text content as the backend wrote it, minified, or TOON
RESULTS_MODES = ("shaped", "raw")  # results cut and compacted for a model's context, or passed through whole
MIN_RESULT_TOKENS = 256  # a smaller page would be mostly its note
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")  # an HTTP header field name (RFC 9110 token)


# ---------------------------------------------------------------- config
class CacheTTLs(fields.Dict):
    """`{"tool": ttl_seconds}`; 0 means never cached."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            keys=fields.String(validate=validate.Regexp(TOOL_NAME)),
            values=fields.Float(validate=validate.Range(min=0)),
            **kwargs,
        )


class PerTool(fields.Field):
    """A value for every tool of the server (`20000`), or by tool with `*` for the rest (`{"*": 20000,
    "tail_log": 4000}`); loaded as the map."""

    def __init__(self, value: fields.Field, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._map = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^(\*|[A-Za-z0-9._-]{1,128})$")),
                                values=value)
        self._value = value

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return self._map.deserialize(value, attr, data, **kwargs)  # type: ignore[no-any-return]
        return {"*": self._value.deserialize(value, attr, data, **kwargs)}


def _result_tokens(strict: bool = True, **kwargs: Any) -> fields.Integer:
    """0 = never cut; else at least MIN_RESULT_TOKENS (`strict`: a JSON integer; a query string's is text)."""
    return fields.Integer(strict=strict, validate=lambda n: n == 0 or MIN_RESULT_TOKENS <= n <= 10_000_000
                          or _raise(f"must be 0 (never cut) or {MIN_RESULT_TOKENS}..10000000"), **kwargs)


def _raise(message: str) -> bool:
    raise ValidationError(message)


class BrokerSettingsSchema(Schema):
    """The broker's own per-server keys, under `"broker"` in a server entry."""

    class Meta:
        unknown = "raise"

    concurrency = fields.Integer(load_default=8, validate=validate.Range(min=1, max=1024))
    timeout_s = fields.Float(load_default=30.0, validate=validate.Range(min=0.1, max=3000))
    max_timeout_s = fields.Float(load_default=300.0, validate=validate.Range(min=0.1, max=3000))
    retries = fields.Integer(load_default=3, validate=validate.Range(min=0, max=20))
    cache = CacheTTLs(load_default=dict)
    protocol = fields.String(load_default="legacy", validate=validate.OneOf(PROTOCOL_MODES))
    isolation = fields.String(load_default="shared", validate=validate.OneOf(ISOLATION_MODES))
    eager = fields.Boolean(load_default=False)
    idle_s = fields.Float(load_default=600.0, validate=validate.Range(min=0))
    max_clients = fields.Integer(load_default=100, validate=validate.Range(min=1, max=100_000))
    forward_headers = fields.List(fields.String(validate=validate.Regexp(HEADER_NAME, error="not an HTTP header name")),
                                  load_default=list)
    health_interval_s = fields.Float(load_default=15.0, validate=validate.Range(min=0))
    hang_timeouts = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=0, max=1000))
    max_result_bytes = fields.Integer(load_default=8 * 1024 * 1024,
                                      validate=validate.Range(min=1024, max=512 * 1024 * 1024))
    tasks = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^(\*|[A-Za-z0-9._-]{1,128})$")),
                        values=fields.String(validate=validate.OneOf(TASK_MODES)), load_default=dict)
    max_result_tokens = PerTool(_result_tokens(), load_default=dict)  # shaped results (broker.context.shaping)
    result_format = PerTool(fields.String(validate=validate.OneOf(RESULT_FORMATS)), load_default=dict)
    defer = fields.Boolean(load_default=False)  # tools/list leaves the server out; search finds it
    pin = fields.List(fields.String(validate=validate.Length(min=1, max=128)), load_default=list)
    # the prefix of the server's tool and prompt names instead of its name (short names for hosts that
    # prefix them again: broker.config.BrokerConfig.prefix)
    alias = fields.String(load_default=None, validate=validate.Regexp(
        r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$", error="1 to 32 letters, digits, '_' or '-', starting with a letter "
                                                 "or digit"))


class EndpointSchema(Schema):
    """How to reach one backend process: the transport keys of an mcpServers entry (or of one replica)."""

    class Meta:
        unknown = EXCLUDE  # other clients' keys (e.g. "disabled", "type") are tolerated

    command = fields.String(validate=validate.Length(min=1))
    args = fields.List(fields.String(), load_default=list)
    env = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    cwd = fields.String(load_default=None, allow_none=True)
    url = fields.Url(schemes={"http", "https"}, require_tld=False)
    headers = fields.Dict(keys=fields.String(validate=validate.Regexp(HEADER_NAME, error="not an HTTP header name")),
                          values=fields.String(), load_default=dict)

    @validates_schema
    def _one_transport(self, data: dict[str, Any], **_: Any) -> None:
        if ("command" in data) == ("url" in data):
            raise ValidationError("exactly one of 'command' (stdio) or 'url' (Streamable HTTP) is required", "command")


class ServerEntrySchema(EndpointSchema):
    """One entry of `mcpServers`: the keys every MCP client understands, plus `broker` and `replicas`
    (several interchangeable endpoints of one logical server, each with its own transport keys)."""

    replicas = fields.List(fields.Nested(EndpointSchema), validate=validate.Length(min=1, max=64))
    broker = fields.Nested(BrokerSettingsSchema, load_default=lambda: BrokerSettingsSchema().load({}))

    @validates_schema
    def _one_transport(self, data: dict[str, Any], **_: Any) -> None:
        if "replicas" in data:
            if "command" in data or "url" in data:
                raise ValidationError("give either 'replicas' or one of 'command'/'url', not both", "replicas")
            return
        if ("command" in data) == ("url" in data):
            raise ValidationError("exactly one of 'command' (stdio), 'url' (Streamable HTTP) or 'replicas' "
                                  "is required", "command")


class ConfigFileSchema(Schema):
    """The whole file: `{"mcpServers": {...}, "broker": {...}}`."""

    class Meta:
        unknown = EXCLUDE

    mcpServers = fields.Dict(
        keys=fields.String(validate=validate.Regexp(SERVER_NAME, error="names must match [A-Za-z0-9_-]{{1,64}}")),
        values=fields.Nested(ServerEntrySchema),
        required=True,
    )
    broker = fields.Dict(load_default=dict)


# ---------------------------------------------------------------- JSON-RPC
class JSONRPCMessageSchema(Schema):
    """A JSON-RPC 2.0 request, notification or response from a client."""

    class Meta:
        unknown = INCLUDE

    jsonrpc = fields.String(required=True, validate=validate.Equal("2.0"))
    id = fields.Raw(allow_none=False)
    method = fields.String(validate=validate.Length(min=1))
    params = fields.Raw(allow_none=True)
    result = fields.Raw()
    error = fields.Dict()

    @validates_schema
    def _shape(self, data: dict[str, Any], **_: Any) -> None:
        if "id" in data and (isinstance(data["id"], bool) or not isinstance(data["id"], (str, int))):
            raise ValidationError("id must be a string or an integer", "id")
        if "method" in data:
            if "params" in data and data["params"] is not None and not isinstance(data["params"], dict):
                raise ValidationError("params must be an object", "params")
        elif "id" not in data or ("result" in data) == ("error" in data):
            raise ValidationError("a message needs 'method' (request/notification) or 'id' with 'result' or 'error'")


class CallToolParamsSchema(Schema):
    """`tools/call` params."""

    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True, validate=validate.Length(min=1, max=300))
    arguments = fields.Dict(load_default=dict, allow_none=True)
    _meta = fields.Dict(data_key="_meta", load_default=dict, allow_none=True)


class InitializeParamsSchema(Schema):
    """`initialize` params (only what the broker reads; the rest is kept as sent)."""

    class Meta:
        unknown = EXCLUDE

    protocolVersion = fields.String(required=True)
    capabilities = fields.Dict(load_default=dict)
    clientInfo = fields.Dict(load_default=dict)


class PaginatedParamsSchema(Schema):
    """`*/list` params."""

    class Meta:
        unknown = EXCLUDE

    cursor = fields.String(load_default=None, allow_none=True)


def first_error(err: ValidationError) -> str:
    """Flatten marshmallow's nested messages into one readable line."""

    def walk(node: Any, path: list[str]) -> str:
        if isinstance(node, dict):
            for key, value in node.items():
                return walk(value, path if key == "_schema" else [*path, str(key)])
        if isinstance(node, list) and node:
            return walk(node[0], path)
        where = ".".join(path)
        return f"{where}: {node}" if where else str(node)

    return walk(err.messages, [])


# ---------------------------------------------------------------- HTTP API (/v1)
# Strict (unknown keys raise): a batch of 100,000 calls with a misspelt "argumnets" must fail before it
# runs, not run 100,000 times with empty arguments.
CLIENT_ID_MAX_CHARS = 200
STREAM_ENTRY_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")  # a Redis stream entry id, as sent in each result's `seq`
MAX_REQUESTED_TIMEOUT_S = 86400.0  # a sanity bound only; the server's max_timeout_s caps it further


def _client_id(value: Any) -> None:
    """A call's own id is echoed back in its result: a string or an integer, like a JSON-RPC id."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValidationError("must be a string or an integer")
    if isinstance(value, str) and len(value) > CLIENT_ID_MAX_CHARS:
        raise ValidationError(f"must be at most {CLIENT_ID_MAX_CHARS} characters")


def _timeout_field() -> fields.Float:
    return fields.Float(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=0, min_inclusive=False, max=MAX_REQUESTED_TIMEOUT_S),
    )


class ToolCallRequestSchema(Schema):
    """`POST /v1/calls`: one namespaced tool call, answered in the HTTP response."""

    class Meta:
        unknown = "raise"

    tool = fields.String(required=True, validate=validate.Length(min=1, max=300))
    arguments = fields.Dict(load_default=dict, allow_none=True)
    timeout_s = _timeout_field()


class BatchCallSchema(ToolCallRequestSchema):
    """One call of a batch (`calls[i]` of a JSON body, or one line of JSON Lines)."""

    id = fields.Raw(load_default=None, allow_none=True, validate=_client_id)


class BatchRequestSchema(Schema):
    """`POST /v1/batches` with a JSON object body; each call is then checked with `BatchCallSchema`
    one by one, so an error names its index and the web process can yield between calls."""

    class Meta:
        unknown = "raise"

    calls = fields.List(fields.Raw(), required=True)
    timeout_s = _timeout_field()


class BatchSubmitQuerySchema(Schema):
    """Query string of `POST /v1/batches`: a default per-call time limit (handy for JSON Lines bodies)."""

    class Meta:
        unknown = EXCLUDE  # proxies and cache busters add parameters of their own

    timeout_s = _timeout_field()


class BatchResultsQuerySchema(Schema):
    """Query string of `GET /v1/batches/<id>/results`."""

    class Meta:
        unknown = EXCLUDE

    after = fields.String(load_default=None, validate=validate.Regexp(STREAM_ENTRY_ID, error="not a stream entry id"))
    wait = fields.Boolean(load_default=True)


class ResultsQuerySchema(Schema):
    """How a client wants its tool results (broker.context.shaping), in an MCP endpoint's query string
    (`/mcp?results=raw`, `?result_format=toon&max_result_tokens=20000`)."""

    class Meta:
        unknown = EXCLUDE  # `?session=`, `?tools=` and what proxies add

    results = fields.String(load_default=None, validate=validate.OneOf(RESULTS_MODES))
    result_format = fields.String(load_default=None, validate=validate.OneOf(RESULT_FORMATS))
    max_result_tokens = _result_tokens(strict=False, load_default=None)


class ReadResourceParamsSchema(Schema):
    """`resources/read` params."""

    class Meta:
        unknown = EXCLUDE

    uri = fields.String(required=True, validate=validate.Length(min=1, max=8192))
    _meta = fields.Dict(data_key="_meta", load_default=dict, allow_none=True)
    requestState = fields.Raw(load_default=None)  # a modern retry's sealed state (resources/read), as sent


class GetPromptParamsSchema(Schema):
    """`prompts/get` params."""

    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True, validate=validate.Length(min=1, max=300))
    arguments = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict, allow_none=True)
    _meta = fields.Dict(data_key="_meta", load_default=dict, allow_none=True)


class CompleteParamsSchema(Schema):
    """`completion/complete` params."""

    class Meta:
        unknown = EXCLUDE

    ref = fields.Dict(required=True)
    argument = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    context = fields.Dict(load_default=dict, allow_none=True)


class PrincipalLimitsSchema(Schema):
    """What a caller may use and how fast: a key's entry, or an OAuth profile (broker.oauth.settings)."""

    class Meta:
        unknown = "raise"

    allow = fields.List(fields.String(validate=validate.Length(min=1, max=200)), load_default=lambda: ["*"])
    rate_per_s = fields.Float(load_default=0, validate=validate.Range(min=0))
    burst = fields.Integer(load_default=0, validate=validate.Range(min=0))
    max_in_flight = fields.Integer(load_default=0, validate=validate.Range(min=0))
    max_connections = fields.Integer(load_default=0, validate=validate.Range(min=0))
    admin = fields.Boolean(load_default=False)
    results = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(RESULTS_MODES))
    result_format = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(RESULT_FORMATS))
    tools = fields.String(load_default=None, validate=validate.OneOf(CATALOG_MODES))  # the key's catalog mode
    pin = fields.List(fields.String(validate=validate.Length(min=1, max=200)), load_default=list)


class KeyEntrySchema(PrincipalLimitsSchema):
    """One key of the keys file: only its hash is stored (`python -m broker hash-key KEY`)."""

    id = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9_.-]{1,64}$"))
    hash = fields.String(required=True, validate=validate.Regexp(r"^sha256:[0-9a-f]{64}$",
                                                                  error="must be sha256:<64 hex digits>"))


class KeysFileSchema(Schema):
    """`keys` and/or `oauth` (validated by broker.oauth.settings); `keys` may be left out when `oauth` is set."""

    class Meta:
        unknown = "raise"

    keys = fields.List(fields.Nested(KeyEntrySchema), load_default=list)
    oauth = fields.Dict(load_default=None)


class TaskParamsSchema(Schema):
    """`tasks/get` and `tasks/cancel` params (the tasks extension)."""

    class Meta:
        unknown = EXCLUDE

    taskId = fields.String(required=True, validate=validate.Length(min=1, max=300))


class TaskUpdateParamsSchema(TaskParamsSchema):
    """`tasks/update` params: the answers to a task's pending questions, by key."""

    inputResponses = fields.Dict(keys=fields.String(), required=True)
