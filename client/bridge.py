"""`mcp-broker connect`: a stdio MCP server that is a running broker, for hosts that start servers as commands.

Claude Desktop, Cursor and most IDEs attach an MCP server by starting a command and speaking JSON-RPC on
its stdin/stdout. `Bridge` forwards the host's messages to the broker and the broker's to the host, as they
are, in both directions: requests, answers, notifications (progress, cancellation, log messages,
list_changed) and the broker's own requests to the host (a backend's sampling, elicitation and roots
questions) with their answers. The SDK frames both sides (`mcp.server.stdio` towards the host, the client
transports of client/upstream.py towards the broker); the bridge only decides where a message goes.

A broker restart does not end the host's session. The link is reopened with backoff (0.2 s doubling to
5 s) and resumes the broker session by id, on any web process; what was in flight then:
- calls the broker queues for a worker (`tools/call`, `resources/read`, `prompts/get`,
  `completion/complete`) are kept in the broker's session and answered after the resume over WebSocket
  (over HTTP the SDK transport cannot pick up a cut answer on a new link: they get an error naming that);
- any other request (lists, `ping`, subscriptions) is answered by the web process itself, so it is sent
  again on the new link;
- the broker lost the session (expired while away, Redis flushed): a new one is opened with the host's
  own `initialize` replayed, the broker-queued calls that were in flight get an error saying their outcome
  is unknown, and the other requests are sent again on it.
While the broker stays away longer than `give_up_s` (default 60 s), waiting requests get an error instead
of waiting forever, and new ones are answered at once with the same error until the link is back (the
host's notifications and answers queued meanwhile are still delivered then).

The bridge exits when the host closes its stdin (the host's way to stop a stdio server), with code 0, once the
requests it had sent are answered (at most `DRAIN_S`, 5 s: a shell pipe gets its answers).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from typing import Any

import anyio
import mcp_types
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from mcp.shared.message import SessionMessage

from client.upstream import UNKNOWN_SESSION, BrokerRefused, BrokerUnreachable, Link, Upstream

__all__ = ["BROKER_QUEUED_METHODS", "Bridge"]

log = logging.getLogger(__name__)

BROKER_QUEUED_METHODS = frozenset({"tools/call", "resources/read", "prompts/get", "completion/complete"})
"""Requests the broker records in its session before queueing (broker/sessions.py `remember`): a resumed
session answers them, so they are never sent twice (a tool must not run twice because a socket broke)."""

FIRST_RETRY_S = 0.2
MAX_RETRY_S = 5.0
DEFAULT_GIVE_UP_S = 60.0
DRAIN_S = 5.0
REPLAY_ID = "mcp-broker-connect:initialize"
"""Request id of the host's `initialize` replayed on a new broker session; its answer is the bridge's."""

HostRead = ObjectReceiveStream[SessionMessage | Exception]
HostWrite = ObjectSendStream[SessionMessage]
Say = Callable[[str], None]


def say_on_stderr(line: str) -> None:
    """The bridge's voice: stderr is the one channel a stdio host shows its user (stdout is the protocol)."""
    print(f"mcp-broker connect: {line}", file=sys.stderr, flush=True)


def _error(request_id: Any, message: str, code: int = mcp_types.CONNECTION_CLOSED) -> SessionMessage:
    return SessionMessage(mcp_types.JSONRPCError(jsonrpc="2.0", id=request_id,
                                                 error=mcp_types.ErrorData(code=code, message=message)))


