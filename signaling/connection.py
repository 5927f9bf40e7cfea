"""One browser WebSocket speaking the v1 protocol.

States::

    AWAITING_HELLO --hello/resume ok--> JOINED --leave / socket closes--> CLOSED
          ^   |                            |
          +---+ (refused: error sent;      +-- session handed over, removed: socket closed by the server
                 auth failures close 4401)

Every frame is rate limited, decoded and validated before anything happens; a refused frame gets an
``error`` with a specific code and changes nothing. Replies (``ok``, ``answer``, ``pong``, ``error``) echo the
client's ``id``. Frames are handled one at a time, so replies come back in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from core.ids import is_valid_id
from core.tokens import Grant, Permission
from signaling import metrics
from signaling.auth import SOURCE_PERMISSION, require, require_publish, verify_join
from signaling.errors import (
    CLOSE_LEFT,
    AuthError,
    ProtocolError,
    RateLimitedError,
    SignalingError,
)
from signaling.protocol import (
    Answer,
    Chat,
    ClientMessage,
    Hand,
    Hello,
    Leave,
    Moderate,
    Mute,
    Ping,
    Poll,
    Publish,
    Reaction,
    RequestId,
    Resume,
    SubscriberAnswer,
    answer_message,
    decode_frame,
    error_message,
    ok_message,
    parse_message,
    peek_request_id,
    pong_message,
    welcome_message,
)
from signaling.ratelimit import TokenBucket
from signaling.session import Session

if TYPE_CHECKING:
    from signaling.app import SignalingService

logger = logging.getLogger(__name__)

# A client that keeps flooding after being told it is rate limited is disconnected (1008 policy violation).
MAX_REFUSED_IN_A_ROW = 500


class ConnectionState(StrEnum):
    AWAITING_HELLO = "awaiting_hello"
    JOINED = "joined"
    CLOSED = "closed"


class Connection:
    def __init__(self, ws: web.WebSocketResponse, service: SignalingService) -> None:
        self._ws = ws
        self._service = service
        cfg = service.config
        self._bucket = TokenBucket(cfg.message_rate, cfg.message_burst)
        self._data_bucket = TokenBucket(cfg.data_rate, cfg.data_burst)
        self._state = ConnectionState.AWAITING_HELLO
        self._session: Session | None = None
        self._grant_permissions: frozenset[Permission] = frozenset()
        self._send_lock = asyncio.Lock()
        self._refused_in_a_row = 0

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def session(self) -> Session | None:
        return self._session

    # ------------------------------------------------------------------------------------------- sending
    async def send(self, msg: dict[str, Any]) -> None:
        if self._ws.closed:
            raise ConnectionResetError("socket closed")
        async with self._send_lock:
            await self._ws.send_str(json.dumps(msg, separators=(",", ":")))

    async def _send_error(self, exc: SignalingError, request_id: RequestId) -> None:
        metrics.count_error(exc.code)
        try:
            await self.send(error_message(exc.code, exc.message, request_id))
        except (ConnectionResetError, RuntimeError):
            return
        if exc.close_code is not None:
            await self._ws.close(code=exc.close_code, message=exc.code.encode())

    def kick(self, code: int, reason: str) -> None:
        """Close the socket from outside the read loop (session handed over, participant removed)."""
        self._service.spawn(self.close(code, reason), name="signaling-kick")

    async def close(self, code: int, reason: str) -> None:
        self._session = None
        self._state = ConnectionState.CLOSED
        if not self._ws.closed:
            await self._ws.close(code=code, message=reason.encode()[:120])

    # ------------------------------------------------------------------------------------------- reading
    async def run(self) -> None:
        try:
            async for frame in self._ws:
                if frame.type is WSMsgType.TEXT:
                    await self._on_text(frame.data)
                elif frame.type is WSMsgType.BINARY:
                    await self._refuse(ProtocolError("binary frames are not part of the protocol"), None)
                elif frame.type is WSMsgType.ERROR:
                    logger.info("websocket error: %s", self._ws.exception())
                    break
                if self._state is ConnectionState.CLOSED:
                    break
        finally:
            session, self._session = self._session, None
            self._state = ConnectionState.CLOSED
            if session is not None:
                await session.detach()

    async def _refuse(self, exc: SignalingError, request_id: RequestId) -> None:
        self._refused_in_a_row += 1
        await self._send_error(exc, request_id)

    async def _on_text(self, raw: str) -> None:
        if not self._bucket.take():
            metrics.count_message("invalid")
            if self._refused_in_a_row >= MAX_REFUSED_IN_A_ROW:
                await self.close(1008, "rate limit exceeded repeatedly")
                return
            await self._refuse(RateLimitedError("too many messages; slow down"), None)
            return
        obj: object = None
        try:
            obj = decode_frame(raw)
            msg = parse_message(obj)
        except ProtocolError as exc:
            metrics.count_message("invalid")
            await self._refuse(exc, peek_request_id(obj))
            return
        metrics.count_message(msg.TYPE)
        try:
            await self._dispatch(msg)
            self._refused_in_a_row = 0
        except SignalingError as exc:
            await self._refuse(exc, msg.id)
        except ConnectionResetError:
            logger.debug("type=%s: the socket closed before the reply could be sent", msg.TYPE)
        except Exception:
            logger.exception("handling type=%s failed", msg.TYPE)
            await self._refuse(SignalingError("internal error; the request was not carried out"), msg.id)

    # ----------------------------------------------------------------------------------------- dispatch
    async def _dispatch(self, msg: ClientMessage) -> None:
        if isinstance(msg, Ping):
            await self.send(pong_message(msg.id))
            return
        if isinstance(msg, Hello | Resume):
            if self._state is not ConnectionState.AWAITING_HELLO:
                raise ProtocolError(f"{msg.TYPE} after the session started", code="out_of_order")
            if isinstance(msg, Hello):
                await self._hello(msg)
            else:
                await self._resume(msg)
            return
        session = self._session
        if session is None or self._state is not ConnectionState.JOINED:
            raise ProtocolError(f"{msg.TYPE} before welcome: send hello or resume first", code="out_of_order")
        if isinstance(msg, Leave):
            self._session = None
            await session.leave()
            await self.send(ok_message(msg.id))
            await self.close(CLOSE_LEFT, "left")
            return
        if isinstance(msg, DATA_TYPES_CLASSES) and not self._data_bucket.take():
            raise RateLimitedError("too many chat messages, hands, reactions, questions or answers; slow down")
        relay, node, pid = self._service.relay, session.node_id, session.participant_id
        grant = self._grant()
        if isinstance(msg, Publish):
            require_publish(grant, msg.sources.values())
            reply = await relay.call(
                node, {"op": "publish", "participant_id": pid, "sdp": msg.sdp, "sources": msg.sources}
            )
            sdp = reply.get("sdp")
            if not isinstance(sdp, str):
                raise SignalingError("the media node returned no answer")
            await self.send(answer_message(sdp, msg.id))
            return
        if isinstance(msg, SubscriberAnswer):
            require(grant, Permission.SUBSCRIBE, "subscribe")
            await relay.call(node, {"op": "subscriber_answer", "participant_id": pid, "sdp": msg.sdp})
        elif isinstance(msg, Mute):
            require(grant, SOURCE_PERMISSION[msg.source], f"mute {msg.source}")
            payload = {"op": "mute", "participant_id": pid, "source": msg.source, "muted": msg.muted}
            await relay.call(node, payload)
        elif isinstance(msg, DATA_TYPES_CLASSES):
            if isinstance(msg, Poll):
                require(grant, Permission.MODERATE, "ask the room a question")
            else:
                require(grant, Permission.DATA, "send chat, hands, reactions or answers")
            kind, body = _data_body(msg)
            await relay.call(node, {"op": "data", "participant_id": pid, "kind": kind, "body": body})
        elif isinstance(msg, Moderate):
            require(grant, Permission.MODERATE, "moderate")
            payload = {"op": "moderate", "participant_id": pid, "action": msg.action, "target": msg.target}
            if msg.source is not None:
                payload["source"] = msg.source
            await relay.call(node, payload)
        else:  # pragma: no cover - parse_message only yields the types above
            raise ProtocolError(f"unhandled type {msg.TYPE}", code="unknown_type")
        await self.send(ok_message(msg.id))

    def _grant(self) -> Grant:
        assert self._session is not None
        return self._service.grant_of(self._session.record)

    async def _hello(self, msg: Hello) -> None:
        grant = verify_join(self._service.verifier, msg.token, msg.room)
        if not is_valid_id(grant.room):  # room ids become bus keys and channel names
            raise AuthError("the token's room is not a valid id", code="token_invalid")
        if await self._service.token_revoked(grant):
            raise AuthError("this join link was revoked: the session has another instructor now", code="token_revoked")
        session, reply = await self._service.join(grant)
        await self._attach(session, reply, resumed=False, after_seq=0, request_id=msg.id)

    async def _resume(self, msg: Resume) -> None:
        session, reply = await self._service.resume(msg.resume_token, msg.last_seq)
        await self._attach(session, reply, resumed=True, after_seq=msg.last_seq, request_id=msg.id)
        pending = reply.get("pending_offer")
        if isinstance(pending, dict) and pending:
            await session.deliver({"type": "subscriber_offer", **pending})

    async def _attach(
        self, session: Session, reply: dict[str, Any], *, resumed: bool, after_seq: int, request_id: RequestId
    ) -> None:
        record = session.record
        welcome = welcome_message(
            participant_id=record.participant_id,
            resume_token=record.resume_token,
            room=record.room_id,
            you=record.you,
            participants=_list(reply.get("participants")),
            ice_servers=_list(reply.get("ice_servers")),
            resumed=resumed,
            seq=session.seq,
            request_id=request_id,
        )
        self._session = session
        self._state = ConnectionState.JOINED
        try:
            await self.send(welcome)
            await session.attach(self.send, self.kick, after_seq=after_seq)
        except (ConnectionResetError, RuntimeError):
            self._state = ConnectionState.CLOSED  # run()'s finally detaches; the session stays resumable


DATA_TYPES_CLASSES = (Chat, Hand, Reaction, Poll, Answer)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _data_body(msg: Chat | Hand | Reaction | Poll | Answer) -> tuple[str, dict[str, Any]]:
    """The media node's data kind and body of a message (the node relays them to the room)."""
    if isinstance(msg, Chat):
        return "chat", {"text": msg.text}
    if isinstance(msg, Hand):
        return "hand", {"raised": msg.raised}
    if isinstance(msg, Poll):
        body: dict[str, Any] = {"poll_id": msg.poll_id, "question": msg.question, "options": msg.options}
        if msg.correct is None:
            return "poll", body
        return "check", {**body, "correct": msg.correct}
    if isinstance(msg, Answer):
        return ("check_answer" if msg.check else "poll_answer"), {"poll_id": msg.poll_id, "choice": msg.choice}
    return "reaction", {"emoji": msg.emoji}
