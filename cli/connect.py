"""`mcp-broker connect URL [--key KEY]`: serve a running broker to a stdio host (client/bridge.py does the work).

The key comes from `--key`, else `$MCP_BROKER_KEY`, else `$MCP_BROKER_API_KEY`: a desktop config can then
keep it in its `env` block instead of the command line (which other users of the machine can read in `ps`).

Exit codes: 0 when the host closes stdin; 2 for a URL that is not ws(s):// or http(s)://; 1 when the broker
cannot be reached or refuses the key at start. Every refusal is one line on stderr, never a traceback:
a stdio host shows its user only stderr.
"""

from __future__ import annotations

import argparse
import logging
import os

import anyio
from mcp.server.stdio import stdio_server

from client.bridge import Bridge, say_on_stderr
from client.upstream import BrokerRefused, BrokerUnreachable, upstream_for

KEY_VARIABLES = ("MCP_BROKER_KEY", "MCP_BROKER_API_KEY")


def command(args: argparse.Namespace) -> int:
    key = args.key or next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)
    try:
        upstream = upstream_for(args.url, key)
    except ValueError as err:
        say_on_stderr(str(err))
        return 2
    # The SDK's and websockets' own log lines would interleave with ours on stderr; ours say what matters.
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.CRITICAL, format="%(name)s: %(message)s")
    bridge = Bridge(upstream, give_up_s=args.give_up)
    return anyio.run(_serve, bridge)


async def _serve(bridge: Bridge) -> int:
    try:
        await bridge.check()
    except BrokerRefused as err:
        hint = " (check --key or $MCP_BROKER_KEY)" if err.status in (401, 403) else ""
        say_on_stderr(f"the broker at {bridge.upstream.url} refused the connection: {err}{hint}")
        return 1
    except BrokerUnreachable as err:
        say_on_stderr(f"cannot reach the broker at {bridge.upstream.url}: {err} (is it running? `mcp-broker run`)")
        return 1
    async with stdio_server() as (read, write):
        return await bridge.run(read, write)
