"""A participant's resumable signaling session.

A session is what outlives a WebSocket: the participant's place in a room on a media node, the stream of
node messages addressed to it (numbered by ``seq``), and a ``resume_token`` that lets a new socket, on this
process or another one, take it over without re-joining the room. Its record lives in the bus kv under
``signaling:session:<resume_token>`` (JSON, TTL = the resume window, refreshed while a socket is attached),
so any signaling process sharing the bus can find it.

States::

    ATTACHED --socket drops--> DETACHED --resume--> (handed over; a new Session takes its place)
        |                          |
        |                          +--resume window passes--> CLOSED (node is sent ``leave``)
        +--leave / removed by a moderator / handed over / service closes--> CLOSED

Events: every node message on ``participant_channel(participant_id)`` gets the next ``seq``, goes into a
bounded replay buffer and, while attached, to the socket. A resume asks the owning process over the bus
(``signaling.session.<session_id>``, op ``handover``) for the buffered messages the client missed; that
process closes the old socket (4409) and lets go of the session.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

from core.bus import Bus, BusError, Payload, Subscription
from core.messages import room_channel
from signaling import metrics
from signaling.errors import CLOSE_REMOVED, CLOSE_RESUMED_ELSEWHERE, SignalingError
from signaling.relay import NodeRelay

logger = logging.getLogger(__name__)

SESSION_KEY_PREFIX = "signaling:session:"

Sink = Callable[[dict[str, Any]], Awaitable[None]]
Kick = Callable[[int, str], None]


def session_key(resume_token: str) -> str:
    return f"{SESSION_KEY_PREFIX}{resume_token}"


def handover_channel(session_id: str) -> str:
    return f"signaling.session.{session_id}"


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What any signaling process needs to resume a session (stored as JSON in the bus kv)."""

    session_id: str
    resume_token: str
    participant_id: str
    room_id: str
    node_id: str
    identity: str
    name: str
    role: str
    permissions: tuple[str, ...]
    owner: str
    seq: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> SessionRecord:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("session record is not an object")
        data["permissions"] = tuple(data.get("permissions", ()))
        return cls(**data)

    @property
    def you(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "name": self.name,
            "role": self.role,
            "permissions": list(self.permissions),
        }


class SessionState(StrEnum):
    ATTACHED = "attached"
    DETACHED = "detached"
    CLOSED = "closed"


