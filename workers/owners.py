"""Which worker process holds a client's own backend session (per_client isolation), and calls sent to it.

A per_client server keeps one backend session per client session, in the worker process that first ran
the client's call: that process records itself as the owner (`keys.owner`, while its lease is alive),
and a call of that client taken by another worker is forwarded to the owner's own queue
(`keys.direct_queue`), so a client's calls keep the one backend session that has its state.
"""

from __future__ import annotations

import dataclasses

from broker import keys
from broker.calls import Call
from broker.config import BrokerConfig
from broker.redisconn import get_redis
from broker.router import client_key
from workers.dispatch import send_calls
from workers.node import node_name

OWNER_TTL_S = 86400  # an owner record outlives any client session; closing the session deletes it
MAX_HOPS = 3  # a per_client call forwarded this often runs where it is (its owner keeps moving)

# Who holds a per_client session: the recorded owner while its lease is alive, else the caller (takes over).
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. owner .. ARGV[4]) == 1 then
  return owner
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def owner_of(server: str, key: str, me: str) -> str:
    """Claim a per_client session for this worker process unless a live worker already holds it."""
    prefix, suffix = keys.worker_alive("\0").split("\0")
    return str(get_redis().eval(_CLAIM, 1, keys.owner(server, key), me, OWNER_TTL_S, prefix, suffix))


def release_owner(server: str, key: str) -> None:
    """This worker closed the client's session: the next call may land anywhere."""
    get_redis().eval(_RELEASE, 1, keys.owner(server, key), node_name())


def forward_to_owners(calls: list[Call], config: BrokerConfig) -> list[Call]:
    """Send each per_client call held by another live worker to that worker's own queue; the calls to
    run here remain. Keeps a client's calls on the one backend session that has its state."""
    me = node_name()
    mine: list[Call] = []
    elsewhere: dict[str, list[Call]] = {}
    for call in calls:
        spec = config.servers.get(call.server)
        key = client_key(call) if spec is not None and spec.settings.isolation == "per_client" else None
        if key is None or call.hops >= MAX_HOPS:
            mine.append(call)
            continue
        owner = owner_of(spec.name, key, me)  # type: ignore[union-attr]
        if owner == me:
            mine.append(call)
        else:
            elsewhere.setdefault(owner, []).append(dataclasses.replace(call, hops=call.hops + 1))
    for owner, forwarded in elsewhere.items():
        send_calls(keys.direct_queue(owner), [c.to_message() for c in forwarded])
    return mine
