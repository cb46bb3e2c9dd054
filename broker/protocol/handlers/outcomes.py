"""A forwarded call's way back: its events (progress, log messages, a backend's questions) and its outcome,
turned into what its client receives.

`forward` registers a `Waiting` with the reply hub for each queued call (`hub.expect(call_id,
waiting.on_outcome, waiting.on_event, ...)`); the hub calls it from its listener thread when the worker
publishes. The request must still be the conversation's (`current`): a cancelled request's outcome is
dropped, and a suspended modern call resumed on another web process is passed on there (the era decides).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.context import shaping
from broker.protocol.handlers.lifecycle import level_passes
from broker.tasks import TaskStore, digest_of

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation


_CLAIM = threading.Lock()


@dataclass(eq=False)
class Waiting:
    """A client request waiting for its queued call."""

    conversation: Conversation
    request_id: Any
    call_id: str
    method: str
    server: str
    progress_token: Any
    task: str | None = None  # the handle of the task it may become (handlers/tasks.py), while it is held
    tool: str | None = None  # a tools/call's tool, as its backend names it (results shaped per tool)

    def current(self) -> bool:
        """Whether the conversation still waits for this call under this request id."""
        return self.conversation.in_flight.get(self.request_id) == self.call_id

    def claim(self) -> bool:
        """Take the request to answer it: True for exactly one caller (the outcome on the hub's thread and
        the end of a task's hold on a timer's may race for it)."""
        with _CLAIM:
            if not self.current():
                return False
            del self.conversation.in_flight[self.request_id]
            return True

    def on_outcome(self, message: dict[str, Any]) -> None:
        conversation = self.conversation
        if not self.claim():
            conversation.era.pass_on(conversation, self.call_id, message)  # resumed elsewhere, or cancelled
            return
        conversation.admission.release_slot(self.call_id)
        conversation.offered.pop(self.request_id, None)
        if self.task is not None:  # answered before it became a task: nobody will ask for the task
            TaskStore(conversation.services.redis).discard(digest_of(self.task))
        if "error" in message:
            conversation.send({"jsonrpc": "2.0", "id": self.request_id, "error": message["error"]})
        else:
            conversation.respond(self.request_id, client_result(conversation, self.method, self.server,
                                                                message["result"], self.tool))
        conversation.forget_calls([self.call_id])

    def on_event(self, event: dict[str, Any]) -> None:
        conversation = self.conversation
        if not self.current() and conversation.era.pass_on(conversation, self.call_id, event):
            return  # a suspended call's progress or next question: where it resumed
        if "progress" in event and self.progress_token is not None:
            note = event["progress"]
            notification = {"progressToken": self.progress_token, "progress": note["progress"]}
            if note.get("total") is not None:
                notification["total"] = note["total"]
            if note.get("message"):
                notification["message"] = note["message"]
            conversation.notify("notifications/progress", notification, related=self.request_id)
        elif "log" in event:
            if conversation.era.wants_log(conversation) and level_passes(event["log"].get("level"),
                                                                         conversation.log_level):
                conversation.notify("notifications/message", event["log"], related=self.request_id)
        elif "server_request" in event:
            conversation.era.ask(conversation, event["server_request"], self)


def client_result(conversation: Conversation, method: str, server: str, result: dict[str, Any],
                  tool: str | None = None) -> dict[str, Any]:
    """A backend's result as this client's protocol era and namespace expect it, a tool's shaped for a model
    unless the client asked for it raw (broker.context.shaping)."""
    result = conversation.era.backend_result(result)
    if method == "tools/call":
        result = shaping.for_conversation(conversation, server, tool, result)
    if method == "resources/read" and not conversation.scope:
        catalog = conversation.services.catalog
        contents = [{**c, "uri": catalog.namespaced_uri(server, c["uri"])} if "uri" in c else c
                    for c in result.get("contents", [])]
        result = {**result, "contents": contents}
    return result
