"""A Python classroom client: what the browser page does, with aiortc, over the v1 signaling protocol.

Used by the end-to-end tests (aiortc participants next to real browsers) and by the benchmarks. It joins with a
token, answers the node's subscriber offers, publishes the tracks it is given, counts what it receives at RTP
level (optionally without decoding), sends in-class data, resumes after a dropped socket, and follows a room
that moved to another node by building new peer connections on it.

    client = ClassroomClient("http://127.0.0.1:8701", token, room="algebra")
    await client.connect()
    await client.publish([("camera", video_track), ("microphone", audio_track)])
    ...
    await client.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.sdp import SessionDescription

from media.forwarding import observe_receiver, rtc_configuration

logger = logging.getLogger(__name__)

OLD_PUBLISHER_GRACE_S = 8.0


class SignalingError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass
class Inbound:
    """RTP received on one subscriber m-section."""

    mid: str
    kind: str
    publisher: str = ""
    source: str = ""
    packets: int = 0
    bytes: int = 0
    last_seq: int | None = None
    ssrcs: set[int] = field(default_factory=set)


class ClassroomClient:
    def __init__(
        self,
        signaling_url: str,
        token: str,
        *,
        room: str | None = None,
        decode: bool = False,
        on_message: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._ws_url = signaling_url.rstrip("/").replace("http", "ws", 1) + "/ws"
        self._token = token
        self._room = room
        self._decode = decode
        self._on_message = on_message
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._publishing: list[tuple[str, MediaStreamTrack]] = []
        self._relay = MediaRelay()
        self._lock = asyncio.Lock()
        self.pub: RTCPeerConnection | None = None
        self.sub: RTCPeerConnection | None = None
        self.participant_id: str | None = None
        self.resume_token: str | None = None
        self.node_id: str | None = None
        self.last_seq = 0
        self.participants: dict[str, dict[str, Any]] = {}
        self.inbound: dict[str, Inbound] = {}
        self.messages: list[dict[str, Any]] = []
        self.offers_answered = 0
        self.moves = 0
        self.closed = False

    # --------------------------------------------------------------------------------------- connection
    async def connect(self) -> dict[str, Any]:
        self._http = aiohttp.ClientSession()
        hello: dict[str, Any] = {"type": "hello", "v": 1, "token": self._token}
        if self._room:
            hello["room"] = self._room
        self._new_subscriber()  # before the socket: the node's first offer may follow welcome at once
        return await self._open(hello)

    async def _open(self, first: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        self._ws = await self._http.ws_connect(self._ws_url, heartbeat=20)
        self._reader = asyncio.create_task(self._read(self._ws), name="client-reader")
        welcome = await self.request(first)
        self.participant_id = welcome["participant_id"]
        self.resume_token = welcome["resume_token"]
        for p in welcome.get("participants", []):
            self.participants[p["participant_id"]] = p
        return welcome

    async def resume(self) -> dict[str, Any]:
        """Reconnect the socket and resume the session (media keeps flowing meanwhile)."""
        await self._drop_socket()
        return await self._open(
            {"type": "resume", "v": 1, "resume_token": self.resume_token, "last_seq": self.last_seq}
        )

    async def _drop_socket(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._ws = None
        self._reader = None

    async def request(self, message: dict[str, Any], *, timeout: float = 15.0) -> dict[str, Any]:
        if self._ws is None:
            raise SignalingError("not_connected", "socket is closed")
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[msg_id] = fut
        await self._ws.send_str(json.dumps(message | {"id": msg_id}))
        try:
            async with asyncio.timeout(timeout):
                reply = await fut
        finally:
            self._replies.pop(msg_id, None)
        if reply.get("type") == "error":
            raise SignalingError(reply.get("code", "error"), reply.get("message", ""))
        return reply

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                break
            msg = json.loads(frame.data)
            self.messages.append(msg)
            if "seq" in msg:
                self.last_seq = max(self.last_seq, int(msg["seq"]))
            fut = self._replies.get(msg.get("id")) if isinstance(msg.get("id"), int) else None
            if fut is not None and not fut.done() and msg.get("type") in ("welcome", "answer", "ok", "pong", "error"):
                fut.set_result(msg)
                continue
            self._dispatch(msg)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "subscriber_offer":
            self._spawn(self._answer(msg["sdp"], msg.get("tracks", {})), "client-answer")
        elif kind == "participant_joined":
            p = msg["participant"]
            self.participants[p["participant_id"]] = p
        elif kind == "participant_left":
            self.participants.pop(msg["participant_id"], None)
        elif kind == "moved":
            self._spawn(self._follow_move(), "client-move")
        if self._on_message is not None:
            self._on_message(msg)

    # --------------------------------------------------------------------------------------- media
    def _new_subscriber(self) -> None:
        self.sub = RTCPeerConnection(rtc_configuration())
        self.inbound = {}

    async def _answer(self, sdp: str, tracks: dict[str, dict[str, str]]) -> None:
        async with self._lock:
            sub = self.sub
            assert sub is not None
            await sub.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            for media in SessionDescription.parse(sdp).media:
                mid = media.rtp.muxId
                if mid is None or media.kind not in ("audio", "video"):
                    continue
                info = tracks.get(mid, {})
                inbound = self.inbound.get(mid)
                if inbound is None:
                    inbound = self.inbound[mid] = Inbound(mid=mid, kind=media.kind)
                    transceiver = next(t for t in sub.getTransceivers() if t.mid == mid)
                    observe_receiver(transceiver.receiver, self._counter(inbound), passthrough=self._decode)
                inbound.publisher = info.get("participant_id", "")
                inbound.source = info.get("source", "")
            await sub.setLocalDescription(await sub.createAnswer())
            await self.request({"type": "subscriber_answer", "sdp": sub.localDescription.sdp})
            self.offers_answered += 1

    @staticmethod
    def _counter(inbound: Inbound) -> Callable[[Any], None]:
        def count(packet: Any) -> None:
            inbound.packets += 1
            inbound.bytes += len(packet.payload)
            inbound.last_seq = packet.sequence_number
            inbound.ssrcs.add(packet.ssrc)

        return count

    async def publish(self, tracks: list[tuple[str, MediaStreamTrack]]) -> None:
        """Publish ``(source, track)`` pairs: source is camera, microphone or screen."""
        self._publishing = list(tracks)
        await self._send_publish()

    async def _send_publish(self, *, keep_old_for: float = 0.0) -> None:
        if not self._publishing:
            return
        old = self.pub
        self.pub = RTCPeerConnection(rtc_configuration())
        sources: dict[str, str] = {}
        # aiortc stops a track when its sender stops: each connection gets its own relay of the source track
        added = [
            (source, self.pub.addTransceiver(self._relay.subscribe(track), direction="sendonly"))
            for source, track in self._publishing
        ]
        await self.pub.setLocalDescription(await self.pub.createOffer())
        for source, transceiver in added:
            if transceiver.mid is not None:
                sources[transceiver.mid] = source
        reply = await self.request({"type": "publish", "sdp": self.pub.localDescription.sdp, "sources": sources})
        await self.pub.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        if old is not None:
            if keep_old_for > 0:
                self._spawn(self._close_later(old, keep_old_for), "client-close-old-publisher")
            else:
                await asyncio.shield(old.close())

    @staticmethod
    async def _close_later(pc: RTCPeerConnection, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            await asyncio.shield(pc.close())

    async def _follow_move(self) -> None:
        """The room moved to another node: new peer connections there (signaling already re-joined us)."""
        async with self._lock:
            self.moves += 1
            old_sub = self.sub
            self._new_subscriber()
            if old_sub is not None:
                await asyncio.shield(old_sub.close())
        # others may still watch us through the old node until they move too: keep publishing there a while
        await self._send_publish(keep_old_for=OLD_PUBLISHER_GRACE_S)

    # --------------------------------------------------------------------------------------- queries
    def received_from(self, publisher: str, kind: str) -> int:
        return sum(i.packets for i in self.inbound.values() if i.publisher == publisher and i.kind == kind)

    async def chat(self, text: str) -> None:
        await self.request({"type": "chat", "text": text})

    async def leave(self) -> None:
        with contextlib.suppress(SignalingError, asyncio.TimeoutError, ConnectionError):
            await self.request({"type": "leave"}, timeout=5)
        await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._drop_socket()
        for pc in (self.pub, self.sub):
            if pc is not None:
                await asyncio.shield(pc.close())  # a cancelled caller must not cancel aiortc's close future
        for fut in self._replies.values():
            if not fut.done():
                fut.cancel()
        if self._http is not None:
            await self._http.close()
