"""The third-party software some tests run, installed on first use into git-ignored folders, and its prefetch.

Four installs: the TypeScript SDK for the cancellation client (`tests/.cancel-node`), the MCP Inspector and
mcp-remote (`make hosts`: `.conformance/hosts`), the TypeScript SDK for the OAuth client (`tests/.oauth-node`)
and the fastmcp venv (`.venv-fastmcp`). On a clean clone each was built in its first test's setup, while
nothing else ran: the fastmcp venv alone took 24 s of the default suite's wall time. `prefetch()` (called by
tests/conftest.py once the session's tests are collected) starts the ones those tests need in one background
thread, in the order their modules run, so they build while the tests before them run (mostly waiting on
their brokers). A fixture asks `installed(name)`: it waits for that build, or builds it at once when none
was started (a narrowed run), and a failed build raises in that fixture as it did before.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CANCEL_NODE = ROOT / "tests" / ".cancel-node"
CANCEL_PACKAGE = ROOT / "tests" / "clients" / "cancel-package.json"
OAUTH_NODE = ROOT / "tests" / ".oauth-node"
OAUTH_PACKAGE = ROOT / "tests" / "oauth_client" / "package.json"
HOSTS_DIR = ROOT / ".conformance" / "hosts"
FASTMCP_VENV = ROOT / ".venv-fastmcp"
FASTMCP_REQUIREMENTS = ROOT / "tests" / "servers" / "fastmcp-requirements.txt"


def _npm_install(folder: Path, package: Path) -> Path:
    """npm-install `package` (a package.json) into `folder` once: a stamp holds the package file's digest."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        raise RuntimeError("node and npm are needed (Node 20 is on the machine and in CI)")
    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:16]
    stamp = folder / ".installed"
    if not (stamp.exists() and stamp.read_text().strip() == digest):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package, folder / "package.json")
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder, check=True,
                       capture_output=True, text=True, timeout=300)
        stamp.write_text(digest)
    return folder


def cancel_node() -> Path:
    return _npm_install(CANCEL_NODE, CANCEL_PACKAGE)


def oauth_node() -> Path:
    return _npm_install(OAUTH_NODE, OAUTH_PACKAGE)


def hosts() -> Path:
    """`make hosts`' target: Node 22, the MCP Inspector and mcp-remote, pinned in the Makefile."""
    done = subprocess.run(["make", "-s", ".conformance/hosts/.installed"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"make hosts failed:\n{done.stdout}\n{done.stderr}")
    return HOSTS_DIR


def fastmcp_venv() -> Path:
    """The python of the fastmcp venv (fastmcp-tasks excludes the redis the broker pins), built with
    `python -m venv` + pip from the registry (pinned requirements) when missing."""
    python = FASTMCP_VENV / "bin" / "python"
    check = [str(python), "-c", "import fastmcp_tasks"]
    if not python.exists() or subprocess.run(check, capture_output=True).returncode != 0:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(FASTMCP_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(FASTMCP_REQUIREMENTS)], check=True,
                       timeout=900)
    return python


INSTALLS: dict[str, tuple[Callable[[], Path], str]] = {
    "cancel-node": (cancel_node, "test_cancellation.py"),
    "hosts": (hosts, "test_connect_hosts.py"),
    "oauth-node": (oauth_node, "test_oauth_flow.py"),
    "fastmcp": (fastmcp_venv, "test_upstream_tasks.py"),
}
"""name → (the install, the test module that needs it first); the modules run in this order."""

_builds: dict[str, Future[Path]] = {}
_lock = threading.Lock()
_stop = threading.Event()


def _claim(name: str) -> Future[Path] | None:
    """A new future for `name` if nobody claimed its build yet (whoever claims it builds it), else None."""
    with _lock:
        if name in _builds:
            return None
        _builds[name] = Future()
        return _builds[name]


def _build(name: str, future: Future[Path]) -> None:
    try:
        future.set_result(INSTALLS[name][0]())
    except BaseException as err:  # handed to the fixture that waits for it
        future.set_exception(err)


def prefetch(modules: set[str]) -> None:
    """Start building, in one background thread, the installs the collected test modules need."""
    wanted = [name for name, (_, module) in INSTALLS.items() if module in modules]

    def run() -> None:
        for name in wanted:
            if _stop.is_set():
                return
            if (future := _claim(name)) is not None:
                _build(name, future)

    if wanted:
        threading.Thread(target=run, name="prefetch-installs", daemon=True).start()


def installed(name: str) -> Path:
    """What install `name` made: the background build's (waited for) or, when none was started, built now."""
    if (future := _claim(name)) is not None:
        _build(name, future)
    with _lock:
        future = _builds[name]
    return future.result()


def finish() -> None:
    """Start no more builds and wait for the one under way (the session is ending: no half-built folder)."""
    _stop.set()
    with _lock:
        running = list(_builds.values())
    for future in running:
        future.exception()  # waits; a failure was (or would have been) reported by its fixture
