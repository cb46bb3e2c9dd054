"""The tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663) on the client side: which calls become
tasks, the moment the client is handed its task, and `tasks/get`, `tasks/update`, `tasks/cancel`.

**Which calls.** A tool's task support is the server's `broker.tasks` setting (`{"tool": "optional" |
"required" | "forbidden", "*": ...}`, forbidden by default). A `tools/call` becomes a task only if its
request declared the extension (per request, in the modern envelope) and the tool's support is optional or
required; a required tool called without the extension is refused with -32021 and the capability it needs.

**When the client gets its handle (the hold).** The task's record is created (hidden) before its call is
sent, so the call is durable before anyone is told of it. The request is then held `HOLD_S` (250 ms): an
outcome within it is answered synchronously (the spec allows it; the record goes), a backend question
within it is answered as the modern era's `input_required` round (a question before the task exists, as
the spec's MRTR composition wants; the retry re-enters the hold). At the end of the hold the record is made
visible and the client gets `CreateTaskResult`; from then on this process forgets the call: the worker
writes its questions and outcome into the record, and any web process reads it.

**The methods.** Each first checks its params, then that the request declared the extension (-32021), then
finds the record: a missing one, one not yet announced, another key's, another endpoint's, or one whose tool
the key may no longer use all answer the same -32602 "unknown task".
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, MISSING_REQUIRED_CLIENT_CAPABILITY

from broker.calls import QUEUE_GRACE_S, Call, cancel_call
from broker.config import BrokerSettings
from broker.protocol.framing import RPCError
from broker.protocol.handlers.outcomes import Waiting, client_result
from broker.tasks import (
    HOLD_S,
    POLL_MS,
    QUESTION,
    TASK_TTL_S,
    TASKS_EXTENSION,
    TaskStore,
    digest_of,
    iso,
    new_handle,
)

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation

RELATED_TASK_META_KEY = "io.modelcontextprotocol/related-task"  # never in an inlined result (SEP-2663)
UNKNOWN_TASK = "Invalid params: unknown task"


def missing_extension() -> RPCError:
    return RPCError(MISSING_REQUIRED_CLIENT_CAPABILITY, f"Missing required client capability: the {TASKS_EXTENSION} "
                    "extension", {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}})


def wants_task(conversation: Conversation, settings: BrokerSettings, tool: str) -> bool:
    """Whether a call of the backend's `tool` becomes a task; a required one without the extension is refused."""
    mode = settings.task_mode(tool)
    declared = conversation.era.declares_tasks(conversation)
    if mode == "required" and not declared:
        raise missing_extension()
    return declared and mode != "forbidden"


def start(conversation: Conversation, call: Call, tool: str, timeout: float) -> str:
    """The hidden record of a call about to be sent (`tool` as the client named it); its handle."""
    handle = new_handle()
    call.task = digest_of(handle)
    fields = {"principal": conversation.principal.id, "scope": conversation.scope or "", "server": call.server,
              "tool": tool, "backend_tool": call.tool or "", "call_id": call.call_id}
    TaskStore(conversation.services.redis).create(call.task, fields, int(timeout + QUEUE_GRACE_S) + TASK_TTL_S)
    return handle


def hold(conversation: Conversation, waiting: Waiting) -> None:
    """Announce the task at the end of the hold, unless its request was answered meanwhile."""
    timer = threading.Timer(HOLD_S, announce, (conversation, waiting))
    timer.daemon = True
    timer.start()


def announce(conversation: Conversation, waiting: Waiting) -> None:
    request_id, call_id, handle = waiting.request_id, waiting.call_id, waiting.task
    if handle is None or conversation.questions.get(request_id) or not waiting.claim():
        return  # answered (outcome, cancel), or a question round is being gathered: it answers the request
    conversation.admission.release_slot(call_id)  # a task does not count as a call in flight of its key
    conversation.services.hub.forget(call_id)
    conversation.forget_calls([call_id])
    record = TaskStore(conversation.services.redis).announce(digest_of(handle))
    if record is None:  # its record is gone (Redis lost its data): the call is not a task anyone can follow
        conversation.error(request_id, INTERNAL_ERROR, "Internal error: the task's record was lost")
        return
    conversation.respond(request_id, {"resultType": "task", **task_fields(handle, record)})


def task_fields(handle: str, record: dict[str, str]) -> dict[str, Any]:
    """The Task of a record: `ttlMs` counted from `createdAt` to when the record expires (it may grow)."""
    created, updated, pttl = float(record["created"]), float(record["updated"]), int(record.get("pttl", "-1"))
    ttl_ms = max(1, int((time.time() - created) * 1000) + pttl) if pttl > 0 else None
    return {"taskId": handle, "status": record["status"], "createdAt": iso(created), "lastUpdatedAt": iso(updated),
            "ttlMs": ttl_ms, "pollIntervalMs": POLL_MS}


def _find(conversation: Conversation, handle: str) -> dict[str, str]:
    if not conversation.era.declares_tasks(conversation):
        raise missing_extension()
    record = TaskStore(conversation.services.redis).get(digest_of(handle))
    if (record is None or record.get("visible") != "1" or record.get("principal") != conversation.principal.id
            or record.get("scope") != (conversation.scope or "")
            or not conversation.admission.may(record.get("tool", ""))):
        raise RPCError(INVALID_PARAMS, UNKNOWN_TASK)
    return record


def get(conversation: Conversation, _id: Any, params: dict[str, Any]) -> dict[str, Any]:
    """`tasks/get` (`params` loaded by `TaskParamsSchema`): the task, with its pending questions, its result or
    its error inlined by status."""
    handle = params["taskId"]
    record = _find(conversation, handle)
    task = task_fields(handle, record)
    status = record["status"]
    if status == "input_required":
        questions = {field[len(QUESTION):]: json.loads(value) for field, value in record.items()
                     if field.startswith(QUESTION)}
        if questions:
            task["inputRequests"] = questions
        else:  # answered between two transitions: it works on
            task["status"] = "working"
    elif status in ("completed", "failed") and "outcome" in record:
        outcome = json.loads(record["outcome"])
        if "error" in outcome:
            task["error"] = outcome["error"]
        else:
            result = client_result(conversation, "tools/call", record["server"], outcome.get("result") or {},
                                   record.get("backend_tool") or None)  # per-tool shaping, as a direct answer
            meta = {k: v for k, v in (result.get("_meta") or {}).items() if k != RELATED_TASK_META_KEY}
            task["result"] = {**{k: v for k, v in result.items() if k != "_meta"}, **({"_meta": meta} if meta else {})}
    return task


def update(conversation: Conversation, _id: Any, params: dict[str, Any]) -> dict[str, Any]:
    """`tasks/update` (`TaskUpdateParamsSchema`): answers to pending questions reach the waiting backend call;
    unknown or already answered keys are ignored."""
    record = _find(conversation, params["taskId"])
    answers = {key: {"result": value} for key, value in params["inputResponses"].items() if isinstance(value, dict)}
    if answers and record["status"] == "input_required":
        TaskStore(conversation.services.redis).answer(digest_of(params["taskId"]), answers)
    return {}


def cancel(conversation: Conversation, _id: Any, params: dict[str, Any]) -> dict[str, Any]:
    """`tasks/cancel` (`TaskParamsSchema`): the task is cancelled unless it is over (an ack either way), and its
    call too: skipped if still queued, cancelled (the backend told) if running."""
    record = _find(conversation, params["taskId"])
    if TaskStore(conversation.services.redis).cancel(digest_of(params["taskId"])):
        cancel_call(conversation.services.redis, record["call_id"])
    return {}
