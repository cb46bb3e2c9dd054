"""The HTTP API under `/v1`, for callers that are not MCP clients (scripts, pipelines, curl).

    POST   /v1/calls                   one call, answered in the response (waits for the worker)
    POST   /v1/batches                 many calls (JSON or JSON Lines), checked whole, then queued → 202
    GET    /v1/batches/<id>            counts and state
    GET    /v1/batches/<id>/results    results as JSON Lines in completion order, streamed while it runs
    DELETE /v1/batches/<id>            cancel what has not finished

`/v1/calls` and `/v1/batches` also take a model's tool calls in an LLM API's shape, and batch files of
OpenAI's and Anthropic's batch APIs (`web.toolcalls`, `web.toolcall_batches`).

It rides on the same machinery as the WebSocket: the catalog and router decide
where a call goes, single calls take the coalescing outbox and come back on the
process's reply hub, batches go through `broker.batches`. Every error is JSON
`{"error": {"code", "message"}}` with a fitting status, never an HTML page or a
stack trace, because the callers are programs.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from marshmallow import Schema, ValidationError
from mcp.server.streamable_http import REQUEST_CANCELLED
from mcp_types import INVALID_PARAMS, REQUEST_TIMEOUT
from werkzeug.exceptions import HTTPException

from broker import observe, wire
from broker.admission import Refused
from broker.batch_input import decode_body, prepare_batch
from broker.batches import (
    BatchError,
    BatchSettings,
    batch_owner,
    batch_status,
    cancel_batch,
    is_batch_id,
    iter_results,
    submit_batch,
)
from broker.context.names import short_name
from broker.outage import TAG_CHARS, is_redis_down
from broker.schemas import (
    BatchResultsQuerySchema,
    BatchSubmitQuerySchema,
    ToolCallRequestSchema,
    first_error,
)
from broker.services import BrokerServices
from web.auth import current_principal
from web.call_path import ApiError, admit, await_call, queue_call, read_body
from web.errors import api_error, error_response, redis_unavailable, refused_response
from web.services import current_services
from web.toolcall_batches import batch_source, submit_file, translated
from web.toolcalls import call_format, run_tool_calls
from web.v1_context import run_broker_tool
from workers.dispatch import submit_calls

log = logging.getLogger(__name__)

PREFIX = "/v1"
CALL_QUEUE_S = 60.0  # MCP_BROKER_CALL_QUEUE_S: how long a synchronous call may wait in its queue
BATCH_STATUS = {"invalid_batch": 400, "forbidden": 403, "batch_too_large": 413, "enqueue_failed": 503}
RESULTS_MIMETYPE = "application/x-ndjson"
BatchRead = Callable[[redis.Redis, str, BatchSettings], dict[str, Any] | None]  # batch_status, cancel_batch

api = Blueprint("api", __name__, url_prefix=PREFIX)


# ---------------------------------------------------------------- helpers
def _settings() -> BatchSettings:
    return current_app.config["BATCH_SETTINGS"]  # type: ignore[no-any-return]


def _load(schema: Schema, data: Any, code: str, where: str = "") -> dict[str, Any]:
    try:
        return schema.load(data)  # type: ignore[no-any-return]
    except ValidationError as err:
        raise ApiError(400, code, f"{where}{first_error(err)}") from None


def _batch_urls(batch_id: str) -> dict[str, str]:
    return {"status_url": f"{PREFIX}/batches/{batch_id}", "results_url": f"{PREFIX}/batches/{batch_id}/results"}


class BatchLost(ApiError):
    """The batch was created in a Redis epoch whose state is gone (Redis restarted without persistence)."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(410, "batch_lost", f"batch {batch_id!r} was lost: the broker's Redis restarted without "
                         f"persistence after it was created, and its calls and results are gone; submit it "
                         f"again if that is safe", batch_id=batch_id)
        self.batch_id = batch_id


def _no_such_batch(batch_id: str) -> ApiError:
    if is_batch_id(batch_id) and current_services().hub.epochs.was_lost(batch_id[:TAG_CHARS]):
        return BatchLost(batch_id)
    return ApiError(404, "not_found", f"no batch {batch_id!r} (unknown, or its results expired)")


def _own_batch(services: BrokerServices, batch_id: str, read: BatchRead) -> dict[str, Any]:
    """What `read` (status or cancel) answers of the batch: 404 unless the batch exists and is the caller's
    (or the caller is an admin): another key's batch is indistinguishable from a missing one."""
    owner = batch_owner(services.redis, batch_id) if is_batch_id(batch_id) else None
    principal = current_principal()
    if owner is None or (owner and owner != principal.id and not principal.admin):
        raise _no_such_batch(batch_id)
    status = read(services.redis, batch_id, _settings())
    if status is None:
        raise _no_such_batch(batch_id)
    return status


