"""Redis outages: recognising "Redis is unreachable", naming it to clients, and knowing whether the state
held in Redis survived a restart.

Unreachable: redis-py raises `ConnectionError` (refused, reset, loading) or `TimeoutError`. Every web
route answers those with 503 `{"error": {"code": "redis_unavailable", ...}}`, MCP requests with a
JSON-RPC error carrying `data.reason = "redis_unavailable"`: a client can tell "retry shortly" from a bug.

Survived or lost: Redis restarted with persistence (AOF) has every queue, call record and batch; restarted
without it has nothing, and calls waiting for an answer would wait for their whole time limit (measured:
an 84 s "waiting for a worker" timeout) and a batch just created would read as unknown (404). So Redis
holds an epoch marker, `<prefix>:epoch`, an 8-hex tag written once (SET NX) and never expiring: it is in
the AOF like everything else, and it is gone exactly when the data is. A process that saw tag A and now
finds B (or none) knows Redis lost its state, records A in `<prefix>:epochs:lost` for every other
process, and answers honestly: calls it waits for fail naming the loss, and batch ids (which begin with
the tag of the epoch they were created in) of a lost epoch read as `lost`, not unknown.
"""

from __future__ import annotations

import logging
import secrets
import threading

import redis
from mcp_types import INTERNAL_ERROR

from broker import keys
from broker.rpc_error import RPCError

log = logging.getLogger(__name__)

REDIS_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
CODE = "redis_unavailable"
MESSAGE = "Service unavailable: the broker cannot reach Redis (restarting or unreachable); retry shortly"
LOST_CODE = "redis_state_lost"
LOST_MESSAGE = ("Lost: the broker's Redis restarted without persistence and its state is gone; this call "
                "may or may not have run. Retry it if that is safe")
TAG_CHARS = 8


def is_redis_down(err: BaseException) -> bool:
    """`err` is Redis being unreachable (or, for a task group's ExceptionGroup, only that)."""
    if isinstance(err, BaseExceptionGroup):
        return all(is_redis_down(e) for e in err.exceptions)
    return isinstance(err, REDIS_DOWN)


def unavailable_body(detail: BaseException | None = None) -> dict[str, object]:
    """The JSON body of a 503 for Redis being unreachable."""
    error: dict[str, object] = {"code": CODE, "message": MESSAGE}
    if detail is not None:
        error["detail"] = f"{type(detail).__name__}: {detail}"
    return {"error": error}


def unavailable_error(message: str = MESSAGE, code: int = INTERNAL_ERROR) -> RPCError:
    """The JSON-RPC error for Redis being unreachable: `data.reason` is `CODE`, so a client can tell "retry
    shortly" from a bug (`message` and `code` for the places that say more, or answer a timeout)."""
    return RPCError(code, message, {"reason": CODE})


def current_epoch(r: redis.Redis) -> str:
    """The tag of the state Redis holds now (created on first use)."""
    tag = r.get(keys.EPOCH)
    if tag is None:
        r.set(keys.EPOCH, secrets.token_hex(TAG_CHARS // 2), nx=True)
        tag = r.get(keys.EPOCH)
    return str(tag)


class Epochs:
    """One process's view of the epoch: the tag it works in, and the tags it knows were lost."""

    def __init__(self, r: redis.Redis) -> None:
        self._r = r
        self._lock = threading.Lock()
        self.tag: str | None = None
        self.lost: set[str] = set()

    def current(self) -> str:
        """The tag to stamp new batch ids with (checking for a change on the way)."""
        self.check()
        return str(self.tag)

    def check(self) -> str | None:
        """Compare Redis's tag with the one this process knew: the lost tag if Redis lost its state since."""
        tag = current_epoch(self._r)
        with self._lock:
            previous, self.tag = self.tag, tag
        if previous is None or previous == tag:
            return None
        self.lost.add(previous)
        self._r.sadd(keys.LOST_EPOCHS, previous)
        log.error("Redis lost its state (epoch %s is gone, now %s): it restarted without persistence, or was "
                  "flushed; calls and batches of before are lost", previous, tag)
        return previous

    def was_lost(self, tag: str) -> bool:
        """Was `tag` an epoch whose state Redis lost (known here, or recorded by another process)?"""
        if tag == self.tag:
            self.check()  # the hub may not have noticed the restart yet
        if tag in self.lost:
            return True
        if tag == self.tag:
            return False
        return bool(self._r.sismember(keys.LOST_EPOCHS, tag))
