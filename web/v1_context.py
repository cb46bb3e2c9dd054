"""The catalog modes (tool search, `broker.context`) for callers of `/v1`, which hold no MCP conversation.

`GET /v1/tools?tools=search` lists what `tools/list` lists in search mode: the pinned tools and the broker's own
`broker__search_tools` / `broker__call_tool`. A model given those definitions calls them like any tool, so `/v1`
runs them too (`run_broker_tool`, from `web.api.run_call`: `POST /v1/calls` and `POST /v1/tools/<name>`):
the search with the handler MCP clients reach (`broker.context.search_tool`), under the caller's allow-list;
`broker__call_tool` as the call of the tool it names, on the native path.

The modes' code reads a conversation's services, key, admission, `?tools=`, era and results choice; `Listing` is
that much of one for a `/v1` request (no per-server scope: `/v1` names tools namespaced; results are not shaped,
so the shaping's page tool is not listed). A new attribute the broker tools' `listed` rules read must be added
here too: `tests/test_translator_http.py` lists tools in both modes, so a missing one fails there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.admission import Admission
from broker.context import search_tool
from broker.context.modes import listed_backend_tools
from broker.context.names import short_name
from broker.context.shaping import ResultsChoice
from broker.context.tools import BROKER_TOOLS, listed_broker_tools
from broker.security import Principal
from broker.services import BrokerServices
from web.call_path import ApiError

RunCall = Callable[[BrokerServices, str, dict[str, Any], float | None], tuple[str, dict[str, Any]]]


class _V1Era:
    """How a broker tool's handler refuses arguments, said the `/v1` way: a 400 JSON error."""

    @staticmethod
    def invalid_arguments(_conversation: Any, message: str) -> dict[str, Any]:
        raise ApiError(400, "invalid_arguments", message)


@dataclass(frozen=True)
class Listing:
    """What `broker.context` reads of a conversation, for a `/v1` caller."""

    services: BrokerServices
    principal: Principal
    admission: Admission
    catalog_mode: str | None  # the request's `?tools=`, else the key's, else the config's (modes.catalog_mode)
    scope: str | None = None
    era: _V1Era = field(default_factory=_V1Era)
    # /v1 answers results whole (no paging, broker.context.shaping): the page-reading tool is never listed
    results_choice: ResultsChoice = field(default_factory=lambda: ResultsChoice(mode="raw"))


def visible_tools(services: BrokerServices, admission: Admission, mode: str | None) -> list[dict[str, Any]]:
    """The tools `tools/list` on `/mcp` would show this caller in catalog mode `mode` (None: its default)."""
    services.catalog.ensure_fresh()
    services.request_missing_catalogs()
    listing = Listing(services, admission.principal, admission, mode)
    return listed_broker_tools(listing) + listed_backend_tools(listing)  # type: ignore[arg-type]


def _search(services: BrokerServices, admit: Callable[[], Admission], arguments: dict[str, Any],
            _timeout_s: float | None, _run_call: RunCall) -> tuple[str, dict[str, Any]]:
    admission = admit()
    listing = Listing(services, admission.principal, admission, None)
    return "", search_tool.handle(listing, None, arguments, {})  # type: ignore[arg-type]  # no call record: no id


def _call(services: BrokerServices, _admit: Callable[[], Admission], arguments: dict[str, Any],
          timeout_s: float | None, run_call: RunCall) -> tuple[str, dict[str, Any]]:
    target = arguments["name"]
    if short_name(target, services.config.separator) is not None:
        raise ApiError(400, "invalid_arguments", f"{target} is one of the broker's own tools: call it directly")
    return run_call(services, target, arguments.get("arguments") or {}, timeout_s)


V1_HANDLERS: dict[str, Callable[..., tuple[str, dict[str, Any]]]] = {  # broker tool → how /v1 runs it
    "search_tools": _search,
    "call_tool": _call,
}


def run_broker_tool(services: BrokerServices, admit: Callable[[], Admission], name: str, arguments: dict[str, Any],
                    timeout_s: float | None, run_call: RunCall) -> tuple[str, dict[str, Any]] | None:
    """(call id, result) of the broker's own tool `name`, or None when `name` is not one. `admit` admits the
    caller (one rate token): the search does; `broker__call_tool` runs the tool it names through `run_call`,
    which admits it as a direct call of that tool (one token in all, as over MCP). The search keeps no call
    record (its id is empty)."""
    short = short_name(name, services.config.separator)
    tool = BROKER_TOOLS.get(short) if short is not None else None
    if tool is None or short is None:
        return None
    handler = V1_HANDLERS.get(short)
    if handler is None:
        raise ApiError(400, "unsupported_tool", f"{name} runs over MCP only (/mcp), not over /v1")
    problem = tool.argument_errors(arguments)
    if problem is not None:
        raise ApiError(400, "invalid_arguments", f"invalid arguments for tool {name}: {problem}")
    return handler(services, admit, arguments, timeout_s, run_call)