class Bridge:
    """One host session bridged to one broker session (kept across links). `run` returns the exit code."""

    def __init__(self, upstream: Upstream, *, give_up_s: float = DEFAULT_GIVE_UP_S, say: Say = say_on_stderr,
                 resumes_queued_calls: bool | None = None) -> None:
        self.upstream = upstream
        self.give_up_s = give_up_s
        self.say = say
        # Over WebSocket a resumed session answers the calls it queued; over HTTP the answer's stream is gone.
        self.resumes_queued_calls = (upstream.url.startswith(("ws://", "wss://"))
                                     if resumes_queued_calls is None else resumes_queued_calls)
        self.session_id: str | None = None
        self.pending: dict[Any, mcp_types.JSONRPCRequest] = {}  # host requests the broker has not answered
        self.written: set[Any] = set()  # ... of which these went out on a link (the others wait in the outbox)
        self.initialize: mcp_types.JSONRPCRequest | None = None
        self.initialized: mcp_types.JSONRPCNotification | None = None
        self.links = 0  # links opened so far (the first one included)
        self._outbox_send, self._outbox = anyio.create_memory_object_stream[SessionMessage](math.inf)
        self._host_write: HostWrite | None = None
        self._down_since: float | None = None
        self._gave_up = False
        self._answer_seen = anyio.Event()
        self._last_said = ""

    def _say_once(self, line: str) -> None:
        """Say a link problem once while it lasts, not at every retry (a broker away for an hour: one line)."""
        if line != self._last_said:
            self._last_said = line
            self.say(line)

    # ------------------------------------------------------------ start and run
    async def check(self) -> None:
        """Reach the broker before serving the host; raises BrokerRefused / BrokerUnreachable at once."""
        async with self.upstream.open(None):
            pass

    async def run(self, host_read: HostRead, host_write: HostWrite) -> int:
        """Serve the host until it closes stdin (0)."""
        self._host_write = host_write
        async with host_write, anyio.create_task_group() as tg:
            tg.start_soon(self._links)
            await self._from_host(host_read)
            # A piped session (`printf '<request>' | mcp-broker connect URL`) ends its stdin right after its last
            # request: its answers still go out, for up to DRAIN_S; a host that quits waits for nothing.
            with anyio.move_on_after(DRAIN_S):
                while self.pending:
                    await self._answer_seen.wait()
                    self._answer_seen = anyio.Event()
            tg.cancel_scope.cancel()
        return 0

    # ------------------------------------------------------------ host → broker
    async def _from_host(self, host_read: HostRead) -> None:
        async with host_read:
            async for item in host_read:
                if isinstance(item, Exception):  # answered as any MCP server would: a parse error, id null
                    first = str(item).splitlines()[0] if str(item) else type(item).__name__
                    await self._to_host(_error(None, f"Parse error: not a JSON-RPC message ({first})",
                                               mcp_types.PARSE_ERROR))
                    continue
                message = item.message
                if isinstance(message, mcp_types.JSONRPCRequest):
                    if message.method == "initialize":
                        self.initialize = message
                    if self._gave_up:
                        await self._to_host(_error(message.id, self._away_message()))
                        continue
                    self.pending[message.id] = message
                elif isinstance(message, mcp_types.JSONRPCNotification):
                    if message.method == "notifications/initialized":
                        self.initialized = message
                    elif message.method == "notifications/cancelled":
                        self._answered((message.params or {}).get("requestId"))
                await self._outbox_send.send(item)

    async def _to_host(self, item: SessionMessage) -> None:
        assert self._host_write is not None
        await self._host_write.send(item)

    # ------------------------------------------------------------ links
    async def _links(self) -> None:
        """Open a link, pump it until it breaks, reopen it (resuming the session) with backoff; forever."""
        delay = FIRST_RETRY_S
        while True:
            try:
                async with self.upstream.open(self.session_id) as link:
                    delay = FIRST_RETRY_S
                    await self._pump(link)
                self._say_once("the link to the broker closed; reconnecting")
            except BrokerRefused as err:
                if err.status == UNKNOWN_SESSION and self.session_id is not None:
                    await self._lost_session(err)
                    continue
                self._say_once(f"the broker refused the link ({err}); retrying every {MAX_RETRY_S:.0f} s at most")
            except BrokerUnreachable as err:
                self._say_once(f"broker unreachable ({err}); retrying every {MAX_RETRY_S:.0f} s at most")
            except Exception as err:  # the SDK's HTTP transport ends with its POST's error: the link broke
                self._say_once(f"the link to the broker failed ({_first_cause(err)}); reconnecting")
            await self._while_away()
            await anyio.sleep(delay)
            delay = min(MAX_RETRY_S, delay * 2)

    async def _pump(self, link: Link) -> None:
        """Carry messages both ways on one link until the broker's side ends."""
        resumed = self.links > 0
        self.links += 1
        self.session_id = link.session_id() or self.session_id
        if resumed:
            self.say(f"reconnected; session {self.session_id} resumed")
            await self._after_resume(link)
        self._down_since, self._gave_up, self._last_said = None, False, ""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._to_broker, link)
            async for item in link.read:
                if isinstance(item, Exception):
                    self.say(f"ignored a message from the broker that is not JSON-RPC: {item}")
                    continue
                self.session_id = link.session_id() or self.session_id
                message = item.message
                answer = isinstance(message, (mcp_types.JSONRPCResponse, mcp_types.JSONRPCError))
                if answer and message.id == REPLAY_ID:
                    continue  # the answer to the replayed initialize: the host has its own already
                await self._to_host(item)
                if answer:
                    self._answered(message.id)
            tg.cancel_scope.cancel()

    async def _to_broker(self, link: Link) -> None:
        async for item in self._outbox:
            try:
                await link.write.send(item)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                await self._outbox_send.send(item)  # goes out on the next link (the order of one message)
                return
            if isinstance(item.message, mcp_types.JSONRPCRequest):
                self.written.add(item.message.id)

    def _answered(self, request_id: Any) -> None:
        self.pending.pop(request_id, None)
        self.written.discard(request_id)
        self._answer_seen.set()

    async def _after_resume(self, link: Link) -> None:
        """What was in flight when the last link broke: wait for the queued calls the resumed session answers
        (WebSocket), send the others again."""
        for request in [r for r in self.pending.values() if r.id in self.written]:
            if request.method in BROKER_QUEUED_METHODS:
                if not self.resumes_queued_calls:
                    self._answered(request.id)
                    await self._to_host(_error(request.id, "the link to the broker broke while this request was "
                                                           "in flight over HTTP; its outcome is unknown"))
                continue
            await link.write.send(SessionMessage(request))

    async def _lost_session(self, err: BrokerRefused) -> None:
        """The broker no longer has the session: a new one, the host's handshake replayed on it."""
        self.say(f"the broker lost session {self.session_id} ({err.message}); opening a new one")
        self.session_id = None
        self.links = 0
        resend: list[SessionMessage] = []
        for request_id in list(self.written):
            request = self.pending.get(request_id)
            if request is not None and request.method not in BROKER_QUEUED_METHODS and request.method != "initialize":
                self.written.discard(request_id)  # answered by the web process itself: sent again on the new one
                resend.append(SessionMessage(request))
                continue
            self._answered(request_id)
            if request is not None and request.method != "initialize":
                await self._to_host(_error(request_id, "the broker lost this session while the request was in "
                                                       "flight (it expired, or its Redis was reset); its outcome "
                                                       "is unknown"))
        replay: list[SessionMessage] = []
        if self.initialize is not None:
            replay.append(SessionMessage(self.initialize.model_copy(update={"id": REPLAY_ID})))
        if self.initialized is not None:
            replay.append(SessionMessage(self.initialized))
        # Ahead of anything queued: a new session must see its handshake first, then what it is to answer again.
        queued = self._take_outbox()
        for item in (*replay, *resend, *queued):
            await self._outbox_send.send(item)

    def _take_outbox(self) -> list[SessionMessage]:
        """Everything waiting to go to the broker, in order (no link is reading it while the bridge is away)."""
        queued: list[SessionMessage] = []
        while True:
            try:
                queued.append(self._outbox.receive_nowait())
            except anyio.WouldBlock:
                return queued

    async def _while_away(self) -> None:
        """After `give_up_s` without a link, waiting requests get an error (and new ones, until it is back)."""
        now = anyio.current_time()
        if self._down_since is None:
            self._down_since = now
            return
        if now - self._down_since < self.give_up_s:
            return
        if not self._gave_up:
            self.say(f"no broker for {self.give_up_s:.0f} s: answering requests with an error until it is back")
        self._gave_up = True
        for request_id in list(self.pending):
            self._answered(request_id)
            await self._to_host(_error(request_id, self._away_message()))
        # Requests queued for the broker were answered now (above): not sent when it comes back. The host's
        # notifications and its answers to the broker's own questions (sampling, elicitation) still go.
        for item in self._take_outbox():
            if not isinstance(item.message, mcp_types.JSONRPCRequest):
                await self._outbox_send.send(item)

    def _away_message(self) -> str:
        return (f"the broker at {self.upstream.url} has been unreachable for over {self.give_up_s:.0f} s; "
                "mcp-broker connect keeps reconnecting")


def _first_cause(err: BaseException) -> str:
    """The innermost error of an exception group (what the HTTP transport's task group raised)."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
