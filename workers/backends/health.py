"""This worker's view of each backend endpoint's health, written to Redis for the rest of the broker."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time

from broker import health as health_store
from broker.config import Endpoint
from broker.health import Health
from broker.writelane import write_lane
from workers.backends.errors import BackendUnavailable
from workers.node import node_name

log = logging.getLogger(__name__)


class EndpointHealth:
    """This worker's view of one backend endpoint (replica), shared by every session to it and
    written to Redis (`broker.health`) when it changes, so the rest of the broker can see it."""

    def __init__(self, server: str, replica: int, endpoint: Endpoint) -> None:
        self.server, self.replica = server, replica
        self.health = Health(endpoint=endpoint.describe())
        self._lock = threading.Lock()
        self._reported = False

    def _write(self) -> None:
        self.health.worker = node_name()
        # through the write lane: called on the backend loop too, where a Redis round trip would stall every call;
        # health is advisory, so a write lost to Redis trouble is only logged there
        health = dataclasses.replace(self.health)  # as it is now, not as it is when the lane writes it
        write = functools.partial(health_store.write, server=self.server, replica=self.replica, health=health)
        write_lane().fire(write, f"the health of {self.server}[{self.replica}]")
        self._reported = True

    def failed(self, error: str, stderr: str | None = None, backoff: bool = True) -> None:
        """`error` says what kind of failure (clients may be told); `stderr` (redacted) is for admins only."""
        with self._lock:
            self.health.failed(error, stderr=stderr, backoff=backoff)
            self._write()
        log.warning("backend %s[%d] %s (%d failure(s) in a row): %s", self.server, self.replica, self.health.state,
                    self.health.failures, error)

    def succeeded(self) -> None:
        if self.health.failures == 0 and self._reported:
            return
        with self._lock:
            self.health.succeeded()
            self._write()

    def refresh(self) -> None:
        """Re-write the record (a periodic check), so its `checked_at` shows the view is current."""
        with self._lock:
            self.health.checked_at = time.time()
            self._write()

    def check_backoff(self) -> None:
        """Fail fast while an unhealthy backend waits out its backoff (no restart loop, a clear reason)."""
        left = self.health.backoff_left()
        if left > 0:
            raise BackendUnavailable(
                f"server {self.server!r} is unhealthy ({self.health.failures} failures in a row; "
                f"next start in {left:.0f}s): {self.health.error}")

