"""`python -m broker <command>`: the broker's command line.

    python -m broker run [--config F] [--port N]       web + workers (+ embedded Redis if none answers)
    python -m broker procfile [--config F] [-o FILE]   regenerate the Procfile from the config
    python -m broker check-config [FILE]               validate the config and list its servers
    python -m broker call TOOL ['{"arg": 1}'] [--url U]  one call through the HTTP API; prints the result
    python -m broker batch calls.jsonl -o results.jsonl  submit a batch, live progress, stream the results
    python -m broker batch --from openai-batch out.jsonl  run the tool calls of an LLM batch output file
    python -m broker connect URL [--key KEY]           a stdio MCP server bridged to a running broker (hosts)

Installed as a package (`pip install .`), the same commands are `mcp-broker <command>`.

Adding a command is one module + one row of `COMMANDS`: a module under `cli/` with a
`command(args: argparse.Namespace) -> int` function (the exit code), and a `Command` row
naming it with the command's help and arguments. Only the chosen command's module is
imported (by name, from the table), so `check-config` stays fast: `call` and `batch`
would otherwise load Redis' client (`broker.results`, ~0.17 s), `run` honcho and Redis.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from client.http_api import DEFAULT_URL_HELP

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Arg:
    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    """One `add_argument(*flags, **options)` of a command."""
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    """One `python -m broker <name>`: its help, its arguments and the module whose `command` runs it."""

    name: str
    help: str
    args: tuple[Arg, ...]
    module: str

    def handler(self) -> Handler:
        handler: Handler = importlib.import_module(self.module).command
        return handler


CONFIG_ARG = arg(
    "--config", "-c", metavar="FILE", help="server config (default: $MCP_BROKER_CONFIG or mcp_servers.json)"
)
URL_ARG = arg("--url", metavar="URL", help=DEFAULT_URL_HELP)
KEY_ARG = arg("--key", metavar="KEY", help="API key, sent as a Bearer token (default: $MCP_BROKER_API_KEY)")

COMMANDS: tuple[Command, ...] = (
    Command(
        "run",
        "run web + one worker per server locally (starts an embedded Redis if none answers)",
        (CONFIG_ARG, arg("--port", "-p", type=int, help="web port (default: $PORT or 8000)")),
        "cli.devrun",
    ),
    Command(
        "procfile",
        "regenerate the Procfile (web + worker_<server> lines) from the config",
        (CONFIG_ARG,
         arg("-o", "--output", default="Procfile", metavar="FILE", help="where to write it; '-' prints it")),
        "cli.procfile",
    ),
    Command(
        "check-config",
        "validate a config file and list its servers (exit 1 and say why if it is bad)",
        (arg("file", nargs="?", help="config file (default: $MCP_BROKER_CONFIG or mcp_servers.json)"),),
        "cli.check_config",
    ),
    Command(
        "call",
        "call one tool through the broker's HTTP API and print its result as JSON (exit 1 on any error)",
        (
            arg("tool", help="namespaced tool name, e.g. time__get_current_time"),
            arg("arguments", nargs="?", default="{}",
                help="the arguments as a JSON object (default {}; '-' reads stdin)"),
            URL_ARG,
            KEY_ARG,
            arg("--timeout", type=float, metavar="S",
                help="the call's time limit in seconds (capped by max_timeout_s)"),
        ),
        "cli.call",
    ),
    Command(
        "batch",
        "submit a file of calls as one batch, show progress, write the results as JSON Lines (exit 1 if any failed)",
        (
            arg("file", help="calls, one JSON object per line ({\"tool\", \"arguments\", \"id\"?, \"timeout_s\"?}), "
                             "or a .json file holding a list or {\"calls\": [...]}; '-' reads stdin"),
            arg("-o", "--output", default="-", metavar="FILE",
                help="results file, one JSON line per call (default: stdout)"),
            URL_ARG,
            KEY_ARG,
            arg("--timeout", type=float, metavar="S", help="default time limit of each call, in seconds"),
            arg("-q", "--quiet", action="store_true", help="no progress line, only the summary"),
            arg("--from", dest="source", metavar="FORMAT",
                help="the file is a model's output, not calls: openai-batch (an OpenAI Batch API output file), "
                     "anthropic-batch (a Message Batches results file), or openai, openai-responses, anthropic, "
                     "gemini (one model output a line); results are the provider's answers, keyed by custom_id "
                     "and tool call id"),
        ),
        "cli.batch",
    ),
    Command(
        "connect",
        "serve a running broker to a stdio MCP host (Claude Desktop, Cursor, IDEs): forwards every message both "
        "ways and keeps the session across broker restarts; exits 0 when stdin closes",
        (
            arg("url", help="the broker's MCP endpoint: ws://HOST:PORT/mcp (resumes calls across restarts) or "
                            "http://HOST:PORT/mcp; /servers/<name>/mcp for one server"),
            arg("--key", metavar="KEY",
                help="API key, sent as a Bearer token (default: $MCP_BROKER_KEY, else $MCP_BROKER_API_KEY)"),
            arg("--give-up", type=float, default=60.0, metavar="S",
                help="with the broker away this long, waiting requests get an error (default 60)"),
            arg("-v", "--verbose", action="store_true", help="also log the transports' warnings on stderr"),
        ),
        "cli.connect",
    ),
)


def program_name() -> str:
    """`mcp-broker` when run as the installed console script, else `python -m broker`."""
    return "mcp-broker" if os.path.basename(sys.argv[0] or "").startswith("mcp-broker") else "python -m broker"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name(), description="mcp-broker command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for a in cmd.args:
            p.add_argument(*a.flags, **a.options)
        p.set_defaults(command_spec=cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec: Command = args.command_spec
    try:
        return int(spec.handler()(args) or 0)
    except KeyboardInterrupt:
        return 130
