"""Test doubles of the services signaling talks to: a media node and the orchestrator.

They answer on the bus exactly as media/node.py and the orchestrator do (same ops, same reply shapes, same
error codes), keep just enough room state to be believable, and record every request so tests can assert on
what signaling sent. They are doubles of *other* services; signaling itself is never faked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from core.bus import Bus, BusError, Payload, Subscription
from core.messages import ORCHESTRATOR_RPC, node_rpc, participant_channel, room_key

FAKE_ANSWER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=fake-answer\r\nt=0 0\r\n"
FAKE_OFFER = "v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=fake-offer\r\nt=0 0\r\n"
ICE_SERVERS = [{"urls": ["stun:127.0.0.1:3478"]}]


@dataclass
class FakeParticipant:
    participant_id: str
    room_id: str
    identity: str
    name: str
    role: str
    hand_raised: bool = False
    tracks: list[dict[str, Any]] = field(default_factory=list)
    pending_offer: dict[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        return {
            "participant_id": self.participant_id,
            "identity": self.identity,
            "name": self.name,
            "role": self.role,
            "tracks": list(self.tracks),
            "hand_raised": self.hand_raised,
        }


class FakeNode:
    """A media node double serving ``node_rpc(node_id)``."""

    def __init__(self, bus: Bus, node_id: str = "node-a", *, capacity: int = 50) -> None:
        self.bus = bus
        self.node_id = node_id
        self.capacity = capacity
        self.requests: list[Payload] = []
        self.participants: dict[str, FakeParticipant] = {}
        self.offer_on_join = True
        self.ice_servers: list[dict[str, Any]] = list(ICE_SERVERS)
        self._serving: Subscription | None = None

    async def start(self) -> FakeNode:
        self._serving = await self.bus.serve(node_rpc(self.node_id), self.handle)
        return self

    async def stop(self) -> None:
        if self._serving is not None:
            await self._serving.close()
            self._serving = None

    def ops(self, op: str) -> list[Payload]:
        return [r for r in self.requests if r.get("op") == op]

    def _room(self, room_id: str) -> list[FakeParticipant]:
        return [p for p in self.participants.values() if p.room_id == room_id]

    def _visible(self, room_id: str, but: str) -> list[dict[str, Any]]:
        return [p.public() for p in self._room(room_id) if p.participant_id != but and p.role != "recorder"]

    async def send(self, participant_id: str, msg: dict[str, Any]) -> None:
        await self.bus.publish(participant_channel(participant_id), msg)

    async def _to_room(self, room_id: str, msg: dict[str, Any], *, but: str | None = None) -> None:
        for p in self._room(room_id):
            if p.participant_id != but:
                await self.send(p.participant_id, msg)

    def _get(self, payload: Payload) -> FakeParticipant:
        p = self.participants.get(payload.get("participant_id", ""))
        if p is None:
            raise BusError("no such participant", code="unknown_participant")
        return p

    async def handle(self, payload: Payload) -> Payload:
        self.requests.append(payload)
        op = payload.get("op")
        if op == "join":
            room_id = payload["room_id"]
            if len(self._room(room_id)) >= self.capacity:
                raise BusError("room is full", code="room_full")
            p = FakeParticipant(
                payload["participant_id"], room_id, payload["identity"], payload["name"], payload["role"]
            )
            others = self._visible(room_id, p.participant_id)
            self.participants[p.participant_id] = p
            if p.role != "recorder":
                await self._to_room(
                    room_id, {"type": "participant_joined", "participant": p.public()}, but=p.participant_id
                )
            if self.offer_on_join:
                p.pending_offer = {"sdp": FAKE_OFFER, "tracks": {}}
                await self.send(p.participant_id, {"type": "subscriber_offer", **p.pending_offer})
            return {"participants": others, "ice_servers": self.ice_servers}
        p = self._get(payload)
        if op == "publish":
            p.tracks = [
                {
                    "track_id": f"{p.participant_id}-{mid}",
                    "kind": "audio" if src == "microphone" else "video",
                    "source": src,
                    "muted": False,
                }
                for mid, src in payload["sources"].items()
            ]
            return {"sdp": FAKE_ANSWER}
        if op == "subscriber_answer":
            p.pending_offer = None
            return {}
        if op == "state":
            return {
                "participants": self._visible(p.room_id, p.participant_id),
                "ice_servers": self.ice_servers,
                "pending_offer": p.pending_offer,
            }
        if op == "mute":
            await self._to_room(
                p.room_id,
                {
                    "type": "track_muted",
                    "participant_id": p.participant_id,
                    "source": payload["source"],
                    "muted": payload["muted"],
                },
            )
            return {}
        if op == "data":
            if payload["kind"] == "hand":
                p.hand_raised = bool(payload["body"].get("raised"))
            msg = {
                "type": "data",
                "from": {"participant_id": p.participant_id, "identity": p.identity, "name": p.name, "role": p.role},
                "kind": payload["kind"],
                "body": payload["body"],
                "at": time.time(),
            }
            await self._to_room(p.room_id, msg)
            return {}
        if op == "moderate":
            target = self.participants.get(payload["target"])
            if target is None or target.room_id != p.room_id:
                raise BusError("no such participant", code="unknown_participant")
            if payload["action"] == "remove":
                await self.send(target.participant_id, {"type": "removed", "reason": "removed by moderator"})
                await self._leave(target, "removed")
            return {}
        if op == "leave":
            await self._leave(p, "left")
            return {}
        raise BusError(f"unknown op {op!r}", code="bad_request")

    async def _leave(self, p: FakeParticipant, reason: str) -> None:
        self.participants.pop(p.participant_id, None)
        await self._to_room(
            p.room_id, {"type": "participant_left", "participant_id": p.participant_id, "reason": reason}
        )


class FakeOrchestrator:
    """An orchestrator double answering ``ensure_room`` by placing every room on one node."""

    def __init__(self, bus: Bus, node_id: str = "node-a", *, refuse: str | None = None) -> None:
        self.bus = bus
        self.node_id = node_id
        self.refuse = refuse
        self.requests: list[Payload] = []
        self._serving: Subscription | None = None

    async def start(self) -> FakeOrchestrator:
        self._serving = await self.bus.serve(ORCHESTRATOR_RPC, self.handle)
        return self

    async def stop(self) -> None:
        if self._serving is not None:
            await self._serving.close()
            self._serving = None

    async def handle(self, payload: Payload) -> Payload:
        self.requests.append(payload)
        if payload.get("op") != "ensure_room":
            raise BusError("unknown op", code="bad_request")
        if self.refuse:
            raise BusError("refused", code=self.refuse)
        await self.bus.kv_set(room_key(payload["room_id"]), self.node_id)
        return {"node_id": self.node_id}
