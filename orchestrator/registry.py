"""NodeRegistry: the orchestrator's live view of media nodes, recorders and signaling servers.

``on_state(info, previous_state)`` runs when a node's announced state changes (e.g. serving -> draining).

Fed by heartbeats on the bus (``nodes.heartbeat``). A node whose last heartbeat is older than ``dead_after``
seconds (3 s by default) is declared dead once: the registry calls ``on_dead`` so that the orchestrator can
re-place its rooms. A heartbeat with state "stopped" removes the node at once (a clean exit is not a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from core.bus import Bus, Subscription
from core.messages import NODE_HEARTBEATS, MessageError, NodeHeartbeat, decode

logger = logging.getLogger(__name__)

LAST_HEARTBEAT = Gauge(
    "classmesh_orchestrator_node_last_heartbeat_timestamp_seconds",
    "When each live node last heartbeat (unix time); the series disappears when the node leaves or dies",
    ["kind", "region", "node"],
)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    heartbeat: NodeHeartbeat
    last_seen: float  # time.monotonic()

    @property
    def node_id(self) -> str:
        return self.heartbeat.node_id

    @property
    def region(self) -> str:
        return self.heartbeat.region

    @property
    def serving(self) -> bool:
        return self.heartbeat.state == "serving"


class NodeRegistry:
    def __init__(
        self,
        bus: Bus,
        *,
        dead_after: float = 3.0,
        on_dead: Callable[[NodeInfo], Awaitable[None]] | None = None,
        on_state: Callable[[NodeInfo, str | None], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._bus = bus
        self._dead_after = dead_after
        self._on_dead = on_dead
        self._on_state = on_state
        self._handlers: set[asyncio.Task[None]] = set()
        self._nodes: dict[str, NodeInfo] = {}
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Condition()

    def nodes(self, kind: str | None = None) -> list[NodeInfo]:
        return [n for n in self._nodes.values() if kind is None or n.heartbeat.kind == kind]

    def get(self, node_id: str) -> NodeInfo | None:
        return self._nodes.get(node_id)

    async def start(self) -> None:
        self._sub = await self._bus.subscribe(NODE_HEARTBEATS)
        self._tasks = [
            asyncio.create_task(self._listen(), name="registry:listen"),
            asyncio.create_task(self._reap(), name="registry:reap"),
        ]

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.close()
        for task in [*self._tasks, *self._handlers]:
            task.cancel()
        for task in [*self._tasks, *self._handlers]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def wait_for(self, predicate: Callable[[NodeRegistry], bool], timeout: float) -> bool:
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: predicate(self))
            except TimeoutError:
                return False
        return True

    async def _listen(self) -> None:
        assert self._sub is not None
        async for payload in self._sub:
            try:
                beat = decode(payload)
            except MessageError as exc:
                logger.warning("registry: dropped a bad heartbeat: %s", exc)
                continue
            if not isinstance(beat, NodeHeartbeat):
                continue
            if beat.state == "stopped":
                self._forget(self._nodes.pop(beat.node_id, None))
                logger.info("node=%s kind=%s left cleanly", beat.node_id, beat.kind)
            else:
                previous = self._nodes.get(beat.node_id)
                if previous is None:
                    logger.info("node=%s kind=%s region=%s registered", beat.node_id, beat.kind, beat.region)
                info = self._nodes[beat.node_id] = NodeInfo(beat, time.monotonic())
                LAST_HEARTBEAT.labels(beat.kind, beat.region, beat.node_id).set(time.time())
                before = previous.heartbeat.state if previous is not None else None
                if before != beat.state and self._on_state is not None:
                    task = asyncio.create_task(self._on_state(info, before), name=f"registry:state:{beat.node_id}")
                    self._handlers.add(task)
                    task.add_done_callback(self._handlers.discard)
            async with self._changed:
                self._changed.notify_all()

    @staticmethod
    def _forget(info: NodeInfo | None) -> None:
        if info is not None:
            with contextlib.suppress(KeyError):
                LAST_HEARTBEAT.remove(info.heartbeat.kind, info.heartbeat.region, info.node_id)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self._dead_after / 6)
            now = time.monotonic()
            for node_id, info in list(self._nodes.items()):
                if now - info.last_seen > self._dead_after:
                    self._forget(self._nodes.pop(node_id))
                    logger.warning("node=%s kind=%s missed heartbeats: dead", node_id, info.heartbeat.kind)
                    if self._on_dead is not None:
                        try:
                            await self._on_dead(info)
                        except Exception:
                            logger.exception("node=%s: handling its death failed", node_id)
                    async with self._changed:
                        self._changed.notify_all()
