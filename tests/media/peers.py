"""aiortc clients that stand in for browsers in the media tests."""

from __future__ import annotations

import array
import asyncio
import fractions
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
    sdp,
)

from media import events as ev
from media.forwarding import observe_receiver, observe_sender_rtcp, rtc_configuration, sender_ssrc
from media.participant import Participant
from media.room import Room
from media.rtp import Fir, Nack, Pli, Remb, parse_rtcp


class ToneTrack(MediaStreamTrack):
    """20 ms Opus-ready audio frames: a 440 Hz tone while ``loud`` else silence (client encodes)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.loud = False
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._pts / 48000
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        samples = 960
        if self.loud:
            data = array.array(
                "h",
                (int(math.sin(2 * math.pi * 440 * (i + self._pts) / 48000) * 16000) for i in range(samples)),
            )
        else:
            data = array.array("h", bytes(2 * samples))
        frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(data.tobytes())
        frame.sample_rate = 48000
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, 48000)
        self._pts += samples
        return frame


@dataclass
class Received:
    """What one client received on one subscriber m-section, counted at RTP level."""

    mid: str
    kind: str
    publisher: str = ""
    label: str = ""
    ssrc: int = 0
    packets: int = 0
    rtx_packets: int = 0
    seqs: set[int] = field(default_factory=set)
    recovered: set[int] = field(default_factory=set)
    payload_types: set[int] = field(default_factory=set)
    first_payload: bytes | None = None
    timestamps: list[tuple[int, int]] = field(default_factory=list)

    def observe(self, packet: Any) -> None:
        if packet.ssrc == self.ssrc:
            self.packets += 1
            self.seqs.add(packet.sequence_number)
            self.payload_types.add(packet.payload_type)
            if self.first_payload is None:
                self.first_payload = bytes(packet.payload)
            if len(self.timestamps) < 100000:
                self.timestamps.append((packet.sequence_number, packet.timestamp))
        else:
            self.rtx_packets += 1
            if len(packet.payload) >= 2:
                self.recovered.add(int.from_bytes(packet.payload[:2], "big"))


class Client:
    """One participant: a publisher connection (client offers) and a subscriber one (SFU offers)."""

    def __init__(self, participant_id: str, *, passthrough: bool = False) -> None:
        self.participant_id = participant_id
        self.passthrough = passthrough
        self.participant: Participant | None = None
        self.pub = RTCPeerConnection(rtc_configuration())
        self.sub = RTCPeerConnection(rtc_configuration())
        self.received: dict[str, Received] = {}
        self.offers = 0
        self.keyframe_requests: list[float] = []
        self.nacks: list[int] = []
        self.rembs: list[int] = []  # bitrates the SFU estimated for this publisher
        self.sources: dict[str, str] = {}
        self.packet_filter: Callable[[Any], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._tapped: set[str] = set()
        self.answered = asyncio.Event()

    def by_publisher(self, publisher: str, kind: str) -> list[Received]:
        return [r for r in self.received.values() if r.publisher == publisher and r.kind == kind]

    async def publish(self, tracks: list[tuple[str, MediaStreamTrack]], video_codec: str | None = None) -> str:
        assert self.participant is not None
        added: list[tuple[str, RTCRtpTransceiver]] = []
        for source, track in tracks:
            transceiver = self.pub.addTransceiver(track, direction="sendonly")
            if video_codec is not None and track.kind == "video":
                transceiver.setCodecPreferences(
                    [
                        c
                        for c in RTCRtpSender.getCapabilities("video").codecs
                        if c.mimeType.lower() in (f"video/{video_codec}".lower(), "video/rtx")
                    ]
                )
            added.append((source, transceiver))
        await self.pub.setLocalDescription(await self.pub.createOffer())
        self.sources.update({t.mid: source for source, t in added if t.mid is not None})
        answer = await self.participant.publish(self.pub.localDescription.sdp, dict(self.sources))
        await self.pub.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        for _, transceiver in added:
            observe_sender_rtcp(transceiver.sender, self._publisher_rtcp)
        return answer

    async def renegotiate(self) -> str:
        """Offer again (after adding transceivers or changing directions) with the known sources."""
        assert self.participant is not None
        await self.pub.setLocalDescription(await self.pub.createOffer())
        answer = await self.participant.publish(self.pub.localDescription.sdp, dict(self.sources))
        await self.pub.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        return answer

    def _publisher_rtcp(self, data: bytes) -> None:
        for msg in parse_rtcp(data):
            if isinstance(msg, (Pli, Fir)):
                self.keyframe_requests.append(time.monotonic())
            elif isinstance(msg, Nack):
                self.nacks.extend(msg.lost)
            elif isinstance(msg, Remb):
                self.rembs.append(msg.bitrate)

    def on_event(self, event: ev.RoomEvent) -> None:
        if isinstance(event, ev.SubscriberOffer) and event.participant_id == self.participant_id:
            task = asyncio.create_task(self._answer(event.sdp), name=f"answer:{self.participant_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, offer: str) -> None:
        assert self.participant is not None
        await self.sub.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        description = sdp.SessionDescription.parse(offer)
        for media in description.media:
            mid = media.rtp.muxId
            if media.kind not in ("audio", "video") or mid is None:
                continue
            rec = self.received.get(mid)
            if rec is None:
                rec = self.received[mid] = Received(mid=mid, kind=media.kind)
            if media.msid:
                publisher, label = media.msid.split(" ", 1)
                rec.publisher, rec.label = publisher, label
            if media.ssrc:
                rec.ssrc = media.ssrc[0].ssrc
        for transceiver in self.sub.getTransceivers():
            mid = transceiver.mid
            if mid is not None and mid not in self._tapped and mid in self.received:
                self._tapped.add(mid)
                observe_receiver(transceiver.receiver, self._observer(self.received[mid]), passthrough=self.passthrough)
        await self.sub.setLocalDescription(await self.sub.createAnswer())
        await self.participant.subscriber_answer(self.sub.localDescription.sdp)
        self.offers += 1  # counted once answered
        self.answered.set()

    def _observer(self, rec: Received) -> Callable[[Any], None]:
        def observe(packet: Any) -> None:
            if self.packet_filter is not None:
                self.packet_filter(packet)
            rec.observe(packet)

        return observe

    def publisher_ssrcs(self) -> list[int]:
        return [sender_ssrc(t.sender) for t in self.pub.getTransceivers()]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pub.close()
        await self.sub.close()


class Harness:
    """A room plus clients wired to its events, all in this event loop."""

    def __init__(self, room_factory: Callable[[Callable[[ev.RoomEvent], None]], Room]) -> None:
        self.events: list[ev.RoomEvent] = []
        self.clients: dict[str, Client] = {}
        self.room = room_factory(self._on_event)

    def _on_event(self, event: ev.RoomEvent) -> None:
        self.events.append(event)
        for client in list(self.clients.values()):
            client.on_event(event)

    async def join(self, info: ev.ParticipantInfo, *, passthrough: bool = False) -> Client:
        client = Client(info.participant_id, passthrough=passthrough)
        self.clients[info.participant_id] = client
        try:
            client.participant = await self.room.join(info)
        except BaseException:
            del self.clients[info.participant_id]
            await client.close()
            raise
        return client

    def of_type(self, cls: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]

    async def close(self) -> None:
        await self.room.close()
        for client in self.clients.values():
            await client.close()


async def wait_for(predicate: Callable[[], bool], within: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within:.1f}s")
        await asyncio.sleep(interval)


def info(pid: str, role: str = "student", publish: str = "audio,video,screen", **kw: Any) -> ev.ParticipantInfo:
    return ev.ParticipantInfo(
        participant_id=pid,
        identity=pid,
        name=pid.title(),
        role=role,
        can_publish=frozenset(p for p in publish.split(",") if p),
        can_subscribe=kw.get("can_subscribe", True),
        hidden=kw.get("hidden", False),
    )
