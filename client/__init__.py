"""Talk to a running broker from Python: the client side, outside the domain package `broker/`.

    client/websocket.py            WebSocketTransport: the `mcp` SDK's missing WebSocket transport
    client/async_broker_client.py  AsyncMCPBrokerClient (and `text`): mcp.Client on that transport
    client/broker_client.py        MCPBrokerClient: the blocking one, for scripts and notebooks
    client/tasks.py                `submit`'s task handles (the tasks extension, modern era)
    client/http_api.py             the stdlib HTTP client of the broker's /v1 API (`python -m broker call|batch`)
    client/bridge.py               Bridge: `mcp-broker connect`, a stdio MCP server forwarding to a broker
    client/upstream.py             the bridge's links to the broker (WebSocket or Streamable HTTP), resumable

Nothing is imported here on purpose: `python -m broker call` imports `client.http_api`
(stdlib only) and must not pay for the SDK and `websockets` that the other modules load.
"""
