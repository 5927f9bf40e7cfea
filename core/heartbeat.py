"""Heartbeat: a service's announcement of itself on the bus, every ``interval`` seconds and at once on ``wake()``.

The orchestrator's registry builds its live view of the fleet from these; a node silent for 3 s is dead. On
``close()`` a last beat goes out (with the service's final state, "stopped"), so a clean exit is not mistaken
for a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from core.bus import Bus
from core.messages import NODE_HEARTBEATS, NodeHeartbeat, encode

logger = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, bus: Bus, describe: Callable[[], NodeHeartbeat], *, interval: float = 1.0) -> None:
        self._bus = bus
        self._describe = describe
        self._interval = interval
        self._now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, name: str) -> None:
        self._task = asyncio.create_task(self._run(), name=f"heartbeat:{name}")

    def wake(self) -> None:
        """Beat now (e.g. the service changed state), not at the next interval."""
        self._now.set()

    async def send(self) -> None:
        await self._bus.publish(NODE_HEARTBEATS, encode(self._describe()))

    async def _run(self) -> None:
        while True:
            self._now.clear()
            try:
                await self.send()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("heartbeat failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._now.wait()

    async def close(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(Exception):
            await self.send()  # the last word: our final state
