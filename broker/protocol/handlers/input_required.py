"""A backend's questions to a modern-era client, which cannot be sent requests: `input_required`.

A handshake-era backend asked the client something mid-call (sampling, elicitation, roots). The call stays
suspended in its worker, and the client's request is answered `input_required` with the question and a
sealed `requestState` naming the suspended call (`broker.request_state`: bound to the key, the request and
its arguments, expiring, single use); the client's retry carries the answer back (`resume_with_input`),
on any web process.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from mcp_types import INVALID_PARAMS, INVALID_REQUEST, MISSING_REQUIRED_CLIENT_CAPABILITY

from broker import keys
from broker.admission import Refused
from broker.calls import QUEUE_GRACE_S
from broker.protocol.framing import DEFERRED, RPCError, dumps
from broker.protocol.handlers import tasks
from broker.protocol.handlers.outcomes import Waiting
from broker.protocol.handlers.relay import CLIENT_CAPABILITY_OF, answer_backend, refused_for_capability
from broker.request_state import RequestStateRefused
from broker.tasks import TaskStore, digest_of, question_of

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation

log = logging.getLogger(__name__)

QUESTION_WINDOW_S = 0.05  # a backend's questions asked together (concurrently) go out in one input_required round
STATE_REFUSED = ("Invalid params: requestState was not issued by this broker for this request and key, was "
                 "altered, has expired, or was used already")


def input_required(conversation: Conversation, backend_request: dict[str, Any], waiting: Waiting) -> None:
    """Gather a backend's question into this request's round (questions asked together go out together)."""
    request_id, call_id = waiting.request_id, waiting.call_id
    if refused_for_capability(conversation, backend_request):
        # the backend heard what a client without it would answer; the client is told what is missing
        if waiting.current():
            needed = CLIENT_CAPABILITY_OF.get(backend_request["method"])
            del conversation.in_flight[request_id]
            conversation.admission.release_slot(call_id)
            conversation.services.hub.forget(call_id)
            if waiting.task is not None:  # refused before it became a task
                TaskStore(conversation.services.redis).discard(digest_of(waiting.task))
            conversation.error(request_id, MISSING_REQUIRED_CLIENT_CAPABILITY,
                               f"Missing required client capability: {needed}",
                               {"requiredCapabilities": {needed: {}}} if needed else None)
        return
    if not waiting.current():
        return  # cancelled, or answered already
    named, question = question_of(backend_request)
    key = str(backend_request.get("key") or named or backend_request["id"])  # a task's: as in its record
    offered = conversation.offered.get(request_id, {}).get(key)
    if isinstance(offered, dict):  # the request already carried the answer to this question
        if waiting.task is not None:  # through its task's record, which lists the question
            TaskStore(conversation.services.redis).answer(digest_of(waiting.task), {key: {"result": offered}})
        else:
            answer_backend(conversation, keys.answer(backend_request["id"]), {"result": offered})
        return
    round_ = conversation.questions.setdefault(request_id, [])
    round_.append({"key": key, "ask": backend_request["id"], "question": question})
    if len(round_) == 1:  # questions asked together arrive together: gather them for a moment
        timer = threading.Timer(QUESTION_WINDOW_S, ask_round, (conversation, waiting))
        timer.daemon = True
        timer.start()


def ask_round(conversation: Conversation, waiting: Waiting) -> None:
    """Answer the client's request `input_required` with this round's questions and the sealed state."""
    request_id, call_id = waiting.request_id, waiting.call_id
    asks = conversation.questions.pop(request_id, [])
    if not asks or not waiting.current():
        return  # cancelled, or answered already
    del conversation.in_flight[request_id]
    conversation.admission.release_slot(call_id)  # suspended for the client's answer: its retry takes a slot again
    state = {"call": call_id, "asks": asks, "server": waiting.server, "token": waiting.progress_token}
    if waiting.task is not None:  # a call held before becoming a task: the retry holds it again
        state["task"] = waiting.task
    sealed = conversation.services.request_state().seal(state, conversation.principal.id,
                                                        conversation.bindings.pop(request_id),
                                                        ask_timeout(conversation, waiting.server))
    conversation.respond(request_id, {"resultType": "input_required", "requestState": sealed,
                                      "inputRequests": {ask["key"]: ask["question"] for ask in asks}})


def resume_with_input(conversation: Conversation, request_id: Any, params: dict[str, Any]) -> Any:
    """The retry of a request answered `input_required`: hand the client's answer to the suspended call
    and wait for its next question or its result (both come back on this request)."""
    services, principal = conversation.services, conversation.principal
    seal = services.request_state()
    try:
        state = seal.open(params.get("requestState"), principal.id, conversation.bindings[request_id])
    except RequestStateRefused as err:
        log.warning("requestState refused for key %r: %s", principal.id, err)
        raise RPCError(INVALID_PARAMS, STATE_REFUSED) from None
    responses = params.get("inputResponses")
    if responses is not None and not isinstance(responses, dict):
        raise RPCError(INVALID_PARAMS, "Invalid params: inputResponses must be an object")
    answers = {ask["ask"]: (responses or {}).get(ask["key"]) for ask in state["asks"]}
    if not all(isinstance(answer, dict) for answer in answers.values()):  # not all answered: the round stands
        return {"resultType": "input_required", "requestState": params["requestState"],
                "inputRequests": {ask["key"]: ask["question"] for ask in state["asks"]}}
    if request_id in conversation.in_flight:
        raise RPCError(INVALID_REQUEST, f"Invalid Request: request id {request_id!r} is already in flight")
    try:
        seal.consume(state)  # single use: the answers go to the suspended call once, from one retry
    except RequestStateRefused as err:
        log.warning("requestState refused for key %r: %s", principal.id, err)
        raise RPCError(INVALID_PARAMS, STATE_REFUSED) from None
    call_id, server = state["call"], state["server"]
    spec = services.config.server(server)
    try:
        conversation.admission.hold_slot(call_id, spec.settings.max_timeout_s * 2 + QUEUE_GRACE_S)
    except Refused:
        seal.unconsume(state)  # refused for the key's limit, not the token: it may be retried
        raise
    waiting = Waiting(conversation, request_id, call_id, state["method"], server, state.get("token"),
                      state.get("task"))
    hub = services.hub
    hub.start()
    conversation.in_flight[request_id] = call_id
    hub.expect(call_id, waiting.on_outcome, waiting.on_event, spec.settings.max_timeout_s * 2 + QUEUE_GRACE_S)
    # the worker still answers the process that started the call: it passes them on to this one
    services.redis.set(keys.resumed_at(call_id), hub.channel, ex=int(ask_timeout(conversation, server) * 4) + 60)
    if waiting.task is not None:  # its record's questions are answered too (the answers go through it)
        TaskStore(services.redis).answer(digest_of(waiting.task), {ask["key"]: {"result": answers[ask["ask"]]}
                                                                   for ask in state["asks"]})
        tasks.hold(conversation, waiting)
    else:
        for ask_id, answer in answers.items():
            answer_backend(conversation, keys.answer(ask_id), {"result": answer})
    return DEFERRED


def pass_on(conversation: Conversation, call_id: str, message: dict[str, Any]) -> None:
    """A suspended call's event or outcome reached the process that started it, but its client's retry
    was taken by another web process: publish it on that process's channel."""
    services = conversation.services
    target = services.redis.get(keys.resumed_at(call_id))
    if isinstance(target, bytes):
        target = target.decode()
    if target and target != services.hub.channel:
        services.redis.publish(target, dumps(message))


def ask_timeout(conversation: Conversation, server: str) -> float:
    spec = conversation.services.config.servers.get(server)
    return spec.settings.timeout_s if spec is not None else 30.0
