"""MediaFront: a media node that forwards on every core, as a front process in front of N forwarding workers.

One Python process forwards on at most one core (the GIL). A node with ``--workers N`` (N >= 2, Redis bus) is
therefore a *front* plus N worker processes (``python -m media.worker``), as mediasoup runs one worker per core.
The front is the node to the rest of the system and nothing else sees the workers:

- it registers and heartbeats as node ``<node_id>`` with the summed load of its workers, answers
  ``media.<node_id>`` (the node contract of docs/signaling.md, unchanged), and serves ``/healthz``, ``/readyz``,
  ``/metrics`` (its own metrics plus its workers' data-plane metrics, labelled ``worker``) and ``/v1/node``;
- it routes every request to the worker that owns the room. ``create_room`` and a ``join`` that creates its room
  place the room on the least loaded ready worker (forwarded streams, then rooms). Requests that carry a
  ``room_id`` go to the room's worker, those that carry a ``participant_id`` to the participant's. The front keeps
  both maps (room -> worker, participant -> worker plus the participant's ``join``), and corrects them from
  every poll of its workers (rooms and participants a worker no longer has; rooms it has that the map lacks);
- media never passes through it: each worker runs today's ``MediaNode`` forwarding (``media.<node_id>.w<k>``),
  on its own slice of ``--udp-ports``, and sends participant messages and presence events itself, tagged with
  the node's id.

A worker that dies (it exits unasked, or misses five polls in a row and is killed) is handled inside the node,
at once, instead of waiting for the orchestrator's 3 s failure detection: the front starts the worker again
(with a back-off when it keeps dying young), re-creates each of its rooms on the least loaded ready worker and
re-seats every participant there with its original ``join``. Each re-seated participant is first sent
``moved`` (reason ``node_failed``, the same node), exactly what signaling forwards after a node failure, so
browsers and the Python client build new peer connections and publish again. Requests for those rooms and
participants wait until this is done. A room that cannot be re-created within ``recovery_timeout`` (or while
draining) is failed explicitly: its participants get ``removed`` and its room key is released, so the next
join asks the orchestrator to place it again. Recorders on plain RTP are re-seated too (the new worker sends to
the same address, with new SSRCs announced in ``plain_tracks``); recorders on a peer connection get ``removed``
(reason ``node_failed``): their copy is failing, which is their own supervisor's business.

States follow the service lifecycle: SERVING -> DRAINING (SIGTERM or the ``drain`` op: the heartbeat says
draining so the orchestrator moves the rooms; every worker gets SIGTERM and drains itself; the front waits until
all have exited or the deadline) -> STOPPED (remaining workers are terminated, then killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import prometheus_client
from aiohttp import web

from core.bus import Bus, BusError, BusTimeoutError, NoResponderError, Payload, RemoteError, Subscription
from core.heartbeat import Heartbeat
from core.ids import is_valid_id
from core.messages import NodeHeartbeat, node_rpc, participant_channel, room_key
from core.service import Service, ServiceState
from media import front_metrics as metrics
from media.config import MediaNodeConfig, WorkerLaunch, port_slices, worker_launch
from media.cpu import CpuMeter
from media.errors import NodeError
from media.worker_process import WorkerProcess, WorkerStartError

logger = logging.getLogger(__name__)

RECOVER_REASON = "node_failed"
_PARTICIPANT_OPS = frozenset({"publish", "subscriber_answer", "mute", "data", "moderate", "state", "leave"})


@dataclass(frozen=True, slots=True)
class FrontConfig:
    workers: int
    bus_url: str
    log_format: str = "text"
    log_level: str = "info"
    drain_timeout: float = 30.0
    start_timeout: float = 60.0  # a worker process must answer within this after it is spawned
    forward_timeout: float = 10.0
    poll_interval: float = 1.0
    poll_timeout: float = 3.0
    # a live worker that misses this many polls in a row is killed (and recovered). Generous: a worker whose loop
    # lags under load must not be killed (its rooms would pile onto the others); a crash is seen at once anyway
    unresponsive_polls: int = 5
    recovery_timeout: float = 15.0
    quick_failure_s: float = 10.0  # a worker that dies younger than this is restarted with a growing back-off
    max_restart_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.workers < 2:
            raise ValueError("a front needs at least 2 workers (one worker runs as a plain node, without a front)")
        if not self.bus_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"workers are separate processes: they need a Redis bus, not {self.bus_url!r}")


@dataclass
class _Room:
    worker: int
    max_participants: int | None
    since: float  # time.monotonic() it was placed


@dataclass
class _Member:
    room_id: str
    worker: int
    join: Payload  # the join request as received: what re-seats the participant after a worker failure
    hidden: bool
    since: float


@dataclass
class _Load:
    """A worker's last poll."""

    streams: int = 0
    participants: int = 0
    cpu: float = 0.0
    rooms: dict[str, Any] = field(default_factory=dict)
    missed: int = 0


