"""`web.transports.ws_select.QuickSelector`: a socket whose data is there is answered without gevent's wait."""

from __future__ import annotations

import selectors
import socket

import pytest
from gevent.selectors import GeventSelector

from web.transports.ws_select import QuickSelector


def test_data_already_there_is_answered_at_once_and_nothing_there_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = socket.socketpair()
    selector = QuickSelector()
    try:
        key = selector.register(b, selectors.EVENT_READ, True)
        assert selector.select(0.05) == []  # nothing there: gevent's selector waited and timed out
        a.send(b"frame")
        waited: list[float | None] = []
        monkeypatch.setattr(GeventSelector, "select", lambda _self, timeout=None: waited.append(timeout) or [])
        assert selector.select(5) == [(key, selectors.EVENT_READ)]
        assert waited == []  # the kernel said it was there: no watcher, no wait
        assert b.recv(100) == b"frame"
        assert selector.select(5) == [] and waited == [5]  # read: nothing there, so it waits again
        a.close()
        assert selector.select(5) == [(key, selectors.EVENT_READ)]  # the peer left: readable (an empty read)
        selector.unregister(b)
        assert selector.get_map().get(b.fileno()) is None
    finally:
        selector.close()
        b.close()
