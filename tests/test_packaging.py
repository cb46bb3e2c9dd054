"""The project as a package: the wheel holds every package and data file, and `mcp-broker` runs from it.

The wheel is built from a copy of what the build reads (pyproject.toml, README.md, requirements.txt and
the five packages), installed into a fresh venv, and run from outside the checkout, so nothing can come
from the repository by accident: a package missing from `[tool.setuptools.packages.find]` or a data file
missing from `package-data` (web/status.html) fails here.

Two depths. The default suite installs the wheel with `--no-deps` and lends the fresh venv the test
venv's site-packages for the dependencies (one `.pth` line): ~15 s, the wheel's own contents checked.
`make install-check` (`-m install`, run by CI) installs the wheel with its dependencies from the index into
a fresh venv of its own, as `pip install` / `pipx install` would: minutes, so not in the default suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.stack import ROOT, Stack

PACKAGES = ("broker", "web", "workers", "client", "cli")
BUILD_FILES = ("pyproject.toml", "README.md", "requirements.txt")


def run(argv: list[str], cwd: Path, timeout: float = 300, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_FILES:
        shutil.copy2(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(out),
         str(source)], cwd=out)
    [built] = out.glob("mcp_broker-*.whl")
    return built


def fresh_venv(where: Path, with_pip: bool) -> Path:
    """A venv of the base interpreter, without this venv's packages; its python."""
    run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(where)], cwd=where.parent)
    return where / "bin" / "python"


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel in a fresh venv (no deps), the test venv's site-packages lent for the dependencies: its bin/."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    python = fresh_venv(venv, with_pip=False)
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "-q", str(wheel)], cwd=venv)
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  cwd=venv).stdout.strip()
    Path(purelib, "_mcp_broker_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    yield venv / "bin"


def test_the_wheel_holds_every_package_and_the_status_page(wheel: Path, installed: Path) -> None:
    outside = installed.parent
    code = ("import web.status, cli.connect, client.bridge, workers.app, broker.config; "
            "print(web.status.__file__); print(web.status.STATUS_PAGE.read_text()[:15])")
    done = run([str(installed / "python"), "-c", code], cwd=outside)
    where, page = done.stdout.splitlines()[:2]
    assert where.startswith(str(outside)) and not where.startswith(str(ROOT)), where
    assert page.lower().startswith("<!doctype html")


def test_the_console_script_runs_every_command_from_outside_the_checkout(installed: Path) -> None:
    script = str(installed / "mcp-broker")
    usage = run([script, "--help"], cwd=installed.parent).stdout
    assert usage.startswith("usage: mcp-broker")
    for command in ("run", "procfile", "check-config", "call", "batch", "connect"):
        assert command in usage
    assert "ws://HOST:PORT/mcp" in run([script, "connect", "--help"], cwd=installed.parent).stdout
    checked = run([script, "check-config", str(ROOT / "mcp_servers.json")], cwd=installed.parent).stdout
    assert "time" in checked


def test_the_installed_console_script_bridges_a_stdio_host_to_the_broker(installed: Path, stack: Stack) -> None:
    params = StdioServerParameters(command=str(installed / "mcp-broker"), args=["connect", stack.ws_url()],
                                   cwd=str(installed.parent))

    async def scenario() -> None:
        async with Client(params, read_timeout_seconds=60, mode="legacy") as client:
            assert any(tool.name == "echo__echo" for tool in (await client.list_tools()).tools)
            echoed = await client.call_tool("echo__echo", {"text": "from the wheel"})
            assert echoed.structured_content == {"result": "from the wheel"}

    anyio.run(scenario)


@pytest.mark.install
def test_pip_install_of_the_wheel_with_its_dependencies_gives_a_working_mcp_broker(
        wheel: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "v", with_pip=True)
    run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheel)], cwd=tmp_path,
        timeout=900)
    script = str(python.parent / "mcp-broker")
    assert run([script, "--help"], cwd=tmp_path).stdout.startswith("usage: mcp-broker")
    assert "ws://HOST:PORT/mcp" in run([script, "connect", "--help"], cwd=tmp_path).stdout
    done = subprocess.run([script, "connect", "ws://127.0.0.1:9/mcp"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and "cannot reach the broker" in done.stderr and "Traceback" not in done.stderr
