"""The HTTP batch API (`POST /v1/batches`), probed and, when present, loaded.

Shape (web/api.py): POST `{"calls": [{"tool", "arguments"}, ...]}` → 202 with `batch_id` and
`results_url`; GET `results_url` streams one JSON line per finished call until all are done.
The bench submits the calls as batches of `batch_size` and times each from POST to its last
result line; calls/s is all calls over the wall time. A 404/405 at the POST means the API
is not there (reported as n/a), so the bench runs against builds with or without it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx2

from bench.wsclient import PipelineResult

PATH = "/v1/batches"


class BatchUnavailable(RuntimeError):
    """The batch API is missing or refused the request; the message says which."""


def batch_body(tool: str, arguments: list[dict[str, Any]]) -> dict[str, Any]:
    return {"calls": [{"tool": tool, "arguments": a} for a in arguments]}


def is_error(outcome: dict[str, Any]) -> bool:
    """A result line that is a JSON-RPC error or a tool error."""
    if outcome.get("error"):
        return True
    result = outcome.get("result")
    return not isinstance(result, dict) or bool(result.get("isError"))


async def one_batch(client: httpx2.AsyncClient, tool: str, arguments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Submit one batch and read its results stream to the end; the outcomes, in completion order."""
    response = await client.post(PATH, json=batch_body(tool, arguments))
    if response.status_code in (404, 405):
        raise BatchUnavailable(f"not implemented ({PATH} answers {response.status_code})")
    if response.status_code != 202:
        raise BatchUnavailable(f"{PATH} answered {response.status_code}: {response.text[:200]}")
    body = response.json()
    results_url = body.get("results_url") or f"{PATH}/{body['batch_id']}/results"
    outcomes: list[dict[str, Any]] = []
    async with client.stream("GET", results_url) as stream:
        stream.raise_for_status()
        async for line in stream.aiter_lines():
            if line.strip():
                outcomes.append(json.loads(line))
    return outcomes


async def probe(http_url: str, tool: str) -> str | None:
    """None if a one-call batch comes back right; otherwise why the batch API cannot be used."""
    try:
        async with httpx2.AsyncClient(base_url=http_url, timeout=30) as client:
            outcomes = await one_batch(client, tool, [{"text": "probe"}])
    except BatchUnavailable as err:
        return str(err)
    except (httpx2.HTTPError, ValueError, KeyError) as err:
        return f"{PATH} unusable: {err!r}"[:300]
    if len(outcomes) != 1 or is_error(outcomes[0]):
        return f"{PATH}: unexpected results for a one-call batch: {str(outcomes)[:200]}"
    return None


async def run(http_url: str, tool: str, count: int, batch_size: int, concurrency: int = 2,
              deadline_s: float = 180.0) -> PipelineResult:
    """`count` calls as batches of `batch_size`, `concurrency` batches at a time; latency is per batch."""
    starts = list(range(0, count, batch_size))
    latencies: list[float] = []
    errors, received, first = 0, 0, None

    async def lane(client: httpx2.AsyncClient) -> None:
        nonlocal errors, received, first
        while starts:
            start = starts.pop(0)
            size = min(batch_size, count - start)
            t0 = time.perf_counter()
            outcomes = await one_batch(client, tool, [{"text": str(start + i)} for i in range(size)])
            latencies.append(time.perf_counter() - t0)
            received += len(outcomes)
            bad = [o for o in outcomes if is_error(o)]
            errors += len(bad) + max(0, size - len(outcomes))
            if bad and first is None:
                first = str(bad[0])[:200]

    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=http_url, timeout=deadline_s, limits=limits) as client:
        begin = time.perf_counter()
        async with asyncio.timeout(deadline_s):
            await asyncio.gather(*[lane(client) for _ in range(concurrency)])
        elapsed = time.perf_counter() - begin
    return PipelineResult(elapsed, latencies, errors, first, extra={"calls": count, "received": received,
                                                                    "batch_size": batch_size})
