"""Tasks made by a backend: a backend that speaks the tasks extension (`io.modelcontextprotocol/tasks`,
SEP-2663) itself may answer a `tools/call` with its own task (`resultType: "task"`). The worker resolves it
to the call's ordinary outcome, so the client only ever deals with the broker's call (or the broker's own
task, `broker.tasks`): bound to its principal, and the upstream task id never leaves the worker.

How: the backend session's SDK `Client` gets `UpstreamTasks`, a `ClientExtension` with one `ResultClaim` for
`resultType: "task"`. The SDK then declares the extension on every modern-era request (not on handshake-era
ones, where a backend cannot answer with a task) and hands a claimed result to `resolve`, inside the
worker's own `call_tool`. `resolve` polls the upstream task (`tasks/get`, from 50 ms doubling up to the
upstream's `pollIntervalMs`, as fastmcp-tasks' own client does: a quick task is seen done at once, a long
one is polled at the cadence its server asked for), relays its questions (`input_required` with
`inputRequests`) through the running call's channel, exactly as a pushed elicitation is relayed (a broker
task shows `input_required`; a synchronous modern call gets its `input_required` round; a handshake-era
client its server request), sends each answer upstream as `tasks/update`, and sends `tasks/cancel` when the
call ends any other way (cancelled by its client, timed out, failed).

Simpler than the design note (docs/design/tasks.md §4, "Tasks made by a backend"), and why:
- No record of its own ("kind upstream"): the broker already made a task of the call if its client asked
  for one (the web's hold announces it 250 ms after it started), and an upstream task is just a way the
  backend call runs long. One model of a task, written by the same transitions.
- The poll keeps the call's concurrency slot: the backend is doing the work the slot bounds.
- No resume of the upstream task after a SIGKILLed worker: the redelivered call runs again (as any call of a
  killed worker does); the upstream task of a stdio backend died with the worker anyway.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Sequence
from typing import Any, Literal

import anyio
import anyio.abc
from mcp.client import ClaimContext, ClientExtension, ResultClaim
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    INTERNAL_ERROR,
    REQUEST_TIMEOUT,
    CallToolResult,
    ErrorData,
    Request,
    RequestParams,
    Result,
)
from pydantic import ConfigDict

from broker.tasks import TASKS_EXTENSION
from workers.backends.errors import CallChannel

# The running call's way back to its client, set by `BackendSession.forward` around the SDK's call_tool (the
# claim's `resolve` runs inside it, in the same asyncio task).
CALL_CHANNEL: contextvars.ContextVar[CallChannel | None] = contextvars.ContextVar("call_channel", default=None)
FIRST_POLL_S = 0.05
DEFAULT_POLL_S = 1.0  # an upstream that gives no pollIntervalMs
CANCEL_TIMEOUT_S = 5.0  # how long a call that ends otherwise waits to tell the upstream
# -32000 / -32001 from a backend's failed task would read as a broken session (`BackendSession._guarded`)
SESSION_CODES = (CONNECTION_CLOSED, REQUEST_TIMEOUT)


class UpstreamTask(Result):
    """A backend's `CreateTaskResult` (flat: the Task's fields next to `resultType: "task"`)."""

    model_config = ConfigDict(extra="allow")
    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    poll_interval_ms: int | None = None


class DetailedTask(Result):
    """`tasks/get`'s answer: the Task, with `inputRequests`, `result` or `error` by status (in the extras)."""

    model_config = ConfigDict(extra="allow")
    task_id: str
    status: str
    poll_interval_ms: int | None = None


class TaskParams(RequestParams):
    model_config = ConfigDict(extra="allow")
    task_id: str


