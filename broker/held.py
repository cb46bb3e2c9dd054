"""Redis writes held back to the end of a burst, then sent together in one pipeline.

The reply hub hands a burst of answers over (one message, then those already readable) inside `held`: the
writes each answer makes on its way out (its session forgets it, `SessionStore.forget`; a Streamable HTTP
answer is appended to its SSE stream, `EventLog.append`) join this thread's held pipeline and go out
when the burst ends, in order, in one round trip. One round trip per write per call was most of the web
process's CPU on those writes (py-spy at 64 in flight: the forget alone 11-15 % of it, mostly its send
on the socket). An answer's own delivery waits for nothing: the client already has it, or reads it from
the stream a moment later, when the burst's writes are in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.client import Pipeline

log = logging.getLogger(__name__)

_local = threading.local()


def pipeline() -> Pipeline | None:
    """This thread's held pipeline inside `held`, else None (write at once)."""
    return getattr(_local, "pipe", None)


@contextmanager
def held(r: redis.Redis) -> Iterator[None]:
    """Writes that ask for `pipeline()` inside the block go out together at its end (a nested block: the
    outer one sends). A failed send is logged: what it wrote was housekeeping (an outcome keeps its
    session's TTL; a resumed SSE stream misses the answer its client was already given)."""
    if pipeline() is not None:
        yield
        return
    _local.pipe = r.pipeline(transaction=False)
    try:
        yield
    finally:
        pipe, _local.pipe = _local.pipe, None
        if len(pipe):
            try:
                pipe.execute()
            except redis.RedisError:
                log.warning("could not write %d held command(s)", len(pipe), exc_info=True)
