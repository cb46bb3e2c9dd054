"""`python -m broker <command>`: the broker's command line.

    python -m broker run [--config F] [--port N]       web + workers (+ embedded Redis if none answers)
    python -m broker procfile [--config F] [-o FILE]   regenerate the Procfile from the config
    python -m broker check-config [FILE]               validate the config and list its servers
    python -m broker call TOOL ['{"arg": 1}'] [--url U]  one call through the HTTP API; prints the result
    python -m broker batch calls.jsonl -o results.jsonl  submit a batch, live progress, stream the results

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
    from broker.config import ConfigError, expand_all, load_config
    from broker.security import KeysConfigError, load_keyring

    try:
        config = load_config(args.file)
        keyring = load_keyring()
    except (ConfigError, KeysConfigError) as err:
        print(err, file=sys.stderr)
        return 1
    print(f"{config.path}: OK, {len(config.servers)} server(s)")
    print(f"  API keys: {len(keyring.principals)}" if keyring.enabled else
          "  API keys: none (anonymous admin access, served to loopback peers only)")
    for name, spec in config.servers.items():
        target = " | ".join(endpoint.describe() for endpoint in spec.endpoints)
        s = spec.settings
        print(
            f"  {name:<16} {spec.transport:<5} queue={spec.queue} concurrency={s.concurrency} "
            f"timeout_s={s.timeout_s:g} retries={s.retries} cache={len(s.cache)} tool(s) "
            f"isolation={s.isolation}  {target}"
        )
        for endpoint in spec.endpoints:  # a secret missing here is missing for this shell's workers too
            for what, values in (("env", endpoint.env), ("header", endpoint.headers)):
                try:
                    expand_all(values, f"server {name}: {what}")
                except ConfigError as err:
                    print(f"  warning: {err}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- HTTP API client commands (stdlib only)
DEFAULT_URL_HELP = "broker base URL (default: $MCP_BROKER_URL, else http://127.0.0.1:$PORT, port 8000)"
URL_ARG = arg("--url", metavar="URL", help=DEFAULT_URL_HELP)
KEY_ARG = arg("--key", metavar="KEY", help="API key, sent as a Bearer token (default: $MCP_BROKER_API_KEY)")
RESUME_ATTEMPTS = 5  # consecutive failed reconnects of a results stream before the batch command gives up


def _base_url(url: str | None) -> str:
    import os

    default = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
    return (url or os.environ.get("MCP_BROKER_URL") or default).rstrip("/")


def _auth_headers(key: str | None) -> dict[str, str]:
    import os

    key = key or os.environ.get("MCP_BROKER_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _http_json(method: str, url: str, body: bytes | None = None, content_type: str = "application/json",
               timeout: float = 60.0, key: str | None = None) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request; an HTTP error status is an answer, not an exception."""
    import json
    import urllib.error
    import urllib.request

    headers = {"Content-Type": content_type, "Accept": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, method=method, headers={**headers, **_auth_headers(key)})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        payload = err.read()
        try:
            return err.code, json.loads(payload)
        except ValueError:
            text = payload.decode("utf-8", "replace").strip()[:300] or str(err.reason)
            return err.code, {"error": {"code": "http_error", "message": text}}


def _print_api_error(status: int, payload: Any) -> None:
    error = payload.get("error", {}) if isinstance(payload, dict) else {}
    print(f"error ({status} {error.get('code', 'error')}): {error.get('message', payload)}", file=sys.stderr)
    for detail in error.get("details", [])[1:]:
        print(f"  {detail}", file=sys.stderr)


def _post_expecting(expected: int, url: str, path: str, body: bytes, content_type: str, timeout: float,
                    key: str | None) -> Any:
    """The decoded answer of a POST to the API, or None after saying on stderr why it failed."""
    import urllib.error

    try:
        status, payload = _http_json("POST", f"{url}{path}", body, content_type, timeout=timeout, key=key)
    except (urllib.error.URLError, OSError) as err:
        print(f"cannot reach the broker at {url}: {getattr(err, 'reason', err)}", file=sys.stderr)
        return None
    if status != expected:
        _print_api_error(status, payload)
        return None
    return payload


@command(
    "call",
    "call one tool through the broker's HTTP API and print its result as JSON (exit 1 on any error)",
    arg("tool", help="namespaced tool name, e.g. time__get_current_time"),
    arg("arguments", nargs="?", default="{}", help="the arguments as a JSON object (default {}; '-' reads stdin)"),
    URL_ARG,
    KEY_ARG,
    arg("--timeout", type=float, metavar="S", help="the call's time limit in seconds (capped by max_timeout_s)"),
)
def cmd_call(args: argparse.Namespace) -> int:
    import json

    text = sys.stdin.read() if args.arguments == "-" else args.arguments
    try:
        arguments = json.loads(text)
    except ValueError as err:
        print(f"the arguments are not valid JSON: {err}", file=sys.stderr)
        return 2
    if not isinstance(arguments, dict):
        print("the arguments must be a JSON object, e.g. '{\"text\": \"hi\"}'", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"tool": args.tool, "arguments": arguments}
    if args.timeout is not None:
        body["timeout_s"] = args.timeout
    url = _base_url(args.url)
    # the server answers within queue wait + time limit; give it that and a margin
    payload = _post_expecting(200, url, "/v1/calls", json.dumps(body).encode(), "application/json",
                              (args.timeout or 300) + 120, args.key)
    if payload is None:
        return 1
    print(json.dumps(payload["result"], indent=2, ensure_ascii=False))
    return 1 if payload["result"].get("isError") else 0  # a tool error is a result, but still a failure


