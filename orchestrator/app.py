"""OrchestratorService: the control plane as a service.

Owns the store (bookings, sessions, API keys, webhooks outbox), the booking API under /v1, the node registry
(heartbeats), placement (region and node selectors) and the room -> node map. Answers ``orchestrator.rpc`` for
signaling (``ensure_room``), re-places the rooms of a node that dies, and, on the replica elected leader,
runs the provisioning loop. Every replica consumes presence events and delivers webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from core.bus import Bus, BusError, NoResponderError, Payload, RemoteError, Subscription
from core.ids import is_valid_id
from core.messages import ORCHESTRATOR_RPC, node_rpc, room_channel, room_key
from core.regions import Regions
from core.service import Service
from core.tokens import TokenIssuer
from orchestrator.api.app import build_api_app
from orchestrator.api.hooks import ApiHooks, BookingChange
from orchestrator.at_risk import AtRiskWatch
from orchestrator.documentation import Documenter
from orchestrator.errors import FieldError, InvalidInputError, InvalidStateError, NotFoundError
from orchestrator.forecast import forecast
from orchestrator.join_revocations import JoinLinkRevocations
from orchestrator.leader import LeaderElector
from orchestrator.no_show import NoShowWatch
from orchestrator.notifications import NotificationConfig, Notifier
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
from orchestrator.presence import PresenceConsumer
from orchestrator.provisioning import Provisioner, ProvisioningConfig
from orchestrator.recording import RecordingConfig, RecordingCoordinator
from orchestrator.registry import NodeInfo, NodeRegistry
from orchestrator.rollout import RolloutConflictError, RolloutDriver, RolloutError
from orchestrator.rounds import every
from orchestrator.scheduling_gate import SchedulingGate
from orchestrator.store import Store
from orchestrator.store.models import Session, SessionStatus
from orchestrator.webhooks import DispatcherConfig, WebhookDispatcher
from recorder.storage import LocalStorage, Storage

logger = logging.getLogger(__name__)

MIGRATIONS = Counter("classmesh_orchestrator_room_migrations_total", "Rooms moved off a draining node")

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "web" / "dashboard"


@dataclass(frozen=True, slots=True)
class OrchestratorConfig:
    public_url: str
    signaling_url: str
    database_url: str
    version: str = "dev"
    dead_after: float = 3.0
    default_room_size: int = 6
    lead_time: timedelta = timedelta(minutes=10)
    provisioning_interval_s: float = 2.0
    leader_ttl_ms: int = 3000
    join_link_grace: timedelta = timedelta(hours=1)
    migration_grace_s: float = 4.0  # make-before-break: the old node keeps the room this long after a move
    notifications: NotificationConfig = field(default_factory=NotificationConfig)
    recordings: Storage = field(default_factory=lambda: LocalStorage(Path("var/recordings")))
    """Where the recorders' segments and the final recordings are (a shared directory or S3; docs/recording.md)."""


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
    ) -> None:
        super().__init__()
        self.config = config
        self.bus = bus
        self.regions = regions
        self.issuer = issuer
        self.registry = NodeRegistry(
            bus, dead_after=config.dead_after, on_dead=self._on_node_dead, on_state=self._on_node_state
        )
        self._moving: dict[str, asyncio.Task[None]] = {}
        self.rollouts = RolloutDriver(bus, self.registry, lambda: [r.name for r in regions])
        self.region_selector = region_selector or WorstCaseRttRegionSelector()
        self.node_selector = node_selector or LeastLoadedNodeSelector()
        self.reservations = Reservations()
        self._serving: Subscription | None = None
        self._placing: dict[str, asyncio.Lock] = {}
        self._store: Store | None = None
        self._dispatcher: WebhookDispatcher | None = None
        self._api: web.Application | None = None
        self._leader: LeaderElector | None = None
        self._provisioner: Provisioner | None = None
        self._recordings: RecordingCoordinator | None = None
        self._presence_task: asyncio.Task[None] | None = None
        self._notifier: Notifier | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def store(self) -> Store:
        assert self._store is not None, "the orchestrator has not started"
        return self._store

    @property
    def provisioner(self) -> Provisioner:
        assert self._provisioner is not None, "the orchestrator has not started"
        return self._provisioner

    @property
    def recordings(self) -> RecordingCoordinator:
        assert self._recordings is not None, "the orchestrator has not started"
        return self._recordings

    @property
    def notifier(self) -> Notifier:
        assert self._notifier is not None, "the orchestrator has not started"
        return self._notifier

    @property
    def leader(self) -> LeaderElector | None:
        return self._leader

    async def start(self) -> None:
        self._store = await Store.open(self.config.database_url)
        self._dispatcher = WebhookDispatcher(self._store, DispatcherConfig())
        self._dispatcher.start()
        self._provisioner = Provisioner(
            self._store,
            self.regions,
            self.region_selector,
            self._place_session,
            self.close_room,
            ProvisioningConfig(lead_time=self.config.lead_time, interval_s=self.config.provisioning_interval_s),
            on_events=self._dispatcher.wake,
        )
        self._recordings = RecordingCoordinator(
            self._store,
            self.bus,
            self.registry,
            RecordingConfig(storage=self.config.recordings),
            on_events=self._dispatcher.wake,
        )
        self._notifier = Notifier(
            self._store, self.config.notifications, mint_join_link=self._mint_join_link, on_events=self._dispatcher.wake
        )
        gate = SchedulingGate(self._store)
        hooks = ApiHooks(
            validate_and_assign=gate.validate_and_assign,
            match=gate.match,
            mint_join_link=self._mint_join_link,
            on_booking_changed=self._on_booking_changed,
            events_emitted=self._dispatcher.wake,
            ops=self,
            recordings=self.config.recordings,
            join_links_revoked=JoinLinkRevocations(self.bus),
        )
        self._api = build_api_app(self._store, hooks=hooks)
        await self.registry.start()
        self._serving = await self.bus.serve(ORCHESTRATOR_RPC, self._handle)
        presence = PresenceConsumer(self.bus, self._store, on_events=self._dispatcher.wake)
        self._presence_task = asyncio.create_task(presence.run(), name="orchestrator:presence")
        self._leader = LeaderElector(self.bus, "orchestrator", self._leader_work, ttl_ms=self.config.leader_ttl_ms)
        await self._leader.start()

    async def _leader_work(self, token: int) -> None:
        """What only the leader does: provisioning, recording jobs, moving rooms off draining nodes, rollouts,
        notifications, at-risk detection, session documents and instructor no-shows."""
        assert self._recordings is not None and self._store is not None
        await asyncio.gather(
            self.provisioner.run(token),
            self._recordings.run(token),
            every(1.0, self._start_migrations, "migration"),
            self.rollouts.run(),
            self.notifier.run(token),
            AtRiskWatch(self._store).run(),
            Documenter(self._store).run(),
            every(30.0, self._wake_snoozed, "snooze"),
            NoShowWatch(self._store).run(),
        )

    async def _wake_snoozed(self) -> None:
        """Snoozed exceptions open again when their time comes."""
        assert self._store is not None
        woken = await self._store.wake_snoozed_exceptions()
        if woken:
            logger.info("snoozed exceptions open again count=%d", woken)

    async def _start_migrations(self) -> None:
        for info in self.registry.nodes("media"):
            if info.heartbeat.state == "draining":
                self._start_draining(info)

    async def close(self) -> None:
        for task in self._moving.values():
            task.cancel()
        await asyncio.gather(*self._moving.values(), return_exceptions=True)
        if self._leader is not None:
            await self._leader.close()
            self._leader = None
        if self._serving is not None:
            await self._serving.close()
            self._serving = None
        if self._presence_task is not None:
            self._presence_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._presence_task
            self._presence_task = None
        await self.registry.close()
        if self._dispatcher is not None:
            await self._dispatcher.close()
            self._dispatcher = None
        if self._store is not None:
            await self._store.close()
            self._store = None
        await self.config.recordings.close()

    def health(self) -> dict[str, Any]:
        return {
            "nodes": len(self.registry.nodes("media")),
            "leader": bool(self._leader and self._leader.is_leader),
        }

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._landing)
        app.router.add_get("/dashboard", self._dashboard)
        if DASHBOARD_DIR.is_dir():
            app.router.add_static("/dashboard/", DASHBOARD_DIR, show_index=False, follow_symlinks=False)
        if self._api is not None:
            app.add_subapp("/v1", self._api)

    # ------------------------------------------------------------------------------------------ HTTP
    async def _landing(self, request: web.Request) -> web.Response:
        links = [
            ("Ops dashboard", "/dashboard"),
            ("API docs", "/v1/docs"),
            ("OpenAPI document", "/v1/openapi.json"),
            ("Metrics", "/metrics"),
        ]
        items = "".join(f'<li><a href="{href}">{label}</a></li>' for label, href in links)
        html = f"<!doctype html><title>classmesh orchestrator</title><h1>classmesh orchestrator</h1><ul>{items}</ul>"
        return web.Response(text=html, content_type="text/html")

    async def _dashboard(self, request: web.Request) -> web.StreamResponse:
        index = DASHBOARD_DIR / "index.html"
        if not index.is_file():
            raise web.HTTPNotFound(text="dashboard files are not installed")
        return web.FileResponse(index, headers={"Cache-Control": "no-store"})

    # ------------------------------------------------------------------------------------------ ops view
    def _load(self, n: NodeInfo) -> float:
        reserved = self.reservations.per_node().get(n.node_id, 0)
        return round((n.heartbeat.streams + reserved) / max(1, n.heartbeat.capacity_streams), 4)

    def nodes(self) -> dict[str, Any]:
        now = time.monotonic()
        items = [
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
                "load": self._load(n),
                "cpu": n.heartbeat.cpu,
                "last_seen_s": round(now - n.last_seen, 3),
            }
            for n in sorted(self.registry.nodes(), key=lambda n: (n.heartbeat.kind, n.node_id))
        ]
        imbalance: dict[str, float] = {}
        threshold = float(getattr(self.node_selector, "hot_threshold", 0.8))
        for region in self.regions:
            loads = [self._load(n) for n in self.registry.nodes("media") if n.region == region.name and n.serving]
            if loads:
                imbalance[region.name] = round(max(loads) - min(loads), 4)
        hot = [n.node_id for n in self.registry.nodes("media") if self._load(n) >= threshold]
        return {"items": items, "imbalance": imbalance, "hot_nodes": hot}

    async def start_rollout(self, to_version: str, regions: list[str] | None, max_unavailable: int) -> dict[str, Any]:
        try:
            await self.rollouts.start(to_version, regions=regions, max_unavailable=max_unavailable)
        except RolloutConflictError as exc:
            raise InvalidStateError(str(exc)) from None
        except RolloutError as exc:
            raise InvalidInputError(str(exc), [FieldError("/regions", str(exc))]) from None
        view = await self.rollouts.view()
        assert view is not None
        return view

    async def rollout(self) -> dict[str, Any] | None:
        return await self.rollouts.view()

    async def cancel_rollout(self) -> dict[str, Any] | None:
        await self.rollouts.cancel()
        return await self.rollouts.view()

    async def end_session(self, session_id: str) -> Session:
        """The class ends now (ahead of its booked end): the room closes and the recording is built."""
        return await self.provisioner.end_now(session_id)

    async def forecast(self, hours: int) -> dict[str, Any]:
        now = datetime.now(UTC)
        sessions = await self.store.sessions_between(now, now + timedelta(hours=hours))
        regions_of: dict[str, str] = {}
        for s in sessions:
            regions_of[s.session_id] = s.region or await self.provisioner.choose_region(s)
        serving: dict[str, int] = {}
        for n in self.registry.nodes("media"):
            if n.serving:
                serving[n.region] = serving.get(n.region, 0) + 1
        return forecast(
            sessions, lambda s: regions_of[s.session_id], self.regions, now=now, hours=hours, nodes_serving=serving
        )

    # ------------------------------------------------------------------------------------------ hooks
    async def _mint_join_link(self, session: Session, participant_id: str, role: str) -> tuple[str, str, datetime]:
        expires = max(session.end, datetime.now(UTC)) + self.config.join_link_grace
        name = participant_id
        if role == "instructor":
            with contextlib.suppress(Exception):
                name = (await self.store.get_instructor(participant_id)).name
        elif role == "student":
            with contextlib.suppress(Exception):
                name = (await self.store.get_student(participant_id)).name
        token = self.issuer.mint(
            room=session.session_id,
            identity=participant_id,
            name=name,
            role=role,
            ttl_s=(expires - datetime.now(UTC)).total_seconds(),
            region=session.region,
        )
        url = f"{self.config.signaling_url.rstrip('/')}/room/{session.session_id}?token={token}"
        return url, token, expires.replace(microsecond=0)

    async def _on_booking_changed(self, change: BookingChange) -> None:
        await self.provisioner.booking_changed(change)
        await self.notifier.booking_changed(change)
        # a session that must start within the lead time is provisioned now rather than at the next round
        if change.kind in ("created", "rescheduled") and self._leader is not None and self._leader.is_leader:
            await self.provisioner.provision_due()

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
            await self._provision_on_demand(str(room_id))
            try:
                node_id = await self.ensure_room(str(room_id), region=region, participants=size)
            except PlacementError as exc:
                raise RpcError(str(exc), code=exc.code) from None
            return {"node_id": node_id}
        raise RpcError(f"unknown op {op!r}", code="bad_request")

    async def _provision_on_demand(self, room_id: str) -> None:
        """Someone joins a session before its lead time: provision it now (region from its roster, the event, the
        status), rather than leaving an ad-hoc room the calendar does not know about."""
        try:
            session = await self.store.get_session(room_id)
        except NotFoundError:
            return  # not a session: an ad-hoc room (classmesh join-link)
        if session.status is SessionStatus.SCHEDULED:
            await self.provisioner.provision_now(session)

    def _alive(self, node_id: str) -> NodeInfo | None:
        info = self.registry.get(node_id)
        return info if info is not None and info.heartbeat.kind == "media" else None

    async def _place_session(self, room_id: str, region: str, participants: int) -> str:
        return await self.ensure_room(room_id, region=region, participants=participants)

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
                # make sure the room exists there (create_room is idempotent): a placer that died between
                # claiming the key and creating the room leaves a key without a room
                await self._create_room(current, room_id, participants)
                return current
            node = self.choose_node(
                region=region, participants=participants or self.config.default_room_size, exclude=exclude
            )
            return await self._create_on(node, room_id, participants, claim=current is None)

    def choose_node(self, *, region: str | None, participants: int, exclude: frozenset[str] = frozenset()) -> NodeInfo:
        nodes = [n for n in self.registry.nodes("media") if n.node_id not in exclude]
        demand = room_demand_streams(participants)
        reserved = self.reservations.per_node()
        if region:
            home = self.regions.get(region)
            others = sorted((r for r in self.regions if r.name != region), key=lambda r: home.distance_km(r.lat, r.lon))
            order = [region, *(r.name for r in others)]  # nearest other region when the preferred one is full
        else:
            order = [r.name for r in self.regions]
        for name in order:
            in_region = [n for n in nodes if n.region == name]
            if not in_region:
                continue
            try:
                return self.node_selector.choose(in_region, demand, reserved=reserved)
            except NoCapacityError:
                continue
        raise NoCapacityError(f"no serving media node can take a room of {participants}")

    async def _create_room(self, node_id: str, room_id: str, participants: int | None) -> None:
        try:
            await self.bus.request(
                node_rpc(node_id),
                {"op": "create_room", "room_id": room_id, "max_participants": max(50, participants or 0)},
                timeout=3.0,
            )
        except (RemoteError, NoResponderError) as exc:
            raise PlacementError(f"node {node_id} refused room {room_id}: {exc}") from None

    async def _create_on(self, node: NodeInfo, room_id: str, participants: int | None, *, claim: bool = False) -> str:
        """Put ``room_id`` on ``node`` and point the room key at it; returns the node that hosts the room.

        ``claim``: the room has no node yet. The key is then claimed *before* the room is created, only if still
        absent, so that two replicas placing the same room at once (every replica answers placement requests)
        agree on one node: the loser uses the winner's node instead of creating a second room.
        """
        key = room_key(room_id)
        if claim and not await self.bus.kv_set(key, node.node_id, only_if_absent=True):
            winner = await self.bus.kv_get(key)
            if winner and self._alive(winner):
                await self._create_room(winner, room_id, participants)
                return winner
            await self.bus.kv_set(key, node.node_id)
        elif not claim:
            await self.bus.kv_set(key, node.node_id)
        try:
            await self._create_room(node.node_id, room_id, participants)
        except PlacementError:
            await self.bus.kv_delete(key, if_value=node.node_id)
            raise
        self.reservations.hold(
            room_id, node.node_id, room_demand_streams(participants or self.config.default_room_size), 600
        )
        logger.info("room=%s placed node=%s region=%s", room_id, node.node_id, node.region)
        return node.node_id

    async def close_room(self, room_id: str) -> None:
        node_id = await self.bus.kv_get(room_key(room_id))
        if node_id is None:
            return
        with contextlib.suppress(BusError):
            await self.bus.request(node_rpc(node_id), {"op": "close_room", "room_id": room_id}, timeout=3.0)
        await self.bus.kv_delete(room_key(room_id), if_value=node_id)
        self.reservations.release(room_id)
        self._placing.pop(room_id, None)

    # ------------------------------------------------------------------------------------------ migration
    async def _on_node_state(self, info: NodeInfo, before: str | None) -> None:
        if info.heartbeat.kind == "media" and info.heartbeat.state == "draining" and self._leader is not None:
            if self._leader.is_leader:
                self._start_draining(info)

    def _start_draining(self, info: NodeInfo) -> None:
        if not self.ready:
            return  # this orchestrator is stopping: the next leader moves the rooms (in dev, everything stops)
        task = self._moving.get(info.node_id)
        if task is None or task.done():
            self._moving[info.node_id] = asyncio.create_task(self.drain_node(info), name=f"drain:{info.node_id}")

    async def drain_node(self, info: NodeInfo) -> None:
        """Move every room of a draining node to another node of its region, make-before-break."""
        moved = await asyncio.gather(
            *(self.migrate_room(room_id, info) for room_id in info.heartbeat.room_ids), return_exceptions=True
        )
        failures = [m for m in moved if isinstance(m, BaseException)]
        for failure in failures:
            logger.error("node=%s drain: a room could not be moved: %s", info.node_id, failure)

    async def migrate_room(self, room_id: str, source: NodeInfo) -> str | None:
        """Place ``room_id`` on another node, tell its participants to move, close it on ``source`` later."""
        if await self.bus.kv_get(room_key(room_id)) != source.node_id:
            return None  # already moved (or closed)
        draining = frozenset(n.node_id for n in self.registry.nodes("media") if not n.serving)
        async with self._placing.setdefault(room_id, asyncio.Lock()):
            target = self.choose_node(
                region=source.region,
                participants=self.config.default_room_size,
                exclude=draining | {source.node_id},
            )
            await self._create_on(target, room_id, None)
        logger.info("room=%s moving node=%s -> node=%s (drain)", room_id, source.node_id, target.node_id)
        with contextlib.suppress(Exception):
            await self.store.update_session(room_id, node_id=target.node_id)
        await self.bus.publish(
            room_channel(room_id),
            {
                "type": "moved",
                "room_id": room_id,
                "node_id": target.node_id,
                "reason": "drain",
                "from_node": source.node_id,
            },
        )
        MIGRATIONS.inc()
        await asyncio.sleep(self.config.migration_grace_s)
        with contextlib.suppress(BusError):
            await self.bus.request(node_rpc(source.node_id), {"op": "close_room", "room_id": room_id}, timeout=3.0)
        return target.node_id

    async def _on_node_dead(self, info: NodeInfo) -> None:
        # an operational exception for the people on call, deduplicated per node (every replica sees the death)
        with contextlib.suppress(Exception):
            await self.store.raise_exception(
                f"node-dead:{info.node_id}",
                "node_failed",
                "high",
                subject_refs={"node_id": info.node_id, "region": info.region},
                details={
                    "kind": info.heartbeat.kind,
                    "version": info.heartbeat.version,
                    "rooms": list(info.heartbeat.room_ids),
                    "missed_heartbeats_for_s": self.config.dead_after,
                },
            )
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
            with contextlib.suppress(Exception):
                await self.store.update_session(room_id, node_id=node_id)
            await self.bus.publish(
                room_channel(room_id),
                {"type": "moved", "room_id": room_id, "node_id": node_id, "reason": "node_failed"},
            )
