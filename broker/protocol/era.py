"""The two protocol eras, one policy object each: the only code that asks which era a request is in.

- **handshake** (`HANDSHAKE_PROTOCOL_VERSIONS`, 2025-11-25 and earlier): `initialize`, then a session; the
  broker may send the client requests (a backend's sampling, elicitation, roots questions are relayed as
  server-to-client requests) and every notification; results are what the backend answered, less the
  modern `resultType`.
- **modern** (`MODERN_PROTOCOL_VERSIONS`, 2026-07-28): a stateless per-request envelope (the request's
  `_meta` names the version, the client's info and capabilities); no server-to-client requests (a
  backend's question is answered `input_required`, the retry carries the answer); change notifications
  only on a `subscriptions/listen` stream; every result says what it is (`resultType`) and who answered.

A conversation holds its era (`era_of_version`); which methods exist in which era comes from the SDK's own
table (`mcp_types.methods.CLIENT_REQUESTS`) unless a `MethodSpec` says otherwise. A web transport decides
the era of an HTTP request with `era_of_http_request`, as the SDK's Streamable HTTP session manager does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.subscriptions import LISTEN_STREAM_METHODS
from mcp_types import INVALID_PARAMS
from mcp_types.methods import CLIENT_REQUESTS
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS, is_version_at_least

from broker.protocol.framing import RPCError
from broker.protocol.handlers import input_required, relay, subscriptions
from broker.protocol.meta import PROTOCOL_VERSION_META_KEY, SERVER_INFO, SERVER_INFO_META_KEY
from broker.request_state import request_binding
from broker.tasks import TASKS_EXTENSION

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation
    from broker.protocol.handlers.outcomes import Waiting
    from broker.protocol.registry import MethodSpec

# results that carry modern cache directives (discover, the lists, resources/read), by their payload key
CACHEABLE_RESULT_KEYS = ("supportedVersions", "tools", "prompts", "resources", "resourceTemplates", "contents")


class Era:
    """What differs between the eras. A method here is asked by the conversation and its handlers; nothing
    else tests the era."""

    name: ClassVar[str]
    versions: ClassVar[tuple[str, ...]]  # the SDK's table of this era's protocol revisions
    hears_list_changes: ClassVar[bool]  # told of every catalog change from the start (else: on a listen stream)

    @property
    def latest(self) -> str:
        """The era's newest revision (the SDK's tables list them oldest first)."""
        return self.versions[-1]

    def negotiate(self, requested: str) -> str:
        """The revision to speak with a client that asked for `requested`: it, if this era has it, else the
        era's latest (the client then decides whether it can go on)."""
        return requested if requested in self.versions else self.latest

    def allows(self, spec: MethodSpec) -> bool:
        """Whether the method exists in this era (others are answered method-not-found). server/discover is
        the modern probe: a handshake-era conversation answers method-not-found, so an SDK client in `auto`
        mode falls back to `initialize`; the modern era has no handshake, ping, log level or
        resources/subscribe."""
        return self.name in spec.eras

    def serves_apart(self, conversation: Conversation, message: dict[str, Any], params: dict[str, Any]) -> bool:
        """Whether a request must be served as an exchange of its own era (a modern request on a stream)."""
        return False

    def before_handler(self, conversation: Conversation, request_id: Any, spec: MethodSpec,
                       params: dict[str, Any]) -> Any:
        """What a request carries for this era before its handler runs; a result (or DEFERRED) answers it."""
        return None

    def result(self, result: dict[str, Any]) -> dict[str, Any]:
        """A result as this era sends it."""
        return result

    def notification(self, conversation: Conversation, method: str, params: dict[str, Any] | None,
                     related: Any) -> tuple[dict[str, Any] | None, Any] | None:
        """(params, related request) a notification goes out with, or None: not sent in this era."""
        return params, related

    def backend_result(self, result: dict[str, Any]) -> dict[str, Any]:
        """A backend's result as a client of this era expects it."""
        return result

    def invalid_arguments(self, conversation: Conversation, message: str) -> dict[str, Any]:
        """Arguments a tool's schema refuses. 2025-11-25 (SEP-1303) and later: a tool execution error the
        model can read (an `isError` result); before, -32602."""
        if is_version_at_least(conversation.protocol_version, "2025-11-25"):
            return {"content": [{"type": "text", "text": message}], "isError": True}
        raise RPCError(INVALID_PARAMS, message)

    def ask(self, conversation: Conversation, backend_request: dict[str, Any], waiting: Waiting) -> None:
        """How a backend's question (sampling, elicitation, roots) reaches the client."""
        raise NotImplementedError

    def wants_log(self, conversation: Conversation) -> bool:
        """Whether a backend's log messages reach the client (then filtered by its level)."""
        return True

    def pass_on(self, conversation: Conversation, call_id: str, message: dict[str, Any]) -> bool:
        """An event or outcome of a call this conversation no longer waits for: True if it was passed on
        to where the call went (else the caller drops an outcome and delivers an event as usual)."""
        return False

    def declares_tasks(self, conversation: Conversation) -> bool:
        """Whether the request declared the tasks extension (SEP-2663: a modern request's envelope, per
        request); the handshake era's experimental tasks are not served."""
        return False