# ---------------------------------------------------------------- one call
@api.post("/calls")
def post_call() -> tuple[Response, int]:
    """Run one call and answer with its outcome: the caller holds the HTTP request instead of a socket.
    A model's tool calls in an LLM API's shape (`?format=`, or recognized) go to `web.toolcalls`."""
    services = current_services()
    data = read_body(services.max_frame_bytes, "request_too_large")
    try:
        body = wire.loads(data)
    except (ValueError, RecursionError) as err:
        raise ApiError(400, "invalid_call", f"the body is not valid JSON: {err}") from None
    where = wire.lone_surrogate(body)
    if where is not None:
        raise ApiError(400, "invalid_call", wire.describe_surrogate(where))
    shape = call_format(body, request.args.get("format"))
    if shape is not None:
        query = _load(BatchSubmitQuerySchema(), request.args, "invalid_call", "query string: ")
        return run_tool_calls(services, body, shape, query["timeout_s"], run_call)
    loaded = _load(ToolCallRequestSchema(), body, "invalid_call")
    call_id, result = run_call(services, loaded["tool"], loaded["arguments"] or {}, loaded["timeout_s"])
    return jsonify(result=result, call_id=call_id), 200


def run_call(services: BrokerServices, name: str, arguments: dict[str, Any],
             timeout_s: float | None) -> tuple[str, dict[str, Any]]:
    """(call id, result) of one call of tool `name`, waited for: admission, route, argument checks, a slot of the
    key's calls in flight, the durable call through the outbox and the reply hub. Every failure is an `ApiError`
    or a `Refused` (the view's error handlers answer them). `POST /v1/calls` and `POST /v1/tools/<name>` both
    run their call here."""
    started = time.perf_counter()
    if short_name(name, services.config.separator) is not None:  # the broker's own tools (tool search)
        ran = run_broker_tool(services, lambda: admit(services), name, arguments, timeout_s, run_call)
        if ran is not None:
            return ran
    try:
        admission = admit(services, name)
    except Refused:
        server, tool = observe.tool_labels(services.catalog, name)
        observe.web_immediate(server, tool, "rejected", time.perf_counter() - started, None, current_principal().id)
        raise
    pending = queue_call(services, admission, name, arguments, timeout_s)
    outcome = await_call(services, pending)
    if "result" in outcome:
        return pending.call_id, outcome["result"]
    error = outcome.get("error") or {}
    code, message = error.get("code"), str(error.get("message", "unknown error"))
    if code == REQUEST_TIMEOUT:
        raise ApiError(504, "timeout", message, rpc_code=code)
    if code == INVALID_PARAMS:
        raise ApiError(400, "invalid_params", message, rpc_code=code)
    if code == REQUEST_CANCELLED:
        raise ApiError(409, "cancelled", message, rpc_code=code)
    raise ApiError(502, "backend_error", message, rpc_code=code)


# ---------------------------------------------------------------- batches
@api.post("/batches")
def post_batch() -> tuple[Response, int, dict[str, str]]:
    """Check the whole batch, then queue it; 202 with where to follow it. On any problem nothing is queued."""
    settings = _settings()
    query = _load(BatchSubmitQuerySchema(), request.args, "invalid_batch", "query string: ")
    data = read_body(settings.max_bytes, "batch_too_large")
    services = current_services()
    admission = admit(services)
    started = time.perf_counter()
    try:
        source = batch_source(data, request.mimetype, request.args)
        if source is not None:  # a model's outputs or a provider's batch results file (web.toolcall_batches)
            submitted = submit_file(services, admission, data, request.mimetype, source, settings, query["timeout_s"])
            urls = _batch_urls(submitted["batch_id"])
            return jsonify(**submitted, **urls), 202, {"Location": urls["status_url"]}
        raw = decode_body(data, request.mimetype, settings)
        prepared = prepare_batch(raw, services.router, settings, query["timeout_s"],
                                 admission.may,
                                 epoch=services.hub.epochs.current())
        checked = time.perf_counter()
        submit_batch(services.redis, prepared, submit_calls, settings, admission.principal.id)
    except BatchError as err:
        services.request_missing_catalogs()  # an unknown tool may be a server that has not published yet
        extra = {"details": err.details} if len(err.details) > 1 else {}
        raise ApiError(BATCH_STATUS.get(err.code, 400), err.code, err.message, **extra) from None
    log.info("batch %s: %d calls checked in %.2fs, queued in %.2fs", prepared.batch_id, prepared.total,
             checked - started, time.perf_counter() - checked)
    urls = _batch_urls(prepared.batch_id)
    body = jsonify(batch_id=prepared.batch_id, total=prepared.total, state="running", **urls)
    return body, 202, {"Location": urls["status_url"]}


