"""The tools' sentence vectors, computed once per catalog digest where the catalog is published and kept in
Redis next to it, so web processes only embed queries.

Embedding a tool with the transformer (`broker.context.embeddings`) costs 20 ms of CPU on this 2-core machine
(2,379 tools: 48 CPU-s; 164 s at load ~12): every web process doing it for the whole catalog would stall its
first search for minutes and multiply the work by the number of processes. So the worker that lists a backend
embeds that server's tools (`publish`, on a thread of its own, one server at a time per process), after the
catalog document is out, and writes them under `keys.tool_vectors(server)` with the digest and model they
belong to. A web process reads them (`stored`) when it builds its index; a server whose vectors are not there
yet (or are of another digest or model) is searched by BM25 alone until they are (`broker.context.keeper`
looks again at most once a second). Every web process reads the same bytes, so every process ranks alike.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from typing import Any

import numpy as np
import redis

from broker import keys
from broker.context.embeddings import DIM, MODEL_ID, embed, release, tool_text

log = logging.getLogger(__name__)
_ONE_AT_A_TIME = threading.Lock()  # a worker process embeds one server at a time: one core, not all
_PENDING = {"publishes": 0}  # publishes started and not ended: the last one to end releases the model
_PENDING_LOCK = threading.Lock()


def texts(server: str, document: dict[str, Any]) -> list[str]:
    return [tool_text(server, str(tool.get("name", "")), tool) for tool in document.get("tools", [])]


def encode(digest: str, vectors: np.ndarray) -> str:
    blob = base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode()
    return json.dumps({"model": MODEL_ID, "digest": digest, "dim": DIM, "count": len(vectors), "vectors": blob})


def decode(raw: str | None, digest: str, count: int) -> np.ndarray | None:
    """The vectors in `raw` if they are this model's, of this digest, one per tool; else None."""
    if not raw:
        return None
    try:
        stored = json.loads(raw)
        if (stored.get("model"), stored.get("digest"), stored.get("dim"), stored.get("count")) != (
                MODEL_ID, digest, DIM, count):
            return None
        return np.frombuffer(base64.b64decode(stored["vectors"]), dtype="<f4").reshape(count, DIM).astype(np.float32)
    except (ValueError, KeyError, TypeError):
        return None


def stored(r: redis.Redis, wanted: list[tuple[str, str, int]]) -> dict[str, np.ndarray]:
    """{server: vectors} of the `(server, digest, tool count)` whose vectors Redis holds (one round trip)."""
    if not wanted:
        return {}
    raws = r.mget([keys.tool_vectors(server) for server, _, _ in wanted])
    found = {}
    for (server, digest, count), raw in zip(wanted, raws, strict=True):
        vectors = decode(raw, digest, count)
        if vectors is not None:
            found[server] = vectors
    return found


def publish(r: redis.Redis, server: str) -> bool:
    """Embed the tools of the server's catalog as Redis holds it now, unless its vectors are there already;
    True when it wrote them. Called by the worker after each listing (cheap when nothing moved)."""
    with _ONE_AT_A_TIME:
        wrote = False
        while True:
            raw = r.get(keys.catalog(server))
            if not raw:
                return wrote
            document = json.loads(raw)
            digest, tools = str(document.get("digest", "")), texts(server, document)
            if decode(r.get(keys.tool_vectors(server)), digest, len(tools)) is not None:
                return wrote
            vectors = embed(tools)
            now = json.loads(r.get(keys.catalog(server)) or "{}")
            if str(now.get("digest", "")) == digest:  # else the catalog moved while we embedded: again
                r.set(keys.tool_vectors(server), encode(digest, vectors))
                log.info("tool vectors of %s published: %d tools", server, len(tools))
                wrote = True


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
