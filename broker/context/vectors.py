"""The tools' sentence vectors, computed once per catalog digest where the catalog is published and kept in
Redis next to it, so web processes only embed queries.

Embedding a tool with the transformer (`broker.context.embeddings`) costs 20 ms of CPU on this 2-core machine
(2,379 tools: 48 CPU-s; 164 s at load ~12): every web process doing it for the whole catalog would stall its
first search for minutes and multiply the work by the number of processes. So the worker that lists a backend
embeds that server's tools (`publish`, on a thread of its own, one server at a time per process), after the
catalog document is out, and writes them under `keys.tool_vectors(server)`: a hash of the vectors and a small
`head` (model, digest, count) that every check reads instead of the vectors (2 KB of base64 a tool).
Several workers list the same server (replicas, a list_changed every one of them sees): the first to claim
the digest (`keys.tool_vectors_claim`, SET NX EX) embeds it, the others wait for the claim to go and find the
vectors there. The claim expires (`claim_seconds`): if its holder dies, the next one takes it over.

A web process reads them when it builds its index: on the event loop only the Redis round trips (`fetch`:
the heads, then the vectors whose head matches), decoded off the loop (`decoded`). A server whose vectors are
not there yet (or are of another digest or model) is searched by BM25 alone until they are
(`broker.context.keeper` reads the heads again at most once a second: `arrived`). Every web process reads the
same bytes, so every process ranks alike.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import numpy as np
import redis

from broker import keys
from broker.context.embeddings import DIM, MODEL_ID, embed, release, tool_text

log = logging.getLogger(__name__)
_ONE_AT_A_TIME = threading.Lock()  # a worker process embeds one server at a time: one core, not all
_PENDING = {"publishes": 0}  # publishes started and not ended: the last one to end releases the model
_PENDING_LOCK = threading.Lock()
_TOKEN = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # this process, in its claims
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
CLAIM_FLOOR_S = 60.0
CLAIM_S_PER_TOOL = 0.25  # 12x the 20 CPU-ms a tool measured at load ~2 (~75 ms at load ~12)
CLAIM_POLL_S = 1.0  # how often a worker waiting on another's claim looks whether it is gone


def texts(server: str, document: dict[str, Any]) -> list[str]:
    return [tool_text(server, str(tool.get("name", "")), tool) for tool in document.get("tools", [])]


def head(digest: str, count: int) -> str:
    """What vectors of this catalog digest and tool count, embedded by this process's pipeline, carry."""
    return json.dumps({"model": MODEL_ID, "digest": digest, "dim": DIM, "count": count}, sort_keys=True)


