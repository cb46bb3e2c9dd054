"""A broker of its own for one chaos scenario, and the clients that drive it.

`Cluster`: a private redis-server (AOF on, `appendfsync everysec`: what the README asks of a deployment
that must lose nothing), workers of the ledger server and gunicorn web processes, all real processes on
127.0.0.1. The system Redis is never touched, so a scenario may kill its Redis. `supervise()` plays the
process supervisor (systemd, Kubernetes): a worker that exits by itself is started again, as it would be.

`BatchReader` reads a batch's results over HTTP the way `python -m broker batch` does (resuming a cut
stream with `?after=<seq>`), and `ResumingClient` is a WebSocket MCP client that, when its web process
dies, reconnects to another one with its `Mcp-Session-Id`. Both record what they receive in a `Tally`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import psutil
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect

from broker import keys
from tests.chaos.measure import Tally
from tests.redis_server import RedisServer
from tests.stack import Proc, Stack

ROOT = Path(__file__).resolve().parents[2]
LEDGER_SERVER = ROOT / "tests" / "servers" / "ledger.py"
SERVER = "ledger"
TOOL = f"{SERVER}__work"


def is_ok(message: dict[str, Any]) -> bool:
    """A result (not a JSON-RPC error, not a tool error)."""
    result = message.get("result")
    return not message.get("error") and isinstance(result, dict) and not result.get("isError")


def error_text(message: dict[str, Any]) -> str:
    """What an error answer says: the JSON-RPC error's message, or a tool error's text."""
    if isinstance(message.get("error"), dict):
        return str(message["error"].get("message", message["error"]))
    content = (message.get("result") or {}).get("content") or [{}]
    return str(content[0].get("text", message.get("result")))


class Cluster:
    """Redis + `workers` ledger workers + `webs` web processes; a context manager (everything stops on exit).

    `timeout_s` is 30: a worker takes up to `concurrency` messages of up to 32 calls each, and a call's time
    limit also runs while it waits for one of the session's `concurrency` slots (issue 12, finding 7); with
    the scenarios' call lengths the last of 512 calls starts within ~16 s, so a timeout in a row is a fault's
    doing, not the load's."""

    def __init__(self, workers: int = 2, webs: int = 1, concurrency: int = 16, timeout_s: float = 30,
                 retries: int = 3, aof: bool = True) -> None:
        self.concurrency = concurrency
        self.redis_server = RedisServer(aof=aof)
        self.dir = Path(tempfile.mkdtemp(prefix="mcpb-chaos-"))
        self.ledger = self.dir / "ledger.txt"
        config = self.dir / "mcp_servers.json"
        config.write_text(json.dumps({"mcpServers": {SERVER: {
            "command": "python", "args": [str(LEDGER_SERVER)], "env": {"CHAOS_LEDGER": str(self.ledger)},
            "broker": {"concurrency": concurrency, "timeout_s": timeout_s, "retries": retries},
        }}}, indent=2))
        self.stack = Stack(self.redis_server.url, config_path=config, log_dir=self.dir)
        self._want_workers, self._want_webs = workers, webs
        self.workers: list[Proc] = []
        self._worker_env: dict[int, dict[str, str]] = {}
        self.killed: set[int] = set()
        self.exits: list[tuple[int, int | None, float]] = []  # (pid, exit code, when seen) of workers that exited
        self.notes: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        try:
            self.redis_server.start()
            for _ in range(self._want_workers):
                self.start_worker()
            for _ in range(self._want_webs):
                self.stack.start_web()
            self.stack.wait_for_catalog([SERVER])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in self.stack.procs:  # a SIGSTOPped backend takes no SIGTERM: let it die with its worker
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(proc.popen.pid).children(recursive=True):
                    child.send_signal(signal.SIGCONT)
        self.stack.stop()
        self.redis_server.stop()

    # -- workers ---------------------------------------------------------------------------------------
    def start_worker(self, env: dict[str, str] | None = None) -> Proc:
        proc = self.stack.start_worker(SERVER, concurrency=self.concurrency, env=env)
        self.workers.append(proc)
        self._worker_env[proc.popen.pid] = dict(env or {})
        return proc

    def kill_worker(self, proc: Proc) -> None:
        """SIGKILL a worker (its whole process group: the Celery process; its backend dies with it)."""
        self.killed.add(proc.popen.pid)
        proc.stop(signal.SIGKILL)

    def supervise(self) -> None:
        """Start again every worker that exited by itself (not one this scenario killed), as a supervisor would."""
        for proc in list(self.workers):
            if proc.alive() or proc.popen.pid in self.killed:
                continue
            self.killed.add(proc.popen.pid)  # handled
            code = proc.popen.returncode
            self.exits.append((proc.popen.pid, code, time.time()))
            self.start_worker(self._worker_env.get(proc.popen.pid))
            self.notes.append(f"worker {proc.popen.pid} exited ({code}) at {time.strftime('%H:%M:%S')}; restarted")

    def env_of(self, worker: Proc) -> dict[str, str]:
        return dict(self._worker_env.get(worker.popen.pid, {}))

    def pids_with(self, env: dict[str, str]) -> set[int]:
        """Every worker (dead or alive) started with `env`: one and the supervisor's restarts of it."""
        return {pid for pid, started_with in self._worker_env.items() if started_with == env}

    def live_workers(self) -> list[Proc]:
        return [p for p in self.workers if p.alive()]

    def backend_of(self, worker: Proc) -> psutil.Process | None:
        """The ledger server process a worker runs (its stdio child), if it has one now."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(worker.popen.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if any("ledger.py" in part for part in child.cmdline()):
                        return child
        return None

    # -- web ---------------------------------------------------------------------------------------------
    def http_url(self, index: int = 0) -> str:
        return self.stack.http_url(index)

    def kill_web(self, index: int) -> None:
        """SIGKILL a web process (gunicorn master and worker, one process group): clients connected to it lose
        their sockets mid-call."""
        port = self.stack.web_ports[index]
        proc = self.stack.web_proc(port)
        proc.stop(signal.SIGKILL)
        self.stack.procs.remove(proc)

    def restart_web(self, index: int) -> None:
        """Start a web process on a killed one's port, as its supervisor would."""
        self.stack.start_web(self.stack.web_ports[index])

    def submit_batch(self, keys_: list[str], seconds: float) -> str:
        calls = [{"tool": TOOL, "arguments": {"key": k, "seconds": seconds}, "id": k} for k in keys_]
        response = httpx2.post(f"{self.http_url()}/v1/batches", json={"calls": calls}, timeout=120)
        if response.status_code != 202:
            raise RuntimeError(f"batch refused: {response.status_code} {response.text[:300]}")
        return str(response.json()["batch_id"])

    def wait(self, condition: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
        """Wait for `condition` (supervising meanwhile); False when `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.supervise()
            if condition():
                return True
            time.sleep(poll)
        return condition()


class BatchReader(threading.Thread):
    """Reads a batch's results stream to its end, resuming with `?after=` whenever it is cut or refused."""

    def __init__(self, base_url: str, batch_id: str, tally: Tally, timeout_s: float) -> None:
        super().__init__(name=f"batch-reader-{batch_id}", daemon=True)
        self.base_url, self.batch_id, self.tally = base_url, batch_id, tally
        self.deadline = time.monotonic() + timeout_s
        self.after: str | None = None
        self.reconnects = 0
        self.finished = threading.Event()
        self.final_state: str | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        url = f"{self.base_url}/v1/batches/{self.batch_id}"
        with httpx2.Client(timeout=httpx2.Timeout(10, read=20)) as client:
            while not self._halt.is_set() and time.monotonic() < self.deadline:
                try:
                    self._read(client, url)
                    status = client.get(url)
                    if status.status_code == 200 and status.json().get("state") != "running":
                        self._read(client, url, wait=False)  # anything written after our stream ended
                        self.final_state = status.json()["state"]
                        break
                except (httpx2.HTTPError, ValueError):
                    pass
                self.reconnects += 1
                time.sleep(0.2)
        self.finished.set()

    def _read(self, client: httpx2.Client, url: str, wait: bool = True) -> None:
        params: dict[str, str] = {} if wait else {"wait": "0"}
        if self.after:
            params["after"] = self.after
        with client.stream("GET", f"{url}/results", params=params) as response:
            if response.status_code != 200:
                return
            for line in response.iter_lines():
                if not line.strip():
                    continue
                outcome = json.loads(line)
                self.after = outcome["seq"]
                self.tally.receive(str(outcome.get("id")), is_ok(outcome), error=error_text(outcome))


def _open(url: str, headers: dict[str, str] | None = None) -> ClientConnection:
    """A WebSocket on the `mcp` subprotocol (entered as a context, as websockets 17 wants; `close()` ends it)."""
    return connect(url, subprotocols=["mcp"], open_timeout=10,  # type: ignore[list-item]
                   additional_headers=headers).__enter__()


class ResumingClient:
    """An MCP client on a WebSocket that resumes its session on `target` when its connection dies."""

    def __init__(self, url: str, tally: Tally) -> None:
        self.tally = tally
        self.target = url
        self.connected = threading.Event()
        self.reconnects = 0
        self._halt = threading.Event()
        self._ws = _open(url)
        self.session_id = self._ws.response.headers["Mcp-Session-Id"]
        self._ws.send(json.dumps({"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "chaos", "version": "1"}}}))
        while json.loads(self._ws.recv(timeout=15)).get("id") != "init":
            pass
        self._ws.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        self.connected.set()
        self._reader = threading.Thread(target=self._read, name=f"ws-{self.session_id[:8]}", daemon=True)
        self._reader.start()

    def call(self, keys_: list[str], seconds: float) -> None:
        for key in keys_:
            self._ws.send(json.dumps({"jsonrpc": "2.0", "id": key, "method": "tools/call",
                                      "params": {"name": TOOL, "arguments": {"key": key, "seconds": seconds}}}))

    def close(self) -> None:
        self._halt.set()
        with contextlib.suppress(Exception):
            self._ws.close()
        self._reader.join(5)

    def _read(self) -> None:
        while not self._halt.is_set():
            try:
                message = json.loads(self._ws.recv(timeout=0.5))
            except TimeoutError:
                continue
            except (ConnectionClosed, OSError):
                if self._halt.is_set():
                    return
                self.connected.clear()
                self._resume()
                continue
            if "id" in message and "method" not in message:
                self.tally.receive(str(message["id"]), is_ok(message), error=error_text(message))

    def _resume(self) -> None:
        """Reconnect to the current target with the session id, until it works (or we are told to stop)."""
        while not self._halt.is_set():
            try:
                self._ws = _open(self.target, {"Mcp-Session-Id": self.session_id})
            except (OSError, InvalidHandshake, TimeoutError):
                time.sleep(0.1)
                continue
            self.reconnects += 1
            self.connected.set()
            return


def registered(cluster: Cluster, client: ResumingClient, sent: list[str]) -> bool:
    """Every call `client` sent is on record in Redis (pending in its session, by request id) or answered."""
    pending = cluster.stack.redis().hvals(keys.session_calls(client.session_id))
    rids = {str(json.loads(entry).get("rid")) for entry in pending}
    return all(key in rids for key in client.tally.unanswered(sent))


class Trickle(threading.Thread):
    """Steady traffic: the tally's calls submitted as small batches at `per_s` calls a second, each batch read
    to its end by a `BatchReader`, until all are submitted or `enough()` is called (the tally then keeps only
    the calls made). Quacks like one BatchReader for the scenarios (`finished`, `stop`, ...)."""

    def __init__(self, cluster: Cluster, tally: Tally, seconds: float, per_s: float, timeout_s: float,
                 chunk: int = 10) -> None:
        super().__init__(name="trickle", daemon=True)
        self.cluster, self.tally, self.seconds, self.per_s, self.chunk = cluster, tally, seconds, per_s, chunk
        self.timeout_s = timeout_s
        self.readers: list[BatchReader] = []
        self.finished = threading.Event()
        self.submitted = 0
        self._halt = threading.Event()
        self._enough = threading.Event()

    def enough(self) -> None:
        """Submit no more calls (the ones submitted are still read to their end)."""
        self._enough.set()

    @property
    def reconnects(self) -> int:
        return sum(r.reconnects for r in self.readers)

    @property
    def final_state(self) -> str | None:
        states = {r.final_state for r in self.readers}
        return f"{len(self.readers)} batches done" if states == {"done"} else None

    def stop(self) -> None:
        self._halt.set()
        for reader in self.readers:
            reader.stop()

    def run(self) -> None:
        begin = time.monotonic()
        for start in range(0, len(self.tally.keys), self.chunk):
            due = begin + start / self.per_s
            while not self._halt.is_set() and not self._enough.is_set() and time.monotonic() < due:
                time.sleep(min(0.05, due - time.monotonic()))
            if self._halt.is_set() or self._enough.is_set():
                break
            chunk = self.tally.keys[start : start + self.chunk]
            batch_id = self.cluster.submit_batch(chunk, self.seconds)
            self.submitted += len(chunk)
            reader = BatchReader(self.cluster.http_url(), batch_id, self.tally, self.timeout_s)
            reader.start()
            self.readers.append(reader)
        self.tally.truncate(self.submitted)
        for reader in self.readers:
            reader.finished.wait(max(0.0, self.timeout_s - (time.monotonic() - begin)))
        self.finished.set()
