"""Results settings from the environment (`MCP_BROKER_MAX_RESULT_TOKENS`, `MCP_BROKER_RESULT_PAGES_TTL_S`),
parsed once per process through the schema (ResultsEnvSchema).

Why once, and at start: they used to be read with `int()` on every shaped answer, inside the reply hub's
callback, so `10k` raised there and the client never got its answer, and a limit of 1..100 left a negative
page budget. Now the web start and `check-config` call `results_env()` and a bad value stops them with a
message naming the variable.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from broker.config import ConfigError
from broker.schemas import _result_tokens  # the one field builder for a result token limit


class ResultsEnvSchema(Schema):
    """The broker-wide results settings from the environment, read once at start: the same
    bounds as a query string's `max_result_tokens`, so a bad value stops the start instead of every answer."""

    class Meta:
        unknown = EXCLUDE  # the rest of the environment

    max_result_tokens = _result_tokens(strict=False, data_key="MCP_BROKER_MAX_RESULT_TOKENS", load_default=10_000)
    pages_ttl_s = fields.Integer(strict=False, data_key="MCP_BROKER_RESULT_PAGES_TTL_S", load_default=3600,
                                 validate=validate.Range(min=1, max=30 * 86400))
    pages_max_bytes = fields.Integer(strict=False, data_key="MCP_BROKER_RESULT_PAGES_MAX_BYTES",
                                     load_default=64 * 1024 * 1024, validate=validate.Range(min=1))


@dataclass(frozen=True)
class ResultsEnv:
    max_result_tokens: int  # the default limit on model-facing endpoints (0 = never cut)
    pages_ttl_s: int  # how long a cut result's pages stay readable
    pages_max_bytes: int = 64 * 1024 * 1024  # what one key may keep at once, so one tenant cannot fill Redis


def load_results_env(environ: Mapping[str, str]) -> ResultsEnv:
    """The settings in `environ`; `ConfigError` naming the variable when one is bad."""
    present = {k: v for k, v in environ.items() if k.startswith("MCP_BROKER_") and v != ""}
    try:
        loaded = ResultsEnvSchema().load(present)
    except ValidationError as err:
        problems = "; ".join(f"{name}={environ.get(name)!r}: {' '.join(map(str, msgs))}"  # type: ignore[union-attr]
                             for name, msgs in err.normalized_messages().items())
        raise ConfigError(f"environment: {problems}") from None
    return ResultsEnv(**loaded)


@functools.cache
def results_env() -> ResultsEnv:
    """This process's settings, parsed on first use (the web start and `check-config` call it first)."""
    return load_results_env(os.environ)
