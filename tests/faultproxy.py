"""A small loopback TCP proxy that injects link faults between one process and its peer (tests only).

Put it between a worker and Redis (point the worker's REDIS_URL at `proxy.url_for(redis_url)`), then:

- `set_latency(up, down)`: every chunk is held `up` seconds on its way to the target and `down` seconds on its way
  back, pipelined (the delay adds to each byte's trip, it does not cap throughput), so `set_latency(0.25, 0.25)` is
  a 500 ms round trip.
- `partition()`: a half-open partition. The proxy stops forwarding AND stops reading in both directions while every
  socket stays open, so each side sees silence, not a reset or an EOF: its writes pile up in kernel buffers and its
  reads never return, exactly what a pulled cable or a dropped route looks like before TCP gives up. Connections
  accepted during the partition are held open and silent too (the kernel completed the handshake, as a SYN-proxying
  load balancer would). `heal()` resumes everything that is still open, in order, like TCP retransmission would.
- `reset()`: abort every open connection with a RST (a crashed middlebox); new connections still work.

Bounded: at most `max_connections` connections (extra ones are closed at once), at most `max_chunks` chunks queued
per direction (a full queue stops the reader: back-pressure, not memory growth), four daemon threads per connection,
and `close()` ends them all. Loopback only: it listens on 127.0.0.1 and refuses a non-loopback target.
"""

from __future__ import annotations

import contextlib
import ipaddress
import queue
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

_CHUNK = 65536
_POLL = 0.05  # how often a paused thread looks at the proxy's state again (s)


@dataclass
class _Link:
    """One proxied connection: the accepted client socket and its upstream socket."""

    client: socket.socket
    upstream: socket.socket | None = None
    threads: list[threading.Thread] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    open_directions: int = 2

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.upstream) if s is not None]


