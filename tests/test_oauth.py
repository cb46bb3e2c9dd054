"""The broker as an OAuth 2.1 resource server, against a real authorization server (Authlib, tests/oauth_server.py)
on loopback: Protected Resource Metadata, the 401 challenge on every protected path, JWT validation (issuer,
audience, expiry, signature, algorithm), key rotation, junk `kid`s, introspection of opaque tokens, claims →
principal mapping beside API keys, and an unreachable issuer. Tokens are minted with the server's own keys
(or a stranger's); the full browser flow with a third-party client is tests/test_oauth_flow.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from openapi_spec_validator import validate
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.oauth_server import BROKER_CLIENT, AuthServer, new_key, unsigned
from tests.stack import Stack, free_port
from tests.wsclient import RawClient

pytestmark = pytest.mark.timeout(120)

OPS_KEY = "k-oauth-ops-5e1d"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


def oauth_block(main: AuthServer, other: AuthServer, dead_issuer: str) -> dict[str, Any]:
    return {
        "issuers": [
            {"issuer": main.issuer, "introspection": {"endpoint": f"{main.issuer}/introspect",
                                                      "client_id": BROKER_CLIENT[0],
                                                      "client_secret_env": "TEST_INTROSPECTION_SECRET"}},
            other.issuer,
            {"issuer": dead_issuer, "jwks_uri": f"{dead_issuer}/jwks"},
        ],
        "scopes_required": ["mcp"],
        "jwks_refetch_s": 3600,  # one refetch per unknown kid per hour: the junk-kid test counts on it
        "http_timeout_s": 2,
        "profiles": {
            "admin": {"allow": ["*"], "admin": True},
            "staff": {"allow": ["*"]},
            "timekeeper": {"allow": ["time__*"], "rate_per_s": 50, "burst": 50},
            "metered": {"allow": ["echo__*"], "rate_per_s": 0.01, "burst": 3},
        },
        "rules": [
            {"match": {"scope": "mcp:admin", "groups": "ops"}, "profile": "admin"},
            {"match": {"scope": "mcp:time"}, "profile": "timekeeper"},
            {"match": {"groups": "metered"}, "profile": "metered"},
            {"match": {"groups": ["staff", "ops"]}, "profile": "staff"},
        ],
    }


@dataclass
class Broker:
    port: int
    main: AuthServer
    other: AuthServer

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, server: AuthServer | None = None, **claims: Any) -> str:
        server = server or self.main
        return server.mint({"sub": "alice", "groups": ["staff"], "scope": "mcp", "aud": f"{self.base}/mcp", **claims})


@pytest.fixture(scope="module")
def broker(stack: Stack) -> Iterator[Broker]:
    with AuthServer() as main, AuthServer(user={"sub": "bob"}) as other:
        dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        env = {"MCP_BROKER_OAUTH": json.dumps(oauth_block(main, other, dead)),
               "MCP_BROKER_API_KEYS": f"admin:{OPS_KEY}", "TEST_INTROSPECTION_SECRET": BROKER_CLIENT[1],
               "MCP_BROKER_ALLOWED_HOSTS": "*"}  # any Host passes the guard: the audience must not follow it
        with stack.extra_webs(env, count=1) as (port,):
            stack.wait_web_ready(port)
            yield Broker(port, main, other)


def challenge_params(header: str) -> dict[str, str]:
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', header))


def ws(broker: Broker, token: str, path: str = "/mcp") -> RawClient:
    return RawClient(f"ws://127.0.0.1:{broker.port}{path}", additional_headers={"Authorization": f"Bearer {token}"})


def refused_ws(broker: Broker, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with pytest.raises(InvalidStatus) as refused:
        RawClient(f"ws://127.0.0.1:{broker.port}/mcp", additional_headers=headers)
    return refused.value.response


def test_protected_resource_metadata_at_the_well_known_paths(broker: Broker) -> None:
    with httpx2.Client(timeout=10) as http:
        for suffix in ("", "/mcp", "/servers/echo/mcp"):
            response = http.get(f"{broker.base}/.well-known/oauth-protected-resource{suffix}")
            assert response.status_code == 200 and response.headers["content-type"] == "application/json"
            document = response.json()
            assert document["resource"] == broker.base + suffix  # RFC 9728 §3.3: the identifier it was formed from
            assert document["authorization_servers"][:2] == [broker.main.issuer, broker.other.issuer]
            assert document["bearer_methods_supported"] == ["header"]
            assert "mcp" in document["scopes_supported"]
        missing = http.get(f"{broker.base}/.well-known/oauth-authorization-server")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_every_protected_path_challenges_with_resource_metadata(broker: Broker) -> None:
    with httpx2.Client(timeout=10) as http:
        cases = [("POST", "/mcp", f"{broker.base}/.well-known/oauth-protected-resource/mcp"),
                 ("POST", "/servers/echo/mcp", f"{broker.base}/.well-known/oauth-protected-resource/servers/echo/mcp"),
                 ("GET", "/v1/batches", f"{broker.base}/.well-known/oauth-protected-resource")]
        for method, path, metadata in cases:
            response = http.request(method, broker.base + path, json=INIT, headers=ACCEPT)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
            params = challenge_params(response.headers["www-authenticate"])
            assert params["resource_metadata"] == metadata and params["scope"] == "mcp"
            assert "error" not in params  # no token sent: no error code (RFC 6750 §3.1)
        page = http.get(f"{broker.base}/status")  # keys are on too: a browser is offered Basic as well
        assert page.status_code == 401
        assert page.headers["www-authenticate"].startswith('Basic realm="mcp-broker", Bearer resource_metadata=')
        ws_refusal = refused_ws(broker, None)
        assert ws_refusal.status_code == 401
        assert challenge_params(ws_refusal.headers["www-authenticate"])["resource_metadata"].endswith(
            "/.well-known/oauth-protected-resource/mcp")


def test_a_valid_token_calls_tools_on_both_transports_and_v1(broker: Broker) -> None:
    token = broker.token()
    with ws(broker, token) as client:
        assert client.call("echo__echo", {"text": "via oauth"})["result"]["isError"] is False
    with ws(broker, broker.token(aud=f"{broker.base}/servers/echo/mcp"), "/servers/echo/mcp") as client:
        assert client.call("echo", {"text": "per-server"})["result"]["isError"] is False
    with httpx2.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        init = http.post(f"{broker.base}/mcp", json=INIT, headers=ACCEPT)
        assert init.status_code == 200, init.text
        answer = http.post(f"{broker.base}/v1/calls", json={"tool": "echo__echo", "arguments": {"text": "v1"},
                                                             "timeout_s": 20})
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("case", ["expired", "not_yet", "wrong_audience", "wrong_issuer", "tampered",
                                  "stranger_key", "alg_none", "hs256", "garbage", "no_exp"])
def test_bad_tokens_are_refused_with_invalid_token(broker: Broker, case: str) -> None:
    now = int(time.time())
    good = broker.token()
    header, payload, signature = good.split(".")
    tokens = {
        "expired": lambda: broker.token(exp=now - 3600, iat=now - 7200),
        "not_yet": lambda: broker.token(nbf=now + 3600),
        "wrong_audience": lambda: broker.token(aud="https://another-mcp-server.example/mcp"),
        "wrong_issuer": lambda: broker.token(iss="https://evil.example"),
        "tampered": lambda: f"{header}.{payload[:-4]}{'AAAA' if payload[-4:] != 'AAAA' else 'BBBB'}.{signature}",
        "stranger_key": lambda: broker.main.mint({"sub": "alice", "groups": ["staff"], "scope": "mcp",
                                                  "aud": f"{broker.base}/mcp"},
                                                 key=_stranger_with_kid(broker.main.keys[-1].kid)),
        "alg_none": lambda: unsigned({"iss": broker.main.issuer, "sub": "alice", "scope": "mcp", "groups": ["staff"],
                                      "aud": f"{broker.base}/mcp", "exp": now + 600}),
        "hs256": lambda: _hs256(broker, now),
        "garbage": lambda: "not-a-token-" + secrets.token_hex(8),
        "no_exp": lambda: _without_exp(broker),
    }
    token = tokens[case]()
    with httpx2.Client(timeout=10) as http:
        response = http.post(f"{broker.base}/mcp", json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {token}"})
    assert response.status_code == 401, (case, response.text)
    assert response.json()["error"]["code"] == "invalid_token"
    params = challenge_params(response.headers["www-authenticate"])
    assert params["error"] == "invalid_token" and params["resource_metadata"].endswith("/oauth-protected-resource/mcp")
    assert refused_ws(broker, token).status_code == 401


def _stranger_with_kid(kid: str) -> Any:
    """Another key claiming the server's `kid`: the signature cannot verify."""
    from joserfc.jwk import RSAKey
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


