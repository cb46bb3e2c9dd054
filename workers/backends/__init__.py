"""Warm MCP client sessions to the backend servers, owned by a worker process.

session.py (one session: open, restart, hangs, calls), pool.py (a process's sessions and their event
loop), health.py (a replica's health, written to Redis), transports.py (how each kind of endpoint is
opened: the table), methods.py (the forwarded methods: the table), relay.py (a backend's own requests
to the client), listing.py (a backend's catalog), errors.py (the failure kinds and `CallChannel`).
"""
