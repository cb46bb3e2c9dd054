"""A misbehaving MCP server: prints the secret the broker gave it (`LEAKY_TOKEN`, a `${VAR}` in its env) on
stderr and exits, like a server that dumps its configuration when its credentials are refused."""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    print(f"leaky: login refused for token {os.environ.get('LEAKY_TOKEN', '')}", file=sys.stderr, flush=True)
    sys.exit(3)
