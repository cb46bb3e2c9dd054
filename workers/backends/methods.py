"""The requests a worker forwards to a backend: one entry per JSON-RPC method, saying how the SDK
client performs it, how its result goes on the wire, and what of it the shared cache keeps.

Adding a forwarded method here is the worker's whole part of it (the web tier's side is its method
table). Every entry gets the request's `params` as the client sent them (for tools/call: `name` and
`arguments`), the request's `_meta` (None when empty) and, when the client asked for progress and the
method has any, the callback that sends progress notes to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from mcp import Client
from mcp_types import PromptReference, ResourceTemplateReference

from broker.cache import READ_RESOURCE, store_directed, store_result

ProgressCallback = Callable[[float, float | None, str | None], Awaitable[None]]
Perform = Callable[[Client, dict[str, Any], dict[str, Any] | None, ProgressCallback | None], Awaitable[Any]]
# (server, params, result, the call's cache TTL in seconds or None) -> a write for `ResultWriter.write_behind`
CacheStore = Callable[[str, dict[str, Any], dict[str, Any], float | None], Callable[[Any], Any] | None]
PARAMS_ERRORS = (KeyError, TypeError, ValueError)


def forward_unchecked(client: Client) -> None:
    """Turn off the SDK session's output-schema check of tools/call results (on an entered client).

    The SDK client validates every result's structured content against the tool's output schema (jsonschema,
    on the backend loop) and fails the call when it does not fit; a tool this session never listed costs a
    tools/list round trip first. The broker forwards results unchanged (structured content, isError, the
    output schema in its listing) and its clients check them against the schema they listed, so the worker's
    check was twice the work and, for a result that did not fit, an "internal error" instead of the server's
    answer. Measured (py-spy, worker, 64 in flight): 5-6% of the worker's CPU per call, both transports."""

    async def unchecked(_name: str, _result: Any) -> None:
        return None

    client.session.validate_tool_result = unchecked  # type: ignore[method-assign]


def dump(model: Any) -> dict[str, Any]:
    """An SDK result as its JSON wire dict (camelCase keys, no nulls)."""
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass(frozen=True)
class ForwardedMethod:
    perform: Perform
    # Failures that mean the params did not fit the method (answered "Invalid params"). tools/call has none:
    # its name and arguments go to the backend as they are, a failure there is the worker's own.
    params_errors: tuple[type[Exception], ...] = PARAMS_ERRORS
    dump: Callable[[Any], dict[str, Any]] = dump
    cache: CacheStore | None = None  # what the shared cache keeps of a result (`broker.cache`)


async def _call_tool(client: Client, params: dict[str, Any], meta: dict[str, Any] | None,
                     on_progress: ProgressCallback | None) -> Any:
    return await client.call_tool(params["name"], params["arguments"], progress_callback=on_progress, meta=meta)


def _cache_tool_result(server: str, params: dict[str, Any], result: dict[str, Any],
                       ttl_s: float | None) -> Callable[[Any], Any] | None:
    """A tool whose config gives it a cache TTL: its result is kept that long (errors never are)."""
    if not ttl_s:
        return None
    return partial(store_result, server=server, tool=params["name"], arguments=params["arguments"], result=result,
                   ttl_s=float(ttl_s))


async def _read_resource(client: Client, params: dict[str, Any], meta: dict[str, Any] | None,
                         _: ProgressCallback | None) -> Any:
    return await client.read_resource(params["uri"], meta=meta)


def _cache_directed(server: str, params: dict[str, Any], result: dict[str, Any],
                    _: float | None) -> Callable[[Any], Any] | None:
    """The backend's own cache directive (modern backends: `cacheScope`, `ttlMs`)."""
    return partial(store_directed, server=server, tool=READ_RESOURCE, arguments={"uri": params.get("uri")},
                   result=result)


async def _get_prompt(client: Client, params: dict[str, Any], meta: dict[str, Any] | None,
                      _: ProgressCallback | None) -> Any:
    return await client.get_prompt(params["name"], params.get("arguments") or None, meta=meta)


async def _subscribe(client: Client, params: dict[str, Any], _meta: dict[str, Any] | None,
                     _: ProgressCallback | None) -> Any:
    return await client.subscribe_resource(params["uri"])


async def _unsubscribe(client: Client, params: dict[str, Any], _meta: dict[str, Any] | None,
                       _: ProgressCallback | None) -> Any:
    return await client.unsubscribe_resource(params["uri"])


async def _complete(client: Client, params: dict[str, Any], _meta: dict[str, Any] | None,
                    _: ProgressCallback | None) -> Any:
    ref_data = params["ref"]
    ref: ResourceTemplateReference | PromptReference = (
        PromptReference.model_validate(ref_data)
        if ref_data.get("type") == "ref/prompt"
        else ResourceTemplateReference.model_validate(ref_data)
    )
    return await client.complete(ref, params["argument"], (params.get("context") or {}).get("arguments"))


FORWARDED: dict[str, ForwardedMethod] = {
    "tools/call": ForwardedMethod(_call_tool, params_errors=(), cache=_cache_tool_result),
    READ_RESOURCE: ForwardedMethod(_read_resource, cache=_cache_directed),
    "prompts/get": ForwardedMethod(_get_prompt),
    "resources/subscribe": ForwardedMethod(_subscribe),
    "resources/unsubscribe": ForwardedMethod(_unsubscribe),
    "completion/complete": ForwardedMethod(_complete),
}
