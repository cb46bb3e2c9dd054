"""`RPCError`: the one place a JSON-RPC error object is built, on every side of the broker.

The client side raises it to answer a request (`broker.protocol.framing`), a worker stores it as a call's
outcome (`broker.results.rpc_error`), the reply hub answers an overdue call with it (`broker.replies`), and a
backend's question the client cannot take is answered with it (`broker.protocol.handlers.relay`). It lives
below all of them so a worker, which imports nothing of the client side, builds errors the same way.
"""

from __future__ import annotations

from typing import Any


class RPCError(Exception):
    """A JSON-RPC error: raised to answer the current request, or built into an answer or an outcome."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def to_error(self) -> dict[str, Any]:
        """The `error` member of a JSON-RPC response."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error

    def to_message(self, request_id: Any = None) -> dict[str, Any]:
        """The whole JSON-RPC response answering `request_id` (null: a request the broker could not read)."""
        return {"jsonrpc": "2.0", "id": request_id, "error": self.to_error()}
