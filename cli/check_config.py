"""`python -m broker check-config [FILE]`: validate a config file and list its servers.

Exit 1 and say why (file, server, field) when the config or the keys setting is bad, so a
mistake stops here rather than in a web or worker process that a platform keeps restarting.
"""

from __future__ import annotations

import argparse
import sys

from broker.config import ConfigError, expand_all, load_config
from broker.context.env import results_env
from broker.oauth.settings import insecure_issuers
from broker.security import KeysConfigError, load_keyring


def command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
        keyring = load_keyring()
        results_env()
    except (ConfigError, KeysConfigError) as err:
        print(err, file=sys.stderr)
        return 1
    print(f"{config.path}: OK, {len(config.servers)} server(s)")
    print(f"  API keys: {len(keyring.principals)}" if keyring.enabled else
          "  API keys: none (anonymous admin access, served to loopback peers only)")
    if keyring.oauth is not None:
        oauth = keyring.oauth
        print(f"  OAuth: {len(oauth.issuers)} issuer(s) ({', '.join(i.issuer for i in oauth.issuers)}), "
              f"{len(oauth.rules)} rule(s), resource {oauth.resource or 'from each request'}")
        for url in insecure_issuers(oauth):
            print(f"  warning: oauth: {url} is plain http:// off this machine: its keys and answers can be "
                  "forged on the way; use https://", file=sys.stderr)
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