class HandshakeEra(Era):
    name = "handshake"
    versions = HANDSHAKE_PROTOCOL_VERSIONS
    hears_list_changes = True

    def serves_apart(self, conversation: Conversation, message: dict[str, Any], params: dict[str, Any]) -> bool:
        """A modern request on a stream (WebSocket) conversation is served on its own; server/discover is
        not, so an SDK client in `auto` mode still falls back to the handshake here (a pinned modern client
        works)."""
        return ("id" in message and message["method"] != "server/discover" and not conversation.initialized
                and envelope_version(params) is not None)

    def backend_result(self, result: dict[str, Any]) -> dict[str, Any]:
        if "resultType" in result:  # a modern backend's; no handshake revision has it
            return {k: v for k, v in result.items() if k != "resultType"}
        return result

    def ask(self, conversation: Conversation, backend_request: dict[str, Any], waiting: Waiting) -> None:
        relay.ask_client(conversation, backend_request, waiting.request_id)


class ModernEra(Era):
    name = "modern"
    versions = MODERN_PROTOCOL_VERSIONS
    hears_list_changes = False

    def before_handler(self, conversation: Conversation, request_id: Any, spec: MethodSpec,
                       params: dict[str, Any]) -> Any:
        """A method that may answer `input_required`: what its token will be bound to, and the retry that
        carries answers (`requestState`) resumes the suspended call; answers given before being asked
        (`inputResponses`) are kept for the questions they answer."""
        if spec.resumable:
            conversation.bindings[request_id] = request_binding(spec.method, params, conversation.scope)
            if params.get("requestState") is not None:
                return input_required.resume_with_input(conversation, request_id, params)
        if isinstance(params.get("inputResponses"), dict):
            conversation.offered[request_id] = params["inputResponses"]
        return None

    def result(self, result: dict[str, Any]) -> dict[str, Any]:
        """Results always say what they are, and who answered; cache directives are required where they may
        apply (never cached unless said)."""
        meta = {**(result.get("_meta") or {}), SERVER_INFO_META_KEY: SERVER_INFO}
        result = {**result, "resultType": result.get("resultType") or "complete", "_meta": meta}
        if any(key in result for key in CACHEABLE_RESULT_KEYS):
            result.setdefault("ttlMs", 0)
            result.setdefault("cacheScope", "private")
        return result

    def notification(self, conversation: Conversation, method: str, params: dict[str, Any] | None,
                     related: Any) -> tuple[dict[str, Any] | None, Any] | None:
        if method in LISTEN_STREAM_METHODS:  # change notifications travel only on a listen stream
            return subscriptions.on_listen_stream(conversation, method, params)
        return params, related

    def ask(self, conversation: Conversation, backend_request: dict[str, Any], waiting: Waiting) -> None:
        input_required.input_required(conversation, backend_request, waiting)

    def wants_log(self, conversation: Conversation) -> bool:
        return conversation.log_level is not None  # none unless the request asked for them (`logLevel`)

    def pass_on(self, conversation: Conversation, call_id: str, message: dict[str, Any]) -> bool:
        input_required.pass_on(conversation, call_id, message)  # a suspended call resumed on another process
        return True

    def declares_tasks(self, conversation: Conversation) -> bool:
        extensions = conversation.client_capabilities.get("extensions")
        return isinstance(extensions, dict) and TASKS_EXTENSION in extensions


HANDSHAKE = HandshakeEra()
MODERN = ModernEra()
ERAS: dict[str, Era] = {era.name: era for era in (HANDSHAKE, MODERN)}


def era_of_version(version: str) -> Era:
    """The era of a conversation speaking `version`."""
    return MODERN if version in MODERN_PROTOCOL_VERSIONS else HANDSHAKE


def era_of_http_request(headers: Mapping[str, str]) -> Era:
    """The era of one Streamable HTTP request, decided as the SDK's `StreamableHTTPSessionManager` decides
    it (header-only routing): an `MCP-Protocol-Version` header outside the handshake revisions (an unknown
    one too, so the SDK's classifier can name what is supported) is the modern era; none, or a handshake
    revision, is the handshake era. `headers`: Flask's (any case) or a dict with lower-case names."""
    version = headers.get(MCP_PROTOCOL_VERSION_HEADER)
    return MODERN if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS else HANDSHAKE


def envelope_version(params: Any) -> str | None:
    """The protocol version a request's modern envelope names, if it names one outside the handshake era."""
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
    return version if isinstance(version, str) and version not in HANDSHAKE_PROTOCOL_VERSIONS else None


def sdk_eras(method: str) -> frozenset[str]:
    """The eras in which the SDK's table has `method` as a client request."""
    return frozenset(era.name for era in ERAS.values()
                     if any((method, version) in CLIENT_REQUESTS for version in era.versions))
