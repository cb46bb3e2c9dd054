"""MCP, the client side of the broker: one JSON-RPC conversation per client, transport-agnostic.

    conversation.py  the kernel `Conversation`: state, send/notify, dispatch, calls in flight, resume, close
    framing.py       frames (size, UTF-8, batches, shape), ids, `RPCError` (re-exported from `broker.rpc_error`)
    registry.py      `MethodSpec` rows: every method, its params schema, handler, eras, admission, capability
    era.py           one policy object per protocol era (handshake, modern); `era_of_http_request`
    meta.py          the `_meta` keys the broker reads and writes
    handlers/        lifecycle, lists, forward, outcomes, subscriptions, relay, input_required

The web tier imports what it needs from here.
"""

from broker.protocol.conversation import Conversation
from broker.protocol.era import HANDSHAKE, MODERN, Era, era_of_http_request
from broker.protocol.framing import RPCError, classify_modern, dumps, echoable_id, text_emitter

__all__ = [
    "HANDSHAKE",
    "MODERN",
    "Conversation",
    "Era",
    "RPCError",
    "classify_modern",
    "dumps",
    "echoable_id",
    "era_of_http_request",
    "text_emitter",
]
