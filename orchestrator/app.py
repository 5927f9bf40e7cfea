"""OrchestratorService: the control plane as a service.

Owns the node registry (heartbeats), placement (region and node selectors) and the room -> node map; answers
``orchestrator.rpc`` for signaling (``ensure_room``); re-places the rooms of a node that dies; serves the
booking API (/v1), the ops dashboard and the API docs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from core.bus import Bus, BusError, NoResponderError, Payload, RemoteError, Subscription
from core.ids import is_valid_id
from core.messages import ORCHESTRATOR_RPC, node_rpc, room_channel, room_key
from core.regions import Regions
from core.service import Service
from core.tokens import TokenIssuer
from orchestrator.placement import (
    LeastLoadedNodeSelector,
    NoCapacityError,
    NodeSelector,
    PlacementError,
    RegionSelector,
    Reservations,
    WorstCaseRttRegionSelector,
    room_demand_streams,
)
from orchestrator.registry import NodeInfo, NodeRegistry

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OrchestratorConfig:
    public_url: str
    signaling_url: str
    database_url: str
    version: str = "dev"
    dead_after: float = 3.0
    default_room_size: int = 6


class RpcError(BusError):
    pass


class OrchestratorService(Service):
    name = "orchestrator"

    def __init__(
        self,
        config: OrchestratorConfig,
        bus: Bus,
        regions: Regions,
        issuer: TokenIssuer,
        *,
        region_selector: RegionSelector | None = None,
        node_selector: NodeSelector | None = None,
        extensions: list[Callable[[OrchestratorService, web.Application], Awaitable[None] | None]] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.bus = bus
        self.regions = regions
        self.issuer = issuer
        self.registry = NodeRegistry(bus, dead_after=config.dead_after, on_dead=self._on_node_dead)
        self.region_selector = region_selector or WorstCaseRttRegionSelector()
        self.node_selector = node_selector or LeastLoadedNodeSelector()
        self.reservations = Reservations()
        self._serving: Subscription | None = None
        self._placing: dict[str, asyncio.Lock] = {}
        self._extensions = extensions or []

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.registry.start()
        self._serving = await self.bus.serve(ORCHESTRATOR_RPC, self._handle)

    async def close(self) -> None:
        if self._serving is not None:
            await self._serving.close()
            self._serving = None
        await self.registry.close()

    def health(self) -> dict[str, Any]:
        return {"nodes": len(self.registry.nodes("media"))}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._landing)
        app.router.add_get("/v1/nodes", self._http_nodes)
        for extend in self._extensions:
            extend(self, app)

    # ------------------------------------------------------------------------------------------ HTTP
    async def _landing(self, request: web.Request) -> web.Response:
        links = [
            ("Ops dashboard", "/dashboard"),
            ("API docs", "/v1/docs"),
            ("OpenAPI document", "/v1/openapi.json"),
            ("Nodes", "/v1/nodes"),
            ("Metrics", "/metrics"),
        ]
        items = "".join(f'<li><a href="{href}">{label}</a></li>' for label, href in links)
        html = f"<!doctype html><title>classmesh orchestrator</title><h1>classmesh orchestrator</h1><ul>{items}</ul>"
        return web.Response(text=html, content_type="text/html")

    async def _http_nodes(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        body = [
            {
                "node_id": n.node_id,
                "kind": n.heartbeat.kind,
                "region": n.region,
                "state": n.heartbeat.state,
                "version": n.heartbeat.version,
                "url": n.heartbeat.url,
                "rooms": n.heartbeat.rooms,
                "participants": n.heartbeat.participants,
                "streams": n.heartbeat.streams,
                "capacity_streams": n.heartbeat.capacity_streams,
                "cpu": n.heartbeat.cpu,
                "last_seen_s": round(now - n.last_seen, 3),
            }
            for n in sorted(self.registry.nodes(), key=lambda n: (n.heartbeat.kind, n.node_id))
        ]
        return web.json_response({"items": body})

    # ------------------------------------------------------------------------------------------ placement
    async def _handle(self, payload: Payload) -> Payload:
        op = payload.get("op")
        if op == "ensure_room":
            room_id = payload.get("room_id")
            if not is_valid_id(room_id):
                raise RpcError("room_id is not a valid id", code="bad_request")
            region = payload.get("region")
            if region is not None and region not in self.regions:
                raise RpcError(f"unknown region {region!r}", code="unknown_region")
            size = payload.get("participants", self.config.default_room_size)
            if not isinstance(size, int) or size < 1:
                raise RpcError("participants must be a positive integer", code="bad_request")
            try:
                node_id = await self.ensure_room(str(room_id), region=region, participants=size)
            except PlacementError as exc:
                raise RpcError(str(exc), code=exc.code) from None
            return {"node_id": node_id}
        raise RpcError(f"unknown op {op!r}", code="bad_request")

    def _alive(self, node_id: str) -> NodeInfo | None:
        info = self.registry.get(node_id)
        return info if info is not None and info.heartbeat.kind == "media" else None

    async def ensure_room(
        self,
        room_id: str,
        *,
        region: str | None = None,
        participants: int | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> str:
        """The node hosting ``room_id``, placing and creating the room when it has none (or a dead one)."""
        lock = self._placing.setdefault(room_id, asyncio.Lock())
        async with lock:
            current = await self.bus.kv_get(room_key(room_id))
            if current and current not in exclude and self._alive(current):
                return current
            node = self.choose_node(
                region=region, participants=participants or self.config.default_room_size, exclude=exclude
            )
            await self._create_on(node, room_id, participants)
            return node.node_id

    def choose_node(self, *, region: str | None, participants: int, exclude: frozenset[str] = frozenset()) -> NodeInfo:
        nodes = [n for n in self.registry.nodes("media") if n.node_id not in exclude]
        demand = room_demand_streams(participants)
        reserved = self.reservations.per_node()
        order = [region] if region else []
        # fall back to the other regions, nearest first, when the preferred one is full
        if region:
            home = self.regions.get(region)
            order += sorted(
                (r.name for r in self.regions if r.name != region),
                key=lambda name: home.distance_km(self.regions.get(name).lat, self.regions.get(name).lon),
            )
        else:
            order += [r.name for r in self.regions]
        for name in order:
            in_region = [n for n in nodes if n.region == name]
            if not in_region:
                continue
            try:
                return self.node_selector.choose(in_region, demand, reserved=reserved)
            except NoCapacityError:
                continue
        raise NoCapacityError(f"no serving media node can take a room of {participants}")

    async def _create_on(self, node: NodeInfo, room_id: str, participants: int | None) -> None:
        try:
            await self.bus.request(
                node_rpc(node.node_id),
                {"op": "create_room", "room_id": room_id, "max_participants": max(50, participants or 0)},
                timeout=3.0,
            )
        except (RemoteError, NoResponderError) as exc:
            raise PlacementError(f"node {node.node_id} refused room {room_id}: {exc}") from None
        await self.bus.kv_set(room_key(room_id), node.node_id)
        self.reservations.hold(
            room_id, node.node_id, room_demand_streams(participants or self.config.default_room_size), 600
        )
        logger.info("room=%s placed node=%s region=%s", room_id, node.node_id, node.region)

    async def _on_node_dead(self, info: NodeInfo) -> None:
        if info.heartbeat.kind != "media":
            return
        for room_id in info.heartbeat.room_ids:
            if await self.bus.kv_get(room_key(room_id)) != info.node_id:
                continue
            try:
                node_id = await self.ensure_room(room_id, region=info.region, exclude=frozenset({info.node_id}))
            except PlacementError as exc:
                logger.error("room=%s lost with node=%s and could not be re-placed: %s", room_id, info.node_id, exc)
                continue
            logger.warning("room=%s moved from dead node=%s to node=%s", room_id, info.node_id, node_id)
            await self.bus.publish(
                room_channel(room_id),
                {"type": "moved", "room_id": room_id, "node_id": node_id, "reason": "node_failed"},
            )
