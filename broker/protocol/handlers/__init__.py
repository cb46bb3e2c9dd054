"""The JSON-RPC methods the broker serves, one module per concern; each handler is
`handler(conversation, request_id, params) -> result | DEFERRED` (params as its `MethodSpec` schema loaded
them) and is listed in `broker.protocol.registry`.

- `lifecycle`: initialize, ping, server/discover, logging/setLevel; the notifications initialized and cancelled
- `lists`: tools/list, prompts/list, resources/list, resources/templates/list (from the catalog)
- `forward`: tools/call, resources/read, prompts/get, completion/complete (cache lookups, then a queued `Call`)
- `outcomes`: a forwarded call's events and outcome, turned into what its client receives
- `subscriptions`: resources/subscribe and unsubscribe, subscriptions/listen, resource updates
- `relay`: a backend's requests to a handshake-era client, and the client's answers
- `input_required`: a backend's questions to a modern client (`input_required`, signed `requestState`)
"""