@api.get("/batches/<batch_id>")
def get_batch(batch_id: str) -> Response:
    return jsonify(_own_batch(current_services(), batch_id, batch_status))


@api.delete("/batches/<batch_id>")
def delete_batch(batch_id: str) -> tuple[Response, int]:
    """Cancel: queued calls are skipped, running ones cancelled; 202 with the counts (they settle shortly),
    or 200 if the batch had already finished and there was nothing to cancel."""
    status = _own_batch(current_services(), batch_id, cancel_batch)
    return jsonify(status), 200 if status["state"] == "done" else 202


@api.get("/batches/<batch_id>/results")
def get_batch_results(batch_id: str) -> Response:
    """JSON Lines, one per finished call in completion order, each with `seq` to resume from (`?after=`).
    Streams until every call has a result; `?wait=0` returns only what is there now."""
    services = current_services()
    status = _own_batch(services, batch_id, batch_status)
    query = _load(BatchResultsQuerySchema(), request.args, "invalid_request", "query string: ")
    lines = translated(services.redis, batch_id, iter_results(
        services.redis, batch_id, status["total"], query["after"], query["wait"],
        client_gone=_disconnect_probe(request.environ)))
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no", "X-Batch-Total": str(status["total"])}
    return Response(_guarded(lines, batch_id), mimetype=RESULTS_MIMETYPE, headers=headers)


def _disconnect_probe(environ: dict[str, Any]) -> Callable[[], bool] | None:
    """A check that the client closed its end, where the server exposes the socket (gunicorn does): readable
    with nothing to read means EOF. Anything else readable (a pipelined request) counts as still there."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return None

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    return gone


def _guarded(lines: Iterator[str], batch_id: str) -> Iterator[str]:
    """Once streaming has begun no error status can be sent: end the stream (the client resumes with
    `?after=` its last `seq`) and log. A client that leaves closes this generator at its next write.
    The empty first chunk makes the server send the headers now, not with the first result (minutes away
    for a slow batch), so the client knows at once that its stream is open."""
    yield ""
    try:
        yield from lines
    except redis.RedisError:
        log.warning("results stream of batch %s ended: Redis error", batch_id, exc_info=True)
    except Exception:
        log.exception("results stream of batch %s failed", batch_id)


# ---------------------------------------------------------------- errors
@api.errorhandler(ApiError)
def _api_error(err: ApiError) -> Response:
    if isinstance(err, BatchLost):  # read as the batch's status (state "lost") and as an error
        response = jsonify(batch_id=err.batch_id, state="lost", error={"code": err.code, "message": err.message})
        response.status_code = err.status
        return response
    return api_error(err.status, err.code, err.message, **err.extra)


api.errorhandler(Refused)(refused_response)


@api.errorhandler(HTTPException)
def _http_error(err: HTTPException) -> Response:
    return error_response(err)  # before the catch-all below, which would make a 404 or a 405 a 500


@api.errorhandler(Exception)
def _internal_error(err: Exception) -> Response:
    if is_redis_down(err):
        return redis_unavailable(err)
    log.exception("%s %s failed", request.method, request.path)
    return api_error(500, "internal_error", f"Internal error: {type(err).__name__}")


def register_api(app: Flask, environ: Mapping[str, str] | None = None) -> None:
    """Mount `/v1` on the app; limits come from the environment, read once here."""
    env = os.environ if environ is None else environ
    app.config.setdefault("BATCH_SETTINGS", BatchSettings.from_env(env))
    app.config.setdefault("CALL_QUEUE_S", float(env.get("MCP_BROKER_CALL_QUEUE_S", CALL_QUEUE_S)))
    app.register_blueprint(api)  # routing errors (404/405 under /v1 too) are answered by web.errors


def share_error_handlers(blueprint: Blueprint) -> None:
    """The `/v1` error answers on another blueprint's routes (`web.translator`): the same JSON for the same error."""
    for kind, handler in ((ApiError, _api_error), (Refused, refused_response), (HTTPException, _http_error),
                          (Exception, _internal_error)):
        blueprint.register_error_handler(kind, handler)
