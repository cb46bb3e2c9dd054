"""The worker's backend loop thread declares itself asyncio to sniffio (`workers.backends.pool`), so anyio's
primitives do not sniff for the running library on every use; threads it hands work to still sniff."""

from __future__ import annotations

import anyio.to_thread
import sniffio

from broker.config import BrokerConfig
from workers.backends.pool import BackendPool


def read_name() -> str | None:
    return sniffio.thread_local.name


def test_the_loop_thread_is_declared_asyncio_and_only_it() -> None:
    pool = BackendPool(BrokerConfig(servers={}))
    try:
        assert pool.portal.call(read_name) == "asyncio"
        assert pool.portal.call(anyio.to_thread.run_sync, read_name) is None  # a worker thread of anyio's
        assert read_name() is None  # this (calling) thread
    finally:
        pool.close()
