"""This worker process as the rest of the fleet sees it: its lease name, and the queue messages it holds.

Its own module because everything in a worker needs the name (the health records it writes, the owner
records of per_client sessions, the lease keys the transport writes in the fetch transaction), while the
lease keeping itself (`workers.control`) needs the Celery app and Redis threads: with the name there,
every user of it imported control, and control imported them back.

Held tags: delivery tags this process holds (fetched, not yet acked or rejected), kept by
`workers.transport` and read by `workers.control` to restore the process's own orphans.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

_state: dict[str, Any] = {"node": None, "pid": None}
_held: set[str] = set()  # delivery tags this process holds: fetched, not yet acked or rejected
_before_hold: list[Callable[[], None]] = []  # run before each hold (`workers.control`: the lease must be running)


def node_name() -> str:
    """This worker process's lease name (host + pid: unique per process, even for pool children)."""
    if _state["node"] is None or _state["pid"] != os.getpid():
        _state.update(node=f"{socket.gethostname()}:{os.getpid()}", pid=os.getpid())
    return str(_state["node"])


def on_before_hold(hook: Callable[[], None]) -> None:
    """`hook()` runs before this process holds a message (`workers.control` starts the lease's heartbeat
    there: a reaper must be able to tell this process is alive before it holds anything)."""
    if hook not in _before_hold:
        _before_hold.append(hook)


def hold(tag: str) -> None:
    for hook in _before_hold:
        hook()
    _held.add(tag)


def release(tag: str) -> None:
    _held.discard(tag)


def holds(tag: str) -> bool:
    return tag in _held
