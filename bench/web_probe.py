"""`python -m bench.web_cpu --probe`: the web's own CPU per request, layer by layer, from inside its process.

py-spy samples wall time of whatever holds the GIL, so on a shared 2-core box a greenlet preempted in `send()`
looks busy (35 % of a handshake profile's samples were `SocketMixin.send` while the process's system time was
12 % of its CPU), and the shares of gunicorn, Flask and the endpoints are hard to tell apart. This probe
counts CPU instead: a greenlet switch tracer charges `time.process_time()` to the greenlet that ran
(the web is one OS thread under gevent, so process time is that greenlet's), and wrappers around the
functions in `TARGETS` add the CPU their own greenlet spent between entry and exit: inclusive, but never
another greenlet's (a Redis round trip counts its send, parse and wake-up, not what ran while it waited).

It is loaded only when `MCP_BROKER_WEB_PROBE` names a file prefix (gunicorn.conf.py's `post_worker_init`):
each web worker writes its totals to `<prefix>-<pid>.json` every half second; `bench.web_cpu` reads them
before and after its measured calls and prints the difference per request (per `AsyncWorker.handle_request`).
The wrappers cost ~1-2 us each; the numbers are for comparing layers and sides, not absolute.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import greenlet

REQUEST = "AsyncWorker.handle_request"
TARGETS = (  # (module, class or None for a module function, attribute): the layers of a Streamable HTTP POST
    ("gunicorn.workers.ggevent", "GeventWorker", "handle"),  # one per connection (parse, requests, close)
    ("gunicorn.workers.base_async", "AsyncWorker", "handle_request"),
    ("gunicorn.http.parser", "Parser", "__next__"),
    ("gunicorn.http.wsgi", None, "create"),
    ("gunicorn.http.wsgi", "Response", "write"),
    ("flask.app", "Flask", "wsgi_app"),
    ("flask.app", "Flask", "request_context"),
    ("flask.ctx", "RequestContext", "push"),
    ("flask.ctx", "RequestContext", "pop"),
    ("flask.app", "Flask", "preprocess_request"),
    ("flask.app", "Flask", "dispatch_request"),
    ("flask.app", "Flask", "finalize_request"),
    ("werkzeug.wrappers.response", "Response", "__call__"),
    ("web.transports.http_handshake", "HandshakeEndpoint", "post"),
    ("web.transports.http_handshake", "HandshakeEndpoint", "session"),
    ("web.transports.http_handshake", "HttpSession", "route"),
    ("web.transports.http_handshake", None, "read_json_post"),
    ("web.transports.http_handshake", None, "client_headers"),
    ("web.transports.http_modern", "ModernEndpoint", "post"),
    ("web.transports.http_modern", None, "read_json_post"),
    ("web.transports.http_modern", None, "client_headers"),
    ("web.transports.http_modern", None, "_param_header_rejection"),
    ("broker.protocol.conversation", "Conversation", "for_modern_request"),
    ("broker.protocol.conversation", "Conversation", "handle_message"),
    ("broker.sessions", "SessionStore", "save"),
    ("broker.events", "EventLog", "append"),
    ("broker.replies", "ReplyHub", "_handle"),
    ("broker.observe", None, "web_outcome"),
    ("web.services", None, "push_calls"),
)


class Probe:
    """Own CPU per greenlet (switch tracing), and per wrapped function (inclusive, own greenlet only)."""

    def __init__(self) -> None:
        self.own: collections.defaultdict[Any, float] = collections.defaultdict(float)
        self.last = time.process_time()
        self.cpu: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()

    def trace(self, event: str, args: Any) -> None:
        if event in ("switch", "throw"):
            now = time.process_time()
            self.own[args[0]] += now - self.last
            self.last = now

    def own_now(self) -> float:
        return self.own[greenlet.getcurrent()] + time.process_time() - self.last

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            started = self.own_now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[label] += self.own_now() - started
                self.calls[label] += 1

        setattr(owner, attr, wrapped)

    def totals(self) -> dict[str, list[float]]:
        return {label: [self.calls[label], cpu] for label, cpu in self.cpu.items()}


def _owner(module: str, cls: str | None) -> Any:
    found = importlib.import_module(module)
    return getattr(found, cls) if cls else found


def start(prefix: str) -> Probe:
    """Trace and wrap in this process; write the totals to `<prefix>-<pid>.json` every half second."""
    probe = Probe()
    greenlet.settrace(probe.trace)
    for module, cls, attr in TARGETS:
        try:
            owner = _owner(module, cls)
            probe.wrap(owner, attr, f"{cls or module.rpartition('.')[2]}.{attr}")
        except (ImportError, AttributeError) as err:  # renamed since: the others are still measured
            print(f"web_probe: not measured: {module} {cls or ''} {attr}: {err!r}", flush=True)
    out = Path(f"{prefix}-{os.getpid()}.json")

    def dump() -> None:
        while True:
            time.sleep(0.5)
            out.write_text(json.dumps(probe.totals()))

    threading.Thread(target=dump, name="web-probe", daemon=True).start()
    return probe


def snapshot(prefix: str) -> dict[str, list[float]]:
    """Every web worker's totals so far, summed."""
    total: dict[str, list[float]] = {}
    for path in Path(prefix).parent.glob(f"{Path(prefix).name}-*.json"):
        for label, (calls, cpu) in json.loads(path.read_text() or "{}").items():
            seen = total.setdefault(label, [0, 0.0])
            seen[0] += calls
            seen[1] += cpu
    return total


def render(before: dict[str, list[float]], after: dict[str, list[float]]) -> str:
    """Own CPU us and calls per request between two snapshots, the costliest first."""
    requests = (after.get(REQUEST, [0, 0])[0] - before.get(REQUEST, [0, 0])[0]) or 1
    rows = []
    for label, (calls, cpu) in after.items():
        calls0, cpu0 = before.get(label, [0, 0.0])
        rows.append(((cpu - cpu0) / requests * 1e6, (calls - calls0) / requests, label))
    lines = [f"  {us:8.1f} us {per:5.2f}/request  {label}" for us, per, label in sorted(rows, reverse=True) if per]
    return f"  web own CPU per request ({requests} requests):\n" + "\n".join(lines)


@contextlib.contextmanager
def probed(prefix: str, inner: Any, title: str) -> Iterator[None]:
    """Run `inner` (a context manager) and print what the web spent per request meanwhile, layer by layer."""
    time.sleep(0.6)  # the workers' next dump: the warm-up's requests are in `before`
    before = snapshot(prefix)
    with inner:
        yield
    time.sleep(0.6)
    print(f"{title}\n{render(before, snapshot(prefix))}", flush=True)
