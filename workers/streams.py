"""A backend session's two message streams, watched: what the backend says, and what we may say to it.

Read side: every frame from the backend is a sign of life. A session with requests outstanding can
then tell a backend that is slow (it still talks: answers, progress, pings) from one that says
nothing at all, which is how a hung backend (SIGSTOPped, deadlocked) is found (`workers.backends`).

Write side: the SDK serializes and encodes each message in the transport's own writer task. A
message it cannot encode there (a lone surrogate such as "\\ud800": JSON text must be UTF-8) raised
inside that task and killed the session every other call shared; the calls' retries repeated it
(measured: one such call every 2 s failed 49 of 49 calls of another tenant). So each message is
serialized here first, exactly as the stdio writer will (`model_dump_json(by_alias=True,
exclude_unset=True)`, UTF-8 strict), in the sender's own task: a request or notification that
cannot be is refused to its sender (`Unsendable`), and an answer to a backend's own request (from a
client: sampling, elicitation, roots) is replaced by a JSON-RPC error, so the backend is not left
waiting. Cost: one extra serialization per message (a few microseconds for a typical call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from mcp.shared.message import SessionMessage
from mcp_types import INTERNAL_ERROR, ErrorData, JSONRPCError, JSONRPCResponse


class Unsendable(ValueError):
    """This message cannot be encoded for the backend; nothing of it was written."""


def encoding_problem(message: Any) -> str | None:
    """Why `message` (a JSON-RPC message model) cannot go on the wire, or None when it can."""
    try:
        message.model_dump_json(by_alias=True, exclude_unset=True).encode("utf-8")
    except (ValueError, TypeError) as err:  # pydantic's PydanticSerializationError is a ValueError
        text = str(err)
        return text.removeprefix("Error serializing to JSON: ")
    return None


class CheckedWriteStream:
    """Messages to the backend, each checked for encodability before the transport's writer sees it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def send(self, item: SessionMessage) -> None:
        problem = encoding_problem(item.message)
        if problem is not None:
            message = item.message
            if not isinstance(message, JSONRPCResponse | JSONRPCError):
                raise Unsendable(problem)
            error = ErrorData(code=INTERNAL_ERROR, message=f"The answer could not be encoded: {problem}")
            item = SessionMessage(JSONRPCError(jsonrpc="2.0", id=message.id, error=error), metadata=item.metadata)
        await self._inner.send(item)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> CheckedWriteStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._inner.__aexit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class HeardReadStream:
    """Messages from the backend; `on_frame()` runs as each one arrives. A message `claim` takes (an answer
    to a call of `workers.backends.fastlane`) never reaches the session; `on_end()` runs when the stream
    ends or breaks, and when the session stops reading it (its close: the SDK fails its own waiting calls
    then, not once the transport has shut down, which takes a stdio server seconds)."""

    def __init__(self, inner: Any, on_frame: Callable[[], None], claim: Callable[[Any], bool] | None = None,
                 on_end: Callable[[], None] | None = None) -> None:
        self._inner = inner
        self._on_frame = on_frame
        self._claim = claim
        self._on_end = on_end

    async def receive(self) -> Any:
        while True:
            try:
                item = await self._inner.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                if self._on_end is not None:
                    self._on_end()
                raise
            self._on_frame()
            if self._claim is None or not self._claim(item):
                return item

    def __aiter__(self) -> HeardReadStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> HeardReadStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        if self._on_end is not None:  # the session stopped reading (closed, however): nothing answers now
            self._on_end()
        return await self._inner.__aexit__(*exc)

    def __getattr__(self, name: str) -> Any:  # e.g. `last_context`, which the SDK reads when present
        return getattr(self._inner, name)
