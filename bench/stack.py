"""The broker under test: Redis (reused or embedded), one gunicorn web, Celery workers per server.

Built on `tests.stack.Stack`, so the bench runs exactly the processes the tests and the
Procfile run (gunicorn -k gevent -w 1 --worker-connections 3000; celery -P threads), and on
`cli.devrun.ensure_redis`, so a box without Redis still gets one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.wsclient import RawSession, RPCFailure
from broker.config import load_config
from cli.devrun import ensure_redis
from tests.stack import Proc, Stack

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
BENCH_CONFIG = BENCH_DIR / "mcp_servers.bench.json"
ON_DEMAND = {"serial": 0}
"""Servers of the bench config that run no worker until their scenario scales them (bench/serial.py)."""
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
"""A database of its own (tests use 15, `make run` 0): the bench flushes it at start."""


@dataclass
class BenchStack:
    """A running broker plus the knobs the scenarios turn (how many workers serve a server)."""

    stack: Stack
    workers: dict[str, list[Proc]] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return self.stack.ws_url()

    @property
    def http_url(self) -> str:
        return self.stack.http_url()

    def concurrency(self, server: str) -> int:
        return load_config(self.stack.config_path).server(server).settings.concurrency

    def scale(self, server: str, count: int) -> None:
        """Run exactly `count` worker processes for `server` (starting or stopping the newest ones)."""
        procs = self.workers.setdefault(server, [])
        while len(procs) > count:
            proc = procs.pop()
            proc.stop()
            self.stack.procs.remove(proc)
        while len(procs) < count:
            procs.append(self.stack.start_worker(server, concurrency=self.concurrency(server)))

    def restart_web(self, env: dict[str, str] | None = None) -> None:
        """Replace the web process by a new one started with `env` on top of the usual environment
        (e.g. MCP_BROKER_MAX_BATCH=1 to measure the broker without web-side coalescing)."""
        for proc in [p for p in self.stack.procs if p.name.startswith("web-")]:
            proc.stop()
            self.stack.procs.remove(proc)
        self.stack.web_ports.clear()
        saved = {key: os.environ.get(key) for key in env or {}}
        os.environ.update(env or {})
        try:
            self.stack.start_web()  # Stack.env is read from os.environ at spawn time
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def web_processes(self) -> list[psutil.Process]:
        """The gunicorn master and its workers (the whole web tier)."""
        web = [p for p in self.stack.procs if p.name.startswith("web-")]
        out: list[psutil.Process] = []
        for proc in web:
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = psutil.Process(proc.popen.pid)
                out += [parent, *parent.children(recursive=True)]
        return out

    def web_rss_bytes(self) -> int:
        total = 0
        for proc in self.web_processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def queue_messages(self, server: str) -> int:
        """Celery messages the server's workers have run so far (each worker's own count, `celery inspect
        stats`: its `total` of `mcp.run_calls`; the workers log no line per message).

        With calls per message = calls / messages, this shows whether the web's coalescing
        outbox really packs calls together, which is what the workers' per-message cost hinges on.
        """
        from celery import Celery

        from workers.dispatch import RUN_CALLS

        probe = Celery("bench-inspect", broker=self.stack.redis_url, set_as_current=False)  # not the app's config
        stats = probe.control.inspect(timeout=2.0).stats() or {}
        return sum(int(node_stats.get("total", {}).get(RUN_CALLS, 0)) for node, node_stats in stats.items()
                   if node.startswith(f"{server}."))

    def worker_pids(self, server: str) -> list[int]:
        return [p.popen.pid for p in self.workers.get(server, [])]

    def warm(self, server: str, timeout_s: float = 60.0) -> int:
        """Wait until every worker of `server` has a warm backend session (distinct `whoami` pids).

        A worker opens its backend at its first call (~0.5 s of Python start-up), so a
        measurement started before then would time a cold start, not the broker.
        """
        wanted = len(self.workers.get(server, [])) or 1
        return asyncio.run(_warm(self.ws_url, server, wanted, timeout_s))

    def stop(self) -> None:
        self.stack.stop()
        self.workers.clear()


async def _warm(url: str, server: str, wanted: int, timeout_s: float) -> int:
    seen: set[int] = set()
    try:
        async with asyncio.timeout(timeout_s):
            # One call first, alone: concurrent first requests to a fresh web process can see an empty
            # catalog (broker/catalog.py marks it checked before it has loaded), so retry until it routes.
            while not seen:
                try:
                    seen.add(await session_call(url, f"{server}__whoami"))
                except RPCFailure as err:
                    if "not published" not in str(err):
                        raise
                    await asyncio.sleep(0.2)
            while len(seen) < wanted:
                results = await asyncio.gather(*[session_call(url, f"{server}__whoami") for _ in range(4 * wanted)])
                seen.update(results)
    except TimeoutError:
        raise RuntimeError(f"only {len(seen)} of {wanted} {server} workers answered within {timeout_s:g}s") from None
    return len(seen)


async def session_call(url: str, tool: str) -> int:
    """One call on a fresh socket (so calls spread over workers instead of queuing behind each other)."""
    session = await RawSession.open(url)
    try:
        result = await session.call(tool, {})
        return int(result["structuredContent"]["pid"])
    finally:
        await session.close()


@contextlib.contextmanager
def running_stack(redis_url: str | None = None, config: Path = BENCH_CONFIG, workers: dict[str, int] | None = None,
                  announce: bool = True) -> Iterator[BenchStack]:
    """Redis + web + workers (`workers`: how many per server, default 1, or 0 for `ON_DEMAND` servers: their
    scenario starts them), ready (catalogs published, backends warm) when yielded; all stopped after."""
    url = redis_url or os.environ.get("MCP_BROKER_BENCH_REDIS_URL") or DEFAULT_REDIS_URL
    say = print if announce else (lambda _msg: None)
    with ensure_redis(url, announce=say) as live_url:
        import redis

        redis.Redis.from_url(live_url).flushdb()
        stack = Stack(live_url, config_path=config)
        bench = BenchStack(stack)
        try:
            counts = {**ON_DEMAND, **(workers or {})}
            started = [server for server in stack.servers if counts.get(server, 1) > 0]
            for server in stack.servers:
                bench.scale(server, counts.get(server, 1))
            stack.start_web()
            stack.wait_for_catalog(started)
            for server in started:
                bench.warm(server)
            yield bench
        finally:
            bench.stop()
