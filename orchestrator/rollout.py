"""Rolling upgrades of the media fleet, one node at a time, without dropping a class.

A rollout (``POST /v1/rollouts`` or ``classmesh orchestrator rollout --to VERSION``) walks the media nodes of the
chosen regions, region by region, and for each node not yet at the target version:

1. asks it to drain (``drain`` on its bus channel): it refuses new rooms, the orchestrator moves its live rooms to
   other nodes of the region make-before-break, and the node exits 0 once empty;
2. waits for it to leave the registry, then for the deployment (Kubernetes, compose, or a test harness) to bring
   the same node id back at the target version, serving;
3. goes on to the next node. At most ``max_unavailable`` nodes are away at once.

Nodes with fewer live rooms go first, so drains happen between classes where the calendar allows. A step that
times out stops the rollout as ``failed`` with the reason; nothing else is touched. The rollout's state lives in
bus keys (Redis in production), so when the leader dies its successor resumes where it was.

States: running -> done | failed | cancelled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from prometheus_client import Gauge

from core.bus import Bus, BusError
from core.messages import node_rpc
from orchestrator.registry import NodeRegistry

logger = logging.getLogger(__name__)

ROLLOUT_KEY = "rollout:current"
ROLLOUT_NODES = Gauge("classmesh_orchestrator_rollout_nodes", "Media nodes in the current rollout", ["state"])
ROLLOUT_RUNNING = Gauge("classmesh_orchestrator_rollout_running", "1 while a rollout is running")


class RolloutError(Exception):
    code = "rollout_error"


class RolloutConflictError(RolloutError):
    code = "rollout_running"


@dataclass(frozen=True, slots=True)
class Rollout:
    rollout_id: str
    to_version: str
    regions: tuple[str, ...]
    max_unavailable: int = 1
    state: str = "running"
    done: tuple[str, ...] = ()
    current: tuple[str, ...] = ()
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> Rollout:
        data = json.loads(raw)
        for key in ("regions", "done", "current"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)

    def view(self, pending: list[str]) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "to_version": self.to_version,
            "regions": list(self.regions),
            "max_unavailable": self.max_unavailable,
            "state": self.state,
            "done": list(self.done),
            "current": list(self.current),
            "pending": pending,
            "error": self.error,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
        }


class RolloutDriver:
    def __init__(
        self,
        bus: Bus,
        registry: NodeRegistry,
        region_names: Callable[[], list[str]],
        *,
        node_timeout_s: float = 180.0,
        interval_s: float = 0.5,
    ) -> None:
        self._bus = bus
        self._registry = registry
        self._region_names = region_names
        self._node_timeout = node_timeout_s
        self._interval = interval_s
        self._away_since: dict[str, float] = {}

    async def current(self) -> Rollout | None:
        raw = await self._bus.kv_get(ROLLOUT_KEY)
        return Rollout.from_json(raw) if raw else None

    async def _save(self, rollout: Rollout) -> Rollout:
        rollout = replace(rollout, updated_at=time.time())
        await self._bus.kv_set(ROLLOUT_KEY, rollout.to_json())
        return rollout

    async def start(self, to_version: str, *, regions: list[str] | None = None, max_unavailable: int = 1) -> Rollout:
        existing = await self.current()
        if existing is not None and existing.state == "running":
            raise RolloutConflictError(f"rollout {existing.rollout_id} to {existing.to_version} is still running")
        known = self._region_names()
        chosen = regions or known
        unknown = [r for r in chosen if r not in known]
        if unknown:
            raise RolloutError(f"unknown region(s): {', '.join(unknown)}")
        rollout = Rollout(f"ro_{uuid.uuid4().hex[:12]}", to_version, tuple(chosen), max(1, max_unavailable))
        logger.info("rollout=%s to version=%s regions=%s started", rollout.rollout_id, to_version, ",".join(chosen))
        return await self._save(rollout)

    async def cancel(self) -> Rollout | None:
        rollout = await self.current()
        if rollout is None or rollout.state != "running":
            return rollout
        return await self._save(replace(rollout, state="cancelled"))

    def pending(self, rollout: Rollout) -> list[str]:
        """Media nodes of the rollout's regions still below the target version, region by region, quietest first."""
        order = {name: i for i, name in enumerate(rollout.regions)}
        nodes = [
            n
            for n in self._registry.nodes("media")
            if n.region in order and n.heartbeat.version != rollout.to_version and n.node_id not in rollout.current
        ]
        nodes.sort(key=lambda n: (order[n.region], n.heartbeat.participants, n.heartbeat.rooms, n.node_id))
        return [n.node_id for n in nodes]

    async def view(self) -> dict[str, Any] | None:
        rollout = await self.current()
        return None if rollout is None else rollout.view(self.pending(rollout))

    async def run(self) -> None:
        """The leader's loop: one step every ``interval_s`` while a rollout is running."""
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("rollout step failed")
            await asyncio.sleep(self._interval)

    async def step(self) -> None:
        rollout = await self.current()
        ROLLOUT_RUNNING.set(1 if rollout is not None and rollout.state == "running" else 0)
        if rollout is None or rollout.state != "running":
            return
        # nodes we drained: back at the target version and serving? then they are done
        for node_id in rollout.current:
            info = self._registry.get(node_id)
            if info is not None and info.heartbeat.version == rollout.to_version and info.serving:
                rollout = replace(
                    rollout, current=tuple(n for n in rollout.current if n != node_id), done=(*rollout.done, node_id)
                )
                self._away_since.pop(node_id, None)
                logger.info("rollout=%s node=%s upgraded to %s", rollout.rollout_id, node_id, rollout.to_version)
                rollout = await self._save(rollout)
            else:
                since = self._away_since.setdefault(node_id, time.monotonic())
                if time.monotonic() - since > self._node_timeout:
                    error = (
                        f"node {node_id} did not come back at version {rollout.to_version} within "
                        f"{self._node_timeout:.0f}s"
                    )
                    logger.error("rollout=%s failed: %s", rollout.rollout_id, error)
                    await self._save(replace(rollout, state="failed", error=error))
                    return
        pending = self.pending(rollout)
        ROLLOUT_NODES.labels("done").set(len(rollout.done))
        ROLLOUT_NODES.labels("in_progress").set(len(rollout.current))
        ROLLOUT_NODES.labels("pending").set(len(pending))
        if not pending and not rollout.current:
            logger.info("rollout=%s done: %d nodes at %s", rollout.rollout_id, len(rollout.done), rollout.to_version)
            await self._save(replace(rollout, state="done"))
            return
        if len(rollout.current) >= rollout.max_unavailable or not pending:
            return
        # never take away the last serving node of a region
        candidate = pending[0]
        region = self._registry.get(candidate).region  # type: ignore[union-attr]
        serving = [n for n in self._registry.nodes("media") if n.region == region and n.serving]
        if len(serving) < 2:
            return
        try:
            await self._bus.request(node_rpc(candidate), {"op": "drain"}, timeout=5.0)
        except BusError as exc:
            logger.warning("rollout=%s could not drain node=%s: %s", rollout.rollout_id, candidate, exc)
            return
        self._away_since[candidate] = time.monotonic()
        logger.info("rollout=%s draining node=%s", rollout.rollout_id, candidate)
        await self._save(replace(rollout, current=(*rollout.current, candidate)))
