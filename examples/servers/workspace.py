"""An MCP server whose results are the large ones agents really get: a directory tree, a log, a JSON array,
a web page as text. For `make bench` (scenario `context_results`) and the shaping tests.

Each result is made the way the published server that has such a tool makes it, from real data on any
machine with the broker's virtualenv, so the figures are reproducible on CI:

- `directory_tree(package)`: the official filesystem server's `directory_tree` format (a pretty-printed
  JSON array of `{"name", "type", "children"}`) over an installed package's real directory;
- `read_log(lines)`: an nginx access log (combined format), generated from a fixed seed: a real log of
  that length is not on every machine;
- `list_packages()`: the virtualenv's distributions as a JSON array of uniform records (pretty-printed,
  as most HTTP APIs' MCP wrappers return their JSON);
- `list_tools_of(catalog)`: a published server's `tools/list` dump (`../shared/catalogs/`) as a nested,
  irregular JSON array;
- `fetch_page(module)`: a web page as text, as fetch servers give it: the HTML documentation page pydoc
  renders for a stdlib module, reduced to its text.

Results carry `content` only (`structured_output=False`), like those servers.
"""

from __future__ import annotations

import html.parser
import importlib
import importlib.metadata
import importlib.util
import json
import os
import pydoc
import random
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer

server = MCPServer("workspace")
ROOT = Path(__file__).resolve().parents[2]


def _tree(path: Path) -> list[dict[str, Any]]:
    entries = []
    for child in sorted(path.iterdir(), key=lambda p: p.name):
        if child.name == "__pycache__":
            continue
        entry: dict[str, Any] = {"name": child.name, "type": "directory" if child.is_dir() else "file"}
        if child.is_dir():
            entry["children"] = _tree(child)
        entries.append(entry)
    return entries


@server.tool(structured_output=False)
def directory_tree(package: str = "pip") -> str:
    """A recursive tree of an installed package's directory, as JSON."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"no installed package {package!r}")
    return json.dumps(_tree(Path(next(iter(spec.submodule_search_locations)))), indent=2)


PATHS = ["/", "/api/v1/items", "/api/v1/items/{n}", "/api/v1/users/{n}/orders", "/static/app.{n}.js",
         "/login", "/api/v1/search?q=term{n}", "/healthz", "/api/v1/cart", "/images/p{n}.webp"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
          "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
          "curl/8.11.0", "kube-probe/1.31", "python-httpx/0.28.1"]


@server.tool(structured_output=False)
def read_log(lines: int = 2000) -> str:
    """The last `lines` lines of the web server's access log."""
    rng = random.Random(16)
    out = []
    for i in range(max(1, min(lines, 100_000))):
        path = rng.choice(PATHS).format(n=rng.randint(1, 9999))
        status = rng.choices([200, 201, 204, 301, 304, 404, 500, 502], [70, 3, 2, 2, 10, 8, 3, 2])[0]
        out.append(f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)} - - "
                   f"[07/Dec/2026:{9 + i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d} +0000] "
                   f"\"{rng.choice(['GET'] * 6 + ['POST', 'PUT', 'DELETE'])} {path} HTTP/1.1\" {status} "
                   f"{rng.randint(0, 48_000)} \"-\" \"{rng.choice(AGENTS)}\" rt={rng.random() * 0.8:.3f}")
    return "\n".join(out)


@server.tool(structured_output=False)
def list_packages() -> str:
    """Every installed Python distribution: name, version, summary, license, requirement count."""
    rows = []
    for dist in importlib.metadata.distributions():
        meta = dist.metadata
        rows.append({"name": meta["Name"], "version": dist.version, "summary": (meta["Summary"] or "")[:120],
                     "license": (meta["License-Expression"] or meta["License"] or "")[:40],
                     "requires": len(dist.requires or [])})
    rows.sort(key=lambda row: str(row["name"]).lower())
    return json.dumps(rows, indent=2)


def _catalogs() -> Path:
    found = next((p / "shared" / "catalogs" for p in ROOT.parents if (p / "shared" / "catalogs").is_dir()), None)
    return found or ROOT.parent / "shared" / "catalogs"


@server.tool(structured_output=False)
def list_tools_of(catalog: str = "server-github") -> str:
    """A published MCP server's tool definitions, as JSON."""
    path = _catalogs() / f"{Path(catalog).name}.json"
    return json.dumps(json.loads(path.read_text(encoding="utf-8"))["tools"], indent=2)


class _Text(html.parser.HTMLParser):
    """HTML to text, roughly as fetch tools do it: text nodes, a line break per block element."""

    BLOCKS = {"p", "div", "br", "tr", "li", "dt", "dd", "h1", "h2", "h3", "h4", "pre", "table"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.parts).splitlines())
        return "\n".join(line for line in lines if line)


@server.tool(structured_output=False)
def fetch_page(module: str = "socket") -> str:
    """A documentation web page, as text."""
    page = pydoc.HTMLDoc().page(module, pydoc.HTMLDoc().docmodule(importlib.import_module(module)))
    parser = _Text()
    parser.feed(page)
    return parser.text()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    server.run()
