"""The signaling service: the browser's WebSocket in front of the media nodes.

``SignalingService`` verifies join tokens, places participants on the node hosting their room (through
``NodeRelay``), keeps their resumable ``Session`` and relays their messages. Routes:

- ``GET /ws``: the v1 signaling WebSocket (docs/signaling.md);
- ``GET /room/{room_id}``: the classroom page (the join token comes in ``?token=...``);
- ``GET /classroom/...``: the page's static files (web/classroom);
- ``GET /``: a small landing page.

Media never passes through here: a signaling process can restart (clients resume on another one) while
the class goes on.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from core.bus import Bus, BusError, NoResponderError, RemoteError
from core.ids import is_valid_id, new_id
from core.messages import participant_channel, revoked_token_key
from core.service import Service, ServiceState
from core.tokens import Grant, Permission, Role, TokenVerifier
from signaling import metrics
from signaling.connection import Connection
from signaling.errors import (
    CLOSE_SERVICE_RESTART,
    DrainingError,
    NodeRejectedError,
    NodeUnavailableError,
    SessionExpiredError,
)
from signaling.relay import NodeRelay
from signaling.session import Session, SessionRecord, handover_channel, session_key

logger = logging.getLogger(__name__)

DEFAULT_STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "classroom"
WS_MAX_MESSAGE_BYTES = 1024 * 1024  # aiohttp closes (1009) beyond this; up to it, too_large errors are sent


@dataclass(frozen=True, slots=True)
class SignalingConfig:
    resume_window_s: float = 30.0
    message_rate: float = 50.0
    message_burst: float = 100.0
    data_rate: float = 5.0
    data_burst: float = 10.0
    request_timeout_s: float = 5.0
    replay_buffer: int = 256
    heartbeat_s: float = 20.0


class SignalingService(Service):
    name = "signaling"

    def __init__(
        self,
        bus: Bus,
        verifier: TokenVerifier,
        *,
        region: str,
        public_url: str,
        static_dir: Path | None = None,
        config: SignalingConfig | None = None,
    ) -> None:
        super().__init__()
        self._bus = bus
        self._verifier = verifier
        self._region = region
        self._public_url = public_url.rstrip("/")
        self._static_dir = static_dir or DEFAULT_STATIC_DIR
        self._config = config or SignalingConfig()
        self._relay = NodeRelay(bus, request_timeout=self._config.request_timeout_s)
        self._instance_id = new_id("sig")
        self._sessions: dict[str, Session] = {}
        self._connections: set[Connection] = set()
        self._sockets: set[web.WebSocketResponse] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    # ---------------------------------------------------------------------------------------- properties
    @property
    def config(self) -> SignalingConfig:
        return self._config

    @property
    def relay(self) -> NodeRelay:
        return self._relay

    @property
    def verifier(self) -> TokenVerifier:
        return self._verifier

    @property
    def instance_id(self) -> str:
        return self._instance_id

    @property
    def sessions(self) -> dict[str, Session]:
        return dict(self._sessions)

    def health(self) -> dict[str, Any]:
        return {
            "region": self._region,
            "instance": self._instance_id,
            "connections": len(self._connections),
            "sessions": len(self._sessions),
        }

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> None:
        """Run ``coro`` as a task this service owns (cancelled on close)."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    def grant_of(record: SessionRecord) -> Grant:
        return Grant(
            room=record.room_id,
            identity=record.identity,
            name=record.name,
            role=Role(record.role),
            permissions=frozenset(Permission(p) for p in record.permissions),
            region=None,
            expires_at=0.0,
            token_id="",
        )

    # ------------------------------------------------------------------------------------------ sessions
    def _new_session(self, record: SessionRecord, *, replay: list[dict[str, Any]] | None = None) -> Session:
        session = Session(
            record,
            bus=self._bus,
            relay=self._relay,
            resume_window_s=self._config.resume_window_s,
            buffer_size=self._config.replay_buffer,
            replay=replay or (),
            on_closed=self._forget_session,
        )
        self._sessions[record.session_id] = session
        return session

    def _forget_session(self, session: Session) -> None:
        if self._sessions.get(session.record.session_id) is session:
            del self._sessions[session.record.session_id]

    async def token_revoked(self, grant: Grant) -> bool:
        """True when the orchestrator revoked this join token (its holder no longer teaches the session)."""
        return bool(grant.token_id) and await self._bus.kv_get(revoked_token_key(grant.token_id)) is not None

    async def join(self, grant: Grant) -> tuple[Session, dict[str, Any]]:
        """Join the grant's room on its node; the new session (not yet attached) and the node's reply."""
        if self._state is not ServiceState.SERVING:
            raise DrainingError("this signaling server is shutting down; reconnect")
        participant_id = new_id("p")
        region = grant.region or self._region
        payload = {
            "op": "join",
            "room_id": grant.room,
            "participant_id": participant_id,
            "identity": grant.identity,
            "name": grant.name,
            "role": grant.role.value,
            "permissions": sorted(p.value for p in grant.permissions),
        }
        # Subscribe before joining: the node may send the first subscriber_offer right after it answers.
        subscription = await self._bus.subscribe(participant_channel(participant_id))
        try:
            node_id, from_kv = await self._relay.locate(grant.room, region)
            try:
                reply = await self._relay.call(node_id, {**payload})
            except NodeUnavailableError:
                if not from_kv:
                    raise
                logger.warning("room=%s node=%s from the room map is gone; asking for placement", grant.room, node_id)
                node_id = await self._relay.place(grant.room, region)
                reply = await self._relay.call(node_id, payload)
            record = SessionRecord(
                session_id=new_id("s"),
                resume_token=secrets.token_urlsafe(24),
                participant_id=participant_id,
                room_id=grant.room,
                node_id=node_id,
                identity=grant.identity,
                name=grant.name,
                role=grant.role.value,
                permissions=tuple(sorted(p.value for p in grant.permissions)),
                owner=self._instance_id,
            )
            session = self._new_session(record)
            await session.start(subscription)
        except BaseException:
            await subscription.close()
            raise
        logger.info(
            "room=%s participant=%s identity=%s role=%s node=%s joined",
            grant.room,
            participant_id,
            grant.identity,
            grant.role.value,
            node_id,
        )
        return session, reply

    async def resume(self, resume_token: str, last_seq: int) -> tuple[Session, dict[str, Any]]:
        """Take over the session behind ``resume_token``; the session and the node's ``state`` reply."""
        if self._state is not ServiceState.SERVING:
            raise DrainingError("this signaling server is shutting down; reconnect")
        raw = await self._bus.kv_get(session_key(resume_token))
        try:
            record = SessionRecord.from_json(raw) if raw else None
        except (ValueError, TypeError):
            record = None
        if record is None:
            metrics.RESUMES.labels("expired").inc()
            raise SessionExpiredError("the session has expired; join again with your token")
        subscription = await self._bus.subscribe(participant_channel(record.participant_id))
        try:
            events: list[dict[str, Any]] = []
            seq = max(record.seq, last_seq)
            try:
                handed = await self._bus.request(
                    handover_channel(record.session_id),
                    {"op": "handover", "last_seq": last_seq, "owner": self._instance_id},
                    timeout=self._config.request_timeout_s,
                )
                events = [e for e in handed.get("events", []) if isinstance(e, dict)]
                seq = max(seq, int(handed.get("seq", 0)))
            except NoResponderError:
                pass  # its process is gone; the node's state is all there is
            except RemoteError as exc:
                if exc.code == "session_closed":
                    raise SessionExpiredError("the session has ended; join again with your token") from None
                raise
            except BusError:
                logger.warning("participant=%s handover timed out; resuming from node state", record.participant_id)
            try:
                state = await self._relay.call(record.node_id, {"op": "state", "participant_id": record.participant_id})
            except NodeRejectedError as exc:
                if exc.code in ("unknown_participant", "unknown_room"):
                    await self._bus.kv_delete(session_key(resume_token))
                    raise SessionExpiredError("the room no longer knows you; join again") from None
                raise
            # the pending offer is re-delivered from the node's state, so stale ones are dropped here
            replay = [e for e in events if e.get("type") != "subscriber_offer"]
            new_record = SessionRecord(**{**_fields(record), "owner": self._instance_id, "seq": seq})
            session = self._new_session(new_record, replay=replay)
            await session.start(subscription)
        except BaseException:
            await subscription.close()
            raise
        metrics.RESUMES.labels("resumed").inc()
        logger.info(
            "room=%s participant=%s resumed (replayed %d messages)",
            record.room_id,
            record.participant_id,
            len(replay),
        )
        return session, state

    # --------------------------------------------------------------------------------------------- HTTP
    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/room/{room_id}", self._room_page)
        app.router.add_get("/", self._landing)
        if self._static_dir.is_dir():
            app.router.add_static("/classroom/", self._static_dir, show_index=False, follow_symlinks=False)
        else:
            logger.warning("classroom client not found at %s; /room pages will 404", self._static_dir)
        app.on_shutdown.append(self._on_shutdown)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if self.state is not ServiceState.SERVING:
            # draining or stopping: no new sockets here; the client retries and reaches another process
            return web.json_response(
                {"type": "error", "code": "signaling_draining", "message": "this signaling process is shutting down"},
                status=503,
            )
        ws = web.WebSocketResponse(heartbeat=self._config.heartbeat_s, max_msg_size=WS_MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        connection = Connection(ws, self)
        self._connections.add(connection)
        self._sockets.add(ws)
        metrics.CONNECTIONS.inc()
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            self._sockets.discard(ws)
            metrics.CONNECTIONS.dec()
        return ws

    async def _room_page(self, request: web.Request) -> web.StreamResponse:
        if not is_valid_id(request.match_info["room_id"]):
            raise web.HTTPNotFound(text="no such room")
        page = self._static_dir / "index.html"
        if not page.is_file():
            raise web.HTTPNotFound(text="the classroom client is not installed")
        response = web.FileResponse(page)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"  # the URL carries the join token
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; "
            "img-src 'self' data:; style-src 'self'; script-src 'self'"
        )
        return response

    async def _landing(self, request: web.Request) -> web.Response:
        body = (
            "<!doctype html><html lang=en><meta charset=utf-8><title>classmesh</title>"
            "<h1>classmesh signaling</h1><p>Open a join link (<code>/room/&lt;room&gt;?token=...</code>) "
            f"to enter a classroom. Region: {self._region}.</p></html>"
        )
        return web.Response(text=body, content_type="text/html")

    async def _on_shutdown(self, app: web.Application) -> None:
        await self._close_sockets(1001, "server shutting down")

    async def _close_sockets(self, code: int, reason: str) -> None:
        sockets = list(self._sockets)
        await asyncio.gather(*(ws.close(code=code, message=reason.encode()) for ws in sockets), return_exceptions=True)

    # -------------------------------------------------------------------------------------------- lifecycle
    async def drain(self, deadline: float) -> None:
        """Refuse new sessions and send every client to another signaling process (they resume there)."""
        await self._close_sockets(CLOSE_SERVICE_RESTART, "signaling restarting; resume")

    async def close(self) -> None:
        """Let go of every session without leaving: another process may resume them within the window."""
        if self._closed:
            return
        self._closed = True
        await self._close_sockets(1001, "server shutting down")
        for session in list(self._sessions.values()):
            await session.close(forget=False)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


def _fields(record: SessionRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in SessionRecord.__dataclass_fields__}
