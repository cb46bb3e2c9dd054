"""How a backend session reaches its server: one entry per kind of endpoint (`Endpoint.transport`).

Adding a backend transport is one entry in `TRANSPORTS` (a function from `Opening` to `Opened`: the
SDK transport, and what it gives for the health record), plus its config keys (`broker/schemas.py`
EndpointSchema, `broker/config.py` Endpoint and its `transport` property). `BackendSession` knows no
kind: it opens whatever the table gives and watches its streams (`watched`).

stdio: the server is a child of the worker process that must die with it (`die_with_worker`), its
stderr goes to the worker's log, redacted (`StderrPump`). http: Streamable HTTP, with the config's
`${VAR}`-expanded headers and the client headers the server asks for (`forward_headers`), over kept-alive
connections (`workers.backends.keepalive`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from mcp import StdioServerParameters, stdio_client

from broker.config import Endpoint, expand_all, redact
from workers.backends.fastlane import FastLane
from workers.backends.keepalive import streamable_http
from workers.streams import CheckedWriteStream, HeardReadStream


@dataclass(frozen=True)
class Opening:
    """What a session knows when it opens its endpoint."""

    server: str  # the server's name (for messages: "server x: env FOO: ${FOO} is not set")
    endpoint: Endpoint
    label: str  # how logs name the session (`BackendSession.label`)
    base_dir: str  # where a stdio server runs unless its `cwd` says otherwise (the config file's directory)
    secrets: tuple[str, ...] = ()  # values never shown (`broker.config.redact`)
    extra_headers: dict[str, str] = field(default_factory=dict)  # client headers passed through (forward_headers)


@dataclass(frozen=True)
class Opened:
    """An endpoint's SDK transport (an async context manager giving the read and write streams), and the
    stderr of a server that runs as our child (its last words go into the health record), if any."""

    transport: AbstractAsyncContextManager[Any]
    pump: StderrPump | None = None


def _resolve_command(command: str) -> str:
    """`python` in a config means the broker's own interpreter, where the demo servers' packages are installed."""
    return sys.executable if command in ("python", "python3") else command


# The SDK starts a stdio server in its own session (no preexec hook), so a SIGKILLed worker would leave it
# running. This launcher, exec'd in place of the server, asks Linux to SIGKILL it when its parent dies
# (PR_SET_PDEATHSIG survives exec), checks the parent did not die already, then becomes the server.
LAUNCHER = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]): os._exit(1)\n"
    "try: os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as e: print(f'cannot run {sys.argv[2]!r}: {e.strerror}', file=sys.stderr); os._exit(127)\n"
)
STDERR_TAIL_LINES = 20
backend_log = logging.getLogger("mcp.backend")


@functools.cache
def _setpriv() -> str | None:
    """util-linux `setpriv --pdeathsig` does what LAUNCHER does in ~1 ms instead of a Python start-up
    (~50 ms here); LAUNCHER remains where it is missing (it also closes the tiny race of a parent dying
    before the signal is armed, which setpriv leaves to the stdin EOF every MCP server honours)."""
    found = shutil.which("setpriv")
    if found is None:
        return None
    try:
        usage = subprocess.run([found, "--help"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return found if "--pdeathsig" in usage else None


def die_with_worker(command: str, args: list[str]) -> tuple[str, list[str]]:
    """The command line that runs `command` so that it is SIGKILLed when this worker process dies."""
    if not sys.platform.startswith("linux"):
        return command, args
    setpriv = _setpriv()
    if setpriv is not None:
        return setpriv, ["--pdeathsig", "KILL", "--", command, *args]
    return sys.executable, ["-I", "-S", "-c", LAUNCHER, str(os.getpid()), command, *args]


class StderrPump:
    """A backend's stderr, line by line, into the worker's log as `[server] line`, keeping the last lines
    for the health record (a server that dies at start usually says why there). Every line has the values
    of the server's own `${VAR}`-expanded env redacted first: a backend that prints its token must not put
    it in a log, in Redis or on a page."""

    def __init__(self, label: str, secrets: tuple[str, ...] = ()) -> None:
        self.label = label
        self.secrets = secrets
        read_fd, write_fd = os.pipe()
        self.writer: TextIO = os.fdopen(write_fd, "w")
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.done = threading.Event()
        threading.Thread(target=self._pump, args=(read_fd,), name=f"stderr-{label}", daemon=True).start()

    def _pump(self, read_fd: int) -> None:
        try:
            with os.fdopen(read_fd, "rb") as reader:
                for raw in reader:
                    line = redact(raw.decode("utf-8", "replace").rstrip(), self.secrets)
                    if line:
                        self.tail.append(line)
                        backend_log.info("[%s] %s", self.label, line)
        finally:
            self.done.set()

    def close_writer(self) -> None:
        """Our copy of the write end: once the child has its own, EOF comes when the child exits."""
        with contextlib.suppress(OSError):
            self.writer.close()

    def last_words(self, wait: float = 0.5) -> str:
        """The last lines of stderr (waiting briefly for a dead child's final output)."""
        self.done.wait(wait)
        return " | ".join(list(self.tail)[-5:])


def open_stdio(opening: Opening) -> Opened:
    """A server started as this worker's child, speaking MCP on its stdin/stdout."""
    endpoint = opening.endpoint
    assert endpoint.command is not None
    env = expand_all(endpoint.env, f"server {opening.server}: env")
    command, args = die_with_worker(_resolve_command(endpoint.command), list(endpoint.args))
    params = StdioServerParameters(command=command, args=args, env=env or None, cwd=endpoint.cwd or opening.base_dir)
    pump = StderrPump(opening.label, opening.secrets)
    return Opened(stdio_client(params, errlog=pump.writer), pump)


def open_http(opening: Opening) -> Opened:
    """A server reached over Streamable HTTP."""
    endpoint = opening.endpoint
    assert endpoint.url is not None
    headers = {**expand_all(endpoint.headers, f"server {opening.server}: header"), **opening.extra_headers}
    return Opened(streamable_http(endpoint.url, headers or None))


TRANSPORTS: dict[str, Callable[[Opening], Opened]] = {
    "stdio": open_stdio,
    "http": open_http,
}


def open_transport(opening: Opening) -> Opened:
    """The endpoint's transport, by its kind (a `ConfigError` for a `${VAR}` the environment lacks)."""
    return TRANSPORTS[opening.endpoint.transport](opening)


@asynccontextmanager
async def watched(transport: AbstractAsyncContextManager[Any], pump: StderrPump | None,
                  on_streams: Callable[[Any], None], on_frame: Callable[[], None],
                  lane: FastLane) -> AsyncIterator[Any]:
    """A transport whose read stream the session can close from outside: how a handshake that never
    completes (a backend that starts but does not answer) is aborted, with the SDK's own cleanup.
    Its streams are watched (`workers.streams`): each frame read is a sign of life (`on_frame`), and a
    message that cannot be encoded is refused to its sender instead of killing the transport. `lane`
    (`workers.backends.fastlane`) writes plain calls on the same write stream and takes their answers
    off the read stream; its waiting calls fail when the transport ends."""
    try:
        async with transport as streams:
            if pump is not None:
                pump.close_writer()
            on_streams(streams[0])
            write = CheckedWriteStream(streams[1])
            lane.attach(write)
            yield (HeardReadStream(streams[0], on_frame, lane.claim, lane.close), write, *streams[2:])
    finally:
        lane.close()
        if pump is not None:
            pump.close_writer()
