"""Admission: whether one caller may do what it asks, and whether it may do it now. One place for every path.

A conversation (WebSocket, Streamable HTTP, a modern HTTP request), `POST /v1/calls` and `POST /v1/batches`
all ask the same `Admission` of (the services, the caller's key, the endpoint's scope):

- permission: the key's allow patterns, server and item matched apart (`broker.security.split_pattern`),
  checked before a name is looked up, so a refused key learns nothing of what exists;
- visibility: a list shows a key only what it may use;
- rate: one token per request from the key's bucket (across web processes, `broker.security.RateLimiter`);
- calls in flight: one of the key's `max_in_flight` slots per queued call, counted across every session,
  transport and web process (`broker.leases`), held until the call's answer is delivered, cancelled or
  stored; a cached answer is never in flight;
- connections: one of the key's `max_connections` leases per open request, stream or socket.

A refusal is a `Refused` naming its reason; `REFUSALS` says what each reason is on each transport (a
JSON-RPC error code, an HTTP status), so a new limit is a method here and a row there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from broker.security import Principal

if TYPE_CHECKING:
    from broker.catalog import Catalog
    from broker.config import BrokerConfig
    from broker.leases import LeaseKeeper
    from broker.security import RateLimiter

# implementation-defined server errors (-32000..-32099) of the broker
FORBIDDEN = -32003
RATE_LIMITED = -32005
TOO_MANY_IN_FLIGHT = -32006
IN_FLIGHT_RETRY_MS = 100  # a slot frees when any call of the key is answered: soon
CONNECTION_RETRY_MS = 1000


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a reason for refusing is called on each transport."""

    rpc_code: int | None  # the JSON-RPC error code (None: refused before any JSON-RPC is read)
    http_status: int


REFUSALS: dict[str, Refusal] = {
    "forbidden": Refusal(FORBIDDEN, 403),
    "rate_limited": Refusal(RATE_LIMITED, 429),
    "too_many_in_flight": Refusal(TOO_MANY_IN_FLIGHT, 429),
    "too_many_connections": Refusal(None, 429),
}


class Refused(Exception):
    """Admission said no: `reason` (a `REFUSALS` key, also the /v1 error code), the message, when to retry."""

    def __init__(self, reason: str, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.retry_after_ms = reason, message, retry_after_ms
        self.rpc_code = REFUSALS[reason].rpc_code
        self.http_status = REFUSALS[reason].http_status

    @property
    def rpc_data(self) -> dict[str, Any] | None:
        """The JSON-RPC error's `data`."""
        return {"retryAfterMs": self.retry_after_ms} if self.retry_after_ms is not None else None


class AdmissionServices(Protocol):
    """What admission reads of the web process's services (`broker.services.BrokerServices` has it all)."""

    catalog: Catalog
    config: BrokerConfig
    limiter: RateLimiter | None
    leases: LeaseKeeper | None


@dataclass(frozen=True, slots=True)
class Admission:
    """One caller's admission on one endpoint: `scope` is a per-server endpoint's server (names unprefixed)."""

    services: AdmissionServices
    principal: Principal
    scope: str | None = None

    # ------------------------------------------------------------ permission and visibility
    def may(self, name: str) -> bool:
        """Whether the key may use tool or prompt `name`, as the client wrote it (unprefixed on a per-server
        endpoint). Server and item matched apart (broker.security.split_pattern), never as one glob over the
        joined name."""
        server, item = (self.scope, name) if self.scope else self.services.catalog.split_name(name)
        return self.principal.may(server, item, self.services.config.separator)

    def may_use_server(self, server: str) -> bool:
        """Whether the key may use all of `server` (resources, templates and their completions)."""
        return self.principal.may_use_server(server, self.services.config.separator)

    def check(self, kind: str, name: str) -> None:
        """Refuse a tool or prompt the key may not use; `name` as the client wrote it. Checked before the name
        is looked up, so a refused key learns nothing of what exists."""
        if not self.may(name):
            raise Refused("forbidden", f"Forbidden: key {self.principal.id!r} may not use {kind} "
                                       f"{self.qualified(name)}")

    def check_server(self, kind: str, server: str) -> None:
        """Refuse a server's resources (read, subscribe, templates, completion) unless the key may use all of it."""
        if not self.may_use_server(server):
            raise Refused("forbidden", f"Forbidden: key {self.principal.id!r} may not use {kind} {server}")

    def visible(self, attribute: str, item: dict[str, Any]) -> bool:
        """Whether the key may see a listed item (lists show a key only what it may use); `attribute` is the
        catalog's list (`tools`, `prompts`, `resources`, `resource_templates`)."""
        if self.principal.allow == ("*",):
            return True
        if attribute == "resources" or attribute == "resource_templates":
            uri = item.get("uri") or item.get("uriTemplate") or ""
            server = self.scope or (self.services.catalog.split_uri(uri) or ("",))[0]
            return self.may_use_server(server)
        return self.may(item["name"])

    def qualified(self, name: str) -> str:
        """The catalog's name for what the client calls `name` (unprefixed on a per-server endpoint)."""
        return self.services.catalog.namespaced(self.scope, name) if self.scope else name

    # ------------------------------------------------------------ rate
    def take_rate(self, unit: str = "calls") -> None:
        """One token of the key's rate (per key, across web processes). `unit` names what a token pays for
        in the message: a JSON-RPC call, or a /v1 request (a batch counts once, its calls are paced by the
        workers)."""
        limiter = self.services.limiter
        wait_ms = limiter.acquire(self.principal) if limiter is not None else 0
        if wait_ms:
            raise Refused("rate_limited", f"Rate limit exceeded for key {self.principal.id!r} "
                                          f"({self.principal.rate_per_s:g} {unit}/s): retry after {wait_ms} ms",
                          wait_ms)

    # ------------------------------------------------------------ calls in flight
    def hold_slot(self, call_id: str, max_s: float) -> None:
        """One of the key's `max_in_flight` slots, counted across every session, transport and web process
        (broker.leases), held until the call's answer is delivered, cancelled or stored (`release_slot`), at
        most `max_s`."""
        leases, limit = self.services.leases, self.principal.max_in_flight
        if leases is not None and not leases.acquire("calls", self.principal.id, limit, call_id, max_s):
            raise Refused("too_many_in_flight", f"Too many calls in flight: key {self.principal.id!r} may have "
                                                f"{limit} at once", IN_FLIGHT_RETRY_MS)

    def release_slot(self, call_id: str) -> None:
        if self.services.leases is not None:
            self.services.leases.release(call_id)

    def release_slot_when_answered(self, call_id: str) -> None:
        """The client stopped waiting, but the call may still run (and a session resume it): the slot is
        held until its outcome is stored."""
        if self.services.leases is not None:
            self.services.leases.release_when_answered(call_id)

    # ------------------------------------------------------------ connections
    def hold_connection(self, lease_id: str, limit: int, max_s: float) -> bool:
        """One of the key's `limit` open requests, streams and sockets (across web processes), given back with
        `release_connection`. False when nothing is counted (no limit): there is nothing to give back."""
        leases = self.services.leases
        if leases is None or limit <= 0:
            return False
        if not leases.acquire("connections", self.principal.id, limit, lease_id, max_s):
            raise Refused("too_many_connections", f"Too many connections: key {self.principal.id!r} may hold "
                                                  f"{limit} requests, streams and sockets open at once",
                          CONNECTION_RETRY_MS)
        return True

    def release_connection(self, lease_id: str) -> None:
        if self.services.leases is not None:
            self.services.leases.release(lease_id)
