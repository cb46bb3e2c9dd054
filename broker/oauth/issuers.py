"""An authorization server as the broker sees it: its metadata (RFC 8414, else OIDC discovery) and its
signing keys (JWKS), fetched on first use, kept `jwks_cache_s` (at least 10 s; the metadata is refetched
with the keys), and fetched again when a token names a `kid`
the cache does not hold (the server rotated its keys) — at most once per `jwks_refetch_s`, so tokens with
made-up `kid`s cannot make the broker hammer the server: between two refetches such a token is refused
from the cache alone.

Fetches are plain HTTP GETs with a timeout (`http_timeout_s`, default 5 s): under gevent the socket yields,
so a slow server holds up only the requests that need it, and one lock per issuer makes concurrent
requests share one fetch instead of sending one each. A server that cannot be reached is an
`IssuerUnavailable` (the web answers 503 with `Retry-After`, not 401: the client's token may be fine, and
a 401 would send a hosted connector back through the browser flow for nothing). Keys already fetched
keep serving while a periodic refresh fails.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from broker.oauth.settings import IssuerSettings

log = logging.getLogger("mcp_broker.oauth")

MAX_DOCUMENT_BYTES = 1024 * 1024  # a metadata document or a JWKS bigger than this is refused
FAILURE_BACKOFF_S = 5.0  # after a failed fetch, requests are refused (503) without trying again for this long
KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}  # alg prefix → the JWK `kty` it needs


class IssuerUnavailable(Exception):
    """The authorization server (or its introspection endpoint) could not be reached or answered nonsense."""


def http_json(url: str, timeout_s: float, form: dict[str, str] | None = None,
              basic: tuple[str, str] | None = None) -> dict[str, Any]:
    """GET `url` (or POST `form`) and the JSON object it answers; `IssuerUnavailable` for anything else."""
    headers = {"Accept": "application/json"}
    data = None
    if form is not None:
        data = urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if basic is not None:
        headers["Authorization"] = "Basic " + b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if form is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as err:
        raise IssuerUnavailable(f"{url} answered HTTP {err.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise IssuerUnavailable(f"{url} could not be reached: {getattr(err, 'reason', err)}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise IssuerUnavailable(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError:
        raise IssuerUnavailable(f"{url} did not answer JSON") from None
    if not isinstance(document, dict):
        raise IssuerUnavailable(f"{url} did not answer a JSON object")
    return document


def metadata_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may be: RFC 8414 (the well-known segment inserted before the issuer's
    path), then OIDC discovery in both of its forms."""
    parts = urlsplit(issuer)
    origin, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
    urls = [f"{origin}/.well-known/oauth-authorization-server{path}",
            f"{origin}/.well-known/openid-configuration{path}"]
    if path:
        urls.append(f"{origin}{path}/.well-known/openid-configuration")
    return urls


def key_fits(jwk: dict[str, Any], alg: str) -> bool:
    """Whether a JWK may verify a token signed with `alg`: its type fits the algorithm, it is a signing
    key, and its own `alg` (when it names one) is that one."""
    return (jwk.get("kty") == KEY_TYPES.get(alg[:2]) and jwk.get("use", "sig") == "sig"
            and jwk.get("alg", alg) == alg)


@dataclass
class IssuerKeys:
    """One trusted issuer's metadata and keys, shared by every request of the web process."""

    settings: IssuerSettings
    timeout_s: float
    cache_s: float
    refetch_s: float
    _metadata: dict[str, Any] | None = None
    _keys: list[dict[str, Any]] = field(default_factory=list)
    _fetched_at: float = float("-inf")
    _refetched_at: float = float("-inf")
    _lock: threading.RLock = field(default_factory=threading.RLock)  # a refresh reads the metadata under it
    _failed_at: float = float("-inf")
    _failure: str = ""

    @property
    def issuer(self) -> str:
        return self.settings.issuer

    def metadata(self) -> dict[str, Any]:
        """The issuer's metadata (fetched once; its `issuer` must be the configured one, RFC 8414 §3.3)."""
        if self._metadata is not None:
            return self._metadata
        with self._lock:
            if self._metadata is None:
                self._metadata = self._guarded(self._fetch_metadata)
        return self._metadata

    def _guarded(self, fetch: Callable[[], Any]) -> Any:
        """`fetch()`, unless it failed less than `FAILURE_BACKOFF_S` ago: then the same failure at once, so a
        server that is down costs each request nothing rather than a timeout (and the lock's queue)."""
        if time.monotonic() - self._failed_at < FAILURE_BACKOFF_S:
            raise IssuerUnavailable(self._failure)
        try:
            return fetch()
        except IssuerUnavailable as err:
            self._failed_at, self._failure = time.monotonic(), str(err)
            raise

    def _fetch_metadata(self) -> dict[str, Any]:
        errors = []
        for url in metadata_urls(self.issuer):
            try:
                document = http_json(url, self.timeout_s)
            except IssuerUnavailable as err:
                errors.append(str(err))
                continue
            if document.get("issuer") != self.issuer:
                raise IssuerUnavailable(f"{url} names the issuer {document.get('issuer')!r}, not {self.issuer!r}")
            return document
        raise IssuerUnavailable(f"no metadata for {self.issuer}: {'; '.join(errors)}")

    def keys_for(self, kid: str | None, alg: str) -> list[dict[str, Any]]:
        """The JWKs that may verify a token with this `kid` and `alg` (every fitting key when it names no
        `kid`); empty when none does, even after the one refetch an unknown `kid` may cause."""
        now = time.monotonic()
        if now - self._fetched_at > self.cache_s:
            self._refresh(stale_ok=bool(self._keys))
        found = self._matching(kid, alg)
        if not found and kid is not None and time.monotonic() - self._refetched_at >= self.refetch_s:
            self._refetched_at = time.monotonic()
            log.info("oauth: %s: unknown signing key %r, fetching the JWKS again", self.issuer, kid[:80])
            self._refresh(stale_ok=True)
            found = self._matching(kid, alg)
        return found

    def _fetch_keys(self) -> list[Any]:
        """The JWKS; without a configured `jwks_uri` the metadata is fetched again first (every `jwks_cache_s`,
        not once for the process's life: a server that moves its `jwks_uri` or endpoints is followed)."""
        if self.settings.jwks_uri is None and self._fetched_at > float("-inf"):
            self._metadata = self._fetch_metadata()
        uri = self.settings.jwks_uri or self.metadata().get("jwks_uri")
        if not isinstance(uri, str) or not uri:
            raise IssuerUnavailable(f"{self.issuer}: its metadata names no jwks_uri")
        keys = http_json(uri, self.timeout_s).get("keys")
        if not isinstance(keys, list):
            raise IssuerUnavailable(f"{uri}: not a JWK set (no `keys` list)")
        return keys

    def _matching(self, kid: str | None, alg: str) -> list[dict[str, Any]]:
        return [k for k in self._keys if (kid is None or k.get("kid") == kid) and key_fits(k, alg)]

    def _refresh(self, stale_ok: bool) -> None:
        before = self._fetched_at
        with self._lock:
            if self._fetched_at != before:
                return  # another request fetched while this one waited
            try:
                keys = self._guarded(self._fetch_keys)
            except IssuerUnavailable as err:
                if not stale_ok:
                    raise
                log.warning("oauth: %s: keeping the cached keys: %s", self.issuer, err)
                self._fetched_at = time.monotonic() - self.cache_s + min(self.cache_s, self.refetch_s)
                return
            self._keys = [k for k in keys if isinstance(k, dict)]
            self._fetched_at = time.monotonic()
