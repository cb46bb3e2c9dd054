"""The broker as an OAuth 2.1 resource server (MCP authorization, 2025-06-18 onwards): hosted connectors bring
bearer tokens from an authorization server the operator trusts, beside (or instead of) API keys.

- `settings`: the `oauth` block (keys file or `MCP_BROKER_OAUTH`): issuers, resource, scopes, and the rules
  that map a token's claims to a profile (the same allow-list, rate, caps and admin right a key has);
- `issuers`: each issuer's metadata (RFC 8414 / OIDC discovery) and signing keys (JWKS), cached, refetched
  on an unknown `kid` at most once per `jwks_refetch_s`;
- `introspection`: RFC 7662 for opaque tokens, positive answers cached briefly in a bounded map;
- `tokens`: a bearer token → a `Principal`, or a refusal naming the RFC 6750 error.
"""
