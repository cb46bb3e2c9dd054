"""JSON-RPC framing: what a frame must be before anything reads it, the ids an answer may carry, the JSON-RPC
error (`RPCError`, built in `broker.rpc_error`, the one builder), and the JSON the broker writes.

Every transport feeds frames through here (by way of the conversation), so bad input gets the JSON-RPC error
MCP prescribes, the same on every transport, and the conversation goes on: a frame over the size limit, not
UTF-8 or not JSON; an empty or oversized batch; a message that is not a JSON-RPC message; text no backend
can be sent (a lone surrogate, see `broker.wire`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from marshmallow import Schema, ValidationError
from mcp.shared.inbound import (
    MCP_NAME_HEADER,
    InboundLadderRejection,
    InboundModernRoute,
    classify_inbound_request,
    decode_header_value,
)
from mcp_types import HEADER_MISMATCH, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR

from broker import wire
from broker.rpc_error import RPCError
from broker.schemas import JSONRPCMessageSchema, first_error
from broker.tasks import TASK_NAME_PARAMS

_message_schema = JSONRPCMessageSchema()


class _Deferred:
    """Marker: the response will be sent later (a queued call)."""


DEFERRED = _Deferred()


def dumps(message: Any) -> str:
    """Compact JSON text that is always valid JSON in valid UTF-8 (`broker.wire.dumps`): a lone surrogate is
    written as an ASCII escape, a non-finite number as null."""
    return wire.dumps(message)


def text_emitter(write: Callable[[str], None]) -> Callable[[dict[str, Any], Any], None]:
    """An emit function for a stream transport: one serialised message per write, writes never interleaved."""
    lock = threading.Lock()

    def emit(message: dict[str, Any], _related: Any = None) -> None:
        text = dumps(message)
        with lock:
            write(text)

    return emit


def echoable_id(raw: Any) -> str | int | None:
    """The request id an answer may carry: a string or an integer as sent, else null (JSON-RPC allows
    nothing else, so a boolean, a float or an object cannot be echoed)."""
    if isinstance(raw, str) and wire.lone_surrogate(raw) is not None:
        return None  # not text any transport can carry back (see broker.wire)
    return raw if isinstance(raw, (str, int)) and not isinstance(raw, bool) else None


def load_params(schema: Schema, params: dict[str, Any]) -> dict[str, Any]:
    """A request's params as `schema` loads them, or -32602 naming the first problem."""
    try:
        return schema.load(params)  # type: ignore[no-any-return]
    except ValidationError as err:
        raise RPCError(INVALID_PARAMS, f"Invalid params: {first_error(err)}") from None


# ---------------------------------------------------------------- frames
def decode_frame(data: str | bytes, max_bytes: int) -> Any:
    """One frame's JSON value, or the error to answer it with (id null: nothing of it could be read)."""
    if len(data) > max_bytes:
        raise RPCError(INVALID_REQUEST, f"Invalid Request: message of {len(data)} bytes is over the limit of "
                                        f"{max_bytes} bytes")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise RPCError(PARSE_ERROR, "Parse error: frame is not UTF-8 text") from None
    try:
        return wire.loads(data)
    except (ValueError, RecursionError) as err:
        raise RPCError(PARSE_ERROR, f"Parse error: {err}") from None


def batch_messages(decoded: Any, max_messages: int) -> list[Any]:
    """The messages of a frame: one, or a batch (array) of up to `max_messages`."""
    if not isinstance(decoded, list):
        return [decoded]
    if not decoded:
        raise RPCError(INVALID_REQUEST, "Invalid Request: empty batch")
    if len(decoded) > max_messages:
        raise RPCError(INVALID_REQUEST, f"Invalid Request: a batch of {len(decoded)} messages is over the "
                                        f"limit of {max_messages}")
    return decoded


NOT_AN_OBJECT = RPCError(INVALID_REQUEST, "Invalid Request: a JSON-RPC message must be an object")


def is_plain_request(message: dict[str, Any]) -> bool:
    """The usual request or notification, in a shape the envelope schema passes: `jsonrpc` "2.0", a method
    name, an id that is a string or an integer (or none), params an object (or none), no `result`/`error`.
    Every call over Streamable HTTP is checked once; the schema took 2.5 % of the web's samples per
    modern-era call (py-spy), `python -m bench.web_cpu --micro` measures the two. Anything else: the schema."""
    method, rid, params = message.get("method"), message.get("id", 0), message.get("params")
    return (type(message.get("jsonrpc")) is str and message["jsonrpc"] == "2.0" and type(method) is str
            and method != "" and type(rid) in (int, str) and (params is None or type(params) is dict)
            and "result" not in message and "error" not in message)


def message_error(message: dict[str, Any]) -> RPCError | None:
    """Why `message` is not a JSON-RPC request, notification or response (None: it is one)."""
    if is_plain_request(message):
        return None
    try:
        errors = _message_schema.validate(message)
    except RecursionError:
        errors = {"_schema": ["message nested too deeply"]}
    if errors:
        return RPCError(INVALID_REQUEST, f"Invalid Request: {first_error(ValidationError(errors))}")
    return None


def unencodable_error(message: dict[str, Any]) -> RPCError | None:
    """Text no backend can be sent (a lone surrogate, see `broker.wire`): refused for every method and
    transport before anything looks at it. A request's error is -32602 (-32600 outside its params); for a
    client's answer to a backend's question the same error is what that backend receives."""
    where = wire.lone_surrogate(message)
    if where is None:
        return None
    problem = wire.describe_surrogate(where)
    if "method" not in message:
        return RPCError(INVALID_PARAMS, f"Invalid answer: {problem}")
    if where.startswith("params"):
        return RPCError(INVALID_PARAMS, f"Invalid params: {problem}")
    return RPCError(INVALID_REQUEST, f"Invalid Request: {problem}")


def classify_modern(message: dict[str, Any], headers: dict[str, str] | None = None) -> InboundModernRoute | RPCError:
    """A modern request's envelope as the SDK's classifier reads it (protocol version, client info and
    capabilities in `params._meta`; with `headers`, the HTTP routing headers must agree), or its error."""
    verdict = classify_inbound_request(message, headers=headers)
    if isinstance(verdict, InboundLadderRejection):
        return RPCError(verdict.code, verdict.message, verdict.data)
    name_key = TASK_NAME_PARAMS.get(message.get("method"))  # the SDK's ladder knows only the core methods
    if headers is not None and name_key is not None:
        body_value = (message.get("params") or {}).get(name_key)
        if decode_header_value(headers.get(MCP_NAME_HEADER)) != body_value:  # absent counts as a mismatch
            return RPCError(HEADER_MISMATCH, f"Mcp-Name header does not match the request body's {name_key!r} "
                                             "parameter")
    return verdict