class FaultProxy:
    """Forward 127.0.0.1:`port` to `target_host`:`target_port`, with injectable latency and partitions."""

    def __init__(self, target_host: str, target_port: int, *, max_connections: int = 256, max_chunks: int = 1024,
                 connect_timeout: float = 5.0) -> None:
        if not ipaddress.ip_address(socket.gethostbyname(target_host)).is_loopback:
            raise ValueError(f"faultproxy forwards to loopback only, not {target_host}")
        self.target = (target_host, target_port)
        self.max_connections = max_connections
        self.max_chunks = max_chunks
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._latency = {"up": 0.0, "down": 0.0}
        self._links: list[_Link] = []
        self.accepted = 0
        self.bytes = {"up": 0, "down": 0}
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(_POLL * 4)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"faultproxy-{self.port}", daemon=True)
        self._acceptor.start()

    @classmethod
    def for_url(cls, url: str, **kwargs: int | float) -> FaultProxy:
        """A proxy in front of the host:port of a `redis://` (or any scheme://host:port) URL."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, **kwargs)  # type: ignore[arg-type]

    def url_for(self, url: str) -> str:
        """`url` with its host:port replaced by the proxy's (user, password, path and query kept)."""
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    # -- faults ----------------------------------------------------------------------------------------------
    def set_latency(self, up: float = 0.0, down: float = 0.0) -> None:
        """Delay every chunk sent from here on: `up` toward the target, `down` back to the client (seconds)."""
        with self._lock:
            self._latency = {"up": max(0.0, up), "down": max(0.0, down)}

    def partition(self) -> None:
        """Half-open partition: stop reading and forwarding both ways; every socket stays open and silent."""
        self._flowing.clear()

    def heal(self) -> None:
        """End a partition: whatever is still open resumes, in order."""
        self._flowing.set()

    @property
    def partitioned(self) -> bool:
        return not self._flowing.is_set()

    def reset(self) -> None:
        """Abort every open connection with a TCP RST (SO_LINGER 0); the proxy keeps accepting new ones."""
        with self._lock:
            links = list(self._links)
        for link in links:
            self._abort(link, rst=True)

    @property
    def connections(self) -> int:
        """Connections open right now."""
        with self._lock:
            return sum(1 for link in self._links if not link.done.is_set())

    def wait_for_connections(self, count: int = 1, timeout: float = 30.0) -> None:
        """Block until at least `count` connections are open (a process behind the proxy has connected)."""
        deadline = time.monotonic() + timeout
        while self.connections < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.connections} connection(s) through the proxy after {timeout}s, not {count}")
            time.sleep(_POLL)

    def close(self) -> None:
        """Stop accepting, close every connection and let the threads end (bounded)."""
        self._closed.set()
        self._flowing.set()  # wake paused threads so they see the close
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            self._abort(link, rst=False)
        self._acceptor.join(2)
        for link in links:
            for thread in link.threads:
                thread.join(2)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- machinery -------------------------------------------------------------------------------------------
    def _wait_flowing(self) -> bool:
        """Block while partitioned; False once the proxy is closed."""
        while not self._flowing.wait(_POLL):
            if self._closed.is_set():
                return False
        return not self._closed.is_set()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._links = [link for link in self._links if not link.done.is_set()]
                full = len(self._links) >= self.max_connections
                if not full:
                    link = _Link(client)
                    self._links.append(link)
                    self.accepted += 1
            if full:
                client.close()
                continue
            thread = threading.Thread(target=self._start_link, args=(link,), daemon=True,
                                      name=f"faultproxy-{self.port}-link")
            link.threads.append(thread)
            thread.start()

    def _start_link(self, link: _Link) -> None:
        """Connect upstream once the link flows (a connection made during a partition stays silent), then pump."""
        if not self._wait_flowing():
            self._abort(link, rst=False)
            return
        try:
            link.upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError:
            self._abort(link, rst=False)
            return
        # non-blocking both ways: every wait is a select of at most _POLL, so close() and reset() end any thread
        link.upstream.setblocking(False)
        link.client.setblocking(False)
        for direction, src, dst in (("up", link.client, link.upstream), ("down", link.upstream, link.client)):
            chunks: queue.Queue[tuple[float, bytes | None]] = queue.Queue(self.max_chunks)
            for pump, sock in ((self._read, src), (self._write, dst)):
                thread = threading.Thread(target=pump, args=(link, direction, sock, chunks), daemon=True,
                                          name=f"faultproxy-{self.port}-{direction}")
                link.threads.append(thread)
                thread.start()

    def _read(self, link: _Link, direction: str, src: socket.socket,
              chunks: queue.Queue[tuple[float, bytes | None]]) -> None:
        try:
            while not link.done.is_set():
                if not self._wait_flowing():
                    break
                readable, _, _ = select.select([src], [], [], _POLL)
                if not readable or not self._flowing.is_set():
                    continue  # a partition that began meanwhile leaves the data unread, in the kernel
                try:
                    data = src.recv(_CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    break
                with self._lock:
                    due = time.monotonic() + self._latency[direction]
                while not link.done.is_set():
                    try:
                        chunks.put((due, data), timeout=_POLL)
                        break
                    except queue.Full:
                        continue
        except (OSError, ValueError):
            self._abort(link, rst=False)
        with contextlib.suppress(queue.Full):
            chunks.put((0.0, None), timeout=1)  # end of this direction

    def _write(self, link: _Link, direction: str, dst: socket.socket,
               chunks: queue.Queue[tuple[float, bytes | None]]) -> None:
        try:
            while not link.done.is_set():
                try:
                    due, data = chunks.get(timeout=_POLL)
                except queue.Empty:
                    continue
                if data is None:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)  # pass the EOF on, like TCP would
                    break
                while not link.done.is_set():
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(min(wait, _POLL))
                    elif self._wait_flowing():
                        break
                    else:
                        return
                self._send_all(link, dst, data)
                with self._lock:
                    self.bytes[direction] += len(data)
        except (OSError, ValueError):
            self._abort(link, rst=False)
            return
        with self._lock:
            link.open_directions -= 1
            finished = link.open_directions == 0
        if finished:
            self._abort(link, rst=False)

    @staticmethod
    def _send_all(link: _Link, dst: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view and not link.done.is_set():
            _, writable, _ = select.select([], [dst], [], _POLL)
            if not writable:
                continue  # the receiver is not reading: wait, as its kernel would make the sender wait
            try:
                view = view[dst.send(view):]
            except BlockingIOError:
                continue

    def _abort(self, link: _Link, *, rst: bool) -> None:
        if link.done.is_set():
            return
        link.done.set()
        for sock in link.sockets():
            if rst:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.close()
