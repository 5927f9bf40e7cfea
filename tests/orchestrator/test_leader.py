"""Leader election over the bus: one leader at a time, fast failover, fencing tokens grow."""

from __future__ import annotations

import asyncio
import time

from orchestrator.leader import LeaderElector
from tests.conftest import BusFactory


async def test_one_leader_and_failover_with_a_higher_fencing_token(bus_factory: BusFactory) -> None:
    running: dict[str, int] = {}

    def work_for(name: str):  # type: ignore[no-untyped-def]
        async def work(token: int) -> None:
            running[name] = token
            try:
                await asyncio.Event().wait()
            finally:
                running.pop(name, None)

        return work

    electors = [
        LeaderElector(bus_factory.open(), "loops", work_for(f"r{i}"), ttl_ms=600, holder=f"r{i}") for i in range(3)
    ]
    for e in electors:
        await e.start()
    try:
        await asyncio.wait_for(
            asyncio.wait(
                [asyncio.ensure_future(e.elected.wait()) for e in electors], return_when=asyncio.FIRST_COMPLETED
            ),
            3,
        )
        await asyncio.sleep(0.5)
        leaders = [e for e in electors if e.is_leader]
        assert len(leaders) == 1 and len(running) == 1
        first = leaders[0]
        first_token = first.token
        assert await first.current() == first.holder
        # the leader dies without releasing (its task is cancelled, its lease left to expire)
        assert first._task is not None
        first._task.cancel()
        first.token = None
        if first._term:
            first._term.cancel()
        died = time.monotonic()
        others = [e for e in electors if e is not first]
        await asyncio.wait_for(
            asyncio.wait(
                [asyncio.ensure_future(e.elected.wait()) for e in others], return_when=asyncio.FIRST_COMPLETED
            ),
            5,
        )
        took = time.monotonic() - died
        new = [e for e in others if e.is_leader]
        assert len(new) == 1
        assert new[0].token is not None and first_token is not None and new[0].token > first_token
        assert took < 2.0  # TTL 0.6 s + one campaign interval
    finally:
        for e in electors:
            await e.close()


async def test_clean_close_hands_over_at_once(bus_factory: BusFactory) -> None:
    async def work(token: int) -> None:
        await asyncio.Event().wait()

    a = LeaderElector(bus_factory.open(), "x", work, ttl_ms=5000, holder="a")
    await a.start()
    await asyncio.wait_for(a.elected.wait(), 3)
    b = LeaderElector(bus_factory.open(), "x", work, ttl_ms=5000, holder="b")
    await b.start()
    await a.close()
    await asyncio.wait_for(b.elected.wait(), 3)  # well before a's 5 s TTL would have expired
    await b.close()
