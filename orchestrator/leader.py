"""Leader election for the orchestrator's background loops, over bus keys (a Redis lock in production).

Every replica serves the API; only the leader runs provisioning, reminders, failure handling and rollouts.
A replica becomes leader by setting ``leader:<name>`` only-if-absent with a TTL, then renews it at a third of
the TTL. Each term gets a **fencing token** from an ever-increasing counter: work the leader does carries the
token, and stores reject writes from an older token, so a leader that stalled (GC pause, network partition) and
lost its lease cannot overwrite what its successor did. A leader that fails to renew steps down at once.
With the default TTL of 3 s, a dead leader's loops restart on another replica within about 3-4 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge

from core.bus import Bus

logger = logging.getLogger(__name__)

IS_LEADER = Gauge("classmesh_orchestrator_leader", "1 while this replica holds the leader lease", ["name"])
TERMS = Counter("classmesh_orchestrator_leader_terms_total", "Leader terms won by this replica", ["name"])

LeaderWork = Callable[[int], Awaitable[None]]


class LeaderElector:
    """Runs ``work(fencing_token)`` while this replica is leader; cancels it when leadership is lost."""

    def __init__(self, bus: Bus, name: str, work: LeaderWork, *, ttl_ms: int = 3000, holder: str | None = None) -> None:
        self._bus = bus
        self._name = name
        self._key = f"leader:{name}"
        self._work = work
        self._ttl_ms = ttl_ms
        self.holder = holder or uuid.uuid4().hex
        self._task: asyncio.Task[None] | None = None
        self._term: asyncio.Task[None] | None = None
        self.token: int | None = None
        self.elected = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.token is not None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._campaign(), name=f"leader:{self._name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._step_down(release=True)

    async def current(self) -> str | None:
        """The holder id of the current leader, if any."""
        return await self._bus.kv_get(self._key)

    async def _campaign(self) -> None:
        interval = self._ttl_ms / 3000
        while True:
            try:
                if self.token is None:
                    if await self._bus.kv_set(self._key, self.holder, ttl_ms=self._ttl_ms, only_if_absent=True):
                        await self._become_leader()
                elif not await self._bus.kv_renew(self._key, self.holder, ttl_ms=self._ttl_ms):
                    logger.warning("leader=%s holder=%s lost the lease; stepping down", self._name, self.holder)
                    await self._step_down(release=False)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("leader=%s election round failed", self._name)
                if self.token is not None:
                    await self._step_down(release=False)
            await asyncio.sleep(interval)

    async def _become_leader(self) -> None:
        self.token = await self._bus.incr(f"{self._key}:fence")
        IS_LEADER.labels(self._name).set(1)
        TERMS.labels(self._name).inc()
        self.elected.set()
        logger.info("leader=%s holder=%s elected token=%d", self._name, self.holder, self.token)
        self._term = asyncio.create_task(self._run_work(self.token), name=f"leader-work:{self._name}")

    async def _run_work(self, token: int) -> None:
        try:
            await self._work(token)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("leader=%s work failed", self._name)

    async def _step_down(self, *, release: bool) -> None:
        if self._term is not None:
            self._term.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._term
            self._term = None
        if self.token is not None and release:
            with contextlib.suppress(Exception):
                await self._bus.kv_delete(self._key, if_value=self.holder)
        self.token = None
        self.elected.clear()
        IS_LEADER.labels(self._name).set(0)
