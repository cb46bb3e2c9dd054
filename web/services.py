"""Build the per-process broker services the web endpoints share.

Created lazily at the first request, never at import: under gunicorn+gevent a
thread or Redis client made before the worker forks (or before monkey
patching) would be shared or blocking.
"""

from __future__ import annotations

import os
import threading

from broker.catalog import Catalog
from broker.config import BrokerConfig, load_config
from broker.protocol import BrokerServices
from broker.redisconn import get_redis
from broker.replies import ReplyHub
from broker.router import Router

_lock = threading.Lock()
_services: BrokerServices | None = None
_pid: int | None = None


def build_services(config: BrokerConfig) -> BrokerServices:
    from workers.dispatch import request_catalog, submit_call

    r = get_redis()
    catalog = Catalog(r, config)
    return BrokerServices(
        config=config,
        redis=r,
        catalog=catalog,
        router=Router(catalog),
        hub=ReplyHub(r),
        submit=submit_call,
        request_catalog=request_catalog,
        page_size=int(os.environ.get("MCP_BROKER_PAGE_SIZE", "500")),
    )


def get_services(config: BrokerConfig | None = None) -> BrokerServices:
    global _services, _pid
    if _services is None or _pid != os.getpid():
        with _lock:
            if _services is None or _pid != os.getpid():
                _services = build_services(config or load_config())
                _pid = os.getpid()
    return _services
