"""A real OAuth 2.1 authorization server for the tests, built on Authlib's Flask server, on a loopback port.

What a hosted connector meets in the field, in one process: RFC 8414 metadata, dynamic client registration
(RFC 7591), the authorization code grant with PKCE S256 required, consent granted at once (so a headless
browser's visit is a plain redirect chain back to the client), JWT access tokens (RFC 9068 shape) whose
`aud` is the `resource` the client asked for (RFC 8707), a JWKS whose key can be rotated, and token
introspection (RFC 7662) for opaque tokens. `mint` signs any claims with the server's key (or another), for
the refusals the broker must make.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, grants
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from flask import Flask, Response, jsonify, request
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server

from cli.devrun import free_port

SCOPES = ["mcp", "mcp:admin", "mcp:time"]
BROKER_CLIENT = ("broker", "broker-introspection-secret")  # the broker's own credentials, for introspection


def new_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8), "use": "sig", "alg": "RS256"})


@dataclass
class Client(ClientMixin):
    client_id: str
    metadata: dict[str, Any]
    client_secret: str = ""

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.metadata["redirect_uris"][0]

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.metadata.get("redirect_uris", [])

    def check_client_secret(self, client_secret: str) -> bool:
        return bool(self.client_secret) and secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint == "token":
            return method == self.metadata.get("token_endpoint_auth_method", "client_secret_basic")
        return method == "client_secret_basic" and bool(self.client_secret)

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.metadata.get("grant_types", ["authorization_code"])


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: dict[str, Any]
    resource: str | None
    code_challenge: str | None
    code_challenge_method: str | None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class OpaqueToken:
    """An introspectable token (the broker is handed its random string)."""

    client_id: str
    claims: dict[str, Any]
    revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return True

    def get_scope(self) -> str:
        return self.claims.get("scope", "")

    def get_expires_in(self) -> int:
        return int(self.claims["exp"] - time.time())

    def is_expired(self) -> bool:
        return self.claims["exp"] < time.time()

    def is_revoked(self) -> bool:
        return self.revoked


@dataclass
class AuthServer:
    """One authorization server on 127.0.0.1; `user` is who consents (claims copied into its tokens)."""

    port: int = field(default_factory=free_port)
    user: dict[str, Any] = field(default_factory=lambda: {"sub": "alice", "groups": ["staff"]})
    keys: list[RSAKey] = field(default_factory=lambda: [new_key()])
    clients: dict[str, Client] = field(default_factory=dict)
    codes: dict[str, Code] = field(default_factory=dict)
    opaque: dict[str, OpaqueToken] = field(default_factory=dict)
    issued: list[dict[str, Any]] = field(default_factory=list)  # the claims of every token the flow issued
    jwks_fetches: int = 0
    introspections: int = 0
    token_ttl_s: int = 600

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ tokens
    def mint(self, claims: dict[str, Any], key: RSAKey | None = None, header: dict[str, Any] | None = None) -> str:
        """A JWT access token over `claims` (iss, iat, exp and jti filled in unless given), signed RS256."""
        key = key or self.keys[-1]
        now = int(time.time())
        body = {"iss": self.issuer, "iat": now, "exp": now + self.token_ttl_s, "jti": secrets.token_hex(8), **claims}
        return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "at+jwt", **(header or {})}, body, key)

    def issue_opaque(self, claims: dict[str, Any]) -> str:
        token = secrets.token_urlsafe(32)
        now = int(time.time())
        self.opaque[token] = OpaqueToken("broker", {"iss": self.issuer, "iat": now, "exp": now + self.token_ttl_s,
                                                    **claims})
        return token

    def rotate(self) -> RSAKey:
        """A new signing key, published beside the old one (tokens already issued stay valid)."""
        self.keys.append(new_key())
        return self.keys[-1]

    def _access_token(self, client: Client, user: dict[str, Any], scope: str) -> dict[str, Any]:
        """RFC 8707: the audience is the resource the token request names, else the one the code was for."""
        claims = {k: v for k, v in user.items() if k != "resource"}
        resource = request.form.get("resource") or user.get("resource")
        claims.update(client_id=client.client_id, scope=scope, aud=resource or client.client_id)
        self.issued.append(claims)
        return {"access_token": self.mint(claims), "token_type": "Bearer", "expires_in": self.token_ttl_s,
                "scope": scope}

    # ------------------------------------------------------------ the Flask app
    def app(self) -> Flask:
        app = Flask("test_oauth_server")
        outer = self
        server = AuthorizationServer(app, query_client=lambda cid: outer.clients.get(cid),
                                     save_token=lambda token, req: None)
        server.register_token_generator("default", lambda **kw: outer._access_token(kw["client"], kw["user"],
                                                                                    kw["scope"]))
        outer.clients[BROKER_CLIENT[0]] = Client(BROKER_CLIENT[0], {"grant_types": []}, BROKER_CLIENT[1])

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post"]

            def save_authorization_code(self, code: str, req: Any) -> None:
                data = req.payload.data
                outer.codes[code] = Code(code, req.client.client_id, data.get("redirect_uri"), req.scope or "",
                                         dict(outer.user), data.get("resource"), data.get("code_challenge"),
                                         data.get("code_challenge_method"))

            def query_authorization_code(self, code: str, client: Client) -> Code | None:
                item = outer.codes.get(code)
                return item if item is not None and item.client_id == client.client_id else None

            def delete_authorization_code(self, authorization_code: Code) -> None:
                outer.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: Code) -> dict[str, Any]:
                return {**authorization_code.user, "resource": authorization_code.resource}

        class Registration(ClientRegistrationEndpoint):
            def authenticate_token(self, req: Any) -> bool:
                return True  # open registration, as MCP hosts expect

            def get_server_metadata(self) -> dict[str, Any]:
                return outer.metadata()

            def save_client(self, client_info: dict[str, Any], client_metadata: dict[str, Any], req: Any) -> Client:
                secret = client_info["client_secret"] if client_metadata.get(
                    "token_endpoint_auth_method", "client_secret_basic") != "none" else ""
                client = Client(client_info["client_id"], client_metadata, secret)
                outer.clients[client.client_id] = client
                return client

        class Introspection(IntrospectionEndpoint):
            CLIENT_AUTH_METHODS = ["client_secret_basic"]

            def query_token(self, token_string: str, token_type_hint: str | None) -> OpaqueToken | None:
                outer.introspections += 1
                return outer.opaque.get(token_string)

            def introspect_token(self, token: OpaqueToken) -> dict[str, Any]:
                return {"active": True, "token_type": "Bearer", **token.claims}

            def check_permission(self, token: OpaqueToken, client: Client, req: Any) -> bool:
                return client.client_id == BROKER_CLIENT[0]

        server.register_grant(CodeGrant, [CodeChallenge(required=True)])
        server.register_endpoint(Registration)
        server.register_endpoint(Introspection)

        @app.get("/.well-known/oauth-authorization-server")
        def _metadata() -> Response:
            return jsonify(outer.metadata())

        @app.get("/jwks")
        def _jwks() -> Response:
            outer.jwks_fetches += 1
            return jsonify({"keys": [k.as_dict(private=False) for k in outer.keys]})

        @app.get("/authorize")
        def _authorize() -> Response:
            user = dict(outer.user)
            grant = server.get_consent_grant(end_user=user)  # validates the request (PKCE required)
            return server.create_authorization_response(grant=grant, grant_user=user)  # consent: granted at once

        @app.post("/token")
        def _token() -> Response:
            return server.create_token_response()

        @app.post("/register")
        def _register() -> Response:
            return server.create_endpoint_response("client_registration")

        @app.post("/introspect")
        def _introspect() -> Response:
            return server.create_endpoint_response("introspection")

        return app

    def metadata(self) -> dict[str, Any]:
        base = self.issuer
        return {"issuer": base, "authorization_endpoint": f"{base}/authorize", "token_endpoint": f"{base}/token",
                "registration_endpoint": f"{base}/register", "jwks_uri": f"{base}/jwks",
                "introspection_endpoint": f"{base}/introspect", "scopes_supported": SCOPES,
                "response_types_supported": ["code"], "grant_types_supported": ["authorization_code"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"]}

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> AuthServer:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in the test output
        self._server = make_server("127.0.0.1", self.port, self.app(), threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"oauth-as-{self.port}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join(10)


def unsigned(claims: dict[str, Any]) -> str:
    """An `alg: none` token (joserfc will not make one, rightly): header and payload, empty signature."""
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'at+jwt'})}.{part(claims)}."
