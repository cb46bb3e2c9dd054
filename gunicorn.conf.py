"""gunicorn settings for the web tier (`gunicorn -c gunicorn.conf.py 'web.app:create_app()'`).

gevent: one OS thread serves thousands of sockets (measured in ../shared/ENGINEERING_NOTES.md);
`worker_connections` must exceed the socket count or HTTP requests starve. With no API keys
configured the broker must not be reachable from other machines, so it binds 127.0.0.1 and says so.
The keys are loaded here exactly as the app loads them, so a setting that holds no usable key (`","`,
`{"keys": []}`) stops gunicorn before it binds anything, instead of binding 0.0.0.0 for a keyless app.
This file is a convenience, not the guard: the app itself refuses non-loopback peers without keys
(web/auth.py), since gunicorn reads this file only from its working directory.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from broker.security import KeysConfigError, load_keyring

try:
    _keys = load_keyring().enabled
except KeysConfigError as _err:
    raise SystemExit(f"mcp-broker: {_err}") from None
_port = os.environ.get("PORT", "8000")
_host = os.environ.get("MCP_BROKER_BIND_HOST") or ("0.0.0.0" if _keys else "127.0.0.1")

bind = f"{_host}:{_port}"
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = int(os.environ.get("MCP_BROKER_WORKER_CONNECTIONS", "3000"))
graceful_timeout = 10
timeout = 60
# How long an idle keep-alive connection waits for its next request: longer than HTTP clients keep an idle pooled
# connection (httpx, so the SDK's client: 5 s; undici 4 s; aiohttp 15 s), so the client closes it first. gunicorn's
# 2 s closed connections the client still held: its next POST failed (httpx ReadError, not retried: a POST may have
# run) or opened a connection again (accept, a greenlet, the HTTP parse) whenever a client paused 2-5 s between calls
# (`python -m bench.keepalive`). A stopping worker waits for an idle one like any other, up to graceful_timeout, as it
# already did for every open SSE stream and WebSocket.
keepalive = 20


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def on_starting(server):
    """A command line may say `-b 0.0.0.0:$PORT` (the Procfile does, for platforms), and it wins over `bind`
    above: without keys, narrow every address to loopback here, before the sockets are opened. An operator
    who guards the broker some other way says so with MCP_BROKER_BIND_HOST."""
    if _keys or os.environ.get("MCP_BROKER_BIND_HOST"):
        return
    narrowed = []
    for address in server.cfg.bind:
        host, sep, port = address.rpartition(":")
        if address.startswith("unix:") or not sep or host in LOOPBACK:
            narrowed.append(address)
        else:
            narrowed.append(f"127.0.0.1:{port}")
    if narrowed != list(server.cfg.bind):
        server.log.warning("mcp-broker: no API keys configured: binding %s instead of %s",
                           ", ".join(narrowed), ", ".join(server.cfg.bind))
        server.cfg.set("bind", narrowed)


def post_worker_init(worker):
    """`python -m bench.web_cpu --probe` only: MCP_BROKER_WEB_PROBE names where the worker writes its own CPU
    per layer (bench/web_probe.py). Unset (always, outside that bench), nothing is loaded."""
    probe = os.environ.get("MCP_BROKER_WEB_PROBE")
    if probe:
        from bench.web_probe import start

        start(probe)


def worker_exit(server, worker):
    """A worker leaving (a deploy's graceful restart, a max-requests recycle): its reply hub's held writes go out
    first (`web.services.stop_services`)."""
    from web.services import stop_services

    stop_services()


def when_ready(server):
    where = ", ".join(server.cfg.bind)
    if not _keys:
        server.log.warning(
            "mcp-broker: no API keys configured (MCP_BROKER_API_KEYS / MCP_BROKER_KEYS_FILE): listening on "
            "%s only; set keys to serve other machines", where)
    else:
        server.log.info("mcp-broker: API keys required; listening on %s", where)
# gunicorn >= 25 opens a control socket at ~/.gunicorn/gunicorn.ctl by default: one path for every gunicorn of
# the user, so a second broker on the host took the first one's. The broker is not operated through gunicornc.
control_socket_disable = True
