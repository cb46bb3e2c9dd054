"""Pooled HTTP clients that pause between requests, against gunicorn run with a checkout's gunicorn.conf.py.

    python -m bench.keepalive TREE [TREE ...]      # alternating, each its own gunicorn

40 clients (httpx, as the SDK's client: idle pooled connections kept 5 s) send 8 POSTs each, pausing 1.5-2.5 s
between them, to a trivial WSGI app under the tree's gunicorn settings (gevent worker). Printed per run: the
web's CPU per request (master and worker), the connections the clients opened, and failed requests. With
gunicorn's 2 s keep-alive, a connection idle for 2 s is closed under its client, which opens another one
(or, when its POST crosses the close, fails it: a ReadError, which the client does not retry).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

APP = '''def app(environ, start_response):
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]
'''
CLIENTS, REQUESTS = 40, 8


def run(tree: Path) -> str:
    import httpx2
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kaapp.py").write_text(APP)
        probe = socket.create_server(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        env = {**os.environ, "PYTHONPATH": tmp, "PORT": str(port)}
        proc = subprocess.Popen([str(tree / ".venv" / "bin" / "gunicorn"), "-c", str(tree / "gunicorn.conf.py"), "-k",
                                 "gevent", "-w", "1", "-b", f"127.0.0.1:{port}", "kaapp:app"], cwd=tree, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            time.sleep(1)  # the worker is up (the master listens first)
            procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            lock, connections, errors, done = threading.Lock(), set(), [], [0]

            def client(seed: int) -> None:
                pause = random.Random(seed)
                with httpx2.Client(timeout=10) as http:
                    for _ in range(REQUESTS):
                        try:
                            answer = http.post(f"http://127.0.0.1:{port}/mcp", content=b"{}",
                                               headers={"Content-Type": "application/json"})
                            with lock:
                                connections.add(answer.extensions["network_stream"].get_extra_info("client_addr"))
                                done[0] += 1
                        except Exception as err:  # counted, by kind
                            with lock:
                                errors.append(type(err).__name__)
                        time.sleep(pause.uniform(1.5, 2.5))

            before = sum(sum(p.cpu_times()[:2]) for p in procs)
            threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            used = sum(sum(p.cpu_times()[:2]) for p in procs) - before
        finally:
            proc.terminate()
            proc.wait(10)
    return (f"{tree}: web CPU {used / max(1, done[0]) * 1e3:.3f} ms a request, {done[0]} ok, {len(errors)} failed "
            f"{sorted(set(errors))}, {len(connections)} connections for {CLIENTS} clients")


def main(argv: list[str] | None = None) -> int:
    trees = [Path(t).resolve() for t in (argv if argv is not None else sys.argv[1:])] or [Path(".").resolve()]
    for _ in range(2):
        for tree in trees:
            print(run(tree), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
