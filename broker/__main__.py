"""`python -m broker <command>`: the broker's command line.

    python -m broker run [--config F] [--port N]       web + workers (+ embedded Redis if none answers)
    python -m broker procfile [--config F] [-o FILE]   regenerate the Procfile from the config
    python -m broker check-config [FILE]               validate the config and list its servers

Adding a command is one function + one registration: a function that takes the
parsed `argparse.Namespace` and returns an exit code, decorated with
`@command(name, help, arg(...), ...)`. Import heavy modules inside the function
so `check-config` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    name: str
    help: str
    args: tuple[Arg, ...]
    handler: Handler


COMMANDS: dict[str, Command] = {}

CONFIG_ARG = arg(
    "--config", "-c", metavar="FILE", help="server config (default: $MCP_BROKER_CONFIG or mcp_servers.json)"
)


def command(name: str, help: str, *args: Arg) -> Callable[[Handler], Handler]:
    """Register `handler` as `python -m broker <name>`."""

    def register(handler: Handler) -> Handler:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} registered twice")
        COMMANDS[name] = Command(name, help, args, handler)
        return handler

    return register


# ---------------------------------------------------------------- commands
@command(
    "run",
    "run web + one worker per server locally (starts an embedded Redis if none answers)",
    CONFIG_ARG,
    arg("--port", "-p", type=int, help="web port (default: $PORT or 8000)"),
)
def cmd_run(args: argparse.Namespace) -> int:
    from broker.devrun import run

    return run(args.config, args.port)


@command(
    "procfile",
    "regenerate the Procfile (web + worker_<server> lines) from the config",
    CONFIG_ARG,
    arg("-o", "--output", default="Procfile", metavar="FILE", help="where to write it; '-' prints it"),
)
def cmd_procfile(args: argparse.Namespace) -> int:
    from broker.procfile import run

    return run(args)


@command(
    "check-config",
    "validate a config file and list its servers (exit 1 and say why if it is bad)",
    arg("file", nargs="?", help="config file (default: $MCP_BROKER_CONFIG or mcp_servers.json)"),
)
def cmd_check_config(args: argparse.Namespace) -> int:
    from broker.config import ConfigError, load_config

    try:
        config = load_config(args.file)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"{config.path}: OK, {len(config.servers)} server(s)")
    for name, spec in config.servers.items():
        target = " ".join([spec.command or "", *spec.args]) if spec.transport == "stdio" else spec.url
        s = spec.settings
        print(
            f"  {name:<16} {spec.transport:<5} queue={spec.queue} concurrency={s.concurrency} "
            f"timeout_s={s.timeout_s:g} retries={s.retries} cache={len(s.cache)} tool(s)  {target}"
        )
    return 0


# ---------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m broker", description="mcp-broker command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for a in cmd.args:
            p.add_argument(*a.flags, **a.options)
        p.set_defaults(handler=cmd.handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