def _hs256(broker: Broker, now: int) -> str:
    """HS256 keyed with the server's public key (the classic confusion attack). Made by hand: PyJWT and joserfc
    both refuse to, rightly."""
    key = broker.main.keys[-1]
    header = {"alg": "HS256", "kid": key.kid, "typ": "at+jwt"}
    claims = {"iss": broker.main.issuer, "sub": "alice", "scope": "mcp", "groups": ["staff"],
              "aud": f"{broker.base}/mcp", "exp": now + 600}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    secret = json.dumps(key.as_dict(private=False)).encode()
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _without_exp(broker: Broker) -> str:
    from joserfc import jwt as jose
    key = broker.main.keys[-1]
    return jose.encode({"alg": "RS256", "kid": key.kid}, {"iss": broker.main.issuer, "sub": "alice", "scope": "mcp",
                                                         "groups": ["staff"], "aud": f"{broker.base}/mcp"}, key)


def test_a_token_for_one_servers_endpoint_is_refused_on_another(broker: Broker) -> None:
    token = broker.token(aud=f"{broker.base}/servers/echo/mcp")
    with httpx2.Client(timeout=10) as http:
        response = http.post(f"{broker.base}/servers/time/mcp", json=INIT,
                             headers={**ACCEPT, "Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_token"


def test_the_host_header_cannot_make_another_resources_token_pass(broker: Broker) -> None:
    """No `resource` set, MCP_BROKER_ALLOWED_HOSTS=*: a token the same issuer minted for another resource,
    sent under that resource's Host name, is refused (the derived URL is trusted only for exact allowed
    names, and loopback names from loopback peers)."""
    foreign = broker.token(aud="http://tools.attacker.example/mcp")
    with httpx2.Client(timeout=10) as http:
        response = http.post(f"{broker.base}/mcp", json=INIT, headers={**ACCEPT, "Host": "tools.attacker.example",
                                                                      "Authorization": f"Bearer {foreign}"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_token"


def test_a_rotated_key_is_fetched_and_junk_kids_do_not_hammer_the_issuer(broker: Broker) -> None:
    main, other = broker.main, broker.other
    with ws(broker, broker.token()) as client:  # the current key is cached
        assert client.call("echo__echo", {"text": "before rotation"})["result"]["isError"] is False
    before = main.jwks_fetches
    main.rotate()
    with ws(broker, broker.token()) as client:  # signed with the new kid: one refetch
        assert client.call("echo__echo", {"text": "after rotation"})["result"]["isError"] is False
    assert main.jwks_fetches == before + 1
    # the other issuer: its first token fetches the JWKS once; then 12 made-up kids cause one refetch at most
    with ws(broker, broker.token(other)) as client:
        assert client.call("echo__echo", {"text": "second issuer"})["result"]["isError"] is False
    fetched = other.jwks_fetches
    with httpx2.Client(timeout=10) as http:
        for _ in range(12):
            junk = other.mint({"sub": "x", "scope": "mcp", "groups": ["staff"], "aud": f"{broker.base}/mcp"},
                              key=new_key())
            response = http.post(f"{broker.base}/mcp", json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {junk}"})
            assert response.status_code == 401 and "signing key" in response.json()["error"]["message"]
    assert other.jwks_fetches <= fetched + 1


def test_claims_map_to_principals_with_their_allow_lists_and_admin_rights(broker: Broker) -> None:
    timekeeper = broker.token(scope="mcp mcp:time")
    with ws(broker, timekeeper) as client:
        names = [t["name"] for t in client.request("tools/list")["result"]["tools"]]
        assert names and all(n.startswith("time__") for n in set(names) - {"broker__read_result"})
        refused = client.call("echo__echo", {"text": "not allowed"})
        assert refused["error"]["code"] == -32003 and "oauth:timekeeper:alice@" in refused["error"]["message"]
    with httpx2.Client(timeout=10) as http:
        status = http.get(f"{broker.base}/status.json", headers={"Authorization": f"Bearer {broker.token()}"})
        assert status.status_code == 403  # staff: not an admin
        admin = broker.token(scope="mcp mcp:admin", groups=["ops"])
        assert http.get(f"{broker.base}/status.json", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
        detail = http.get(f"{broker.base}/readyz", headers={"Authorization": f"Bearer {admin}"}).json()
        assert "echo" in json.dumps(detail)  # per-server detail: for admins only
        public = http.get(f"{broker.base}/readyz", headers={"Authorization": f"Bearer {broker.token()}"}).json()
        assert "echo" not in json.dumps(public) and "servers_total" in public
        # mcp:admin alone is not enough: the rule also wants the ops group, so this token is staff
        half = broker.token(scope="mcp mcp:admin", groups=["staff"])
        assert http.get(f"{broker.base}/status.json", headers={"Authorization": f"Bearer {half}"}).status_code == 403
        # no rule matches: genuine token, nothing for it here
        stranger = broker.token(groups=["contractors"])
        response = http.post(f"{broker.base}/mcp", json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {stranger}"})
        assert response.status_code == 403 and response.json()["error"]["code"] == "insufficient_scope"
        assert challenge_params(response.headers["www-authenticate"])["error"] == "insufficient_scope"
        # the required scope missing
        unscoped = broker.token(scope="openid")
        response = http.post(f"{broker.base}/mcp", json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {unscoped}"})
        assert response.status_code == 403
        assert challenge_params(response.headers["www-authenticate"])["scope"] == "mcp"
        # API keys keep working beside OAuth
        keyed = http.get(f"{broker.base}/status.json", headers={"Authorization": f"Bearer {OPS_KEY}"})
        assert keyed.status_code == 200


def test_opaque_tokens_are_introspected_and_cached(broker: Broker) -> None:
    main = broker.main
    token = main.issue_opaque({"sub": "carol", "scope": "mcp", "groups": ["staff"], "aud": f"{broker.base}/mcp"})
    before = main.introspections
    with ws(broker, token) as client:
        assert client.call("echo__echo", {"text": "opaque"})["result"]["isError"] is False
    with ws(broker, token) as client:
        assert client.call("echo__echo", {"text": "opaque again"})["result"]["isError"] is False
    assert main.introspections == before + 1  # the second connection was answered from the cache
    unknown = "opaque-" + secrets.token_hex(16)
    with httpx2.Client(timeout=10) as http:
        response = http.post(f"{broker.base}/mcp", json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {unknown}"})
    assert response.status_code == 401 and "not active" in response.json()["error"]["message"]


def test_an_unreachable_issuer_is_a_503_not_a_401(broker: Broker) -> None:
    with httpx2.Client(timeout=20) as http:
        dead = http.get(f"{broker.base}/.well-known/oauth-protected-resource").json()["authorization_servers"][2]
        token = broker.main.mint({"iss": dead, "sub": "x", "scope": "mcp", "aud": f"{broker.base}/mcp"})
        response = http.post(f"{broker.base}/mcp", json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {token}"})
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "issuer_unavailable" and response.headers["retry-after"]


def test_a_profiles_rate_limit_holds_per_person(broker: Broker) -> None:
    """`metered`: 3 calls, then -32005; another person of the same profile has a bucket of their own."""
    for who in ("dora", "emil"):
        with ws(broker, broker.token(sub=f"{who}-{secrets.token_hex(3)}", groups=["metered"])) as client:
            answers = [client.call("echo__echo", {"text": str(i)}) for i in range(4)]
        assert [a.get("error", {}).get("code") for a in answers] == [None, None, None, -32005], (who, answers)


def test_a_token_without_sub_or_client_id_is_refused(broker: Broker) -> None:
    """No `sub`, no `client_id`: no one to own sessions and limits (a placeholder would merge them all)."""
    nobody = broker.main.mint({"scope": "mcp", "groups": ["staff"], "aud": f"{broker.base}/mcp"})
    with httpx2.Client(timeout=10) as http:
        response = http.post(f"{broker.base}/mcp", json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {nobody}"})
    assert response.status_code == 401 and "no subject" in response.json()["error"]["message"]


def test_introspection_wants_an_aud_ignores_the_answers_iss_and_caches_inactive(broker: Broker) -> None:
    main = broker.main
    no_aud = main.issue_opaque({"sub": "carol", "scope": "mcp", "groups": ["staff"]})
    forged_iss = main.issue_opaque({"sub": "ivan", "scope": "mcp mcp:time", "groups": ["staff"],
                                    "aud": f"{broker.base}/mcp", "iss": broker.other.issuer})
    with httpx2.Client(timeout=10) as http:
        response = http.post(f"{broker.base}/mcp", json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {no_aud}"})
        assert response.status_code == 401 and "named no aud" in response.json()["error"]["message"]
        unknown = "opaque-" + secrets.token_hex(16)
        before = main.introspections
        for _ in range(3):
            response = http.post(f"{broker.base}/mcp", json=INIT,
                                 headers={**ACCEPT, "Authorization": f"Bearer {unknown}"})
            assert response.status_code == 401 and "not active" in response.json()["error"]["message"]
        assert main.introspections <= before + 1  # "not active" is cached (5 s): one POST, not three
    with ws(broker, forged_iss) as client:
        refused = client.call("echo__echo", {"text": "not allowed"})
    assert f"oauth:timekeeper:ivan@{main.issuer}" in refused["error"]["message"]


def test_openapi_offers_each_issuers_openid_connect_scheme(broker: Broker) -> None:
    with httpx2.Client(timeout=30) as http:
        document = http.get(f"{broker.base}/openapi.json", headers={"Authorization": f"Bearer {broker.token()}"}).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["oauth"] == {"type": "openIdConnect",
                                "description": f"an OAuth access token from {broker.main.issuer}",
                                "openIdConnectUrl": f"{broker.main.issuer}/.well-known/openid-configuration"}
    assert schemes["oauth2"]["openIdConnectUrl"] == f"{broker.other.issuer}/.well-known/openid-configuration"
    assert "bearer" in schemes and {"oauth": []} in document["security"]
    validate(document)


def test_a_websocket_closes_when_its_token_expires(broker: Broker) -> None:
    """The token's `exp` is when the socket it opened closes (1008): a revoked user is not kept in by an open
    socket."""
    short = broker.token(exp=int(time.time()) + 8)
    with ws(broker, short) as client:
        assert client.call("echo__echo", {"text": "in time"})["result"]["isError"] is False
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                client.ws.recv(timeout=60)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert "token expired" in closed.value.rcvd.reason
