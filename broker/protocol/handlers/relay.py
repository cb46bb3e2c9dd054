"""A backend's requests to the client (sampling, elicitation, roots) in the handshake era, and the client's
answers: the backend's request goes out as a server-to-client request under an id of ours, the client's
answer is pushed on the Redis list the asking worker waits on.

A client that did not declare the capability a request needs is never asked: the backend hears what such a
client would have answered (method not found).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcp_types import METHOD_NOT_FOUND

from broker import keys
from broker.protocol.framing import RPCError, dumps

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation

CLIENT_CAPABILITY_OF = {  # a backend's request → the capability its client must have declared
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}


def refused_for_capability(conversation: Conversation, backend_request: dict[str, Any]) -> bool:
    """True if the backend's request needs a capability the client did not declare: the backend is then
    answered as such a client would answer."""
    method = backend_request["method"]
    needed = CLIENT_CAPABILITY_OF.get(method)
    if needed is not None and needed in conversation.client_capabilities:
        return False
    message = f"Client does not support {method} (it did not declare the {needed!r} capability)"
    answer_backend(conversation, keys.answer(backend_request["id"]),
                   {"error": RPCError(METHOD_NOT_FOUND, message).to_error()})
    return True


def ask_client(conversation: Conversation, backend_request: dict[str, Any], related: Any) -> None:
    """Relay a backend's sampling/elicitation/roots request, sent with the client request it serves."""
    if refused_for_capability(conversation, backend_request):
        return
    our_id = f"mcpb-{backend_request['id']}"
    conversation.asked[our_id] = keys.answer(backend_request["id"])
    request = {"jsonrpc": "2.0", "id": our_id, "method": backend_request["method"]}
    if backend_request.get("params"):
        request["params"] = backend_request["params"]
    conversation.send(request, related)


def on_client_answer(conversation: Conversation, message: dict[str, Any]) -> None:
    """A response from the client: the answer to a request we relayed, for the backend that asked."""
    answer_key = conversation.asked.pop(message["id"], None) if isinstance(message.get("id"), str) else None
    if answer_key is None:
        return  # an answer to nothing we asked
    answer_backend(conversation, answer_key, {k: message[k] for k in ("result", "error") if k in message})


def answer_backend(conversation: Conversation, answer_key: str, answer: dict[str, Any]) -> None:
    pipe = conversation.services.redis.pipeline(transaction=False)
    pipe.rpush(answer_key, dumps(answer))
    pipe.expire(answer_key, 600)
    pipe.execute()
