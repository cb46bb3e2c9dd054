"""The `_meta` keys and identity the broker reads and writes, in one table.

The protocol's own keys (`io.modelcontextprotocol/*`) come from the SDK; the broker's (`io.mcp-broker/*`)
are defined here. A client's `_meta` is passed on to the backend less both kinds: the broker's keys are
instructions to the broker, and the per-request envelope's (a modern request's `_meta`) describe the
client's exchange with the broker, not with the backend.
"""

from __future__ import annotations

from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY
from mcp_types import LOG_LEVEL_META_KEY, PROTOCOL_VERSION_META_KEY, SERVER_INFO_META_KEY

from broker.cache import BYPASS_META_KEY
from broker.tasks import INPUT_KEY_META_KEY

SERVER_INFO = {"name": "mcp-broker", "version": "0.1.0"}

# the broker's own keys
SESSION_META_KEY = "io.mcp-broker/sessionId"  # initialize's result: the session a reconnect resumes
TIMEOUT_META_KEY = "io.mcp-broker/timeoutS"  # a client's own time limit for one call (capped by max_timeout_s)
# BYPASS_META_KEY (broker.cache): false = do not answer this call from the cache
# INPUT_KEY_META_KEY (broker.tasks): a backend's name for its question (the `inputRequests` key)
ENVELOPE_META_PREFIX = "io.modelcontextprotocol/"  # the per-request envelope's `_meta` keys: ours, never forwarded
NOT_FORWARDED = (TIMEOUT_META_KEY, "progressToken", BYPASS_META_KEY)  # (with the envelope's keys)

__all__ = [
    "BYPASS_META_KEY",
    "ENVELOPE_META_PREFIX",
    "INPUT_KEY_META_KEY",
    "LOG_LEVEL_META_KEY",
    "NOT_FORWARDED",
    "PROTOCOL_VERSION_META_KEY",
    "SERVER_INFO",
    "SERVER_INFO_META_KEY",
    "SESSION_META_KEY",
    "SUBSCRIPTION_ID_META_KEY",
    "TIMEOUT_META_KEY",
    "forwarded_meta",
]


def forwarded_meta(meta: dict[str, object]) -> dict[str, object]:
    """What of a client's `_meta` its backend receives."""
    return {k: v for k, v in meta.items() if k not in NOT_FORWARDED and not k.startswith(ENVELOPE_META_PREFIX)}
