"""CPU per waiting request of the modern era's disconnect watch, under gevent as the web runs it.

    python -m bench.disconnect_cpu BASE_TREE      # BASE_TREE's web/transports/disconnect.py against this one's

Rounds of 64 greenlets at once, each a request that starts a watch on a real loopback socket, waits 3 ms
(a quick backend call) and stops it; printed: CPU-us per request of each side and of the same rounds with
no watch, medians of 5 alternating rounds.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import importlib.util  # noqa: E402 - after the patching, as under gunicorn's gevent worker
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

ROUNDS, AT_ONCE = 30, 64


def load(tree: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, tree / "web" / "transports" / "disconnect.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_us(module: ModuleType | None, sock: socket.socket) -> float:
    def request() -> None:
        watch: Any = module.DisconnectWatch(sock, lambda: None).start() if module else None
        gevent.sleep(0.003)
        if watch is not None:
            watch.stop()

    started = time.process_time()
    for _ in range(ROUNDS):
        gevent.joinall([gevent.spawn(request) for _ in range(AT_ONCE)])
    return (time.process_time() - started) / (ROUNDS * AT_ONCE) * 1e6


def main(argv: list[str]) -> int:
    sides = {"base": load(Path(argv[0]).resolve(), "disconnect_base"),
             "this": load(Path(__file__).resolve().parent.parent, "disconnect_this"), "no watch": None}
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    found: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(5):
        for name, module in sides.items():
            found[name].append(cpu_us(module, server))
    for name, values in found.items():
        print(f"{name}: {statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}] CPU-us per request")
    for sock in (server, client, listener):
        sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
