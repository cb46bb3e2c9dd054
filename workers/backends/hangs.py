"""A hung backend (SIGSTOPped, deadlocked) breaks no connection: every call on it just timed out, for
as long as calls kept coming, and the session read healthy (measured: 52 s under steady traffic).
So: a call that times out on the backend is a health failure (an answer resets the count), and
`hang_timeouts` such timeouts in a row with no word from the backend, or a backend silent for
`timeout_s` with requests outstanding, get the session probed with a ping that takes no call
slot. No answer within its limit: the session is restarted; the calls on it fail over to the
fresh one (retried within their time limits) and the calls waiting for its slots run there.
Measured (tests/test_backend_health.py, timeout_s 3): SIGSTOP to answered on a fresh backend ~6 s.

`HangWatch` is this part of `BackendSession` (a base class: the probe runs on the session's own
client, generation and call guard).
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal
from mcp import Client

from broker import observe
from broker.config import ServerSpec
from workers.backends.errors import BackendRPCError, BackendTimeout, BackendUnavailable, CallCancelled
from workers.backends.health import EndpointHealth

log = logging.getLogger(__name__)

PING_LIMIT_S = 10.0  # the most a health ping (or a hang probe) waits for its answer


async def liveness_probe(client: Client) -> Any:
    """The cheapest request a backend must answer at once, in its era: `ping` in the handshake era; in the
    modern era, where ping is gone, `server/discover` again (the session's `discover()` answers from memory).
    Not `Client.send_ping`: it warns MCPDeprecationWarning whatever was negotiated (once per worker and
    backend in every `make run`)."""
    session = client.session
    if session.initialize_result is None:
        return await session.send_discover(client.protocol_version)
    return await session.send_ping()


class HangWatch:
    """When the backend last spoke, the requests it has not answered, and the probe of a suspected hang."""

    # the session's, used here
    spec: ServerSpec
    health: EndpointHealth
    generation: int
    restarts: int
    _client: Client | None
    _portal: BlockingPortal
    label: str
    close: Callable[[], None]
    _guarded: Callable[..., Awaitable[Any]]

    def __init__(self) -> None:
        self.last_heard = time.monotonic()  # when the backend last sent anything (any frame)
        self._in_backend: dict[int, float] = {}  # requests handed to the backend, unanswered: token → sent at
        self._tokens = itertools.count()
        self._silent_timeouts = 0  # calls timed out since the backend last said anything
        self._probing = threading.Lock()  # held while a hang probe (ping) is under way

    def _heard(self) -> None:
        """A frame from the backend (loop thread, per message: keep it cheap)."""
        self.last_heard = time.monotonic()
        self._silent_timeouts = 0

    def silence(self, now: float) -> float:
        """How long the backend has said nothing while requests were outstanding (0 when none are)."""
        sent = list(self._in_backend.values())  # read from the upkeep thread; a list copy is atomic
        return now - max(self.last_heard, min(sent)) if sent else 0.0

    def suspect(self, reason: str) -> None:
        """Probe this session for a hang, in a thread of its own (any thread; one probe at a time)."""
        if self._client is None or self.spec.settings.hang_timeouts == 0 or not self._probing.acquire(blocking=False):
            return
        threading.Thread(target=self._probe, args=(self.generation, reason), name=f"hang-probe-{self.label}",
                         daemon=True).start()

    def _probe(self, generation: int, reason: str) -> None:
        limit = min(self.spec.settings.timeout_s, PING_LIMIT_S)

        try:
            if self.generation != generation or self._client is None:
                return
            self._portal.call(functools.partial(self._guarded, liveness_probe, limit, slotted=False, record=False))
            log.info("backend %s: %s, but it answers a ping: slow, not hung", self.label, reason)
        except BackendTimeout:
            self.restart_hung(generation, f"hung: {reason}; a ping (which takes no call slot) went unanswered "
                                          f"within {limit:g}s")
        except (BackendUnavailable, BackendRPCError, CallCancelled) as err:
            log.info("backend %s: hang probe failed: %s", self.label, err)
        finally:
            self._probing.release()

    def restart_hung(self, generation: int, reason: str) -> None:
        """Close a hung session if it is still the one probed; the next call starts a fresh backend at once
        (no start backoff: the backend did start, and calls are waiting)."""
        if self.generation == generation and self._client is not None:
            log.warning("backend %s: restarting hung session (generation %d): %s", self.label, generation, reason)
            self.restarts += 1
            observe.backend_restart(self.spec.name)
            self.health.failed(reason, backoff=False)
            self.close()

    async def _timed_out(self, timeout: float) -> None:
        """A request handed to the backend got no answer within `timeout` (loop thread): a health failure
        (an answer to any call resets the count); with no word from the backend since the last such
        timeout, `hang_timeouts` of them in a row get the session probed."""
        self._silent_timeouts += 1
        count = self._silent_timeouts
        quiet = time.monotonic() - self.last_heard
        reason = (f"a call was not answered within {timeout:g}s ({count} in a row with no word from the backend, "
                  f"silent for {quiet:.1f}s)")
        await anyio.to_thread.run_sync(functools.partial(self.health.failed, reason, backoff=False))
        if count >= self.spec.settings.hang_timeouts > 0:
            self.suspect(reason)
