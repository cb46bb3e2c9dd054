"""The conversation's own methods: initialize and its notification (handshake era), server/discover (modern
era), ping, logging/setLevel, and the client's notifications/cancelled."""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any

from mcp_types import INVALID_PARAMS, LoggingLevel

from broker.protocol.framing import RPCError
from broker.protocol.meta import SERVER_INFO, SESSION_META_KEY

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation

LOG_LEVELS: tuple[str, ...] = typing.get_args(LoggingLevel)  # RFC 5424 order, least severe first (the SDK's)


def level_passes(level: Any, threshold: str | None) -> bool:
    """RFC 5424 order: a message passes when it is at least as severe as the client's chosen level."""
    if threshold is None or level not in LOG_LEVELS:
        return True
    return LOG_LEVELS.index(level) >= LOG_LEVELS.index(threshold)


def initialize(conversation: Conversation, _id: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The handshake (`params` loaded by `InitializeParamsSchema`): the version both speak, what each offers."""
    conversation.protocol_version = conversation.era.negotiate(params["protocolVersion"])
    conversation.client_info = params["clientInfo"]
    conversation.client_capabilities = params["capabilities"]
    conversation.services.sessions.save(conversation.session_id, conversation.state())
    result: dict[str, Any] = {
        "protocolVersion": conversation.protocol_version,
        "capabilities": capabilities(conversation),
        "serverInfo": SERVER_INFO,
        "instructions": _aggregate_instructions(conversation),
        "_meta": {SESSION_META_KEY: conversation.session_id},
    }
    if conversation.scope:
        doc = conversation.services.catalog.documents.get(conversation.scope, {})
        result["serverInfo"] = {**SERVER_INFO, "name": f"mcp-broker/{conversation.scope}"}
        if doc.get("instructions"):
            result["instructions"] = doc["instructions"]
        else:
            result.pop("instructions")
    return result


def initialized(conversation: Conversation, _params: dict[str, Any]) -> None:
    conversation.initialized = True
    conversation.services.sessions.save(conversation.session_id, {"initialized": True})


def discover(conversation: Conversation, _id: Any, _params: dict[str, Any]) -> dict[str, Any]:
    """Modern era: what `initialize` told, asked per request (the capabilities of this era's methods)."""
    result: dict[str, Any] = {"supportedVersions": list(conversation.era.versions),
                              "capabilities": capabilities(conversation)}
    instructions = _instructions(conversation)
    if instructions:
        result["instructions"] = instructions
    return result


def ping(_conversation: Conversation, _id: Any, _params: dict[str, Any]) -> dict[str, Any]:
    return {}


def set_level(conversation: Conversation, _id: Any, params: dict[str, Any]) -> dict[str, Any]:
    level = params.get("level")
    if level not in LOG_LEVELS:
        raise RPCError(INVALID_PARAMS, f"Invalid params: level must be one of {', '.join(LOG_LEVELS)}")
    conversation.log_level = level
    return {}


def cancelled(conversation: Conversation, params: dict[str, Any]) -> None:
    """The client gave up on a request (notifications/cancelled)."""
    conversation.cancel(params.get("requestId"))


def capabilities(conversation: Conversation) -> dict[str, Any]:
    """What the broker offers in this conversation's era (`registry.CAPABILITIES`): everything for the
    aggregate; a backend's own capabilities on its endpoint (a client must not be told of, say, prompts a
    server does not have). The broker's own extensions (tasks: the broker makes them) on every endpoint."""
    relayed = conversation.offered_capabilities()
    if not conversation.scope:
        return relayed
    catalog = conversation.services.catalog
    catalog.ensure_fresh()
    backend = catalog.documents.get(conversation.scope, {}).get("capabilities") or {}
    offered = {name: relayed[name] for name in relayed if name in backend or name == "extensions"}
    if "resources" in offered:  # subscriptions only where the backend has them
        offered["resources"] = {**offered["resources"],
                                "subscribe": bool((backend.get("resources") or {}).get("subscribe"))}
    return offered


def _aggregate_instructions(conversation: Conversation) -> str:
    return ("mcp-broker: the tools and prompts of several MCP servers, named <server>"
            + conversation.services.config.separator + "<name>; their resources as <server>+<uri>.")


def _instructions(conversation: Conversation) -> str | None:
    if conversation.scope:
        return conversation.services.catalog.documents.get(conversation.scope, {}).get("instructions") or None
    return _aggregate_instructions(conversation)
