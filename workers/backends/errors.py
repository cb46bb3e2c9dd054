"""How a backend call can end other than with a result, and a call's way back to its client.

The exception kinds are what the worker's retry policy (`workers.execute`) decides on: unavailable is
retried on a fresh session, a JSON-RPC error is an answer, a timeout or a cancellation ends the call.
"""

from __future__ import annotations

from typing import Any, Protocol

from mcp.shared.exceptions import MCPError

from broker.rpc_error import RPCError


class CallChannel(Protocol):
    """What a running call can send back to its client, besides its result (implemented in workers/execute.py)."""

    def progress(self, value: float, total: float | None, message: str | None) -> None: ...

    def log(self, params: dict[str, Any]) -> None: ...

    def ask(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        """A server-to-client request (sampling, elicitation, roots); blocks until `{"result"|"error"}`."""
        ...


class BackendUnavailable(Exception):
    """The backend could not be reached or its session broke: transient, worth a retry on a fresh session."""


class BackendTimeout(Exception):
    """The backend did not answer within the call's time limit (the call was cancelled on the backend)."""


class SlotWaitTimeout(BackendTimeout):
    """The call's time ran out while it waited for one of the server's `concurrency` slots: the backend
    was busy with other calls, it was never asked (not a failure of the backend)."""

    def __init__(self, server: str, waited: float, slots: int) -> None:
        super().__init__(f"it waited {waited:.3g}s for one of the {slots} call slots of server {server!r} "
                         "(all busy with other calls)")
        self.waited, self.slots = waited, slots


class CallCancelled(Exception):
    """The client cancelled the call while it ran (the backend was told)."""


class BackendRPCError(RPCError):
    """The backend answered with a JSON-RPC error: a definite answer, passed to the client as is."""


def innermost_reason(err: BaseException) -> str:
    """The innermost message of an SDK failure (they arrive wrapped in exception groups)."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    if isinstance(err, MCPError):
        return err.error.message
    return f"{type(err).__name__}: {err}"
