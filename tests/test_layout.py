"""The layout's rules, checked from the source (docs/ARCHITECTURE.md says why each holds).

Every `import` of the project's own packages is read with `ast` — function-level ones too, so a
cycle cannot hide behind a deferred import — and the rules are asserted on that graph:
no import cycles; `broker/` (the domain) never imports the tiers above it; the web tier reaches
`workers/` only through its dispatch module; modules stay small enough to read.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("broker", "web", "workers", "client", "cli")
MAX_LINES = 400
# broker/__main__.py is the entry point of `python -m broker`, not domain code: it only calls cli/.
ENTRY_POINTS = {"broker.__main__"}
# What the web tier may import of workers/: sending a call by task name, nothing that runs one.
WEB_MAY_IMPORT_OF_WORKERS = {"workers", "workers.dispatch", "workers.names"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else ():
            found[_module_name(path)] = path
    return found


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _typing_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:`: names for annotations, never imported when the code runs."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            skipped.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return skipped


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module → the project modules it imports when it runs (anywhere in it, at any depth; not the
    `if TYPE_CHECKING:` names a handler uses to annotate the conversation it is handed)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        typing_only = _typing_only(tree)
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, path.name == "__init__.py", node)
                # `from pkg import mod` imports pkg.mod when that is a module, else a name of pkg.
                candidates = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                              for alias in node.names]
            else:
                continue
            for candidate in candidates:
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name:
                    targets.add(candidate)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _graph() -> dict[str, set[str]]:
    return _imports(_modules())


def _package_import(package_imports: dict[str, set[str]], parent: str, child: str) -> bool:
    """A package's `__init__` importing its own submodule is not a cycle a reader trips on: Python
    finishes the submodule first. Every other edge counts."""
    return parent.count(".") < child.count(".") and child.startswith(parent + ".") and parent in package_imports


def test_no_import_cycles() -> None:
    graph = _graph()
    packages = {name for name, path in _modules().items() if path.name == "__init__.py"}
    pruned = {name: {t for t in targets if not (name in packages and _package_import(graph, name, t))}
              for name, targets in graph.items()}
    assert _cycles(pruned) == []


def test_the_domain_imports_no_tier_above_it() -> None:
    above = ("web", "workers", "client", "cli")
    offenders = {name: sorted(t for t in targets if t.split(".")[0] in above)
                 for name, targets in _graph().items()
                 if name.split(".")[0] == "broker" and name not in ENTRY_POINTS}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_web_tier_reaches_workers_only_through_dispatch() -> None:
    offenders = {name: sorted(t for t in targets if t.startswith("workers") and t not in WEB_MAY_IMPORT_OF_WORKERS)
                 for name, targets in _graph().items() if name.split(".")[0] == "web"}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_client_and_cli_stay_outside_the_server_tiers() -> None:
    """A program using the client library does not import Flask, Celery or the broker's domain."""
    offenders = {name: sorted(t for t in targets if t.split(".")[0] in ("web", "workers"))
                 for name, targets in _graph().items() if name.split(".")[0] == "client"}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_modules_are_small_or_say_why() -> None:
    """A module over MAX_LINES lines must say in its docstring why it is one module ("one module because")."""
    too_long = {}
    for name, path in _modules().items():
        text = path.read_text()
        lines = text.count("\n")
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_LINES and "one module because" not in docstring.lower():
            too_long[name] = lines
    assert too_long == {}


def test_importing_the_web_app_loads_no_worker_code() -> None:
    """The web tier sends calls by task name: loading it must not load what runs them (the tasks, the
    backend sessions, the worker's runtime) — measured in a fresh interpreter, so nothing else loaded them.
    (The SDK's client modules are not in the list: `import mcp` itself loads them.)"""
    probe = (
        "import sys, web.app\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('workers.tasks', 'workers.execute',"
        " 'workers.backends', 'workers.runtime')))\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""
