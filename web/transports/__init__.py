"""The MCP transports of the web tier: the WebSocket (`ws.py`) and Streamable HTTP (`http.py`, which hands
each request to its protocol era: `http_handshake.py` or `http_modern.py`), on what they share (`common.py`)."""
