"""Redis writes held back to the end of a burst, then sent together in one pipeline.

The reply hub hands a burst of answers over (one message, then those already readable) inside `held`: the
housekeeping each answer leaves behind (its session forgets it, `SessionStore.forget`) joins this thread's
held pipeline and goes out when the burst ends, in one round trip (in order, except the HDELs below, which
go last: each deletes fields no other held write touches, then the EXPIREs, one command for all the keys
of a TTL, `expire`). One round trip per forget was
11-15 % of the web process's CPU at 64 in flight (py-spy, mostly its send on the socket). The fields a burst
deletes from one hash (a session's calls it forgets, one an answer) go in one HDEL per hash (`hdel`): one
command per session a burst, not one per answer.

Only writes nobody waits for are held. An answer's own delivery is never: a WebSocket answer is sent on the
socket, and a Streamable HTTP (handshake) answer's SSE event is written at once (`EventLog.append`), since
that XADD is the delivery: its POST stream and a client resuming it with Last-Event-ID read it from Redis,
and a burst lasts up to 256 answers (a resume in it would find the request neither routed nor answered,
and a failed pipeline would lose every answer of the burst). Holding it too saved ~70-80 us of CPU per
answer (`python -m bench.web_cpu --micro`: 135 us with the forgets held, 56-64 with the events too), ~3 %
of that path's web CPU.
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


def expire(keys: list[str], seconds: int) -> bool:
    """Inside `held`: set these keys' TTL at the block's end, in one command with every other key so held for
    `seconds` (`_EXPIRE_ALL`); False outside (nothing held: expire them now)."""
    merged: dict[int, list[str]] | None = getattr(_local, "expires", None)
    if merged is None:
        return False
    merged.setdefault(seconds, []).extend(keys)
    return True


# One EXPIRE per key, in one command: a burst's answers' outcomes expire together (an EXPIRE each cost a
# command to pack and a reply to parse in redis-py, ~4-5 us of the web's CPU per answer)
_EXPIRE_ALL = "for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[1]) end return #KEYS"


def hdel(key: str, fields: list[str]) -> bool:
    """Inside `held`: delete these fields of the hash `key` at the block's end, in one HDEL with every other
    field of `key` so held; False outside (nothing held: delete them now)."""
    merged: dict[str, list[str]] | None = getattr(_local, "hdels", None)
    if merged is None:
        return False
    merged.setdefault(key, []).extend(fields)
    return True


@contextmanager
def held(r: redis.Redis) -> Iterator[None]:
    """Writes that ask for `pipeline()` inside the block go out together at its end (a nested block: the
    outer one sends). A failed send is logged: what it wrote was housekeeping (the forgotten calls'
    outcomes keep their session's TTL instead of `delivered_ttl_s`, and a resumed session would be given
    them again)."""
    if pipeline() is not None:
        yield
        return
    _local.pipe, _local.hdels, _local.expires = r.pipeline(transaction=False), {}, {}
    try:
        yield
    finally:
        pipe, hdels, expires = _local.pipe, _local.hdels, _local.expires
        _local.pipe = _local.hdels = _local.expires = None
        for key, fields in hdels.items():
            pipe.hdel(key, *fields)
        for seconds, keys in expires.items():
            pipe.eval(_EXPIRE_ALL, len(keys), *keys, seconds)
        if len(pipe):
            try:
                pipe.execute()
            except redis.RedisError:
                log.warning("could not write %d held command(s)", len(pipe), exc_info=True)