class Session:
    """One participant's session, held by one signaling process at a time."""

    def __init__(
        self,
        record: SessionRecord,
        *,
        bus: Bus,
        relay: NodeRelay,
        resume_window_s: float,
        buffer_size: int = 256,
        replay: Iterable[dict[str, Any]] = (),
        on_closed: Callable[[Session], None] | None = None,
    ) -> None:
        self._record = record
        self._bus = bus
        self._relay = relay
        self._window = resume_window_s
        self._buffer: collections.deque[dict[str, Any]] = collections.deque(replay, maxlen=buffer_size)
        self._seq = record.seq
        self._state = SessionState.DETACHED
        self._sink: Sink | None = None
        self._kick: Kick | None = None
        self._deliver_lock = asyncio.Lock()
        self._on_closed = on_closed
        self._subscription: Subscription | None = None
        self._handover_sub: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None
        self._room_sub: Subscription | None = None
        self._pending_node: str | None = None
        self._room_pump: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._expiry: asyncio.Task[None] | None = None
        metrics.SESSIONS.labels(self._state.value).inc()

    # ------------------------------------------------------------------------------------------ properties
    @property
    def record(self) -> SessionRecord:
        return self._record

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def participant_id(self) -> str:
        return self._record.participant_id

    @property
    def node_id(self) -> str:
        return self._record.node_id

    @property
    def seq(self) -> int:
        return self._seq

    def _set_state(self, state: SessionState) -> None:
        metrics.SESSIONS.labels(self._state.value).dec()
        self._state = state
        if state is not SessionState.CLOSED:
            metrics.SESSIONS.labels(state.value).inc()

    # ----------------------------------------------------------------------------------------- lifecycle
    async def start(self, subscription: Subscription) -> None:
        """Take ownership: store the record, answer handovers, and start reading node messages."""
        self._subscription = subscription
        await self._save()
        self._handover_sub = await self._bus.serve(handover_channel(self._record.session_id), self._on_handover)
        name = self._record.participant_id
        self._pump = asyncio.create_task(self._read_node(subscription), name=f"session-pump:{name}")
        self._room_sub = await self._bus.subscribe(room_channel(self._record.room_id))
        self._room_pump = asyncio.create_task(self._read_room(self._room_sub), name=f"session-room:{name}")
        self._refresher = asyncio.create_task(self._refresh(), name=f"session-refresh:{name}")
        self._expiry = asyncio.create_task(self._expire(), name=f"session-expiry:{name}")

    async def attach(self, sink: Sink, kick: Kick, *, after_seq: int) -> None:
        """Send messages to ``sink`` from now on, first replaying buffered ones newer than ``after_seq``."""
        async with self._deliver_lock:
            if self._state is SessionState.CLOSED:
                raise SignalingError("session is closed", code="session_expired")
            for msg in list(self._buffer):
                if msg["seq"] > after_seq:
                    await sink(msg)
            self._cancel_expiry()
            self._sink, self._kick = sink, kick
            self._set_state(SessionState.ATTACHED)
        await self._save()

    async def detach(self) -> None:
        """The socket is gone: keep the session for the resume window, then leave the room."""
        if self._state is not SessionState.ATTACHED:
            return
        self._sink = self._kick = None
        self._set_state(SessionState.DETACHED)
        await self._save()
        self._cancel_expiry()
        self._expiry = asyncio.create_task(self._expire(), name=f"session-expiry:{self.participant_id}")

    async def deliver(self, msg: dict[str, Any]) -> None:
        """Number a node message, buffer it, and send it while attached."""
        async with self._deliver_lock:
            await self._deliver_locked(msg)

    async def _deliver_locked(self, msg: dict[str, Any]) -> None:
        self._seq += 1
        out = {**msg, "seq": self._seq}
        self._buffer.append(out)
        if self._sink is not None:
            try:
                await self._sink(out)
            except Exception:  # the socket is going away; the buffer keeps the message for a resume
                logger.debug("participant=%s send failed; message kept for resume", self.participant_id)

    async def leave(self, *, reason: str = "left") -> None:
        """Leave the room on the node and forget the session."""
        if self._state is SessionState.CLOSED:
            return
        try:
            await self._relay.call(self._record.node_id, {"op": "leave", "participant_id": self.participant_id})
        except SignalingError as exc:
            logger.info("participant=%s leave failed code=%s", self.participant_id, exc.code)
        logger.info(
            "participant=%s room=%s session ended reason=%s",
            self.participant_id,
            self._record.room_id,
            reason,
        )
        await self.close(forget=True)

    async def close(self, *, forget: bool) -> None:
        """Stop everything this process does for the session. ``forget`` also deletes the kv record.

        Idempotent. Does not tell the node anything (``leave`` does)."""
        if self._state is SessionState.CLOSED:
            return
        self._set_state(SessionState.CLOSED)
        self._sink = self._kick = None
        current = asyncio.current_task()
        tasks = [
            t
            for t in (self._pump, self._room_pump, self._refresher, self._expiry)
            if t is not None and t is not current
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sub in (self._subscription, self._handover_sub, self._room_sub):
            if sub is not None:
                with contextlib.suppress(BusError):
                    await sub.close()
        if forget:
            await self._forget()
        if self._on_closed is not None:
            self._on_closed(self)

    # --------------------------------------------------------------------------------------------- tasks
    async def _read_node(self, subscription: Subscription) -> None:
        try:
            async for msg in subscription:
                if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                    logger.warning("participant=%s dropped a malformed node message", self.participant_id)
                    continue
                source = msg.get("node_id")
                if source is not None and source not in self._live_nodes():
                    continue  # the room moved away from that node: what it still says is stale
                kick = self._kick
                await self.deliver(msg)
                if msg["type"] == "removed":
                    if kick is not None:
                        kick(CLOSE_REMOVED, "removed from the room")
                    await self.close(forget=True)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("participant=%s reading node messages failed", self.participant_id)

    def _live_nodes(self) -> tuple[str, ...]:
        """The nodes whose messages are current: the room's node, and the one it is moving to."""
        return (self._record.node_id,) if self._pending_node is None else (self._record.node_id, self._pending_node)

    async def _read_room(self, subscription: Subscription) -> None:
        """Room-wide control messages. ``moved``: the room now lives on another node (its node failed, or it
        is being migrated): join that node with the same participant, then tell the client to renegotiate."""
        try:
            async for msg in subscription:
                if isinstance(msg, dict) and msg.get("type") == "moved" and isinstance(msg.get("node_id"), str):
                    await self.follow_room(msg["node_id"], reason=str(msg.get("reason", "moved")))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("participant=%s reading room messages failed", self.participant_id)

    async def follow_room(self, node_id: str, *, reason: str) -> None:
        # Holding the delivery lock keeps the new node's first messages (its subscriber offers) behind "moved",
        # so the client has built its new peer connections before they arrive.
        async with self._deliver_lock:
            await self._follow_room_locked(node_id, reason)

    async def _follow_room_locked(self, node_id: str, reason: str) -> None:
        if node_id == self._record.node_id or self._state is SessionState.CLOSED:
            return
        old = self._record.node_id
        payload = {
            "op": "join",
            "room_id": self._record.room_id,
            "participant_id": self.participant_id,
            "identity": self._record.identity,
            "name": self._record.name,
            "role": self._record.role,
            "permissions": list(self._record.permissions),
        }
        self._pending_node = node_id
        for attempt in range(5):
            try:
                reply = await self._relay.call(node_id, payload)
                break
            except SignalingError as exc:
                if exc.code == "duplicate_participant":
                    reply = await self._relay.call(node_id, {"op": "state", "participant_id": self.participant_id})
                    break
                logger.warning(
                    "participant=%s join on node=%s failed (%s); retrying", self.participant_id, node_id, exc.code
                )
                await asyncio.sleep(0.2 * (attempt + 1))
        else:
            logger.error("participant=%s could not follow the room to node=%s", self.participant_id, node_id)
            self._pending_node = None
            return
        self._record = replace(self._record, node_id=node_id)
        self._pending_node = None
        await self._save()
        metrics.MOVES.inc()
        logger.info(
            "participant=%s room=%s followed node=%s -> %s (%s)",
            self.participant_id,
            self._record.room_id,
            old,
            node_id,
            reason,
        )
        await self._deliver_locked(
            {
                "type": "moved",
                "node_id": node_id,
                "reason": reason,
                "participants": reply.get("participants", []),
                "ice_servers": reply.get("ice_servers", []),
            }
        )

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._window / 3)
            if self._state is SessionState.ATTACHED:
                try:
                    await self._save()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("participant=%s refreshing the record failed", self.participant_id)

    async def _expire(self) -> None:
        await asyncio.sleep(self._window)
        if self._state is SessionState.DETACHED:
            metrics.EXPIRED.inc()
            self._expiry = None  # leave() -> close() must not cancel this very task
            await self.leave(reason="resume window passed")

    def _cancel_expiry(self) -> None:
        if self._expiry is not None and self._expiry is not asyncio.current_task():
            self._expiry.cancel()
            self._expiry = None

    async def _on_handover(self, payload: Payload) -> Payload:
        if payload.get("op") != "handover":
            raise BusError("unknown op", code="bad_request")
        if self._state is SessionState.CLOSED:
            raise BusError("session is closed", code="session_closed")
        last_seq = payload.get("last_seq", 0)
        last_seq = last_seq if isinstance(last_seq, int) else 0
        events = [m for m in self._buffer if m["seq"] > last_seq]
        seq = self._seq
        kick = self._kick
        logger.info("participant=%s session handed over to %s", self.participant_id, payload.get("owner"))
        await self.close(forget=False)
        if kick is not None:
            kick(CLOSE_RESUMED_ELSEWHERE, "session resumed on another connection")
        return {"seq": seq, "events": events}

    # ---------------------------------------------------------------------------------------------- store
    async def _save(self) -> None:
        if self._state is SessionState.CLOSED:
            return
        self._record = replace(self._record, seq=self._seq)
        await self._bus.kv_set(
            session_key(self._record.resume_token), self._record.to_json(), ttl_ms=int(self._window * 1000)
        )

    async def _forget(self) -> None:
        key = session_key(self._record.resume_token)
        raw = await self._bus.kv_get(key)
        if raw is None:
            return
        try:
            owner = SessionRecord.from_json(raw).owner
        except (ValueError, TypeError):
            owner = None
        if owner in (None, self._record.owner):
            await self._bus.kv_delete(key)
