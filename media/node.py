"""MediaNode: one SFU node in one region, as a service.

Holds the node's rooms (``media.room.Room``) and puts them on the bus: it answers the node's request channel
(``media.<node_id>``) for signaling and the orchestrator, relays room events to each participant's channel, writes
presence and talk-time events to the durable event stream, and heartbeats its load every second.

States follow the service lifecycle: SERVING (takes new rooms and participants) -> DRAINING (refuses new rooms;
existing rooms run until empty or moved) -> STOPPED.

The request ops and the messages sent to participants are documented in docs/signaling.md ("node contract").

As a forwarding worker behind a front (``config.worker`` set, see ``media.front``) the same class answers
``media.<node_id>.w<k>`` instead, does not heartbeat (the front announces the node and its summed load), answers
the front's ``stats`` op, and accepts ``recover`` on ``join`` (the front re-seating a participant whose worker
died: the participant is first sent ``moved``, as after a node failure). Everything it sends stays tagged with
the node's id, so signaling cannot tell workers apart.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from core.bus import Bus, Payload, Subscription
from core.heartbeat import Heartbeat
from core.ids import is_valid_id
from core.messages import (
    EVENTS_STREAM,
    NodeHeartbeat,
    PresenceEvent,
    encode,
    node_rpc,
    participant_channel,
)
from core.service import Service, ServiceState
from core.tokens import Permission, Role
from media import events as ev
from media.config import MediaNodeConfig, TurnConfig
from media.cpu import CpuMeter
from media.errors import MediaError, NodeError
from media.forwarding import configure_ice, rtc_configuration
from media.metrics import exposition as worker_metrics_text
from media.room import NodeLimits, Room, RoomSettings

__all__ = ["MediaNode", "MediaNodeConfig", "NodeError", "TurnConfig", "subscriber_tracks", "turn_credentials"]

logger = logging.getLogger(__name__)

SOURCES = ("camera", "microphone", "screen")
DATA_KINDS = ("chat", "hand", "reaction", "poll", "poll_answer", "check", "check_answer")
MAX_SDP = 64 * 1024


@dataclass
class _Seat:
    """Where a participant sits and what the node remembers for it."""

    room_id: str
    identity: str
    name: str
    role: str
    permissions: frozenset[str]
    hidden: bool
    hand_raised: bool = False
    pending_offer: dict[str, Any] | None = None
    muted: dict[str, bool] = field(default_factory=dict)


def turn_credentials(secret: str, identity: str, ttl_s: int, now: float | None = None) -> tuple[str, str]:
    """coturn's REST scheme: username "<expiry>:<identity>", password base64(HMAC-SHA1(secret, username))."""
    expiry = int((now or time.time()) + ttl_s)
    username = f"{expiry}:{identity}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


_MID_RE = re.compile(r"^a=mid:(\S+)", re.M)
_MSID_RE = re.compile(r"^a=msid:(\S+) (\S+)", re.M)


def subscriber_tracks(sdp: str) -> dict[str, dict[str, str]]:
    """mid -> {participant_id, source, kind} from an offer's m-sections (msid "<participant_id> <source>:...")."""
    out: dict[str, dict[str, str]] = {}
    for section in sdp.split("\r\nm=")[1:]:
        kind = section.split(" ", 1)[0]
        mid, msid = _MID_RE.search(section), _MSID_RE.search(section)
        if not mid or not msid or "a=inactive" in section:
            continue
        source = msid.group(2).split(":", 1)[0]
        out[mid.group(1)] = {"participant_id": msid.group(1), "source": source, "kind": kind}
    return out


