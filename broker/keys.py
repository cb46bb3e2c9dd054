"""Every Redis key and channel name the broker uses, in one place.

Web processes and workers meet only through these names, so they live in one
module that both sides import; a prefix lets several brokers share one Redis.
"""

from __future__ import annotations

import os

PREFIX = os.environ.get("MCP_BROKER_PREFIX", "mcpb")

EPOCH = f"{PREFIX}:epoch"  # a tag written once, never expiring: gone exactly when Redis lost its data
LOST_EPOCHS = f"{PREFIX}:epochs:lost"  # set: tags of epochs whose state Redis lost (broker.outage)
CATALOG_VERSION = f"{PREFIX}:catalog:version"
CATALOG_CHANGED = f"{PREFIX}:catalog:changed"


def catalog(server: str) -> str:
    """JSON document: the server's tools (and later resources/prompts), as the backend listed them."""
    return f"{PREFIX}:catalog:{server}"


def tool_vectors(server: str) -> str:
    """Hash: the sentence vectors of the server's tools (`vectors`, base64 float32) and `head`, the small JSON
    of what they are (model, catalog digest, count) read before them (`broker.context.vectors`: a worker
    writes them after publishing the catalog, web processes read them)."""
    return f"{PREFIX}:toolvectors:{server}"


def tool_vectors_claim(server: str, digest: str) -> str:
    """SET NX EX by the one worker that embeds this catalog digest's tools (its token); the others wait."""
    return f"{PREFIX}:toolvectorsclaim:{server}:{digest}"


def result(call_id: str) -> str:
    """The one stored answer of a call (written once, with `answered`), kept while someone may still read it:
    the caller's session (until delivered, then briefly), the batch, or briefly for the reply hub's sweep."""
    return f"{PREFIX}:result:{call_id}"


def answered(call_id: str) -> str:
    """A small marker that the call has its outcome (SET NX by the first writer): what keeps a redelivered
    message from running the call again, for as long as a redelivery is possible; the outcome itself
    (`result`) may expire sooner."""
    return f"{PREFIX}:answered:{call_id}"


def reply_route(call_id: str) -> str:
    """String: the reply channel of the web process that now waits for the call (its session resumed there);
    workers publish the call's progress, events and outcome there instead of the call's own `reply_to`."""
    return f"{PREFIX}:route:{call_id}"


def cancelled(call_id: str) -> str:
    """Set when a client cancelled the call; workers check it before and during a run."""
    return f"{PREFIX}:cancel:{call_id}"


def replies(web_id: str) -> str:
    """Pub/sub channel of one web process: results of the calls its clients made."""
    return f"{PREFIX}:replies:{web_id}"


CANCEL_CHANNEL = f"{PREFIX}:cancel"  # call ids published here; every worker process cancels its running copy
# pub/sub: a modern-era `notifications/cancelled` POSTed to any web process (data: JSON naming the key's id,
# the endpoint and the request id); the process holding that request's POST cancels it (web/transports/modern_cancel.py)
MODERN_CANCEL_CHANNEL = f"{PREFIX}:cancel:modern"


def batch(batch_id: str) -> str:
    """Hash: total, created, state, tool counts; counters done/failed/cancelled (HINCRBY by workers)."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_results(batch_id: str) -> str:
    """Stream: one entry per finished call, in completion order (field `data` = the outcome JSON)."""
    return f"{PREFIX}:batch:{batch_id}:results"


def batch_started(batch_id: str) -> str:
    """Set of call ids a worker has started (running = started - finished)."""
    return f"{PREFIX}:batch:{batch_id}:started"


def batch_calls(batch_id: str) -> str:
    """Hash of a batch of a model's tool calls (broker.translate.batch_files): `format` and, per call index, where
    the call came from (custom_id, line, tool call id, name), to answer it in the provider's shape."""
    return f"{PREFIX}:batch:{batch_id}:calls"


def worker_alive(node: str) -> str:
    """Heartbeat of one worker process (expires when it dies)."""
    return f"{PREFIX}:worker:{node}:alive"


def worker_tags(node: str) -> str:
    """Hash task id → delivery tag of the messages a worker process holds (restored to their queue if it dies)."""
    return f"{PREFIX}:worker:{node}:tags"


def worker_fetching(node: str, queue: str) -> str:
    """List of the messages a worker process has taken off `queue` and not yet leased (workers.transport)."""
    return f"{PREFIX}:worker:{node}:fetching:{queue}"


def worker_fetch_queues(node: str) -> str:
    """Set of the queues a worker process fetches from with BLMOVE (whose `worker_fetching` lists to restore)."""
    return f"{PREFIX}:worker:{node}:fetch-queues"


WORKERS = f"{PREFIX}:workers"  # set of worker process names that hold leases

