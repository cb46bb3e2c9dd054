"""A backend's own requests (sampling, elicitation, roots) and log messages, relayed to the client whose
call caused them: the SDK client's callbacks for one backend session."""

from __future__ import annotations

from typing import Any

import anyio
from mcp_types import (
    INVALID_REQUEST,
    CreateMessageResult,
    CreateMessageResultWithTools,
    ElicitResult,
    ErrorData,
    ListRootsResult,
)

from workers.backends.errors import CallChannel


class Relay:
    """The SDK callbacks of one session; `channels` is the session's running calls (call id → channel, in
    start order), `timeout` how long a client has to answer."""

    def __init__(self, channels: dict[str, CallChannel], timeout: float) -> None:
        self.channels = channels
        self.timeout = timeout

    def callbacks(self) -> dict[str, Any]:
        """The `mcp.Client` options that route a backend's requests and log messages here."""
        return {"sampling_callback": self.on_sampling, "elicitation_callback": self.on_elicitation,
                "list_roots_callback": self.on_list_roots, "logging_callback": self.on_log}

    def _asking_channel(self) -> CallChannel | None:
        """Whose client a backend's request is for. The wire carries no related request id, so: the call
        running on this session, or with several, the most recently started (exact under per-client isolation)."""
        return next(reversed(self.channels.values()), None)

    async def _relay(self, method: str, params: Any, result_type: Any) -> Any:
        channel = self._asking_channel()
        if channel is None:
            return ErrorData(code=INVALID_REQUEST, message=f"{method}: no client call is running to ask")
        payload = params.model_dump(by_alias=True, exclude_none=True, mode="json") if params is not None else {}
        answer = await anyio.to_thread.run_sync(channel.ask, method, payload, self.timeout)
        if "error" in answer:
            return ErrorData.model_validate(answer["error"])
        return result_type.model_validate(answer.get("result") or {})

    async def on_sampling(self, _context: Any, params: Any) -> Any:
        result_type = CreateMessageResultWithTools if getattr(params, "tools", None) else CreateMessageResult
        return await self._relay("sampling/createMessage", params, result_type)

    async def on_elicitation(self, _context: Any, params: Any) -> Any:
        return await self._relay("elicitation/create", params, ElicitResult)

    async def on_list_roots(self, _context: Any) -> Any:
        return await self._relay("roots/list", None, ListRootsResult)

    async def on_log(self, params: Any) -> None:
        payload = params.model_dump(by_alias=True, exclude_none=True, mode="json")
        for channel in list(self.channels.values()):  # the calls that may have caused it
            channel.log(payload)
