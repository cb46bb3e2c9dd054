"""One synchronous call through the broker, in two steps: queue it, then wait for its outcome.

`POST /v1/calls` runs one native call this way; the translator's endpoints (`web.toolcalls`) run every tool
call of a model's message this way too — all queued first, then awaited, so a message with five tool calls
costs about as long as its slowest call, not the sum — with the same admission, allow-lists, argument
checks, time limits and worker path as a native call. Errors before the call is queued raise `ApiError`
(or admission's `Refused`); the caller decides whether that fails its request or becomes a per-call answer.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from broker import observe, wire
from broker.admission import Admission, Refused
from broker.calls import Call, call_timeout, cancel_call
from broker.router import Route, UnknownTool
from broker.services import BrokerServices
from web.auth import current_principal


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine-readable code and a message naming the problem."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def read_body(limit: int, code: str) -> bytes:
    """The request body, refused (413, connection closed) as soon as it is known to exceed `limit`: a
    declared Content-Length is checked before reading anything, a chunked body while it is read.
    `limit` replaces the app-wide MAX_CONTENT_LENGTH (sized for MCP messages) for this request."""
    request.max_content_length = limit
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ApiError(413, code, f"the body is {declared} bytes; the limit is {limit}")
    parts: list[bytes] = []
    size = 0
    try:
        while True:
            part = request.stream.read(min(1 << 20, limit + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
            if size > limit:
                raise RequestEntityTooLarge()
    except RequestEntityTooLarge:
        raise ApiError(413, code, f"the body is over the limit of {limit} bytes") from None
    return b"".join(parts)


def admit(services: BrokerServices, tool: str | None = None) -> Admission:
    """The caller (authenticated by `web.auth` before any view runs): may it use `tool`, and is it within
    its rate? One token per request: a batch counts once (a model's message takes one more per further tool
    call it runs, `web.toolcalls`)."""
    admission = Admission(services, current_principal())
    if tool is not None:
        admission.check("tool", tool)
    admission.take_rate("requests")
    return admission


def route_when_published(services: BrokerServices, name: str, timeout_s: float | None) -> Route:
    """The tool's route; a tool of a configured server whose catalog is not published yet (its worker is
    still starting) is waited for, up to the call's own time limit, instead of refused at once."""
    for waited in (False, True):
        try:
            return services.router.route_tool(name)
        except UnknownTool as err:
            services.request_missing_catalogs()
            server = services.router.unpublished_server(name)
            if waited or server is None or services.router.broken_reason(server):
                raise ApiError(400, "unknown_tool", str(err)) from None
            services.catalog.wait_published(server, call_timeout(services.config.server(server).settings,
                                                                 timeout_s))
    raise AssertionError("unreachable")


@dataclass
class PendingCall:
    """A queued call: its outcome arrives on the process's reply hub and sets `answered`."""

    call_id: str
    server: str
    admission: Admission
    wait_s: float
    answered: threading.Event = field(default_factory=threading.Event)  # gevent-patched: waiting costs a greenlet
    outcome: dict[str, Any] = field(default_factory=dict)

    def on_outcome(self, message: dict[str, Any]) -> None:
        self.outcome.update(message)
        self.answered.set()


def queue_call(services: BrokerServices, admission: Admission, name: str, arguments: dict[str, Any],
               timeout_s: float | None) -> PendingCall:
    """Check the call (allowed, routable, arguments fit the tool's schema and size limit), take a slot of the
    key's in-flight limit and queue it. Refused before it was queued: counted like a refused call on a socket."""
    started = time.perf_counter()
    call_id = uuid.uuid4().hex
    try:
        admission.check("tool", name)
        route = route_when_published(services, name, timeout_s)
        size = wire.encoded_size(arguments)
        if size > services.max_argument_bytes:
            raise ApiError(413, "arguments_too_large", f"arguments of {size} bytes are over the limit of "
                           f"{services.max_argument_bytes} bytes (MCP_BROKER_MAX_ARGUMENT_BYTES)")
        problem = route.entry.argument_errors(arguments)
        if problem is not None:
            raise ApiError(400, "invalid_arguments", f"invalid arguments for tool {name}: {problem}")
        timeout = call_timeout(route.spec.settings, timeout_s)
        queue_s = float(current_app.config["CALL_QUEUE_S"])
        admission.hold_slot(call_id, queue_s + timeout * 2 + 10)
    except (ApiError, Refused):
        server, tool = observe.tool_labels(services.catalog, name)
        observe.web_immediate(server, tool, "rejected", time.perf_counter() - started, None, current_principal().id)
        raise
    call = Call(call_id, route.entry.server, tool=route.entry.tool, arguments=arguments,
                reply_to=services.hub.channel, timeout_s=timeout, expires_at=time.time() + queue_s,
                key=current_principal().id).to_message()
    pending = PendingCall(call_id, route.entry.server, admission, queue_s + timeout + 5)
    services.hub.start()
    services.hub.expect(call_id, pending.on_outcome, None, pending.wait_s, call)  # times out by itself after wait_s
    try:
        services.outbox.put(route.queue, call)
    except BaseException:
        admission.release_slot(call_id)
        raise
    return pending


def await_call(services: BrokerServices, pending: PendingCall) -> dict[str, Any]:
    """The call's outcome (`{"result"}` or `{"error"}`); 504 `ApiError` if none came in time. The key's slot is
    given back however this ends (answered, timed out, or the client left and gevent killed the greenlet)."""
    try:
        if not pending.answered.wait(pending.wait_s + 5):
            services.hub.forget(pending.call_id)
            cancel_call(services.redis, pending.call_id)
            raise ApiError(504, "timeout", f"no answer from server {pending.server!r} within {pending.wait_s:g}s")
    finally:
        pending.admission.release_slot(pending.call_id)
    return pending.outcome