class _Progress:
    """One self-rewriting status line on a terminal; a plain line every few seconds into a log or pipe."""

    BAR = 24

    def __init__(self, total: int, stream: Any, enabled: bool = True) -> None:
        import time

        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.interval = 0.1 if self.tty else 5.0
        self.started = self.last = time.monotonic()
        self.drawn = False

    def line(self, done: int, failed: int, cancelled: int) -> str:
        import time

        finished = done + failed + cancelled
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = finished / elapsed
        left = self.total - finished
        eta = "-" if not left else (_duration(left / rate) if rate > 0 else "?")
        filled = self.BAR * finished // max(self.total, 1)
        extra = f"  cancelled {cancelled}" if cancelled else ""
        return (f"[{'#' * filled}{'.' * (self.BAR - filled)}] {finished}/{self.total} "
                f"{100 * finished / max(self.total, 1):3.0f}%  done {done}  failed {failed}{extra}  "
                f"{rate:.0f}/s  ETA {eta}")

    def update(self, done: int, failed: int, cancelled: int, force: bool = False) -> None:
        import time

        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.interval):
            return
        self.last = now
        text = self.line(done, failed, cancelled)
        self.stream.write(f"\r{text}\x1b[K" if self.tty else f"{text}\n")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.enabled and self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@command(
    "batch",
    "submit a file of calls as one batch, show progress, write the results as JSON Lines (exit 1 if any failed)",
    arg("file", help="calls, one JSON object per line ({\"tool\", \"arguments\", \"id\"?, \"timeout_s\"?}), "
                     "or a .json file holding a list or {\"calls\": [...]}; '-' reads stdin"),
    arg("-o", "--output", default="-", metavar="FILE", help="results file, one JSON line per call (default: stdout)"),
    URL_ARG,
    KEY_ARG,
    arg("--timeout", type=float, metavar="S", help="default time limit of each call, in seconds"),
    arg("-q", "--quiet", action="store_true", help="no progress line, only the summary"),
)
def cmd_batch(args: argparse.Namespace) -> int:
    import json
    import time
    import urllib.error
    import urllib.parse
    import urllib.request

    from broker.results import outcome_kind

    url = _base_url(args.url)
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()  # noqa: SIM115
    except OSError as err:
        print(f"cannot read {args.file}: {err.strerror}", file=sys.stderr)
        return 2
    content_type = "application/json" if args.file.endswith(".json") else "application/x-ndjson"
    query = f"?timeout_s={args.timeout}" if args.timeout is not None else ""
    began = time.monotonic()
    payload = _post_expecting(202, url, f"/v1/batches{query}", data, content_type, 600, args.key)
    if payload is None:
        return 1
    batch_id, total = payload["batch_id"], int(payload["total"])
    results_url = urllib.parse.urljoin(url + "/", payload["results_url"])
    print(f"batch {batch_id}: {total} calls queued", file=sys.stderr)

    counts = {"done": 0, "failed": 0, "cancelled": 0}
    progress = _Progress(total, sys.stderr, enabled=not args.quiet)
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    received, last_seq, failures = 0, None, 0
    try:
        while received < total:
            after = f"?after={last_seq}" if last_seq else ""
            before = received
            problem: str | None = "the stream ended early"
            try:
                stream = urllib.request.Request(results_url + after, headers=_auth_headers(args.key))
                with urllib.request.urlopen(stream, timeout=120) as response:
                    for raw in response:
                        if not raw.strip():
                            continue  # keep-alive
                        outcome = json.loads(raw)
                        out.write(raw.decode("utf-8").rstrip("\n") + "\n")
                        received += 1
                        last_seq = outcome.get("seq", last_seq)
                        counts[outcome_kind(outcome)] += 1
                        progress.update(counts["done"], counts["failed"], counts["cancelled"])
            except urllib.error.HTTPError as err:
                if err.code == 404:
                    progress.close()
                    print(f"batch {batch_id} is gone (expired?) after {received} results", file=sys.stderr)
                    break
                problem = f"HTTP {err.code}"
            except (urllib.error.URLError, OSError, ValueError) as err:
                problem = str(getattr(err, "reason", err))
            if received >= total:
                break
            failures = 0 if received > before else failures + 1  # reconnect from the last result we have
            if failures > RESUME_ATTEMPTS:
                progress.close()
                print(f"results stream lost ({problem}); resume with GET {results_url}?after={last_seq}",
                      file=sys.stderr)
                return 1
            time.sleep(min(8.0, 0.25 * 2**failures))
    except KeyboardInterrupt:
        progress.close()
        print(f"interrupted: batch {batch_id} keeps running; cancel it with "
              f"`curl -X DELETE {url}/v1/batches/{batch_id}`", file=sys.stderr)
        raise
    finally:
        if out is not sys.stdout:
            out.close()
        else:
            out.flush()
    progress.update(counts["done"], counts["failed"], counts["cancelled"], force=True)
    progress.close()
    elapsed = time.monotonic() - began
    where = "" if args.output == "-" else f" -> {args.output}"
    print(f"batch {batch_id}: {received}/{total} results, {counts['done']} done, {counts['failed']} failed, "
          f"{counts['cancelled']} cancelled in {_duration(elapsed)} ({received / max(elapsed, 1e-9):.0f}/s){where}",
          file=sys.stderr)
    return 0 if received == total and counts["done"] == total else 1


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
