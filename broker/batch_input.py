"""Batch input: a request body decoded (JSON or JSON Lines) and every call checked before any is queued.

A batch is checked whole before anything is queued: a 100,000-call file with
one bad line fails at once with the line named (`calls[17].tool` or
`line 18: tool`, up to MAX_DETAILS problems listed), instead of half-running.
The checked batch (`PreparedBatch`) holds every call's queue payload grouped by
queue; `broker.batches` writes the batch's Redis record and sends them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from marshmallow import ValidationError

from broker import wire
from broker.batches import BatchError, BatchSettings, cooperate_now
from broker.calls import Call, call_timeout
from broker.router import Route, Router, UnknownTool
from broker.schemas import BatchCallSchema, BatchRequestSchema

JSONL_MIMETYPES = frozenset(
    {"application/x-ndjson", "application/jsonl", "application/jsonlines", "application/x-jsonlines"}
)
MAX_DETAILS = 20  # problems listed in a rejected batch's error (the count says how many there were in all)
YIELD_EVERY = 200  # calls decoded or checked between two cooperative yields (~2-4 ms of work)


# ---------------------------------------------------------------- decoding
@dataclass
class RawBatch:
    """The decoded body: calls not yet checked, and how to name call `i` in an error message."""

    calls: list[Any]
    timeout_s: float | None = None
    line_numbers: list[int] | None = None  # JSON Lines: the line of each call (blank lines are skipped)

    def at(self, index: int, name: str | None = None) -> str:
        """`calls[17].tool` for a JSON body, `line 18: tool` for JSON Lines (what the user can find in the file)."""
        if self.line_numbers is None:
            where = f"calls[{index}]"
            return f"{where}.{name}" if name else where
        where = f"line {self.line_numbers[index]}"
        return f"{where}: {name}" if name else where


def _too_large(count: int, settings: BatchSettings) -> BatchError:
    return BatchError(
        "batch_too_large",
        f"the batch has {count} calls; the limit is {settings.max_calls} (MCP_BROKER_MAX_BATCH_CALLS)",
    )


def decode_json_body(data: bytes, settings: BatchSettings) -> RawBatch:
    """`{"calls": [...], "timeout_s"?: n}` or a bare JSON array of calls."""
    try:
        body = wire.loads(data)
    except (ValueError, RecursionError) as err:
        raise BatchError("invalid_batch", f"the body is not valid JSON: {err}") from None
    where = wire.lone_surrogate(body, "calls" if isinstance(body, list) else "")
    if where is not None:
        raise BatchError("invalid_batch", wire.describe_surrogate(where))
    if isinstance(body, list):
        if len(body) > settings.max_calls:
            raise _too_large(len(body), settings)
        return RawBatch(body)
    if not isinstance(body, dict):
        raise BatchError("invalid_batch", "the body must be a JSON object with 'calls', or a JSON array of calls")
    if isinstance(body.get("calls"), list) and len(body["calls"]) > settings.max_calls:
        raise _too_large(len(body["calls"]), settings)
    try:
        loaded = BatchRequestSchema().load(body)
    except ValidationError as err:
        where, message = _flatten(err.messages)[0]
        raise BatchError("invalid_batch", f"{where}: {message}" if where else message) from None
    return RawBatch(loaded["calls"], loaded["timeout_s"])


def decode_jsonl_body(data: bytes, settings: BatchSettings, cooperate: Callable[[], None] = cooperate_now) -> RawBatch:
    """One call object per line; blank lines are ignored. Split on `\\n` only: a JSON string may hold U+2028."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BatchError("invalid_batch", f"the body is not UTF-8 text: {err}") from None
    numbered = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if len(numbered) > settings.max_calls:
        raise _too_large(len(numbered), settings)
    calls: list[Any] = []
    for i, (n, line) in enumerate(numbered):
        if i and i % YIELD_EVERY == 0:
            cooperate()
        try:
            calls.append(wire.loads(line))
        except (ValueError, RecursionError) as err:
            raise BatchError("invalid_batch", f"line {n}: not valid JSON: {err}") from None
        where = wire.lone_surrogate(calls[-1])
        if where is not None:
            raise BatchError("invalid_batch", f"line {n}: {wire.describe_surrogate(where)}")
    return RawBatch(calls, None, [n for n, _ in numbered])


def decode_body(data: bytes, mimetype: str, settings: BatchSettings) -> RawBatch:
    if mimetype in JSONL_MIMETYPES:
        return decode_jsonl_body(data, settings)
    return decode_json_body(data, settings)


