"""`POST /v1/batches` with model outputs or a provider's batch results file: every tool call as one durable batch.

The file is read into tool calls (`broker.translate.batch_files`), names are resolved among the caller's
visible tools, and the runnable calls are checked and queued by the native batch machinery
(`broker.batch_input.prepare_batch` in its per-call mode, `broker.batches.submit_batch`): same limits, same
allow-lists, same workers, results in the same Redis stream. A call that cannot run (bad arguments, a name
no visible tool has, a tool the key may not use) is answered at once with its error through the workers'
own result writer, so it is counted and streamed like any other outcome, and the file's other calls run.
Where each call came from (format, custom_id, line, tool call id, name) is kept in one Redis hash per batch
(104 bytes a call: MEMORY USAGE of a 2,000-call file's hash) so the results stream (`translated`) can
answer in the provider's shape.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import redis
from mcp_types import INVALID_PARAMS

from broker import keys, wire
from broker.admission import Admission
from broker.batch_input import JSONL_MIMETYPES, PreparedBatch, RawBatch, prepare_batch
from broker.batches import BatchError, BatchSettings, cooperate_now, submit_batch
from broker.calls import Call
from broker.results import ResultWriter, rpc_error
from broker.services import BrokerServices
from broker.translate.batch_files import SOURCES, FileCalls, call_context, detect_source, read_file, result_line
from broker.translate.call_formats import NATIVE, UnknownShape
from broker.translate.toolcalls import ToolCall
from web.toolcalls import resolve_calls
from workers.dispatch import submit_calls

CONTEXT_CHUNK = 1000  # call contexts written per pipeline


def _numbered(data: bytes) -> list[tuple[int, str]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BatchError("invalid_batch", f"the body is not UTF-8 text: {err}") from None
    return [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def batch_source(data: bytes, mimetype: str, args: Mapping[str, str]) -> str | None:
    """What the body holds: `?from=` (or `?format=`) as named, else the source its first JSON Lines line
    shows; None for native calls (a JSON body is native unless named: telling would mean parsing it twice)."""
    named = args.get("from") or args.get("format")
    if named:
        if named in NATIVE:
            return None
        if named not in SOURCES:
            raise BatchError("invalid_batch", f"unknown batch source {named!r}; use one of: mcp, {', '.join(SOURCES)}")
        return named
    if mimetype not in JSONL_MIMETYPES:
        return None
    for line in data.split(b"\n", 64):
        if line.strip():
            try:
                return detect_source(wire.loads(line))
            except (ValueError, RecursionError):
                return None
    return None


def _read(data: bytes, mimetype: str, source: str, settings: BatchSettings) -> FileCalls:
    whole = source not in ("openai-batch", "anthropic-batch") and mimetype not in JSONL_MIMETYPES
    lines = [(1, data.decode("utf-8-sig", "replace"))] if whole else _numbered(data)
    try:
        found = read_file(lines, source, settings.max_calls, cooperate_now)
    except UnknownShape as err:
        raise BatchError("invalid_batch", str(err)) from None
    except OverflowError as err:
        raise BatchError("batch_too_large", str(err)) from None
    if not found.calls:
        reasons = [f"line {s['line']}: {s['reason']}" for s in found.skipped]
        raise BatchError("invalid_batch", f"no tool calls to run: {found.skipped_count} line(s) skipped"
                         + (f" ({reasons[0]})" if reasons else ""), reasons)
    return found


def _remember(r: redis.Redis, batch_id: str, source: str, calls: list[ToolCall], lifetime_s: int) -> None:
    key = keys.batch_calls(batch_id)
    r.hset(key, "format", source)
    for start in range(0, len(calls), CONTEXT_CHUNK):
        pipe = r.pipeline(transaction=False)
        pipe.hset(key, mapping={str(start + i): call_context(c) for i, c in
                                enumerate(calls[start:start + CONTEXT_CHUNK])})
        pipe.expire(key, lifetime_s)
        pipe.execute()
        cooperate_now()


def submit_file(services: BrokerServices, admission: Admission, data: bytes, mimetype: str, source: str,
                settings: BatchSettings, timeout_s: float | None) -> dict[str, Any]:
    """Queue every tool call of the body as one batch; the 202 answer's fields (`BatchError` if nothing to run)."""
    found = _read(data, mimetype, source, settings)
    resolve_calls(services, admission, found.calls)
    runnable = [c for c in found.calls if c.problem is None]
    refused = [c for c in found.calls if c.problem is not None]
    problems: dict[int, str] = {}
    epoch = services.hub.epochs.current()
    if runnable:
        raw = RawBatch([{"tool": c.tool, "arguments": c.arguments} for c in runnable], None,
                       [c.line or 1 for c in runnable])
        prepared = prepare_batch(raw, services.router, settings, timeout_s, admission.may, epoch=epoch,
                                 skip=problems.__setitem__)
    else:
        prepared = PreparedBatch((epoch + uuid.uuid4().hex)[:32], time.time(), 0, {}, {}, 0.0)
    ordered = runnable + refused  # call index i is ordered[i]: the ones that never run come last
    prepared.total = len(ordered)
    problems.update({len(runnable) + k: c.problem or "" for k, c in enumerate(refused)})
    lifetime = int(settings.queue_window_s + prepared.max_timeout_s + settings.result_ttl_s + 60)
    _remember(services.redis, prepared.batch_id, source, ordered, lifetime)
    submit_batch(services.redis, prepared, submit_calls, settings, admission.principal.id)
    writer = ResultWriter(services.redis)
    for index, problem in sorted(problems.items()):
        writer.deliver(Call(f"{prepared.batch_id}.{index}", "", batch=prepared.batch_id,
                            keep_s=settings.result_ttl_s), rpc_error(INVALID_PARAMS, problem))
    return {"batch_id": prepared.batch_id, "total": prepared.total, "state": "running", "format": source,
            "not_runnable": len(problems), "skipped_count": found.skipped_count, "skipped": found.skipped}


def translated(r: redis.Redis, batch_id: str, lines: Iterator[str]) -> Iterator[str]:
    """The batch's result lines, each answered in its provider's shape when the batch came from a model's
    output (native batches pass through unchanged)."""
    key = keys.batch_calls(batch_id)
    if r.hget(key, "format") is None:
        yield from lines
        return
    for line in lines:
        if not line.strip():
            yield line
            continue
        outcome = json.loads(line)
        yield wire.dumps(result_line(outcome, r.hget(key, str(outcome.get("index"))))) + "\n"