class MediaNode(Service):
    name = "media"

    def __init__(self, config: MediaNodeConfig, bus: Bus) -> None:
        super().__init__()
        self.config = config
        self._bus = bus
        self._rooms: dict[str, Room] = {}
        self._seats: dict[str, _Seat] = {}
        self._limits = NodeLimits(max_streams=config.capacity_streams)
        self._serving: Subscription | None = None
        self._heartbeat = Heartbeat(bus, self._heartbeat_message, interval=config.heartbeat_interval)
        self._outbox: asyncio.Queue[tuple[str, Payload]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._cpu = CpuMeter()
        self._ops: dict[str, Callable[[Payload], Awaitable[Payload]]] = {
            "ping": self._op_ping,
            "create_room": self._op_create_room,
            "close_room": self._op_close_room,
            "join": self._op_join,
            "publish": self._op_publish,
            "subscriber_answer": self._op_subscriber_answer,
            "mute": self._op_mute,
            "data": self._op_data,
            "moderate": self._op_moderate,
            "state": self._op_state,
            "leave": self._op_leave,
            "drain": self._op_drain,
        }
        if config.worker is not None:
            self._ops["stats"] = self._op_stats

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def rooms(self) -> dict[str, Room]:
        return self._rooms

    async def start(self) -> None:
        configure_ice(addresses=list(self.config.ice_addresses) or None, port_range=self.config.udp_ports)
        self._sender = asyncio.create_task(self._send_loop(), name=f"node-outbox:{self.config.node_id}")
        self._serving = await self._bus.serve(node_rpc(self.config.rpc_id), self._handle)
        if self.config.worker is None:  # a worker's front heartbeats for the whole node
            self._heartbeat.start(self.config.node_id)

    async def drain(self, deadline: float) -> None:
        """Refuse new rooms; wait for rooms to empty (moving them is the orchestrator's job)."""
        if self.config.worker is None:  # a worker's front announces the node
            await self._heartbeat.send()
        while self._rooms and time.monotonic() < deadline:
            for room_id, room in list(self._rooms.items()):
                if not room.participants:
                    await self._close_room(room_id)
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        if self._serving is not None:
            await self._serving.close()
            self._serving = None
        for room_id in list(self._rooms):
            await self._close_room(room_id)
        await self._heartbeat.close()  # its last beat tells the registry we are gone
        if self._sender is not None:
            await self._outbox.join()
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None

    def health(self) -> dict[str, Any]:
        return {
            "node_id": self.config.node_id,
            "region": self.config.region,
            "rooms": len(self._rooms),
            "participants": len(self._seats),
        }

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/node", self._http_status)

    async def _http_status(self, request: web.Request) -> web.Response:
        rooms = {rid: room.stats() for rid, room in self._rooms.items()}
        return web.json_response(self.health() | {"state": self.state.value, "rooms_detail": rooms})

    # ------------------------------------------------------------------------------------------ heartbeat
    def _streams(self) -> int:
        return sum(int(room.stats().get("forwarded_tracks", 0)) for room in self._rooms.values())

    def _heartbeat_message(self) -> NodeHeartbeat:
        return NodeHeartbeat(
            node_id=self.config.node_id,
            kind="media",
            region=self.config.region,
            version=self.config.version,
            state=self.state.value,
            url=self.config.public_url,
            capacity_streams=self.config.capacity_streams,
            rooms=len(self._rooms),
            participants=len(self._seats),
            streams=self._streams(),
            cpu=self._cpu.sample(),
            sent_at=time.time(),
            room_ids=sorted(self._rooms),
        )

    def state_changed(self, state: ServiceState) -> None:
        self._heartbeat.wake()  # tell the registry at once, not at the next beat

    # ------------------------------------------------------------------------------------------ outbound
    def _post(self, channel: str, payload: Payload) -> None:
        self._outbox.put_nowait((channel, payload))

    async def _send_loop(self) -> None:
        """One sender keeps the order of messages to each participant and of events in the stream."""
        while True:
            channel, payload = await self._outbox.get()
            try:
                if channel == EVENTS_STREAM:
                    await self._bus.append(EVENTS_STREAM, payload)
                else:
                    await self._bus.publish(channel, payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("node=%s could not send to channel=%s", self.config.node_id, channel)
            finally:
                self._outbox.task_done()

    def _to_participant(self, participant_id: str, payload: Payload) -> None:
        # tagged with the node, so that a participant whose room moved can ignore what its old node still says
        self._post(participant_channel(participant_id), {**payload, "node_id": self.config.node_id})

    def _to_room(self, room_id: str, payload: Payload, *, exclude: str | None = None) -> None:
        for pid, seat in self._seats.items():
            if seat.room_id == room_id and pid != exclude and not seat.hidden:
                self._to_participant(pid, payload)

    def _presence(self, event: str, participant_id: str, details: dict[str, Any] | None = None) -> None:
        seat = self._seats.get(participant_id)
        if seat is None:
            return
        msg = PresenceEvent(
            event=event,
            room_id=seat.room_id,
            node_id=self.config.node_id,
            participant_id=participant_id,
            identity=seat.identity,
            role=seat.role,
            at=time.time(),
            details=details or {},
        )
        self._post(EVENTS_STREAM, encode(msg))

    def _on_room_event(self, event: ev.RoomEvent) -> None:
        """Room events -> participants' channels and the event stream. Runs synchronously; must not block."""
        pid = event.participant_id
        seat = self._seats.get(pid)
        if isinstance(event, ev.SubscriberOffer):
            offer = {"type": "subscriber_offer", "sdp": event.sdp, "tracks": subscriber_tracks(event.sdp)}
            if seat is not None:
                seat.pending_offer = offer
            self._to_participant(pid, offer)
            return
        if isinstance(event, ev.PlainTracks):
            self._to_participant(pid, {"type": "plain_tracks", "tracks": event.tracks})
            return
        if seat is None:
            return
        if isinstance(event, ev.ParticipantLeft):
            # the room dropped the participant by itself (its peer connection failed or closed)
            self._presence("left", pid, {"reason": event.reason})
            if not seat.hidden:
                self._to_room(
                    seat.room_id,
                    {"type": "participant_left", "participant_id": pid, "reason": event.reason},
                    exclude=pid,
                )
            del self._seats[pid]
        elif isinstance(event, ev.TrackPublished):
            track = {"track_id": event.track_id, "kind": event.kind, "source": event.source, "muted": False}
            if not seat.hidden:
                self._to_room(seat.room_id, {"type": "track_published", "participant_id": pid, "track": track})
            self._presence("published", pid, {"kind": event.kind, "source": event.source})
        elif isinstance(event, ev.TrackUnpublished):
            if not seat.hidden:
                self._to_room(
                    seat.room_id,
                    {"type": "track_unpublished", "participant_id": pid, "track_id": event.track_id},
                )
            self._presence("unpublished", pid, {"kind": event.kind, "source": event.source})
        elif isinstance(event, ev.SpeakingChanged):
            if not seat.hidden:
                self._to_room(
                    seat.room_id,
                    {
                        "type": "speaking",
                        "participant_id": pid,
                        "speaking": event.speaking,
                        "talk_time_ms": event.talk_time_ms,
                    },
                )
            self._presence(
                "speaking_started" if event.speaking else "speaking_stopped",
                pid,
                {"talk_time_ms": event.talk_time_ms, "segment_ms": event.segment_ms},
            )
        elif isinstance(event, ev.ConnectionQuality):
            self._to_participant(pid, {"type": "quality", "participant_id": pid, "quality": event.quality})
            self._presence("quality", pid, {"quality": event.quality, "loss": event.loss, "rtt_ms": event.rtt_ms})

    # ------------------------------------------------------------------------------------------ requests
    async def _handle(self, payload: Payload) -> Payload:
        op = payload.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            raise NodeError(f"unknown op {op!r}", code="bad_request")
        try:
            return await handler(payload)
        except MediaError as exc:
            raise NodeError(exc.message, code=exc.code) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise NodeError(f"bad request for op {op}: {exc}", code="bad_request") from None

    @staticmethod
    def _str(payload: Payload, key: str, *, limit: int = 128, ident: bool = False) -> str:
        value = payload.get(key)
        if not isinstance(value, str) or not value or len(value) > limit:
            raise NodeError(f"{key!r} must be a non-empty string of at most {limit} characters", code="bad_request")
        if ident and not is_valid_id(value):
            raise NodeError(f"{key!r} is not a valid id", code="bad_request")
        return value

    def _seat(self, payload: Payload) -> tuple[str, _Seat, Room]:
        pid = self._str(payload, "participant_id", ident=True)
        seat = self._seats.get(pid)
        if seat is None or seat.room_id not in self._rooms:
            raise NodeError(f"participant {pid!r} is not on this node", code="unknown_participant")
        return pid, seat, self._rooms[seat.room_id]

    async def _op_ping(self, payload: Payload) -> Payload:
        return {"node_id": self.config.node_id, "state": self.state.value}

    def _get_or_create_room(self, room_id: str, *, max_participants: int | None = None, create: bool) -> Room:
        room = self._rooms.get(room_id)
        if room is not None:
            return room
        if not create:
            raise NodeError(f"room {room_id!r} is not on this node", code="unknown_room")
        if self.state is not ServiceState.SERVING:
            raise NodeError("node is draining: no new rooms", code="node_draining")
        settings = RoomSettings(max_participants=max_participants or self.config.max_participants_per_room)
        room = Room(
            room_id,
            settings,
            node_id=self.config.node_id,
            on_event=self._on_room_event,
            limits=self._limits,
            rtc_configuration=rtc_configuration(),
        )
        self._rooms[room_id] = room
        logger.info("node=%s room=%s created", self.config.node_id, room_id)
        return room

    async def _op_create_room(self, payload: Payload) -> Payload:
        room_id = self._str(payload, "room_id", ident=True)
        max_participants = payload.get("max_participants")
        if max_participants is not None and (not isinstance(max_participants, int) or max_participants < 1):
            raise NodeError("max_participants must be a positive integer", code="bad_request")
        self._get_or_create_room(room_id, max_participants=max_participants, create=True)
        return {"room_id": room_id, "node_id": self.config.node_id}

    async def _op_close_room(self, payload: Payload) -> Payload:
        room_id = self._str(payload, "room_id", ident=True)
        await self._close_room(room_id)
        return {}

    async def _close_room(self, room_id: str) -> None:
        room = self._rooms.pop(room_id, None)
        if room is None:
            return
        for pid in [p for p, s in self._seats.items() if s.room_id == room_id]:
            self._stop_speaking(room, pid)  # while the seat exists, so its last stretch of speech is reported
            self._to_participant(pid, {"type": "removed", "reason": "room_closed"})
            self._presence("left", pid, {"reason": "room_closed"})
            del self._seats[pid]
        await room.close()
        logger.info("node=%s room=%s closed", self.config.node_id, room_id)

    @staticmethod
    def _stop_speaking(room: Room, pid: str) -> None:
        with contextlib.suppress(MediaError):  # not in the room (any more)
            room.participant(pid).stop_speaking()

    def _describe(self, pid: str, room: Room) -> dict[str, Any]:
        seat = self._seats[pid]
        participant = room.participant(pid)
        tracks = [
            {
                "track_id": t.track_id,
                "kind": t.kind,
                "source": t.source,
                "muted": seat.muted.get(t.source, False),
            }
            for t in participant.published_tracks()
        ]
        return {
            "participant_id": pid,
            "identity": seat.identity,
            "name": seat.name,
            "role": seat.role,
            "tracks": tracks,
            "hand_raised": seat.hand_raised,
        }

    def _room_view(self, room_id: str, room: Room) -> list[dict[str, Any]]:
        return [
            self._describe(pid, room)
            for pid, seat in self._seats.items()
            if seat.room_id == room_id and not seat.hidden and pid in room.participants
        ]

    def _ice_servers(self, identity: str) -> list[dict[str, Any]]:
        servers: list[dict[str, Any]] = []
        if self.config.stun:
            servers.append({"urls": list(self.config.stun)})
        for turn in self.config.turn:
            if turn.secret:
                username, credential = turn_credentials(turn.secret, identity, self.config.turn_ttl_s)
                servers.append({"urls": list(turn.urls), "username": username, "credential": credential})
        return servers

    async def _op_join(self, payload: Payload) -> Payload:
        room_id = self._str(payload, "room_id", ident=True)
        pid = self._str(payload, "participant_id", ident=True)
        identity = self._str(payload, "identity")
        name = self._str(payload, "name", limit=64)
        role = Role(self._str(payload, "role"))
        perms_raw = payload.get("permissions", [])
        if not isinstance(perms_raw, list):
            raise NodeError("permissions must be a list", code="bad_request")
        perms = frozenset(Permission(p).value for p in perms_raw)
        if pid in self._seats:
            raise NodeError(f"participant {pid!r} already joined", code="duplicate_participant")
        plain = self._plain_address(payload.get("transport"), role)
        room = self._get_or_create_room(room_id, create=True)
        can_publish = frozenset(
            kind
            for kind, perm in (
                ("audio", "publish_audio"),
                ("video", "publish_video"),
                ("screen", "publish_screen"),
            )
            if perm in perms
        )
        info = ev.ParticipantInfo(
            participant_id=pid,
            identity=identity,
            name=name,
            role=role.value,
            can_publish=can_publish,
            can_subscribe="subscribe" in perms,
            hidden=role is Role.RECORDER,
            plain=plain,
        )
        seat = _Seat(room_id, identity, name, role.value, perms, hidden=info.hidden)
        recover = payload.get("recover")
        if self.config.worker is not None and isinstance(recover, str) and not info.hidden:
            # The front re-seats a participant whose worker died. Its peer connections died with that worker: as
            # after a node failure, it gets "moved" (the same node) before anything this worker sends it, so it
            # builds new connections before our first subscriber_offer arrives.
            moved = {
                "type": "moved",
                "reason": recover[:64],
                "participants": self._room_view(room_id, room),
                "ice_servers": self._ice_servers(identity),
            }
            self._to_participant(pid, moved)
        self._seats[pid] = seat
        try:
            await room.join(info)
        except BaseException:
            self._seats.pop(pid, None)
            raise
        self._presence("joined", pid, {"name": name})
        if not seat.hidden:
            self._to_room(
                room_id, {"type": "participant_joined", "participant": self._describe(pid, room)}, exclude=pid
            )
        return {
            "participants": [p for p in self._room_view(room_id, room) if p["participant_id"] != pid],
            "ice_servers": self._ice_servers(identity),
            "node_id": self.config.node_id,
        }

    @staticmethod
    def _plain_address(transport: object, role: Role) -> tuple[str, int] | None:
        """``{"type": "plain", "host": H, "port": P}`` -> (H, P) for a recorder; None for a peer connection."""
        if transport is None:
            return None
        if not isinstance(transport, dict) or transport.get("type") not in ("plain", "webrtc"):
            raise NodeError('transport must be {"type": "plain", "host": ..., "port": ...}', code="bad_request")
        if transport["type"] == "webrtc":
            return None
        if role is not Role.RECORDER:
            raise NodeError("only recorders may take plain RTP", code="permission_denied")
        host, port = transport.get("host"), transport.get("port")
        try:
            ip = ipaddress.ip_address(host if isinstance(host, str) else "")
        except ValueError:
            raise NodeError("transport.host must be an IP address", code="bad_request") from None
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535 or ip.is_unspecified:
            raise NodeError("transport needs a host address and a port in 1..65535", code="bad_request")
        return str(ip), port

    async def _op_publish(self, payload: Payload) -> Payload:
        pid, _seat, room = self._seat(payload)
        sdp = self._str(payload, "sdp", limit=MAX_SDP)
        sources = payload.get("sources", {})
        if not isinstance(sources, dict) or not all(isinstance(k, str) and v in SOURCES for k, v in sources.items()):
            raise NodeError(f"sources must map mid -> one of {SOURCES}", code="bad_request")
        answer = await room.participant(pid).publish(sdp, sources)
        return {"sdp": answer}

    async def _op_subscriber_answer(self, payload: Payload) -> Payload:
        pid, seat, room = self._seat(payload)
        sdp = self._str(payload, "sdp", limit=MAX_SDP)
        seat.pending_offer = None
        await room.participant(pid).subscriber_answer(sdp)
        return {}

    async def _op_mute(self, payload: Payload) -> Payload:
        pid, seat, room = self._seat(payload)
        source = payload.get("source")
        muted = payload.get("muted")
        if source not in SOURCES or not isinstance(muted, bool):
            raise NodeError("mute needs source (camera|microphone|screen) and muted (bool)", code="bad_request")
        room.participant(pid).set_muted(source, muted)
        seat.muted[source] = muted
        if not seat.hidden:
            self._to_room(
                seat.room_id, {"type": "track_muted", "participant_id": pid, "source": source, "muted": muted}
            )
        return {}

    async def _op_data(self, payload: Payload) -> Payload:
        pid, seat, _room = self._seat(payload)
        if "data" not in seat.permissions:
            raise NodeError("this participant may not send data", code="permission_denied")
        kind = payload.get("kind")
        body = payload.get("body", {})
        if kind not in DATA_KINDS or not isinstance(body, dict):
            raise NodeError(f"data needs kind (one of {DATA_KINDS}) and an object body", code="bad_request")
        if kind in ("poll", "check") and "moderate" not in seat.permissions:
            raise NodeError("this participant may not ask the room", code="permission_denied")
        if kind == "hand":
            seat.hand_raised = bool(body.get("raised"))
        message = {
            "type": "data",
            "from": {"participant_id": pid, "identity": seat.identity, "name": seat.name, "role": seat.role},
            "kind": kind,
            # a check's right answer stays with the node's event stream; the room sees the question only
            "body": {k: v for k, v in body.items() if k != "correct"} if kind == "check" else body,
            "at": time.time(),
        }
        if kind in ("poll_answer", "check_answer"):
            # an answer goes to whoever asks (the moderators), not to the other students
            for other, s in self._seats.items():
                if s.room_id == seat.room_id and "moderate" in s.permissions and not s.hidden:
                    self._to_participant(other, message)
        else:
            self._to_room(seat.room_id, message)
        self._presence("data", pid, {"kind": kind, "body": body})
        return {}

    async def _op_moderate(self, payload: Payload) -> Payload:
        _pid, seat, _room = self._seat(payload)
        if "moderate" not in seat.permissions:
            raise NodeError("this participant may not moderate", code="permission_denied")
        target = self._str(payload, "target", ident=True)
        target_seat = self._seats.get(target)
        if target_seat is None or target_seat.room_id != seat.room_id:
            raise NodeError(f"participant {target!r} is not in this room", code="unknown_participant")
        action = payload.get("action")
        if action == "mute":
            source = payload.get("source", "microphone")
            if source not in SOURCES:
                raise NodeError("source must be camera|microphone|screen", code="bad_request")
            return await self._op_mute({"participant_id": target, "source": source, "muted": True})
        if action == "remove":
            self._to_participant(target, {"type": "removed", "reason": "removed_by_moderator"})
            await self._leave(target, "removed_by_moderator")
            return {}
        raise NodeError("action must be mute or remove", code="bad_request")

    async def _op_state(self, payload: Payload) -> Payload:
        pid, seat, room = self._seat(payload)
        if seat.pending_offer is not None:
            self._to_participant(pid, seat.pending_offer)
        return {
            "participants": [p for p in self._room_view(seat.room_id, room) if p["participant_id"] != pid],
            "ice_servers": self._ice_servers(seat.identity),
            "node_id": self.config.node_id,
            "pending_offer": seat.pending_offer,
        }

    async def _op_stats(self, payload: Payload) -> Payload:
        """A worker's answer to its front's poll: what it holds, its load since the last poll, its metrics."""
        rooms = {rid: room.stats() for rid, room in self._rooms.items()}
        return {
            "state": self.state.value,
            "rooms": rooms,
            "participants": sorted(self._seats),
            "streams": sum(int(r.get("forwarded_tracks", 0)) for r in rooms.values()),
            "cpu": self._cpu.sample(),
            "metrics": worker_metrics_text(),
        }

    async def _op_drain(self, payload: Payload) -> Payload:
        """The orchestrator's rolling upgrade asks this node to drain and exit (its deployment replaces it)."""
        logger.info("node=%s drain requested over the bus", self.config.node_id)
        self.request_retire()
        return {"node_id": self.config.node_id, "state": "draining"}

    async def _op_leave(self, payload: Payload) -> Payload:
        pid = self._str(payload, "participant_id", ident=True)
        await self._leave(pid, str(payload.get("reason", "left"))[:64])
        return {}

    async def _leave(self, pid: str, reason: str) -> None:
        seat = self._seats.get(pid)
        if seat is None:
            return
        room = self._rooms.get(seat.room_id)
        if room is not None:
            self._stop_speaking(room, pid)  # while the seat exists, so its last stretch of speech is reported
        self._presence("left", pid, {"reason": reason})
        if not seat.hidden:
            self._to_room(
                seat.room_id,
                {"type": "participant_left", "participant_id": pid, "reason": reason},
                exclude=pid,
            )
        del self._seats[pid]
        if room is not None:
            await room.leave(pid)
