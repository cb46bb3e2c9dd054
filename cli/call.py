"""`python -m broker call TOOL ['{"arg": 1}']`: one call through the HTTP API; prints the result as JSON.

Exit 0 on a result, 1 on any error (a tool error is a result, but still a failure), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli.api import post_expecting
from client.http_api import base_url


def command(args: argparse.Namespace) -> int:
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
    url = base_url(args.url)
    # the server answers within queue wait + time limit; give it that and a margin
    payload = post_expecting(200, url, "/v1/calls", json.dumps(body).encode(), "application/json",
                             (args.timeout or 300) + 120, args.key)
    if payload is None:
        return 1
    print(json.dumps(payload["result"], indent=2, ensure_ascii=False))
    return 1 if payload["result"].get("isError") else 0  # a tool error is a result, but still a failure