def encode(vectors: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode()


def decode(blob: str | None, count: int) -> np.ndarray | None:
    """The `count` vectors in `blob`, or None if it does not hold that many."""
    if blob is None:
        return None
    try:
        return np.frombuffer(base64.b64decode(blob), dtype="<f4").reshape(count, DIM).astype(np.float32)
    except (ValueError, TypeError):
        return None


def claim_seconds(count: int) -> int:
    """How long a claim on embedding `count` tools holds: what the slowest measured embedding takes, several
    times over; a claim whose holder died keeps the others waiting this long at most."""
    return int(CLAIM_FLOOR_S + CLAIM_S_PER_TOOL * count)


def _fields(r: redis.Redis, servers: list[str], fields: list[str]) -> list[list[Any]]:
    """The hash fields of each server's vectors key, in one round trip (a key of another type reads as absent)."""
    pipe = r.pipeline(transaction=False)
    for server in servers:
        pipe.hmget(keys.tool_vectors(server), fields)
    return [[None] * len(fields) if isinstance(got, Exception) else got
            for got in pipe.execute(raise_on_error=False)]


def arrived(r: redis.Redis, wanted: list[tuple[str, str, int]]) -> bool:
    """Whether vectors of any of the `(server, digest, tool count)` are in Redis (their heads alone are read)."""
    if not wanted:
        return False
    heads = _fields(r, [server for server, _, _ in wanted], ["head"])
    return any(got[0] == head(digest, count) for (_, digest, count), got in zip(wanted, heads, strict=True))


def fetch(r: redis.Redis, wanted: list[tuple[str, str, int]]) -> dict[str, tuple[str, str]]:
    """{server: (head, base64 vectors)} of the `(server, digest, tool count)` whose head says they are there:
    the heads in one round trip, then the vectors of those that match in another (no stale vectors read)."""
    if not wanted:
        return {}
    heads = _fields(r, [server for server, _, _ in wanted], ["head"])
    matching = [server for (server, digest, count), got in zip(wanted, heads, strict=True)
                if got[0] == head(digest, count)]
    if not matching:
        return {}
    return {server: (got[0], got[1]) for server, got in zip(matching, _fields(r, matching, ["head", "vectors"]),
                                                             strict=True)}


def decoded(raws: dict[str, tuple[str, str]], wanted: list[tuple[str, str, int]]) -> dict[str, np.ndarray]:
    """{server: vectors} of what `fetch` read, for the `(server, digest, tool count)` they belong to."""
    found = {}
    for server, digest, count in wanted:
        stored_head, blob = raws.get(server, (None, None))
        vectors = decode(blob, count) if stored_head == head(digest, count) else None
        if vectors is not None:
            found[server] = vectors
    return found


def stored(r: redis.Redis, wanted: list[tuple[str, str, int]]) -> dict[str, np.ndarray]:
    """{server: vectors} of the `(server, digest, tool count)` whose vectors Redis holds (`fetch` and
    `decoded` at once: for a caller off the event loop)."""
    return decoded(fetch(r, wanted), wanted)


def _write(r: redis.Redis, server: str, digest: str, vectors: np.ndarray) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.delete(keys.tool_vectors(server))  # whatever was there, of any type
    pipe.hset(keys.tool_vectors(server), mapping={"head": head(digest, len(vectors)), "vectors": encode(vectors)})
    pipe.execute()


def publish(r: redis.Redis, server: str) -> bool:
    """Embed the tools of the server's catalog as Redis holds it now, unless its vectors are there already
    or another worker is embedding them (then wait for it: its vectors, or its claim lapsing); True when this
    call wrote them. Called by the worker after each listing (a GET and a head when nothing moved)."""
    wrote = False
    while True:
        raw = r.get(keys.catalog(server))
        if not raw:
            return wrote
        document = json.loads(raw)
        digest, tools = str(document.get("digest", "")), texts(server, document)
        wanted = [(server, digest, len(tools))]
        if arrived(r, wanted):
            return wrote
        claim = keys.tool_vectors_claim(server, digest)
        with _ONE_AT_A_TIME:
            claimed = bool(r.set(claim, _TOKEN, nx=True, ex=claim_seconds(len(tools))))
            if claimed:
                try:
                    if arrived(r, wanted):  # written while this process embedded another server
                        return wrote
                    vectors = embed(tools)
                    now = json.loads(r.get(keys.catalog(server)) or "{}")
                    if str(now.get("digest", "")) == digest:  # else the catalog moved while we embedded: again
                        _write(r, server, digest, vectors)
                        log.info("tool vectors of %s published: %d tools", server, len(tools))
                        wrote = True
                finally:
                    r.eval(_RELEASE, 1, claim, _TOKEN)
        if not claimed:
            while r.exists(claim):  # another worker embeds this digest; bounded by its claim's expiry
                time.sleep(CLAIM_POLL_S)


def publish_in_background(r: redis.Redis, server: str) -> None:
    """`publish` on a daemon thread: the listing's caller (a backend's event loop, a task) goes on. The
    last publish to end releases the model (`embeddings.release`: ~200 MB a worker would keep for nothing)."""
    with _PENDING_LOCK:
        _PENDING["publishes"] += 1

    def run() -> None:
        try:
            publish(r, server)
        except Exception:  # search works without vectors (BM25 alone): say why and go on
            log.exception("tool vectors of %s could not be published", server)
        finally:
            with _PENDING_LOCK:
                _PENDING["publishes"] -= 1
                last = _PENDING["publishes"] == 0
            if last:
                release()

    threading.Thread(target=run, name=f"tool-vectors-{server}", daemon=True).start()