CACHE_STATS = f"{PREFIX}:cache:stats"  # hash "<server>__<tool>:hits|misses" → count


def cache_entry(digest: str) -> str:
    return f"{PREFIX}:cache:{digest}"


def session(session_id: str) -> str:
    """Hash: a client session's negotiated state (protocolVersion, clientInfo, capabilities, created, seen)."""
    return f"{PREFIX}:session:{session_id}"


def session_calls(session_id: str) -> str:
    """Hash: call id → {"rid": the client's request id, ...} for calls the session still waits for."""
    return f"{PREFIX}:session:{session_id}:calls"


def sse_stream(session_id: str, stream_id: str) -> str:
    """Stream: the SSE events of one HTTP response stream of a session (for Last-Event-ID resumption)."""
    return f"{PREFIX}:sse:{session_id}:{stream_id}"


RESOURCE_UPDATED = f"{PREFIX}:resource:updated"  # pub/sub: {"server", "uri"} of a backend's resources/updated


def resource_subscribers(server: str, uri: str) -> str:
    """Set: the sessions subscribed to one backend resource (the backend is unsubscribed when it empties)."""
    return f"{PREFIX}:subs:{server}:{uri}"


def resumed_at(call_id: str) -> str:
    """String: the reply channel of the web process where a suspended (input_required) call was resumed; the
    process that started the call passes the call's later events and outcome on to it."""
    return f"{PREFIX}:resumed:{call_id}"


def answer(request_id: str) -> str:
    """List: the client's answer to a backend's server-to-client request (the worker BLPOPs it)."""
    return f"{PREFIX}:answer:{request_id}"


def lease(kind: str, principal_id: str) -> str:
    """Sorted set: one API key's live leases of a kind (`calls`, `connections`), scored by expiry (broker.leases)."""
    return f"{PREFIX}:lease:{kind}:{principal_id}"


def rate(principal_id: str) -> str:
    """Hash: the token bucket of one API key (tokens, at)."""
    return f"{PREFIX}:rate:{principal_id}"


def health(server: str) -> str:
    """Hash: replica index ("0", "1", ...) → JSON health of that backend endpoint, written by workers:
    {"state": "healthy"|"failing"|"unhealthy", "healthy": bool, "failures": consecutive failures,
     "error": last error or null, "retry_at": epoch before which no worker restarts it (unhealthy) or null,
     "checked_at": epoch, "endpoint": command line or URL, "worker": lease name of the writer}."""
    return f"{PREFIX}:health:{server}"


def owner(server: str, client_key: str) -> str:
    """String: lease name of the worker process holding a per_client backend session for this client."""
    return f"{PREFIX}:owner:{server}:{client_key}"


def direct_queue(node: str) -> str:
    """The Celery queue only one worker process consumes (calls that must reach its per_client sessions)."""
    return f"mcp.direct.{node}"


CONFIG = f"{PREFIX}:config"  # hash: version, source (file path), document (JSON): the last reloaded config
CONFIG_CHANGED = f"{PREFIX}:config:changed"  # pub/sub: a reload was published (data = version)


METRICS = f"{PREFIX}:metrics"  # hash: every process's counters and histogram buckets, summed (broker.metrics)
METRICS_PROCS = f"{PREFIX}:metrics:procs"  # set of processes that publish gauges


def metrics_proc(proc_id: str) -> str:
    """Hash: one process's gauges (open sockets, sessions), expiring when it stops flushing."""
    return f"{PREFIX}:metrics:proc:{proc_id}"


def metrics_recent(slot: int) -> str:
    """Hash: per-server counts and latency sums of one 10-second slot (recent rates on the status page)."""
    return f"{PREFIX}:metrics:recent:{slot}"


def request_state_used(nonce: str) -> str:
    """String: set (NX) when a modern-era `requestState` token is consumed; a second use finds it and is refused."""
    return f"{PREFIX}:rstate:{nonce}"


def task(digest: str) -> str:
    """Hash: one task of the tasks extension (broker.tasks), keyed by the SHA-256 of its handle, so a dump of
    Redis shows no usable handle."""
    return f"{PREFIX}:task:{digest}"


def task_states(status: str) -> str:
    """Sorted set: the task keys now in `status` (score: when the task expires), for the gauges."""
    return f"{PREFIX}:tasks:state:{status}"


def result_pages(handle: str) -> str:
    """Hash: a result cut for a model (broker.context.result_pages): its principal, page count and pages."""
    return f"{PREFIX}:pages:{handle}"


def result_pages_bytes(principal_digest: str) -> str:
    """Counter: bytes of cut results one principal keeps (broker.context.result_pages), expiring with the last."""
    return f"{PREFIX}:pagesbytes:{principal_digest}"
