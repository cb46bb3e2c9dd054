"""The whole of a result that was cut for a model, kept in Redis so the model can read every page.

One hash per cut result under an unguessable handle (128 random bits, like call and session ids; the key
is the handle's SHA-256, like a task's, so a dump of Redis shows no usable handle):
the principal that may read it (another key's handle reads as unknown, so a handle leaked into a log
opens nothing), the page count, and each page. It lives `MCP_BROKER_RESULT_PAGES_TTL_S` (default one
hour: a conversation that still needs the rest has it; an abandoned one frees its memory).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

import redis

from broker import keys
from broker.context.env import results_env

PAGES_TTL_S = 3600
HANDLE = re.compile(r"^[0-9a-f]{32}$")


def pages_ttl_s() -> int:
    """`MCP_BROKER_RESULT_PAGES_TTL_S`, parsed and checked once at start (broker.context.env)."""
    return results_env().pages_ttl_s


class PageUnavailable(LookupError):
    """A page that cannot be read: `code` says why (`result_not_found`, `page_out_of_range`)."""

    def __init__(self, code: str, message: str, pages: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.pages = code, message, pages


@dataclass(frozen=True)
class Page:
    text: str
    number: int
    pages: int


class ResultPages:
    def __init__(self, r: redis.Redis, ttl_s: int | None = None, max_bytes: int | None = None) -> None:
        self._r = r
        self.ttl_s = ttl_s or pages_ttl_s()
        self.max_bytes = max_bytes or results_env().pages_max_bytes

    def keep(self, principal: str, pages: list[str]) -> str | None:
        """Store `pages` for `principal`; the handle to read them with, or None when the principal already keeps
        `MCP_BROKER_RESULT_PAGES_MAX_BYTES` (64 MiB): without a budget one tenant looping a 10 MB result fills
        the shared Redis for an hour. The counter expires with the principal's last kept result, so it never
        counts less than is kept."""
        size = sum(len(page.encode("utf-8", "surrogatepass")) for page in pages)
        budget = keys.result_pages_bytes(hashlib.sha256(principal.encode()).hexdigest())
        pipe = self._r.pipeline(transaction=True)
        pipe.incrby(budget, size)
        pipe.expire(budget, self.ttl_s)
        if int(pipe.execute()[0]) > self.max_bytes:
            self._r.decrby(budget, size)
            return None
        handle = uuid.uuid4().hex
        key = keys.result_pages(handle_digest(handle))
        mapping: dict[str, str | int] = {"principal": principal, "pages": len(pages)}
        mapping.update({str(number): page for number, page in enumerate(pages, start=1)})
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, self.ttl_s)
        pipe.execute()
        return handle

    def read(self, principal: str, handle: str, number: int) -> Page:
        """Page `number` (from 1) of `handle`, if `principal` may read it."""
        found = [None, None, None]
        if HANDLE.match(handle):
            found = self._r.hmget(keys.result_pages(handle_digest(handle)), ["principal", "pages", str(number)])
        owner, count, text = (v.decode("utf-8", "surrogatepass") if isinstance(v, bytes) else v for v in found)
        if owner is None or owner != principal:
            raise PageUnavailable("result_not_found", f"No kept result {handle!r}: unknown, or expired (a cut "
                                  f"result is kept {self.ttl_s} s); call the tool again to get it anew")
        pages = int(count)
        if text is None:
            raise PageUnavailable("page_out_of_range", f"Result {handle!r} has pages 1 to {pages}; page "
                                  f"{number} does not exist", pages)
        return Page(text, number, pages)


def handle_digest(handle: str) -> str:
    return hashlib.sha256(handle.encode()).hexdigest()
