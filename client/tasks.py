"""Tool calls as tasks (the tasks extension, `io.modelcontextprotocol/tasks`, SEP-2663) from the client side.

`submit` hands back a handle at once instead of holding the call open: the broker records the call, answers
with a task, and the handle polls `tasks/get` at the broker's `pollIntervalMs`, answers a backend's questions
with `tasks/update` (through the caller's `on_input`), and stops it with `tasks/cancel`. A tool that answers
within the broker's hold (or is not task-capable) gives a handle that is already finished.

The SDK (mcp 2.3.0) has no runtime for the extension but lets a client declare it and claim its result shape
(`ClientExtension` + `ResultClaim`, SEP-2133): `TasksExtension` does both, so every modern-era request of the
client says it speaks tasks, and `Client.call_tool` finishes a task result transparently (polling here). The
task methods are typed requests sent with `ClientSession.send_request` (`name_param` gives `Mcp-Name`). The
extension lives in the modern era only (2026-07-28, per request), so a handshake-era connection has no tasks.

The polling loop is written once (`_next_step`, pure) and driven twice: by `AsyncTaskHandle` on the event loop,
and by `TaskHandle` in the caller's thread, so a blocking `on_input` (a prompt to a person) blocks only its
caller, never the connection the sync client's other calls share.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import anyio
import mcp_types
from mcp import MCPError
from mcp.client import ClientRequestContext, ClientSession
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from pydantic import BaseModel, TypeAdapter

__all__ = [
    "TASKS_EXTENSION",
    "AsyncTaskHandle",
    "CreatedTask",
    "OnInput",
    "TaskCancelled",
    "TaskHandle",
    "TaskInputRequired",
    "TaskStatus",
    "TasksExtension",
    "TasksUnavailable",
    "create_task",
]

_T = TypeVar("_T")

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
DEFAULT_POLL_S = 1.0
"""Polling interval when the broker gives no `pollIntervalMs` (it always does: `MCP_BROKER_TASK_POLL_MS`)."""
MAX_INPUT_ROUNDS = 16
"""`input_required` rounds before the task exists (questions inside the broker's 250 ms hold) before giving up."""

Answers = Mapping[str, Any]
"""Answers to a backend's questions by their key: `ElicitResult`/`CreateMessageResult`/... models or plain dicts."""
OnInput = Callable[[mcp_types.InputRequests], Answers | Awaitable[Answers]]
"""The caller's answerer: the questions by key (`elicitation/create`, `sampling/createMessage`, `roots/list`
requests) in, the answers by key out. `TaskHandle` takes only a plain function."""
_RESPONSES: TypeAdapter[mcp_types.InputResponses] = TypeAdapter(mcp_types.InputResponses)


class CreatedTask(mcp_types.Result):
    """`CreateTaskResult`: the answer of a `tools/call` that became a task (`resultType: "task"`)."""

    model_config = mcp_types.Result.model_config | {"extra": "allow"}
    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    created_at: str | None = None
    last_updated_at: str | None = None
    ttl_ms: int | None = None
    poll_interval_ms: int | None = None


class TaskStatus(mcp_types.Result):
    """A `tasks/get` answer: the status, and by status the pending questions, the result or the error."""

    model_config = mcp_types.Result.model_config | {"extra": "allow"}
    task_id: str
    status: str
    status_message: str | None = None
    created_at: str | None = None
    last_updated_at: str | None = None
    ttl_ms: int | None = None
    poll_interval_ms: int | None = None
    input_requests: mcp_types.InputRequests | None = None
    result: dict[str, Any] | None = None
    error: mcp_types.ErrorData | None = None


class TaskParams(mcp_types.RequestParams):
    task_id: str


class TaskUpdateParams(TaskParams):
    input_responses: dict[str, Any]


class GetTaskRequest(mcp_types.Request[TaskParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskParams
    name_param: ClassVar[str | None] = "taskId"


class UpdateTaskRequest(mcp_types.Request[TaskUpdateParams, Literal["tasks/update"]]):
    method: Literal["tasks/update"] = "tasks/update"
    params: TaskUpdateParams
    name_param: ClassVar[str | None] = "taskId"


class CancelTaskRequest(mcp_types.Request[TaskParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    params: TaskParams
    name_param: ClassVar[str | None] = "taskId"


class TasksUnavailable(RuntimeError):
    """The connection speaks the handshake era, which has no tasks extension."""


class TaskCancelled(RuntimeError):
    """The task was cancelled (by `cancel()` or anyone holding its handle and key): it has no result."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id[:8]}… was cancelled")
        self.task_id = task_id


class TaskInputRequired(RuntimeError):
    """The backend asked a question during the task and no `on_input` was given to answer it."""

    def __init__(self, task_id: str | None, questions: mcp_types.InputRequests) -> None:
        where = f"task {task_id[:8]}…" if task_id else "the call"
        super().__init__(f"{where} waits for input: {describe(questions)}; pass on_input= to answer")
        self.task_id = task_id
        self.questions = questions


def describe(questions: mcp_types.InputRequests) -> str:
    """The questions, one phrase each: their key, method and (for an elicitation) message."""
    parts = []
    for key, request in questions.items():
        message = getattr(request.params, "message", None)
        parts.append(f"{key!r} ({request.method}{f': {message!r}' if message else ''})")
    return ", ".join(parts)


def _dump(answers: Answers) -> dict[str, Any]:
    return {key: value.model_dump(by_alias=True, mode="json", exclude_none=True) if isinstance(value, BaseModel)
            else dict(value) for key, value in answers.items()}


async def get_task(session: ClientSession, task_id: str) -> TaskStatus:
    return await session.send_request(GetTaskRequest(params=TaskParams(task_id=task_id)), TaskStatus)


async def update_task(session: ClientSession, task_id: str, answers: Answers) -> None:
    params = TaskUpdateParams(task_id=task_id, input_responses=_dump(answers))
    await session.send_request(UpdateTaskRequest(params=params), mcp_types.Result)


async def cancel_task(session: ClientSession, task_id: str) -> None:
    await session.send_request(CancelTaskRequest(params=TaskParams(task_id=task_id)), mcp_types.Result)


async def _answers(on_input: OnInput, questions: mcp_types.InputRequests) -> Answers:
    answers = on_input(questions)
    return await answers if inspect.isawaitable(answers) else answers


async def create_task(session: ClientSession, tool: str, arguments: Mapping[str, Any] | None,
                      on_input: OnInput | None) -> CreatedTask | mcp_types.CallToolResult:
    """`tools/call` on a modern-era session that declares the extension: the task, or the result when the call
    finished within the broker's hold. A question asked before the task exists is an `input_required` round,
    answered through `on_input` and retried, as the extension composes with the modern era's rounds."""
    if session.protocol_version not in mcp_types.version.MODERN_PROTOCOL_VERSIONS:
        raise TasksUnavailable(f"tasks need a modern-era ({mcp_types.version.LATEST_MODERN_VERSION}) connection; "
                               f"this one speaks {session.protocol_version}: connect with "
                               f"mode={mcp_types.version.LATEST_MODERN_VERSION!r}")
    args = dict(arguments) if arguments is not None else None
    responses: mcp_types.InputResponses | None = None
    state: str | None = None
    for _ in range(MAX_INPUT_ROUNDS):
        first = await session.call_tool(tool, args, input_responses=responses, request_state=state,
                                        allow_input_required=True, allow_claimed=True)
        if isinstance(first, CreatedTask | mcp_types.CallToolResult):
            return first
        if not isinstance(first, mcp_types.InputRequiredResult):
            raise TypeError(f"unexpected result of tools/call: {type(first).__name__}")
        if on_input is None:
            raise TaskInputRequired(None, first.input_requests or {})
        answers = _dump(await _answers(on_input, first.input_requests or {}))
        responses = _RESPONSES.validate_python(answers)
        state = first.request_state
    raise RuntimeError(f"{tool}: still asking after {MAX_INPUT_ROUNDS} input_required rounds")


@dataclass(frozen=True)
class _Step:
    """What the loop does next: return `result`, answer `questions`, or wait `wait_s` and poll again."""

    result: mcp_types.CallToolResult | None = None
    questions: mcp_types.InputRequests | None = None
    wait_s: float = DEFAULT_POLL_S


def _next_step(status: TaskStatus, answered: set[str], can_answer: bool) -> _Step:
    """The one decision of both loops; raises for a failed or cancelled task and an unanswerable question."""
    wait_s = (status.poll_interval_ms / 1000) if status.poll_interval_ms else DEFAULT_POLL_S
    if status.status == "completed":
        return _Step(result=mcp_types.CallToolResult.model_validate(status.result or {"content": []}))
    if status.status == "failed":
        error = status.error or mcp_types.ErrorData(code=mcp_types.INTERNAL_ERROR, message="task failed")
        raise MCPError(error.code, error.message, error.data)
    if status.status == "cancelled":
        raise TaskCancelled(status.task_id)
    pending = {k: v for k, v in (status.input_requests or {}).items() if k not in answered}
    if status.status == "input_required" and pending:
        if not can_answer:
            raise TaskInputRequired(status.task_id, pending)
        return _Step(questions=pending)
    return _Step(wait_s=wait_s)


def _finished(task_id: str, result: mcp_types.CallToolResult) -> TaskStatus:
    return TaskStatus(task_id=task_id, status="completed", result=result.model_dump(by_alias=True, mode="json"))


class AsyncTaskHandle:
    """A submitted call, for async code: `await handle.result()`, `status()`, `cancel()`.

    `task_id` is None when the call finished at once (no task was made): then `result()` returns at once and
    `cancel()` does nothing. `session` gives the connection's current session on each use.
    """

    def __init__(self, session: Callable[[], ClientSession], created: CreatedTask | mcp_types.CallToolResult,
                 on_input: OnInput | None = None) -> None:
        self._session = session
        self._on_input = on_input
        self._answered: set[str] = set()
        self.task_id: str | None = created.task_id if isinstance(created, CreatedTask) else None
        self.created: CreatedTask | None = created if isinstance(created, CreatedTask) else None
        self._result = created if isinstance(created, mcp_types.CallToolResult) else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task_id={self.task_id!r})"

    async def status(self) -> TaskStatus:
        """The task as the broker has it now (one `tasks/get`); a handle finished at once is `completed`, with
        its result and an empty `task_id`."""
        if self.task_id is None:
            assert self._result is not None
            return _finished("", self._result)
        return await get_task(self._session(), self.task_id)

    async def result(self, timeout: float | None = None) -> mcp_types.CallToolResult:
        """Poll until the task ends; its tool result (`is_error` for a tool error). Raises `MCPError` for a failed
        task, `TaskCancelled`, `TaskInputRequired` (a question and no `on_input`), `TimeoutError` after
        `timeout` seconds (the task runs on: ask again)."""
        if self._result is not None:
            return self._result
        with anyio.fail_after(timeout):
            while True:
                step = _next_step(await self.status(), self._answered, self._on_input is not None)
                if step.result is not None:
                    self._result = step.result
                    return step.result
                if step.questions is not None and self._on_input is not None and self.task_id is not None:
                    answers = await _answers(self._on_input, step.questions)
                    await update_task(self._session(), self.task_id, answers)
                    self._answered.update(answers)
                    continue
                await anyio.sleep(step.wait_s)

    async def cancel(self) -> None:
        """Cancel the task (its call too, queued or running); nothing happens to a finished one."""
        if self.task_id is not None:
            await cancel_task(self._session(), self.task_id)


class _Runner(Protocol):
    """Runs a coroutine on the sync client's event loop thread, with the connection's current session."""

    def __call__(self, fn: Callable[[ClientSession], Awaitable[_T]], /) -> _T: ...


class TaskHandle:
    """A submitted call, for blocking code: `handle.result()`, `status()`, `cancel()` (see `AsyncTaskHandle`).

    The loop runs in the caller's thread (each poll one round trip on the client's event loop thread), so
    `on_input`, a plain function, may block (ask a person) without stalling the connection.
    """

    def __init__(self, run: _Runner, created: CreatedTask | mcp_types.CallToolResult,
                 on_input: Callable[[mcp_types.InputRequests], Answers] | None = None) -> None:
        self._run = run
        self._on_input = on_input
        self._answered: set[str] = set()
        self.task_id: str | None = created.task_id if isinstance(created, CreatedTask) else None
        self.created: CreatedTask | None = created if isinstance(created, CreatedTask) else None
        self._result = created if isinstance(created, mcp_types.CallToolResult) else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task_id={self.task_id!r})"

    def status(self) -> TaskStatus:
        """As `AsyncTaskHandle.status`."""
        if self.task_id is None:
            assert self._result is not None
            return _finished("", self._result)
        task_id = self.task_id
        return self._run(lambda session: get_task(session, task_id))

    def result(self, timeout: float | None = None) -> mcp_types.CallToolResult:
        """As `AsyncTaskHandle.result`."""
        if self._result is not None:
            return self._result
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _next_step(self.status(), self._answered, self._on_input is not None)
            if step.result is not None:
                self._result = step.result
                return step.result
            if step.questions is not None and self._on_input is not None and self.task_id is not None:
                answers = self._on_input(step.questions)
                self._update(self.task_id, answers)
                self._answered.update(answers)
                continue
            if deadline is not None and time.monotonic() + step.wait_s > deadline:
                raise TimeoutError(f"task {self.task_id} not finished within {timeout}s (it runs on)")
            time.sleep(step.wait_s)

    def _update(self, task_id: str, answers: Answers) -> None:
        self._run(lambda session: update_task(session, task_id, answers))

    def cancel(self) -> None:
        """As `AsyncTaskHandle.cancel`."""
        if self.task_id is not None:
            task_id = self.task_id
            self._run(lambda session: cancel_task(session, task_id))


_NO_ANSWERER = ("a backend asked a question outside a task's on_input; this client answers questions only "
                "through submit(..., on_input=...)")


async def refuse_elicitation(context: ClientRequestContext,
                             params: mcp_types.ElicitRequestParams) -> mcp_types.ElicitResult | mcp_types.ErrorData:
    """Declares `elicitation` on modern-era requests, which the broker wants before it asks a question ahead of
    a task (an `input_required` round: `create_task` answers it through `on_input`, never here)."""
    return mcp_types.ErrorData(code=mcp_types.INVALID_REQUEST, message=_NO_ANSWERER)


async def refuse_sampling(
    context: ClientRequestContext, params: mcp_types.CreateMessageRequestParams
) -> mcp_types.CreateMessageResult | mcp_types.CreateMessageResultWithTools | mcp_types.ErrorData:
    """As `refuse_elicitation`, for `sampling`."""
    return mcp_types.ErrorData(code=mcp_types.INVALID_REQUEST, message=_NO_ANSWERER)


class TasksExtension(ClientExtension):
    """Declares the extension on every modern-era request and finishes a task that a plain `call_tool` got
    (polling it; a question without an answerer raises `TaskInputRequired`)."""

    identifier = TASKS_EXTENSION

    def claims(self) -> tuple[ResultClaim[CreatedTask], ...]:
        return (ResultClaim(result_type="task", model=CreatedTask, resolve=self._resolve),)

    @staticmethod
    async def _resolve(created: CreatedTask, ctx: ClaimContext) -> mcp_types.CallToolResult:
        return await AsyncTaskHandle(lambda: ctx.session, created).result()
