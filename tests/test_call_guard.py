"""`BackendSession._guarded`, the guard every forwarded call runs in: one cancel scope carries the call's time
limit and a client's cancellation, the server's `concurrency` slots are taken and always given back. Run on
an event loop with a stand-in client (no backend process): what is checked is the guard's own bookkeeping."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from broker.config import BrokerSettings, ServerSpec
from workers.backends.errors import BackendTimeout, CallCancelled, SlotWaitTimeout
from workers.backends.health import EndpointHealth
from workers.backends.session import BackendSession


class Recorded(EndpointHealth):
    def __init__(self, spec: ServerSpec) -> None:
        super().__init__(spec.name, 0, spec.endpoints[0])
        self.failures: list[str] = []

    def failed(self, error: str, stderr: str | None = None, backoff: bool = True) -> None:
        self.failures.append(error)


def session(concurrency: int = 1) -> BackendSession:
    spec = ServerSpec(name="fake", command="true", settings=BrokerSettings(concurrency=concurrency, timeout_s=5,
                                                                            hang_timeouts=0))
    s = BackendSession(spec, portal=None, base_dir=".", health=Recorded(spec))  # type: ignore[arg-type]
    s._client = object()  # type: ignore[assignment]  # "open": `_guarded` hands it to the call as it is
    return s


async def sleeper(seconds: float, answer: Any = "answer") -> Any:
    await anyio.sleep(seconds)
    return answer


def test_an_answer_a_timeout_and_a_slot_wait_keep_their_kinds_and_free_their_slot() -> None:
    async def main() -> None:
        s = session(concurrency=1)
        assert await s._guarded(lambda _c: sleeper(0), 1, "a") == "answer"
        with pytest.raises(BackendTimeout) as late:
            await s._guarded(lambda _c: sleeper(5), 0.1, "b")
        assert not isinstance(late.value, SlotWaitTimeout)
        assert s.health.failures and "not answered within" in s.health.failures[-1]  # type: ignore[attr-defined]
        async with anyio.create_task_group() as tg:  # one slot: the second call waits for it past its limit
            tg.start_soon(s._guarded, lambda _c: sleeper(0.5), 2, "c")
            await anyio.sleep(0.05)
            with pytest.raises(SlotWaitTimeout):
                await s._guarded(lambda _c: sleeper(0), 0.1, "d")
        assert await s._guarded(lambda _c: sleeper(0), 1, "e") == "answer"  # every slot was given back
        assert s.running == {} and s.channels == {} and s._cancelled == set()

    anyio.run(main)


def test_a_client_cancel_is_a_cancellation_even_past_the_deadline_and_frees_the_slot() -> None:
    async def main() -> None:
        s = session(concurrency=1)

        async def cancel_soon(call_id: str, after: float) -> None:
            await anyio.sleep(after)
            assert s.cancel(call_id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_soon, "a", 0.1)
            with pytest.raises(CallCancelled):
                await s._guarded(lambda _c: sleeper(5), 2, "a")

        async def blocking(_c: Any) -> None:  # never gives the loop back in time: cancel and deadline both due
            s.cancel("b")
            import time
            time.sleep(0.15)
            await anyio.sleep(1)

        with pytest.raises(CallCancelled):
            await s._guarded(blocking, 0.1, "b")
        assert not s.cancel("b")  # over: nothing left to cancel
        assert await s._guarded(lambda _c: sleeper(0), 1, "c") == "answer"
        assert s.running == {} and s._cancelled == set()

    anyio.run(main)