@dataclass
class _KeyedLocks:
    """One lock per room id while someone uses it (placement, recovery); forgotten when nobody does."""

    _locks: dict[str, tuple[asyncio.Lock, int]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def _require_id(payload: Payload, key: str) -> str:
    """The same check and message as the node's, so a bad request gets the same answer with or without a front."""
    value = payload.get(key)
    if not isinstance(value, str) or not value or len(value) > 128:
        raise NodeError(f"{key!r} must be a non-empty string of at most 128 characters", code="bad_request")
    if not is_valid_id(value):
        raise NodeError(f"{key!r} is not a valid id", code="bad_request")
    return value


class MediaFront(Service):
    name = "media"

    def __init__(self, config: MediaNodeConfig, bus: Bus, front: FrontConfig) -> None:
        super().__init__()
        port_slices(config.udp_ports, front.workers)  # refuse a port range too small for the workers now
        self.config = config
        self.front = front
        self._bus = bus
        # workers drain a little ahead of the front's own deadline, so the front sees them exit
        worker_drain = max(0.5, front.drain_timeout - 1.0)
        self._launches: list[WorkerLaunch] = [
            worker_launch(
                config,
                k,
                front.workers,
                bus_url=front.bus_url,
                log_format=front.log_format,
                log_level=front.log_level,
                drain_timeout=worker_drain,
            )
            for k in range(front.workers)
        ]
        self._procs: dict[int, WorkerProcess] = {}
        self._loads: dict[int, _Load] = {k: _Load() for k in range(front.workers)}
        self._settled: dict[int, asyncio.Event] = {}
        self._quick_failures: dict[int, int] = dict.fromkeys(range(front.workers), 0)
        self._restarts: dict[int, int] = dict.fromkeys(range(front.workers), 0)
        self._rooms: dict[str, _Room] = {}
        self._members: dict[str, _Member] = {}
        self._room_locks = _KeyedLocks()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._serving: Subscription | None = None
        self._heartbeat = Heartbeat(bus, self._heartbeat_message, interval=config.heartbeat_interval)
        self._cpu = CpuMeter()
        self._worker_metrics = metrics.WorkerMetrics()
        self._metrics_registered = False
        self._closing = False
        node = config.node_id
        self._m_ready = metrics.WORKERS_READY.labels(node)
        self._m_failures = metrics.WORKER_FAILURES.labels(node)
        self._m_restarts = metrics.WORKER_RESTARTS.labels(node)
        self._m_recovered = metrics.ROOMS_RECOVERED.labels(node)
        self._m_lost = metrics.ROOMS_LOST.labels(node)
        self._m_forward = metrics.FORWARD_SECONDS.labels(node)
        self._m_rooms = [metrics.WORKER_ROOMS.labels(node, str(k)) for k in range(front.workers)]
        self._ops: dict[str, Callable[[Payload], Awaitable[Payload]]] = {
            "ping": self._op_ping,
            "drain": self._op_drain,
            "create_room": self._op_create_room,
            "join": self._op_join,
            "close_room": self._op_close_room,
            **dict.fromkeys(_PARTICIPANT_OPS, self._op_participant),
        }

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def workers(self) -> dict[int, WorkerProcess]:
        return dict(self._procs)

    def room_worker(self, room_id: str) -> int | None:
        """The worker index a room is on (None: not on this node)."""
        room = self._rooms.get(room_id)
        return room.worker if room is not None else None

    async def start(self) -> None:
        prometheus_client.REGISTRY.register(self._worker_metrics)
        self._metrics_registered = True
        try:
            procs = [await self._spawn(k) for k in range(self.front.workers)]
            await asyncio.gather(*(p.wait_ready(self.front.start_timeout) for p in procs))
        except BaseException:
            await self.close()
            raise
        self._update_ready()
        self._poller = asyncio.create_task(self._poll_loop(), name=f"front-poll:{self.config.node_id}")
        self._serving = await self._bus.serve(node_rpc(self.config.node_id), self._handle)
        self._heartbeat.start(self.config.node_id)
        logger.info(
            "node=%s front serving with workers=%d pids=%s",
            self.config.node_id,
            len(procs),
            ",".join(str(p.pid) for p in procs),
        )

    async def drain(self, deadline: float) -> None:
        """Every worker drains (no new rooms; rooms run until empty or moved); done when all have exited."""
        await self._heartbeat.send()
        procs = list(self._procs.values())
        for proc in procs:
            proc.terminate()
        logger.info("node=%s draining %d workers", self.config.node_id, len(procs))
        pending = [p.exited for p in procs if not p.exited.done()]
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        self._closing = True
        if self._serving is not None:
            await self._serving.close()
            self._serving = None
        tasks = [t for t in (self._poller, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._poller = None
        await asyncio.gather(*(p.close() for p in self._procs.values()), return_exceptions=True)
        self._rooms.clear()
        self._members.clear()
        self._update_ready()
        for gauge in self._m_rooms:
            gauge.set(0)
        await self._heartbeat.close()  # its last beat tells the registry we are gone
        if self._metrics_registered:
            prometheus_client.REGISTRY.unregister(self._worker_metrics)
            self._metrics_registered = False

    def state_changed(self, state: ServiceState) -> None:
        self._heartbeat.wake()

    def health(self) -> dict[str, Any]:
        return {
            "node_id": self.config.node_id,
            "region": self.config.region,
            "rooms": len(self._rooms),
            "participants": len(self._members),
            "workers": len(self._procs),
            "workers_ready": sum(1 for p in self._procs.values() if p.ready),
        }

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/node", self._http_status)

    async def _http_status(self, request: web.Request) -> web.Response:
        workers = []
        for k, proc in sorted(self._procs.items()):
            load = self._loads[k]
            workers.append(
                {
                    "index": k,
                    "id": proc.rpc_id,
                    "pid": proc.pid,
                    "state": proc.state.value,
                    "restarts": self._restarts[k],
                    "rooms": sorted(rid for rid, room in self._rooms.items() if room.worker == k),
                    "participants": sum(1 for m in self._members.values() if m.worker == k),
                    "streams": load.streams,
                    "cpu": load.cpu,
                    "udp_ports": self._launches[k].node.udp_ports,
                }
            )
        detail = {rid: self._loads[room.worker].rooms.get(rid, {}) for rid, room in self._rooms.items()}
        body = self.health() | {"state": self.state.value, "worker_detail": workers, "rooms_detail": detail}
        return web.json_response(body)

    # ------------------------------------------------------------------------------------------ heartbeat
    def _heartbeat_message(self) -> NodeHeartbeat:
        live = [k for k, p in self._procs.items() if p.ready]
        return NodeHeartbeat(
            node_id=self.config.node_id,
            kind="media",
            region=self.config.region,
            version=self.config.version,
            state=self.state.value,
            url=self.config.public_url,
            capacity_streams=self.config.capacity_streams,
            rooms=len(self._rooms),
            participants=len(self._members),
            streams=sum(self._loads[k].streams for k in live),
            cpu=round(self._cpu.sample() + sum(self._loads[k].cpu for k in live), 3),
            sent_at=time.time(),
            room_ids=sorted(self._rooms),
        )

    # ------------------------------------------------------------------------------------------ workers
    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self, index: int) -> WorkerProcess:
        proc = WorkerProcess(index, self._launches[index], self._bus)
        self._procs[index] = proc
        if index not in self._settled:  # a restart must not end the recovery of the worker it replaces
            self._settled[index] = asyncio.Event()
            self._settled[index].set()
        self._loads[index] = _Load()
        await proc.spawn()
        self._track(asyncio.create_task(self._watch(proc), name=f"front-watch:{proc.rpc_id}"))
        return proc

    def _update_ready(self) -> None:
        self._m_ready.set(sum(1 for p in self._procs.values() if p.ready and not self._closing))

    async def _watch(self, proc: WorkerProcess) -> None:
        code = await asyncio.shield(proc.exited)  # cancelling this watch must not cancel the shared future
        if self._procs.get(proc.index) is not proc:
            return
        self._update_ready()
        self._worker_metrics.forget(proc.index)
        self._loads[proc.index] = _Load()
        if proc.expected_exit or self._closing:
            logger.info("worker=%s pid=%s exited code=%s (asked to stop)", proc.rpc_id, proc.pid, code)
            self._forget_worker(proc.index)
            return
        await self._worker_failed(proc, code)

    def _forget_worker(self, index: int) -> None:
        for rid in [rid for rid, room in self._rooms.items() if room.worker == index]:
            self._drop_room(rid)
        for pid in [pid for pid, m in self._members.items() if m.worker == index]:
            del self._members[pid]

    async def _worker_failed(self, proc: WorkerProcess, code: int) -> None:
        index = proc.index
        self._m_failures.inc()
        lost = {rid: room for rid, room in self._rooms.items() if room.worker == index}
        logger.error(
            "node=%s worker=%s pid=%s exited unasked code=%s after %.1fs: re-placing rooms=%d",
            self.config.node_id,
            proc.rpc_id,
            proc.pid,
            code,
            proc.uptime,
            len(lost),
        )
        settled = self._settled[index]
        settled.clear()
        try:
            seated = sorted(
                ((pid, m) for pid, m in self._members.items() if m.worker == index), key=lambda item: item[1].since
            )
            by_room: dict[str, list[tuple[str, _Member]]] = {}
            for pid, member in seated:
                if member.room_id in lost:
                    by_room.setdefault(member.room_id, []).append((pid, member))
                else:
                    del self._members[pid]  # a seat without a room: nothing to re-seat it in
            serving = self.state is ServiceState.SERVING and not self._closing
            if serving:
                self._restart_later(proc)
            await asyncio.gather(
                *(
                    self._recover_room(rid, room, by_room.get(rid, []))
                    if serving
                    else self._lose_room(rid, by_room.get(rid, []), "the node is draining")
                    for rid, room in lost.items()
                )
            )
        finally:
            settled.set()

    def _restart_later(self, proc: WorkerProcess) -> None:
        index = proc.index
        if proc.uptime < self.front.quick_failure_s:
            self._quick_failures[index] += 1
        else:
            self._quick_failures[index] = 0
        quick = self._quick_failures[index]
        delay = 0.0 if quick <= 1 else min(self.front.max_restart_delay, 0.5 * 2 ** (quick - 1))
        self._track(asyncio.create_task(self._restart(index, delay), name=f"front-restart:{proc.rpc_id}"))

    async def _restart(self, index: int, delay: float) -> None:
        if delay:
            logger.warning(
                "worker=%s keeps failing young: restarting in %.1fs", self._launches[index].node.rpc_id, delay
            )
            await asyncio.sleep(delay)
        if self._closing or self.state is not ServiceState.SERVING:
            return
        self._restarts[index] += 1
        self._m_restarts.inc()
        proc = await self._spawn(index)
        try:
            await proc.wait_ready(self.front.start_timeout)
        except WorkerStartError as exc:
            logger.error("node=%s restart failed: %s", self.config.node_id, exc)
            proc.kill()  # its exit goes the failure path again: another restart, later
            return
        self._update_ready()

    async def _recover_room(self, room_id: str, room: _Room, members: list[tuple[str, _Member]]) -> None:
        async with self._room_locks.hold(room_id):
            try:
                target = await self._pick_worker(for_recovery=True)
                create: Payload = {"op": "create_room", "room_id": room_id}
                if room.max_participants is not None:
                    create["max_participants"] = room.max_participants
                await self._request(target, create)
            except NodeError as exc:
                await self._lose_room(room_id, members, exc.args[0] if exc.args else exc.code)
                return
            self._rooms[room_id] = _Room(target, room.max_participants, time.monotonic())
            self._count_rooms()
            reseated = 0
            for pid, member in members:
                transport = member.join.get("transport")
                plain = isinstance(transport, dict) and transport.get("type") == "plain"
                if member.hidden and not plain:
                    # a recorder's peer connection died with the worker; one on plain RTP simply gets the new
                    # worker's outputs at the same address (with new SSRCs, told in plain_tracks)
                    await self._remove(pid, RECOVER_REASON)
                    self._members.pop(pid, None)
                    continue
                try:
                    await self._request(target, {**member.join, "recover": RECOVER_REASON})
                except NodeError as exc:
                    logger.warning("room=%s participant=%s could not be re-seated: %s", room_id, pid, exc)
                    await self._remove(pid, RECOVER_REASON)
                    self._members.pop(pid, None)
                    continue
                self._members[pid] = replace(member, worker=target, since=time.monotonic())
                reseated += 1
            self._m_recovered.inc()
            logger.warning(
                "node=%s room=%s re-placed on worker=%s after a worker failure: participants=%d",
                self.config.node_id,
                room_id,
                self._procs[target].rpc_id,
                reseated,
            )

    async def _lose_room(self, room_id: str, members: list[tuple[str, _Member]], why: str) -> None:
        """Fail a room explicitly: its participants are removed and its room key is released."""
        self._drop_room(room_id)
        for pid, _member in members:
            self._members.pop(pid, None)
            await self._remove(pid, RECOVER_REASON)
        with contextlib.suppress(BusError):
            await self._bus.kv_delete(room_key(room_id), if_value=self.config.node_id)
        self._m_lost.inc()
        logger.error("node=%s room=%s lost with its worker (%s): room key released", self.config.node_id, room_id, why)

    async def _remove(self, participant_id: str, reason: str) -> None:
        message = {"type": "removed", "reason": reason, "node_id": self.config.node_id}
        with contextlib.suppress(BusError):
            await self._bus.publish(participant_channel(participant_id), message)

    def _drop_room(self, room_id: str) -> None:
        if self._rooms.pop(room_id, None) is not None:
            for pid in [pid for pid, m in self._members.items() if m.room_id == room_id]:
                del self._members[pid]
            self._count_rooms()

    def _count_rooms(self) -> None:
        counts = [0] * self.front.workers
        for room in self._rooms.values():
            counts[room.worker] += 1
        for gauge, count in zip(self._m_rooms, counts, strict=True):
            gauge.set(count)

    # ------------------------------------------------------------------------------------------ polling
    async def _poll_loop(self) -> None:
        while True:
            try:
                await asyncio.gather(*(self._poll(p) for p in list(self._procs.values()) if p.ready))
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("node=%s polling workers failed", self.config.node_id)
            await asyncio.sleep(self.front.poll_interval)

    async def _poll(self, proc: WorkerProcess) -> None:
        index = proc.index
        asked = time.monotonic()
        try:
            reply = await self._bus.request(proc.channel, {"op": "stats"}, timeout=self.front.poll_timeout)
        except BusError as exc:
            if self._procs.get(index) is not proc or not proc.ready:
                return
            load = self._loads[index]
            load.missed += 1
            logger.warning("worker=%s missed a poll (%d in a row): %s", proc.rpc_id, load.missed, exc)
            if load.missed >= self.front.unresponsive_polls:
                logger.error("worker=%s pid=%s stopped answering: killing it", proc.rpc_id, proc.pid)
                proc.kill()  # its exit takes the failure path
            return
        if self._procs.get(index) is not proc or not proc.ready:
            return
        raw_rooms, raw_participants = reply.get("rooms"), reply.get("participants")
        rooms: dict[str, Any] = raw_rooms if isinstance(raw_rooms, dict) else {}
        participants: list[str] = raw_participants if isinstance(raw_participants, list) else []
        previous = set(self._loads[index].rooms)
        self._loads[index] = _Load(
            streams=int(reply.get("streams", 0) or 0),
            participants=len(participants),
            cpu=float(reply.get("cpu", 0.0) or 0.0),
            rooms=rooms,
        )
        text = reply.get("metrics")
        if isinstance(text, str):
            self._worker_metrics.update(index, text)
        if self._settled[index].is_set():
            self._reconcile(index, asked, set(rooms), set(participants), previous)

    def _reconcile(self, index: int, asked: float, rooms: set[str], participants: set[str], before: set[str]) -> None:
        """Correct the maps from what worker ``index`` holds. Entries made after the poll was sent are kept; a room
        the map lacks is adopted only when two polls in a row report it (the first may predate its close)."""
        for rid, room in list(self._rooms.items()):
            if room.worker == index and room.since < asked and rid not in rooms:
                logger.info("room=%s closed by worker=%s on its own", rid, self._procs[index].rpc_id)
                self._drop_room(rid)
        for rid in (rooms & before) - set(self._rooms):
            logger.warning("room=%s found on worker=%s without a placement: adopted", rid, self._procs[index].rpc_id)
            self._rooms[rid] = _Room(index, None, time.monotonic())
            self._count_rooms()
        for pid, member in list(self._members.items()):
            if member.worker == index and member.since < asked and pid not in participants:
                del self._members[pid]  # it left by itself (its peer connection failed or closed)

    # ------------------------------------------------------------------------------------------ routing
    async def _pick_worker(self, *, for_recovery: bool = False) -> int:
        """The least loaded ready worker (forwarded streams, then rooms); waits a while when none is ready."""
        deadline = time.monotonic() + self.front.recovery_timeout
        while True:
            counts: dict[int, int] = dict.fromkeys(self._procs, 0)
            for room in self._rooms.values():
                counts[room.worker] = counts.get(room.worker, 0) + 1
            ready = [k for k, p in self._procs.items() if p.ready and (for_recovery or self._settled[k].is_set())]
            if ready:
                return min(ready, key=lambda k: (self._loads[k].streams, counts.get(k, 0), k))
            if time.monotonic() > deadline:
                raise NodeError("no forwarding worker of this node is ready", code="node_unavailable")
            await asyncio.sleep(0.1)

    async def _settle(self, resolve: Callable[[], int | None]) -> int | None:
        """The worker ``resolve`` names once it is not recovering from a failure (re-resolved after a wait)."""
        deadline = time.monotonic() + self.front.recovery_timeout
        while True:
            index = resolve()
            if index is None:
                return None
            settled = self._settled[index]
            if settled.is_set() and self._procs[index].answering:
                return index
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NodeError("this node's worker is recovering from a failure; try again", code="node_unavailable")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.1) if settled.is_set() else remaining):
                    await settled.wait()
                if settled.is_set():
                    await asyncio.sleep(0)  # let the recovery's last steps run before re-resolving

    async def _request(self, index: int, payload: Mapping[str, Any]) -> Payload:
        """One request to worker ``index``; its error codes pass through, its death is ``node_unavailable``."""
        proc = self._procs[index]
        started = time.perf_counter()
        request = asyncio.ensure_future(self._bus.request(proc.channel, payload, timeout=self.front.forward_timeout))
        waiting: list[asyncio.Future[Any]] = [request, proc.exited]
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            request.cancel()
            raise
        if not request.done():
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError, BusError):
                await request
            raise NodeError("the worker holding this room failed; try again", code="node_unavailable")
        try:
            reply = request.result()
        except RemoteError as exc:
            raise NodeError(str(exc), code=exc.code) from None
        except (NoResponderError, BusTimeoutError) as exc:
            raise NodeError(f"a worker of this node did not answer: {exc}", code="node_unavailable") from None
        self._m_forward.observe(time.perf_counter() - started)
        return reply

    async def _handle(self, payload: Payload) -> Payload:
        op = payload.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            raise NodeError(f"unknown op {op!r}", code="bad_request")
        return await handler(payload)

    async def _op_ping(self, payload: Payload) -> Payload:
        return {"node_id": self.config.node_id, "state": self.state.value}

    async def _op_drain(self, payload: Payload) -> Payload:
        logger.info("node=%s drain requested over the bus", self.config.node_id)
        self.request_retire()
        return {"node_id": self.config.node_id, "state": "draining"}

    async def _to_room(self, room_id: str, payload: Payload, *, place: bool) -> tuple[int, Payload]:
        """Send ``payload`` to the room's worker; with ``place``, put a new room on the least loaded worker."""
        index = await self._settle(lambda: self.room_worker(room_id))
        if index is not None:
            return index, await self._request(index, payload)
        if not place:
            raise NodeError(f"room {room_id!r} is not on this node", code="unknown_room")
        async with self._room_locks.hold(room_id):
            index = await self._settle(lambda: self.room_worker(room_id))
            if index is not None:
                return index, await self._request(index, payload)
            if self.state is not ServiceState.SERVING:
                raise NodeError("node is draining: no new rooms", code="node_draining")
            index = await self._pick_worker()
            reply = await self._request(index, payload)
            limit = payload.get("max_participants") if payload.get("op") == "create_room" else None
            self._rooms[room_id] = _Room(index, limit if isinstance(limit, int) else None, time.monotonic())
            self._count_rooms()
            logger.info("node=%s room=%s placed on worker=%s", self.config.node_id, room_id, self._procs[index].rpc_id)
            return index, reply

    async def _op_create_room(self, payload: Payload) -> Payload:
        room_id = _require_id(payload, "room_id")
        _index, reply = await self._to_room(room_id, payload, place=True)
        return reply

    async def _op_join(self, payload: Payload) -> Payload:
        room_id = _require_id(payload, "room_id")
        pid = _require_id(payload, "participant_id")
        join = {k: v for k, v in payload.items() if k != "recover"}  # only the front re-seats participants
        index, reply = await self._to_room(room_id, join, place=True)
        hidden = join.get("role") == "recorder"
        self._members[pid] = _Member(room_id, index, join, hidden, time.monotonic())
        return reply

    async def _op_close_room(self, payload: Payload) -> Payload:
        room_id = _require_id(payload, "room_id")
        try:
            _index, reply = await self._to_room(room_id, payload, place=False)
        except NodeError as exc:
            if exc.code == "unknown_room":
                return {}  # as a node does: closing a room it does not have is not an error
            raise
        self._drop_room(room_id)
        return reply

    async def _op_participant(self, payload: Payload) -> Payload:
        pid = _require_id(payload, "participant_id")
        op = payload["op"]
        index = await self._settle(lambda: m.worker if (m := self._members.get(pid)) is not None else None)
        if index is None:
            if op == "leave":
                return {}  # as a node does: leaving twice is not an error
            raise NodeError(f"participant {pid!r} is not on this node", code="unknown_participant")
        reply = await self._request(index, payload)
        if op == "leave":
            self._members.pop(pid, None)
        elif op == "moderate" and payload.get("action") == "remove" and isinstance(payload.get("target"), str):
            self._members.pop(payload["target"], None)
        return reply
