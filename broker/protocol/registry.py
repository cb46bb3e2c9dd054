"""Every JSON-RPC method the broker serves, as one table: adding a method is a handler and a row here
(and its params schema in `broker.schemas`), nothing else.

A row (`MethodSpec`) says what the conversation needs to dispatch a request: the handler; the params
schema it validates first (-32602 naming the first problem); the eras the method exists in (by default,
those the SDK's own table has it in); what admission takes before the handler runs (a forwarded method
costs the key one rate token); whether it may answer `input_required` in the modern era (by default, the
SDK's `INPUT_REQUIRED_METHODS`); and the capability it makes the broker offer, so `initialize` and
`server/discover` tell exactly what the era's methods serve.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from marshmallow import Schema
from mcp_types.methods import INPUT_REQUIRED_METHODS

from broker.admission import Admission
from broker.context import tools as broker_tools
from broker.protocol.era import ERAS, MODERN, sdk_eras
from broker.protocol.framing import load_params
from broker.protocol.handlers import forward, lifecycle, subscriptions, tasks
from broker.protocol.handlers.lists import LISTS, list_items
from broker.schemas import (
    CallToolParamsSchema,
    CompleteParamsSchema,
    GetPromptParamsSchema,
    InitializeParamsSchema,
    PaginatedParamsSchema,
    ReadResourceParamsSchema,
    TaskParamsSchema,
    TaskUpdateParamsSchema,
)
from broker.tasks import TASKS_EXTENSION

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation

Handler = Callable[["Conversation", Any, dict[str, Any]], Any]  # (conversation, request id, params) → result
NotificationHandler = Callable[["Conversation", dict[str, Any]], None]
Admit = Callable[[Admission], None]


@dataclass(frozen=True)
class MethodSpec:
    method: str
    handler: Handler
    params: Schema | None = None  # validates and loads the params the handler gets (None: as sent)
    forwarded: bool = False  # answered by a backend (a queued `Call`) rather than by the broker
    admission: Admit | None = None  # taken before the handler (default: a forwarded method's rate token)
    capability: dict[str, dict[str, Any]] = field(default_factory=dict)  # what serving it offers the client
    eras: frozenset[str] = frozenset()  # default: the eras the SDK's `CLIENT_REQUESTS` has it in
    resumable: bool | None = None  # may answer `input_required` (default: the SDK's `INPUT_REQUIRED_METHODS`)
    # what `params` loads for the usual shapes, without the schema (None: not one of them, the schema loads it)
    quick: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None

    def __post_init__(self) -> None:
        if self.admission is None and self.forwarded:
            object.__setattr__(self, "admission", Admission.take_rate)
        if not self.eras:
            object.__setattr__(self, "eras", sdk_eras(self.method))
        if self.resumable is None:
            object.__setattr__(self, "resumable", self.method in INPUT_REQUIRED_METHODS)

    def load(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.quick is not None:
            loaded = self.quick(params)
            if loaded is not None:
                return loaded
        return load_params(self.params, params) if self.params is not None else params


_ABSENT = object()


def quick_call_tool_params(params: dict[str, Any]) -> dict[str, Any] | None:
    """What `CallToolParamsSchema().load(params)` returns, for the shapes nearly every call has (a name of
    1-300 characters; `arguments` and `_meta` objects, null or absent; other keys dropped), without
    marshmallow: 0.5 us of CPU a call instead of the schema's 8.2 (process time, medians of 5 alternating
    rounds; 40-90 us wall on the loaded box). None for anything else: the schema loads that, or refuses it
    with its own message."""
    if type(params) is not dict:
        return None
    name = params.get("name")
    if type(name) is not str or not 0 < len(name) <= 300:
        return None
    loaded: dict[str, Any] = {"name": name}
    for key in ("arguments", "_meta"):
        value = params.get(key, _ABSENT)
        if value is _ABSENT:
            loaded[key] = {}
        elif value is None:
            loaded[key] = None
        elif type(value) is dict:
            loaded[key] = dict(value)  # as fields.Dict: a copy of the object
        else:
            return None
    return loaded


def _list(method: str) -> MethodSpec:
    return MethodSpec(method, functools.partial(list_items, method), PaginatedParamsSchema(),
                      capability={_CAPABILITY_OF_LIST[method]: {"listChanged": True}})


_CAPABILITY_OF_LIST = {"tools/list": "tools", "prompts/list": "prompts", "resources/list": "resources",
                       "resources/templates/list": "resources"}
_uri = ReadResourceParamsSchema()

METHODS: dict[str, MethodSpec] = {spec.method: spec for spec in (
    MethodSpec("initialize", lifecycle.initialize, InitializeParamsSchema()),
    MethodSpec("ping", lifecycle.ping),
    *(_list(method) for method in LISTS),
    MethodSpec("tools/call", broker_tools.tools_call, CallToolParamsSchema(), forwarded=True,
               capability={"tools": {}}, quick=quick_call_tool_params),
    MethodSpec("resources/read", forward.resources_read, _uri, forwarded=True, capability={"resources": {}}),
    MethodSpec("prompts/get", forward.prompts_get, GetPromptParamsSchema(), forwarded=True,
               capability={"prompts": {}}),
    MethodSpec("completion/complete", forward.complete, CompleteParamsSchema(), forwarded=True,
               capability={"completions": {}}),
    MethodSpec("logging/setLevel", lifecycle.set_level, capability={"logging": {}}),
    MethodSpec("resources/subscribe", subscriptions.subscribe, _uri, capability={"resources": {"subscribe": True}}),
    MethodSpec("resources/unsubscribe", subscriptions.unsubscribe, _uri),
    MethodSpec("server/discover", lifecycle.discover),
    MethodSpec("subscriptions/listen", subscriptions.listen, capability={"resources": {"subscribe": True}}),
    *(MethodSpec(method, handler, schema, admission=Admission.take_rate, eras=frozenset({MODERN.name}),
                 capability={"extensions": {TASKS_EXTENSION: {}}})
      for method, handler, schema in (("tasks/get", tasks.get, TaskParamsSchema()),
                                      ("tasks/update", tasks.update, TaskUpdateParamsSchema()),
                                      ("tasks/cancel", tasks.cancel, TaskParamsSchema()))),
)}

NOTIFICATIONS: dict[str, NotificationHandler] = {
    "notifications/initialized": lifecycle.initialized,
    "notifications/cancelled": lifecycle.cancelled,
}


def _capabilities(era: str) -> dict[str, dict[str, Any]]:
    offered: dict[str, dict[str, Any]] = {}
    for spec in METHODS.values():
        if era in spec.eras:
            for name, flags in spec.capability.items():
                offered[name] = {**offered.get(name, {}), **flags}
    return offered


CAPABILITIES: dict[str, dict[str, dict[str, Any]]] = {era: _capabilities(era) for era in ERAS}
"""What the broker offers a client of each era: the union of the `capability` of every row the era serves,
so a new method's capability follows from its row (handshake: tools, prompts and resources with listChanged,
resources with subscribe, completions, logging; modern the same without logging, with the tasks extension)."""
