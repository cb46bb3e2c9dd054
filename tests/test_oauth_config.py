"""The `oauth` block: where it is read from, the shorthands, and the mistakes that stop the broker at start with
a message naming them (never "OAuth off", never a stack trace). No stack needed: `load_keyring` alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from broker.oauth.settings import SAFE_ALGORITHMS
from broker.security import KeysConfigError, hash_key, load_keyring

ROOT = Path(__file__).resolve().parent.parent
ISSUER = "https://auth.example.com/realms/mcp"


def block(**extra: object) -> str:
    return json.dumps({"issuers": [ISSUER], **extra})


def test_the_block_from_the_variable_a_file_or_the_keys_file(tmp_path: Path) -> None:
    ring = load_keyring({"MCP_BROKER_OAUTH": block(scopes_required=["mcp"])})
    assert ring.enabled and not ring.principals and ring.oauth is not None
    assert ring.oauth.issuers[0].issuer == ISSUER and ring.oauth.issuers[0].algorithms == SAFE_ALGORITHMS
    assert ring.oauth.scopes_supported == ("mcp",)
    path = tmp_path / "oauth.json"
    path.write_text(block())
    assert load_keyring({"MCP_BROKER_OAUTH": str(path)}).oauth is not None
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [{"id": "ops", "hash": hash_key("k"), "admin": True}],
                                     "oauth": json.loads(block())}))
    both = load_keyring({"MCP_BROKER_KEYS_FILE": str(keys_file)})
    assert len(both.principals) == 1 and both.oauth is not None
    oauth_only = tmp_path / "oauth-only.json"
    oauth_only.write_text(json.dumps({"oauth": json.loads(block())}))  # `keys` may be left out
    assert load_keyring({"MCP_BROKER_KEYS_FILE": str(oauth_only)}).enabled


def test_shorthand_variables_turn_oauth_on_alone() -> None:
    ring = load_keyring({"MCP_BROKER_OAUTH_ISSUERS": f"{ISSUER}, https://login.example.org",
                         "MCP_BROKER_OAUTH_RESOURCE": "https://broker.example.com/",
                         "MCP_BROKER_OAUTH_SCOPES": "mcp mcp:tools"})
    assert ring.oauth is not None
    assert [i.issuer for i in ring.oauth.issuers] == [ISSUER, "https://login.example.org"]
    assert ring.oauth.resource == "https://broker.example.com" and ring.oauth.scopes_required == ("mcp", "mcp:tools")
    assert load_keyring({}).oauth is None


def test_rules_map_claims_to_profiles() -> None:
    ring = load_keyring({"MCP_BROKER_OAUTH": block(
        profiles={"ops": {"admin": True}, "reader": {"allow": ["time__*"]}},
        rules=[{"match": {"realm_access.roles": "mcp-ops", "scope": "mcp:*"}, "profile": "ops"},
               {"match": {"client_id": ["claude-*", "cursor"]}, "profile": "reader"}])})
    oauth = ring.oauth
    assert oauth is not None
    assert oauth.profile_for({"realm_access": {"roles": ["x", "mcp-ops"]}, "scope": "openid mcp:admin"})[0] == "ops"
    assert oauth.profile_for({"realm_access": {"roles": ["mcp-ops"]}, "scope": "openid"}) is None  # both must match
    assert oauth.profile_for({"client_id": "claude-web"})[0] == "reader"
    assert oauth.profile_for({"client_id": "other"}) is None


@pytest.mark.parametrize(("variables", "words"), [
    ({"MCP_BROKER_OAUTH": "{not json"}, "not valid JSON"),
    ({"MCP_BROKER_OAUTH": "[1]"}, "expected a JSON object"),
    ({"MCP_BROKER_OAUTH": "/nonexistent/oauth.json"}, "cannot read"),
    ({"MCP_BROKER_OAUTH": json.dumps({"issuers": []})}, "issuers"),
    ({"MCP_BROKER_OAUTH": json.dumps({"issuers": ["not a url"]})}, "issuer"),
    ({"MCP_BROKER_OAUTH": block(colour="blue")}, "colour"),
    ({"MCP_BROKER_OAUTH": json.dumps({"issuers": [{"issuer": ISSUER, "algorithms": ["HS256"]}]})}, "algorithms"),
    ({"MCP_BROKER_OAUTH": json.dumps({"issuers": [{"issuer": ISSUER, "algorithms": ["none"]}]})}, "algorithms"),
    ({"MCP_BROKER_OAUTH": block(rules=[{"match": {"sub": "*"}, "profile": "ghost"}])}, "ghost"),
    ({"MCP_BROKER_OAUTH": block(jwks_cache_s=1)}, "jwks_cache_s"),
    ({"MCP_BROKER_OAUTH": block(profiles={"p": {}}, rules=[{"match": {"sub": 3}, "profile": "p"}])}, "match.sub"),
    ({"MCP_BROKER_OAUTH": json.dumps({"issuers": [{"issuer": ISSUER, "introspection": {
        "endpoint": f"{ISSUER}/introspect", "client_id": "broker", "client_secret_env": "UNSET_SECRET_VAR"}}]})},
     "UNSET_SECRET_VAR"),
])
def test_a_bad_block_stops_the_start_with_a_message(variables: dict[str, str], words: str) -> None:
    with pytest.raises(KeysConfigError) as err:
        load_keyring(variables)
    assert words in str(err.value)


def test_check_config_names_the_oauth_setup_or_the_mistake() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MCP_BROKER_OAUTH": block()}
    ok = subprocess.run([sys.executable, "-m", "broker", "check-config", str(ROOT / "mcp_servers.json")], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and f"OAuth: 1 issuer(s) ({ISSUER})" in ok.stdout, ok.stderr
    assert "plain http://" not in ok.stderr
    plain = subprocess.run([sys.executable, "-m", "broker", "check-config", str(ROOT / "mcp_servers.json")],
                           cwd=ROOT, env={**env, "MCP_BROKER_OAUTH_ISSUERS": "http://auth.example.com,http://127.0.0.1:9"},
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0 and "http://auth.example.com is plain http://" in plain.stderr, plain.stderr
    assert "127.0.0.1:9 is plain" not in plain.stderr  # loopback: a test or a sidecar
    bad = subprocess.run([sys.executable, "-m", "broker", "check-config", str(ROOT / "mcp_servers.json")], cwd=ROOT,
                         env={**env, "MCP_BROKER_OAUTH": block(leeway_s=-1)}, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "leeway_s" in bad.stderr and "Traceback" not in bad.stderr