def _flatten(messages: Any, path: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Marshmallow's nested messages as (field path, message) pairs: every problem, not just the first."""
    if isinstance(messages, dict):
        return [
            pair
            for key, value in messages.items()
            for pair in _flatten(value, path if key == "_schema" else (*path, str(key)))
        ]
    if isinstance(messages, list) and messages and all(isinstance(m, str) for m in messages):
        return [(".".join(path), "; ".join(messages))]
    if isinstance(messages, list):
        return [pair for m in messages for pair in _flatten(m, path)]
    return [(".".join(path), str(messages))]


# ---------------------------------------------------------------- checking
@dataclass
class PreparedBatch:
    """A checked batch: every call's queue payload, grouped by queue, nothing sent yet."""

    batch_id: str
    created: float
    total: int
    calls_by_queue: dict[str, list[dict[str, Any]]]
    tools: dict[str, int]
    max_timeout_s: float


@dataclass
class _Problems:
    found: list[str] = field(default_factory=list)
    count: int = 0
    forbidden: bool = False

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.found) < MAX_DETAILS:
            self.found.append(message)

    def error(self) -> BatchError:
        message = self.found[0]
        if self.count > 1:
            message += f" (and {self.count - 1} more problem{'s' if self.count > 2 else ''}; see details)"
        return BatchError("forbidden" if self.forbidden else "invalid_batch", message, self.found)


def prepare_batch(
    raw: RawBatch,
    router: Router,
    settings: BatchSettings,
    default_timeout_s: float | None = None,
    may: Callable[[str], bool] | None = None,
    cooperate: Callable[[], None] = cooperate_now,
    epoch: str = "",
    skip: Callable[[int, str], None] | None = None,
) -> PreparedBatch:
    """Check every call (schema, tool exists and `may` be used by the caller, arguments fit the tool's input
    schema, ids unique) and build the queue payloads; raise `BatchError` listing the problems if any call is
    bad, so nothing is queued (code `forbidden` if a tool is not allowed, else `invalid_batch`).
    The batch id begins with `epoch`, the tag of Redis's state (`broker.outage`): a batch Redis lost in a
    restart without persistence is then told from one that never existed.
    With `skip`, a bad call does not fail the batch: `skip(index, problem)` is told, and the call is left out
    (the translator answers it as a tool error in the model's API shape, `web.toolcall_batches`)."""
    if not raw.calls:
        raise BatchError("invalid_batch", "the batch has no calls")
    if len(raw.calls) > settings.max_calls:
        raise _too_large(len(raw.calls), settings)
    default = raw.timeout_s if raw.timeout_s is not None else default_timeout_s
    batch_id = (epoch + uuid.uuid4().hex)[:32]
    created = time.time()
    expires_at = created + settings.queue_window_s
    schema = BatchCallSchema()
    routes: dict[str, Route | str] = {}  # tool name → route, or why it has none
    first_index_of_id: dict[str | int, int] = {}
    problems = _Problems()
    calls_by_queue: dict[str, list[dict[str, Any]]] = {}
    tools: dict[str, int] = {}
    max_timeout = 0.0
    router.catalog.ensure_fresh()
    def bad(index: int, message: str) -> None:
        if skip is None:
            problems.add(message)
        else:
            skip(index, message)

    for index, item in enumerate(raw.calls):
        if index and index % YIELD_EVERY == 0:
            cooperate()
        if not isinstance(item, dict):
            bad(index, f"{raw.at(index)}: a call must be a JSON object, not {type(item).__name__}")
            continue
        try:
            loaded = schema.load(item)
        except ValidationError as err:
            for where, message in _flatten(err.messages):
                bad(index, f"{raw.at(index, where or None)}: {message}")
            continue
        name = loaded["tool"]
        route = routes.get(name)
        if route is None:
            if may is not None and not may(name):
                route = f"Forbidden: this key may not use tool {name}"
                problems.forbidden = skip is None
            else:
                try:
                    route = router.route_tool(name)
                except UnknownTool as err:
                    route = str(err)
            routes[name] = route
        if isinstance(route, str):
            bad(index, f"{raw.at(index, 'tool')}: {route}")
            continue
        arguments = loaded["arguments"] or {}
        size = wire.encoded_size(arguments)
        if size > settings.max_argument_bytes:
            bad(index, f"{raw.at(index, 'arguments')}: arguments of {size} bytes are over the limit of "
                         f"{settings.max_argument_bytes} bytes (MCP_BROKER_MAX_ARGUMENT_BYTES)")
            continue
        invalid = route.entry.argument_errors(arguments)
        if invalid is not None:
            bad(index, f"{raw.at(index, 'arguments')}: invalid arguments for tool {name}: {invalid}")
            continue
        client_id = loaded["id"]
        if client_id is not None:
            first = first_index_of_id.setdefault(client_id, index)
            if first != index:
                bad(index, f"{raw.at(index, 'id')}: duplicate id {client_id!r} (also {raw.at(first)})")
                continue
        if problems.count:
            continue  # keep checking, but stop building payloads that will never be sent
        requested = loaded["timeout_s"] if loaded["timeout_s"] is not None else default
        timeout = call_timeout(route.spec.settings, requested)
        max_timeout = max(max_timeout, timeout)
        call = Call(f"{batch_id}.{index}", route.entry.server, tool=route.entry.tool, arguments=arguments,
                    timeout_s=timeout, expires_at=expires_at, batch=batch_id, id=client_id,
                    keep_s=settings.result_ttl_s)  # each outcome stays readable as long as the batch
        calls_by_queue.setdefault(route.queue, []).append(call.to_message())
        tools[name] = tools.get(name, 0) + 1
    if problems.count:
        raise problems.error()
    return PreparedBatch(batch_id, created, len(raw.calls), calls_by_queue, tools, max_timeout)