class GetTask(Request[TaskParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    name_param = "taskId"  # the SDK sends it as Mcp-Name


class UpdateTask(Request[TaskParams, Literal["tasks/update"]]):
    method: Literal["tasks/update"] = "tasks/update"
    name_param = "taskId"


class CancelTask(Request[TaskParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    name_param = "taskId"


class UpstreamTasks(ClientExtension):
    """The backend session's side of the extension: claims `resultType: "task"` and resolves it. `timeout`: how
    long a client has to answer one of the task's questions (the server's `timeout_s`, as for the relay)."""

    identifier = TASKS_EXTENSION

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def claims(self) -> Sequence[ResultClaim[Any]]:
        return (ResultClaim(result_type="task", model=UpstreamTask, resolve=self.resolve),)

    async def resolve(self, task: UpstreamTask, context: ClaimContext) -> CallToolResult:
        """The upstream task, followed to its end: the call's result (or its error, raised)."""
        session, task_id = context.session, task.task_id
        detail: DetailedTask = DetailedTask.model_validate(task.model_dump(by_alias=True))
        asked: set[str] = set()  # upstream keys already relayed (they stay listed until answered)
        delay = FIRST_POLL_S
        try:
            while True:
                extra = detail.model_extra or {}
                if detail.status == "completed":
                    return CallToolResult.model_validate(extra.get("result") or {"content": []})
                if detail.status == "failed":
                    error = ErrorData.model_validate(extra.get("error") or {"code": INTERNAL_ERROR,
                                                                            "message": "The backend's task failed"})
                    code = INTERNAL_ERROR if error.code in SESSION_CODES else error.code
                    raise MCPError(code, error.message, error.data)
                if detail.status == "cancelled":
                    raise MCPError(INTERNAL_ERROR, "The backend cancelled its task")
                if detail.status == "input_required":
                    questions = {key: request for key, request in (extra.get("inputRequests") or {}).items()
                                 if key not in asked}
                    asked.update(questions)
                    if questions:
                        await self._relay(session, task_id, questions)
                        delay = FIRST_POLL_S  # the answers are in: look again soon
                ceiling = detail.poll_interval_ms / 1000 if detail.poll_interval_ms else DEFAULT_POLL_S
                await anyio.sleep(min(delay, ceiling))
                delay = min(delay * 2, ceiling)
                detail = await session.send_request(GetTask(params=TaskParams(task_id=task_id)), DetailedTask)
        except BaseException:  # cancelled by its client, timed out, failed: the upstream task must stop too
            # best effort: it may be over already, or its session gone
            with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_TIMEOUT_S), \
                    contextlib.suppress(Exception):
                await session.send_request(CancelTask(params=TaskParams(task_id=task_id)), Result)
            raise

    async def _relay(self, session: ClientSession, task_id: str, questions: dict[str, Any]) -> None:
        """Each question to the call's client (at once, so a client sees them all together); each answer
        upstream as it comes (`tasks/update`). The upstream's keys stay here: they embed its task id."""
        channel = CALL_CHANNEL.get()
        if channel is None:
            raise MCPError(INTERNAL_ERROR, "The backend's task asked a question and no client can answer it")

        refused: list[ErrorData] = []

        async def one(key: str, request: dict[str, Any], group: anyio.abc.TaskGroup) -> None:
            answer = await anyio.to_thread.run_sync(channel.ask, str(request.get("method", "")),
                                                    dict(request.get("params") or {}), self.timeout,
                                                    abandon_on_cancel=True)
            if "error" in answer:  # declined (no answer in time, task cancelled): the call ends with it
                refused.append(ErrorData.model_validate(answer["error"]))
                group.cancel_scope.cancel()
                return
            params = TaskParams(task_id=task_id, inputResponses={key: answer.get("result") or {}})
            try:
                await session.send_request(UpdateTask(params=params), Result)
            except MCPError as err:
                refused.append(err.error)
                group.cancel_scope.cancel()

        async with anyio.create_task_group() as group:
            for key, request in questions.items():
                group.start_soon(one, key, request, group)
        if refused:  # raised here, not in the group: an exception group would hide it from the session's mapping
            raise MCPError(refused[0].code, refused[0].message, refused[0].data)
