"""The process's disconnect poller (`web/transports/disconnect.py`): one failing watch never stops it."""

from __future__ import annotations

import socket
import threading

from web.transports.disconnect import DisconnectWatch


class _Broken(DisconnectWatch):
    def poll(self) -> bool:
        raise OSError(24, "Too many open files")


def test_a_failing_watch_is_dropped_and_the_others_still_watched() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    gone = threading.Event()
    poll_s = 0.013  # a poller of its own, not the process's default one
    try:
        _Broken(accepted, lambda: None, poll_s).start()
        DisconnectWatch(accepted, gone.set, poll_s).start()
        client.close()  # the second watch's client goes away
        assert gone.wait(5)
    finally:
        for sock in (accepted, client, server):
            sock.close()
