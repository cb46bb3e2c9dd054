"""Resource subscriptions and list-change streams.

Handshake era: resources/subscribe and unsubscribe, fan-in. Modern era: subscriptions/listen, a standing
stream of the list changes and resource updates it asked for. Either way the conversation's session is
recorded as a subscriber of (server, uri) in Redis, the backend is subscribed once, and its
resources/updated reaches every web process (`BrokerServices`), each telling its own subscribed clients.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from mcp_types import INVALID_PARAMS, INVALID_REQUEST

from broker import keys
from broker.calls import Call
from broker.protocol.framing import DEFERRED, RPCError, load_params
from broker.protocol.handlers.forward import background, forward, resource_target
from broker.protocol.meta import SUBSCRIPTION_ID_META_KEY
from broker.schemas import ReadResourceParamsSchema

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation

LISTEN_FLAGS = {  # subscriptions/listen filter flag → the notification it lets through
    "toolsListChanged": "notifications/tools/list_changed",
    "promptsListChanged": "notifications/prompts/list_changed",
    "resourcesListChanged": "notifications/resources/list_changed",
}
_uri_params = ReadResourceParamsSchema()


def subscribe(conversation: Conversation, request_id: Any, params: dict[str, Any]) -> Any:
    """Fan-in: the session is recorded as a subscriber and the backend is asked (subscribing twice to one
    uri is harmless to it), so the backend's resources/updated reaches every subscribed client."""
    server, uri = resource_target(conversation, params["uri"])
    conversation.subscriptions.add((server, uri))
    _save(conversation)
    _join(conversation, server, uri)
    return forward(conversation, request_id, Call(uuid.uuid4().hex, server, "resources/subscribe",
                                                  params={"uri": uri}), {})


def unsubscribe(conversation: Conversation, request_id: Any, params: dict[str, Any]) -> Any:
    """The backend is unsubscribed only when its last subscribed session leaves."""
    server, uri = resource_target(conversation, params["uri"])
    conversation.subscriptions.discard((server, uri))
    _save(conversation)
    if _leave(conversation, server, uri):
        return {}
    return forward(conversation, request_id, Call(uuid.uuid4().hex, server, "resources/unsubscribe",
                                                  params={"uri": uri}), {})


def listen(conversation: Conversation, request_id: Any, params: dict[str, Any]) -> Any:
    """Modern era's standing stream: acknowledged with the honoured filter, then the list changes and
    resource updates it asked for, each tagged with the listen request's id, until the client hangs up.
    Resources are subscribed at their backends like resources/subscribe (fan-in, reference counted)."""
    wanted = params.get("notifications")
    if not isinstance(wanted, dict):
        raise RPCError(INVALID_PARAMS, "Invalid params: notifications must be an object")
    if conversation.listen is not None:
        raise RPCError(INVALID_REQUEST, "Invalid Request: this exchange already listens")
    honored: dict[str, Any] = {flag: True for flag in LISTEN_FLAGS if wanted.get(flag) is True}
    uris = wanted.get("resourceSubscriptions")
    targets = []
    if isinstance(uris, list) and uris:
        targets = [resource_target(conversation, load_params(_uri_params, {"uri": uri})["uri"])
                   for uri in uris]  # unknown server: -32002
        honored["resourceSubscriptions"] = list(uris)
    conversation.listen = {"id": request_id,
                           "kinds": {LISTEN_FLAGS[flag] for flag in honored if flag in LISTEN_FLAGS}}
    conversation.services.connections.add(conversation)
    for server, uri in targets:
        conversation.subscriptions.add((server, uri))
        _join(conversation, server, uri)
        background(conversation, server, "resources/subscribe", {"uri": uri})  # its answer concerns no request
    conversation.notify("notifications/subscriptions/acknowledged",
                        {"notifications": honored, "_meta": {SUBSCRIPTION_ID_META_KEY: request_id}},
                        related=request_id)
    return DEFERRED  # the stream is the answer: it ends when the client goes


def on_listen_stream(conversation: Conversation, method: str, params: dict[str, Any] | None,
                     ) -> tuple[dict[str, Any], Any] | None:
    """Modern era: a change notification (`LISTEN_STREAM_METHODS`) travels only on a subscriptions/listen
    stream that asked for it, tagged with the stream's id: (params, related request) to send it with, or
    None to drop it."""
    listening = conversation.listen
    if listening is None or (method in LISTEN_FLAGS.values() and method not in listening["kinds"]):
        return None
    return {**(params or {}), "_meta": {SUBSCRIPTION_ID_META_KEY: listening["id"]}}, listening["id"]


def stop_listening(conversation: Conversation) -> None:
    """The listen stream ended: leave each resource's subscribers; the last one out unsubscribes the backend."""
    for server, uri in sorted(conversation.subscriptions):
        if not _leave(conversation, server, uri) and server in conversation.services.config.servers:
            background(conversation, server, "resources/unsubscribe", {"uri": uri})
    conversation.subscriptions.clear()
    conversation.listen = None


def resource_updated(conversation: Conversation, server: str, uri: str) -> None:
    """A backend resource changed: tell this client if it subscribed (in its own namespace)."""
    if (server, uri) not in conversation.subscriptions:
        return
    shown = uri if conversation.scope else conversation.services.catalog.namespaced_uri(server, uri)
    conversation.notify("notifications/resources/updated", {"uri": shown})


def _save(conversation: Conversation) -> None:
    conversation.services.sessions.save(conversation.session_id,
                                        {"subscriptions": sorted(conversation.subscriptions)})


def _join(conversation: Conversation, server: str, uri: str) -> None:
    """Record this conversation's session as a subscriber of the resource."""
    subscribers = keys.resource_subscribers(server, uri)
    pipe = conversation.services.redis.pipeline(transaction=False)
    pipe.sadd(subscribers, conversation.session_id)
    pipe.expire(subscribers, conversation.services.sessions.ttl_s)
    pipe.execute()


def _leave(conversation: Conversation, server: str, uri: str) -> int:
    """Remove this session from the resource's subscribers; how many remain."""
    subscribers = keys.resource_subscribers(server, uri)
    pipe = conversation.services.redis.pipeline(transaction=False)
    pipe.srem(subscribers, conversation.session_id)
    pipe.scard(subscribers)
    _removed, remaining = pipe.execute()
    return int(remaining)
