"""Notice that an HTTP client went away while its request waits, without writing to it.

In the modern era (2026-07-28) closing a request's response stream IS its cancellation (the SDK's client
aborts the POST and sends nothing else). A POST whose backend call sends no progress writes nothing until
the answer (the SSE keepalive comes every 15 s, and a JSON-only answer not at all), and a dead peer is seen
only by a write: a 25 s backend call ran to its end for a client that gave up at 2.5 s. So a watcher looks
at the request's own socket (gunicorn puts it in the WSGI environ) every `POLL_S`, reading the kernel's TCP
state (`TCP_INFO`): it is `ESTABLISHED` while the client holds the connection, whatever it does; a FIN from
the client (CLOSE_WAIT) or a reset (CLOSE) means it is gone. Reading the state takes nothing from the socket,
so neither a client slow to read the answer (its receive window fills: still ESTABLISHED) nor a keep-alive
client that already pipelined its next request (bytes waiting: still ESTABLISHED) is taken for gone; a
peek that sees bytes could not tell the latter from a FIN behind them. A client that half-closes its side
while waiting (`shutdown(SHUT_WR)`, which no MCP client does) reads as gone. Non-TCP sockets (gunicorn on
a unix socket) are peeked instead: an empty non-blocking `MSG_PEEK` is EOF.

Under gunicorn's gevent worker the watcher is a greenlet (threading is patched), one per process for every
waiting request (`_Poller`; a thread started per waiting request was 2.2 % of the web's samples per
modern-era call, py-spy), and one `getsockopt` per waiting request every 0.25 s costs ~4 us (measured on
the 2-core box, under load: 16 us a second per request, 16 ms a second for 1,000 waiting at once): noticed
within ~0.25 s of the close, cancelled on the
worker through Redis (`broker.calls.cancel_calls`) from whichever web process holds the request. A request
answered at once (a listing, a cache hit) starts no watcher.
"""

from __future__ import annotations

import _socket
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 0.25
TCP_ESTABLISHED = 1  # tcpi_state, the first byte of struct tcp_info (linux/tcp.h)
ENVIRON_SOCKET_KEYS = ("gunicorn.socket", "gunicorn.sock", "werkzeug.socket")


def request_socket(environ: dict[str, Any]) -> socket.socket | None:
    """The client connection's socket, where the server exposes it."""
    for key in ENVIRON_SOCKET_KEYS:
        sock = environ.get(key)
        if sock is not None and hasattr(sock, "fileno"):
            return sock
    return None


def peer_gone(sock: socket.socket) -> bool:
    """Whether the client closed or reset the connection (see the module's docstring for why this way)."""
    try:
        fd = sock.fileno()
    except OSError:
        return True
    if fd < 0:
        return True
    if sock.family in (socket.AF_INET, socket.AF_INET6) and hasattr(socket, "TCP_INFO"):
        try:
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_ESTABLISHED
        except OSError:
            return True
    return _peek_eof(fd)


def _peek_eof(fd: int) -> bool:
    """An unpatched, non-blocking peek on a duplicate of `fd` (a gevent socket would wait for data)."""
    probe = _socket.socket(fileno=os.dup(fd))
    try:
        probe.setblocking(False)
        return probe.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        probe.close()


class DisconnectWatch:
    """Calls `on_gone` once if the client's connection closes before `stop()`; a no-op without a socket."""

    def __init__(self, sock: socket.socket | None, on_gone: Callable[[], None], poll_s: float = POLL_S) -> None:
        self._sock = sock
        self._on_gone = on_gone
        self._poll_s = poll_s
        self._stopped = threading.Event()

    def start(self) -> DisconnectWatch:
        if self._sock is not None:
            _poller(self._poll_s).add(self)
        return self

    def stop(self) -> None:
        self._stopped.set()

    def poll(self) -> bool:
        """Whether this watch is over: stopped, or its client gone (then `on_gone` runs, in a thread of its
        own: a slow one must not hold up the other watches)."""
        if self._stopped.is_set():
            return True
        assert self._sock is not None
        if not peer_gone(self._sock) or self._stopped.is_set():  # stopped meanwhile (a threaded server)
            return self._stopped.is_set()
        self._stopped.set()
        threading.Thread(target=self._gone, name="disconnect-gone", daemon=True).start()
        return True

    def _gone(self) -> None:
        with contextlib.suppress(Exception):
            self._on_gone()


class _Poller:
    """One thread polls every watch of a process every `poll_s`; it ends when none is left, and the next
    watch starts another."""

    def __init__(self, poll_s: float) -> None:
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._watches: set[DisconnectWatch] = set()
        self._running = False

    def add(self, watch: DisconnectWatch) -> None:
        with self._lock:
            self._watches.add(watch)
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._run, name="disconnect-watch", daemon=True).start()

    def _run(self) -> None:
        try:
            while True:
                time.sleep(self._poll_s)
                with self._lock:
                    watches = list(self._watches)
                over = {watch for watch in watches if self._over(watch)}
                with self._lock:
                    self._watches -= over
                    if not self._watches:
                        self._running = False
                        return
        finally:  # whatever stopped it, the next watch starts another poller
            with self._lock:
                self._running = False

    @staticmethod
    def _over(watch: DisconnectWatch) -> bool:
        """One watch's poll; one that fails (`os.dup` out of descriptors, a thread that cannot start) is
        dropped, logged, and never stops the others' polling."""
        try:
            return watch.poll()
        except Exception:
            log.warning("disconnect watch failed; the request is no longer watched", exc_info=True)
            return True


_pollers: dict[tuple[int, float], _Poller] = {}  # (process, poll_s): a forked process starts its own
_pollers_lock = threading.Lock()


def _poller(poll_s: float) -> _Poller:
    with _pollers_lock:
        return _pollers.setdefault((os.getpid(), poll_s), _Poller(poll_s))
