"""The call contract between the web tier and the workers: one `Call` per request a worker must run.

Every producer (a conversation forwarding `tools/call`, `resources/read`, `prompts/get`,
`completion/complete` or a background `resources/subscribe`; `POST /v1/calls`; a batch job) builds a
`Call`, and every worker reads one. On the way it travels as a plain JSON object inside a Celery message
(`Call.to_message`, `Call.from_message`): the keys are the field names below, and a field at its default
is left out, so a batch of 100,000 calls carries no `"progress": false` and a reader may take an absent
key as its default (what the workers have always done).

Some fields are stamped after the producer built the message, on the message itself: `keep_s` by
`SessionStore.remember` just before the send (how long the worker keeps the outcome), `queued_at` by the
dispatcher (the worker measures the queue wait from it), `hops` and `attempts` by the worker.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Any

import redis

from broker import keys
from broker.config import BrokerSettings

QUEUE_GRACE_S = 60.0  # how long a call may wait in its queue on top of its own time limit
TOOLS_CALL = "tools/call"


@dataclass(slots=True)
class Call:
    """One request for a backend, as queued for its server's workers."""

    call_id: str  # ours: the key of its outcome, its cancel flag and its reply on the hub
    server: str  # the backend, as configured
    method: str = TOOLS_CALL  # the MCP method the worker sends the backend
    tool: str | None = None  # tools/call: the backend's own tool name (unprefixed)
    arguments: dict[str, Any] | None = None  # tools/call: the tool's arguments
    params: dict[str, Any] | None = None  # any other method: its params as the backend gets them
    cache_ttl: float | None = None  # tools/call of a cached tool: the worker stores the result for this long
    reply_to: str | None = None  # the web process's reply channel (none for a batch: results go to its stream)
    timeout_s: float | None = None  # the call's own time limit (the server's `timeout_s` when absent)
    expires_at: float | None = None  # epoch seconds: a call still queued past this is answered with a timeout
    progress: bool = False  # the client asked for progress notifications
    progress_token: str | int | None = None  # ...with this token
    session: str | None = None  # the client's session (per_client isolation, resume after a reconnect)
    rid: str | int | None = None  # the client's JSON-RPC request id (a session resumes its answer by it)
    key: str | None = None  # the API key id of the caller (call logs; per-key accounting)
    meta: dict[str, Any] | None = None  # the client's `_meta`, less the broker's own keys, passed on
    headers: dict[str, str] | None = None  # client headers a server forwards (`forward_headers`)
    batch: str | None = None  # the batch job it belongs to
    id: str | int | None = None  # the batch client's own id for the call (echoed in its result line)
    keep_s: int | None = None  # how long the worker keeps its outcome readable
    task: str | None = None  # the digest of its task record (broker.tasks): outcome and questions go there too
    queued_at: float | None = None  # epoch seconds it was handed to Celery
    hops: int = 0  # how often a per_client call was forwarded to the worker holding its session
    attempts: int = 1  # runs so far (retries after a backend failure), for its log line

    def to_message(self) -> dict[str, Any]:
        """The JSON object a worker receives: every field not at its default."""
        return {name: value for name, value, default in zip(_NAMES, _values(self), _DEFAULTS, strict=True)
                if value is not default and value != default}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Call:
        """The call a message carries; keys this version does not know (a newer producer's) are ignored."""
        return cls(**{name: value for name, value in message.items() if name in _KNOWN})


# Measured: ~1.6 us a message this way (a getattr per field in a loop took ~7.8 us; a batch sends 100,000).
_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Call))
_KNOWN = frozenset(_NAMES)
_REQUIRED = object()  # the default of a field that has none: never equal to a value, so always sent
_DEFAULTS: tuple[Any, ...] = tuple(_REQUIRED if f.default is dataclasses.MISSING else f.default
                                   for f in dataclasses.fields(Call))
_values = operator.attrgetter(*_NAMES)


def call_timeout(settings: BrokerSettings, requested: Any) -> float:
    """The server's `timeout_s`, or the client's own limit for this call, capped at `max_timeout_s`."""
    if isinstance(requested, (int, float)) and not isinstance(requested, bool) and requested > 0:
        return float(min(requested, settings.max_timeout_s))
    return settings.timeout_s


def cancel_call(r: redis.Redis, call_id: str) -> None:
    """Mark the call cancelled (a queued copy is skipped) and tell the workers (a running copy is cancelled)."""
    cancel_calls(r, [call_id])


def cancel_calls(r: redis.Redis, call_ids: list[str]) -> None:
    """`cancel_call` for several calls at once, announced in ONE message (ids separated by spaces) that a worker
    applies in one step: cancelled one by one, a call waiting for the slot of another (a session's second call
    to a `concurrency: 1` server) took the slot the first one freed and reached its backend before its own
    cancel arrived."""
    if not call_ids:
        return
    pipe = r.pipeline(transaction=False)
    for call_id in call_ids:
        pipe.set(keys.cancelled(call_id), "1", ex=3600)
    pipe.publish(keys.CANCEL_CHANNEL, " ".join(call_ids))
    pipe.execute()
