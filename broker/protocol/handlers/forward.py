"""The forwarded methods: tools/call, resources/read, prompts/get, completion/complete.

Each is checked here (admission, names, sizes, arguments), answered from the cache when it may be, and
otherwise turned into a `Call` queued for its server's workers (`forward`): its answer arrives later, out
of order, on the reply hub, and `outcomes.Waiting` turns it into the client's result.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mcp_types import INVALID_PARAMS, INVALID_REQUEST

from broker import wire
from broker.cache import BYPASS_META_KEY, READ_RESOURCE
from broker.calls import QUEUE_GRACE_S, Call, call_timeout
from broker.protocol.framing import DEFERRED, RPCError
from broker.protocol.handlers import tasks
from broker.protocol.handlers.outcomes import Waiting, client_result
from broker.protocol.meta import TIMEOUT_META_KEY, forwarded_meta
from broker.router import UnknownTool

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation

RESOURCE_NOT_FOUND = -32002
CATALOG_WAIT_PREFIX = "catalog-wait:"  # stands for a call id while a call waits for its server's catalog


def tools_call(conversation: Conversation, request_id: Any, params: dict[str, Any], waited: bool = False) -> Any:
    """`params` loaded by `CallToolParamsSchema`."""
    services, admission = conversation.services, conversation.admission
    name, arguments, meta = params["name"], params["arguments"] or {}, params["_meta"] or {}
    admission.check("tool", name)
    size = wire.encoded_size(arguments)  # bytes, as on /v1 and in batches
    if size > services.max_argument_bytes:
        raise RPCError(INVALID_PARAMS, f"Invalid params: arguments of {size} bytes are over the limit of "
                                       f"{services.max_argument_bytes} bytes")
    try:
        route = services.router.route_tool(admission.qualified(name))
    except UnknownTool as err:
        services.request_missing_catalogs()
        router = services.router
        server = router.unpublished_server(admission.qualified(name))
        if server is not None and not waited and not router.broken_reason(server):
            # a configured server still starting: wait for its tools (one known to fail says so at once)
            wait_s = call_timeout(services.config.server(server).settings, meta.get(TIMEOUT_META_KEY))
            return when_published(conversation, request_id, server, wait_s, "tools/call", params,
                                  lambda: tools_call(conversation, request_id, params, waited=True))
        # on a per-server endpoint the client named the tool unprefixed: say it in its own words
        raise RPCError(INVALID_PARAMS, f"Unknown tool: {name}" if conversation.scope else str(err)) from None
    problem = route.entry.argument_errors(arguments)
    if problem is not None:
        return conversation.era.invalid_arguments(conversation, f"Invalid arguments for tool {name}: {problem}")
    server, tool = route.entry.server, route.entry.tool
    as_task = tasks.wants_task(conversation, services.config.server(server).settings, tool)
    cache = services.cache
    ttl = cache.ttl(server, tool)
    if ttl > 0 and meta.get(BYPASS_META_KEY) is not False:
        hit = cache.lookup(server, tool, arguments)
        if hit is not None:
            return client_result(conversation, "tools/call", server, hit[0], tool)
    elif ttl > 0:
        cache.forget_local(server, tool, arguments)  # the fresh result replaces it; don't serve the old copy
    call = Call(uuid.uuid4().hex, server, "tools/call", tool=tool, arguments=arguments,
                cache_ttl=ttl if ttl > 0 else None)
    return forward(conversation, request_id, call, meta, task_tool=name if as_task else None)


def when_published(conversation: Conversation, request_id: Any, server: str, wait_s: float, method: str,
                   params: dict[str, Any], retry: Callable[[], Any]) -> Any:
    """A call to a tool of a configured server whose catalog is not published yet (its worker is starting
    its backend): wait for the catalog, up to the call's own time limit, on a thread of its own (the
    transport keeps reading), then serve the call as if it had just arrived; still missing, it fails
    with the reason. The request id counts as in flight meanwhile (a duplicate id is refused, a cancel
    drops the wait)."""
    in_flight = conversation.in_flight
    if request_id in in_flight:
        raise RPCError(INVALID_REQUEST, f"Invalid Request: request id {request_id!r} is already in flight")
    marker = f"{CATALOG_WAIT_PREFIX}{uuid.uuid4().hex}"
    in_flight[request_id] = marker

    def wait() -> None:
        conversation.services.catalog.wait_published(server, wait_s)
        if conversation.closed or in_flight.get(request_id) != marker:
            return  # cancelled, or the client went away
        del in_flight[request_id]
        conversation.answer_with(request_id, method, params, retry)

    threading.Thread(target=wait, name="catalog-wait", daemon=True).start()
    return DEFERRED


def resources_read(conversation: Conversation, request_id: Any, params: dict[str, Any]) -> Any:
    """`params` loaded by `ReadResourceParamsSchema`."""
    server, uri = resource_target(conversation, params["uri"])
    meta = params["_meta"] or {}
    if meta.get(BYPASS_META_KEY) is not False and params["requestState"] is None:
        hit = conversation.services.cache.lookup(server, READ_RESOURCE, {"uri": uri})
        if hit is not None:  # a public result the backend allowed anyone to reuse: what is left of its ttl
            cached, remaining_ms = hit
            return client_result(conversation, "resources/read", server, {**cached, "ttlMs": max(0, remaining_ms)})
    return forward(conversation, request_id, Call(uuid.uuid4().hex, server, "resources/read", params={"uri": uri}),
                   meta)


def prompts_get(conversation: Conversation, request_id: Any, params: dict[str, Any]) -> Any:
    """`params` loaded by `GetPromptParamsSchema`."""
    conversation.admission.check("prompt", params["name"])
    target = conversation.services.catalog.lookup_prompt(conversation.admission.qualified(params["name"]))
    if target is None:
        raise RPCError(INVALID_PARAMS, f"Unknown prompt: {params['name']}")
    server, name = target
    call = Call(uuid.uuid4().hex, server, "prompts/get", params={"name": name, "arguments": params["arguments"] or {}})
    return forward(conversation, request_id, call, params["_meta"] or {})


def complete(conversation: Conversation, request_id: Any, params: dict[str, Any]) -> Any:
    """`params` loaded by `CompleteParamsSchema`."""
    admission, catalog = conversation.admission, conversation.services.catalog
    ref = dict(params["ref"])
    if ref.get("type") == "ref/prompt":
        admission.check("prompt", str(ref.get("name", "")))
        target = catalog.lookup_prompt(admission.qualified(str(ref.get("name", ""))))
        if target is None:
            raise RPCError(INVALID_PARAMS, f"Unknown prompt: {ref.get('name')}")
        server, ref["name"] = target
    elif ref.get("type") == "ref/resource":
        uri = str(ref.get("uri", ""))
        split = (conversation.scope, uri) if conversation.scope else catalog.split_uri(uri)
        if split is None:
            raise RPCError(INVALID_PARAMS, f"Unknown resource template: {ref.get('uri')}")
        admission.check_server("resources of server", split[0])
        server, ref["uri"] = split
    else:
        raise RPCError(INVALID_PARAMS, "Invalid params: ref.type must be ref/prompt or ref/resource")
    call = Call(uuid.uuid4().hex, server, "completion/complete",
                params={"ref": ref, "argument": params["argument"], "context": params["context"]})
    return forward(conversation, request_id, call, {})


def resource_target(conversation: Conversation, uri: str) -> tuple[str, str]:
    """(server, backend uri) of a resources/* request's `uri`, which the key must be allowed to use."""
    target = (conversation.scope, uri) if conversation.scope else conversation.services.catalog.split_uri(uri)
    if target is None:
        raise RPCError(RESOURCE_NOT_FOUND, f"Resource not found: {uri} (expected <server>+<uri>)", {"uri": uri})
    conversation.admission.check_server("resources of server", target[0])
    return target


def forward(conversation: Conversation, request_id: Any, call: Call, meta: dict[str, Any],
            task_tool: str | None = None) -> Any:
    """Queue a request for its server's workers (`call` says what to ask; here it gets how it travels and
    comes back); the answer is sent when it arrives. `task_tool` (the tool as the client named it): the call
    may become a task (handlers/tasks.py), with the server's `max_timeout_s` as its time limit."""
    if request_id in conversation.in_flight:
        raise RPCError(INVALID_REQUEST, f"Invalid Request: request id {request_id!r} is already in flight")
    services = conversation.services
    spec = services.config.server(call.server)
    timeout = call_timeout(spec.settings, meta.get(TIMEOUT_META_KEY))
    if task_tool is not None and meta.get(TIMEOUT_META_KEY) is None:
        timeout = spec.settings.max_timeout_s
    progress_token = meta.get("progressToken")
    conversation.admission.hold_slot(call.call_id, timeout * 2 + QUEUE_GRACE_S + 5)
    call.reply_to = services.hub.channel
    call.timeout_s = timeout
    call.expires_at = time.time() + timeout + QUEUE_GRACE_S
    call.progress = progress_token is not None
    call.progress_token = progress_token
    call.session, call.key = conversation.session_id, conversation.principal.id
    call.rid = request_id if conversation.kept else None  # a session record only where a session resumes it
    call.meta = forwarded_meta(meta) or None
    if spec.settings.forward_headers:
        wanted = [name.lower() for name in spec.settings.forward_headers]
        headers = conversation.client_headers
        call.headers = {name: headers[name] for name in wanted if name in headers}
    handle = tasks.start(conversation, call, task_tool, timeout) if task_tool is not None else None
    message = call.to_message()
    waiting = Waiting(conversation, request_id, call.call_id, call.method, call.server, progress_token, handle,
                      call.tool)
    hub = services.hub
    hub.start()
    conversation.in_flight[request_id] = call.call_id
    hub.expect(call.call_id, waiting.on_outcome, waiting.on_event, timeout * 2 + QUEUE_GRACE_S + 5, message)
    queue = spec.queue
    if spec.settings.isolation == "per_client":  # to the worker holding this client's backend session
        queue = services.router.queue_for(spec, conversation.session_id)
    services.outbox.put(queue, message)
    if handle is not None:
        tasks.hold(conversation, waiting)
    return DEFERRED


def background(conversation: Conversation, server: str, method: str, params: dict[str, Any]) -> None:
    """Ask a backend something no client request waits for (a listen stream's subscribe and unsubscribe)."""
    services = conversation.services
    spec = services.config.server(server)
    call_id = uuid.uuid4().hex
    services.hub.start()
    services.hub.expect(call_id, lambda _outcome: None, None, spec.settings.timeout_s * 2 + QUEUE_GRACE_S)
    services.outbox.put(spec.queue, Call(
        call_id, server, method, params=params, reply_to=services.hub.channel,
        timeout_s=spec.settings.timeout_s, expires_at=time.time() + spec.settings.timeout_s + QUEUE_GRACE_S,
    ).to_message())
