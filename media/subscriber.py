"""The subscriber peer connection of one participant: the SFU offers, the client answers.

States: idle (nothing to negotiate) → offering (an offer is out, waiting for the answer) → idle;
closed. One negotiation is in flight at a time; changes made meanwhile are offered again right
after the answer arrives.

Each remote track the participant receives gets one sendonly transceiver (an ``OutputSlot``).
aiortc has no ``removeTrack``: when a track goes away its transceiver is made inactive and reused
for the next track of the same kind.

The offer labels every m-section with its publisher, in the standard msid attribute::

    a=msid:<publisher participant_id> <source>:<track_id>

where ``source`` is ``camera``, ``microphone`` or ``screen``. Inactive m-sections keep the label of
the track they showed last and must be ignored by the client.

A trusted subscriber (a recorder) may instead take plain RTP (``plain_remote``; see ``media.plain``): no peer
connection, every output a UDP stream with its own SSRC, described to it through ``on_plain_tracks`` instead of
an offer, nothing to answer.

Bandwidth: REMB estimates from the client are compared with each forwarded video track's
measured bitrate; when the subscriber is congested (below it and losing over 5 % of packets, or below a
quarter of it) for ``pause_after`` seconds, video to this participant pauses (audio keeps flowing); at or
above 1.2x for ``resume_after`` seconds it resumes from a keyframe. While paused, video is tried again
after ``probe_after`` seconds (doubling up to a minute when the probe fails), because a receiver's
estimate cannot grow while it receives nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from .errors import NegotiationError
from .events import Quality
from .forwarding import rtc_configuration
from .metrics import NodeMetrics
from .plain import PlainTap, PlainTransport
from .track import NodeLimits, OutputSlot, PublishedTrack

logger = logging.getLogger(__name__)


class Subscriber:
    def __init__(
        self,
        participant_id: str,
        *,
        metrics: NodeMetrics,
        on_offer: Callable[[str], None],
        on_quality: Callable[[Quality, float, float | None], None],
        limits: NodeLimits | None = None,
        rtc_configuration: RTCConfiguration | None = None,
        pause_after: float = 2.0,
        resume_after: float = 1.0,
        on_failed: Callable[[str], None] | None = None,
        plain_remote: tuple[str, int] | None = None,
        on_plain_tracks: Callable[[dict[str, dict[str, object]]], None] | None = None,
    ) -> None:
        self.participant_id = participant_id
        self._plain = PlainTransport(plain_remote) if plain_remote is not None else None
        self._on_plain_tracks = on_plain_tracks
        self._plain_reports: asyncio.Task[None] | None = None
        self._plain_outputs = 0  # outputs made so far: their labels (p0, p1, ...) are never reused
        self._metrics = metrics
        self._on_offer = on_offer
        self._on_quality = on_quality
        self._limits = limits
        self._config = rtc_configuration
        self._pc: RTCPeerConnection | None = None
        self._slots: list[OutputSlot] = []
        self._by_track: dict[str, OutputSlot] = {}
        self._offering = False
        self._dirty = False
        self._closed = False
        self._lock = asyncio.Lock()
        self.pause_after = pause_after
        self.resume_after = resume_after
        self.remb: int | None = None
        self._below_since: float | None = None
        self._above_since: float | None = None
        self.video_paused = False
        self.probe_after = max(5.0, 2 * pause_after)
        self.probe_max = 60.0
        self._probe_interval = self.probe_after
        self._paused_at: float | None = None
        self._resumed_at: float | None = None
        self.quality: Quality = "excellent"
        self.rejected = 0
        self._on_failed = on_failed

    @property
    def slots(self) -> tuple[OutputSlot, ...]:
        return tuple(self._slots)

    @property
    def offering(self) -> bool:
        return self._offering

    def slot_for(self, track_id: str) -> OutputSlot | None:
        return self._by_track.get(track_id)

    @property
    def forwarded(self) -> int:
        return len(self._by_track)

    @property
    def plain(self) -> bool:
        return self._plain is not None

    async def open_plain(self) -> None:
        """Bind the plain output's socket (loopback for a loopback recorder) and start its sender reports."""
        assert self._plain is not None
        loopback = self._plain.remote[0].startswith("127.") or self._plain.remote[0] == "::1"
        local = await self._plain.open(self._plain.remote[0] if loopback else "0.0.0.0")
        self._plain_reports = asyncio.create_task(self._send_plain_reports(), name=f"plain-sr:{self.participant_id}")
        logger.info("participant=%s plain RTP output %s -> %s", self.participant_id, local, self._plain.remote)

    async def _send_plain_reports(self) -> None:
        assert self._plain is not None
        while True:
            await asyncio.sleep(0.5 + random.random())
            for slot in self._slots:
                try:
                    data = slot.sender_reports()
                except Exception:  # keep reporting for the other outputs
                    logger.exception("participant=%s plain sender report failed", self.participant_id)
                    continue
                if data:
                    self._plain.send(data)

    def _plain_tracks(self) -> dict[str, dict[str, object]]:
        tracks: dict[str, dict[str, object]] = {}
        for slot in self._slots:
            track = slot.track
            if track is None or slot.tap.mid is None:
                continue
            tracks[slot.tap.mid] = {
                "participant_id": track.participant_id,
                "source": track.source,
                "kind": track.kind,
                "track_id": track.track_id,
                "ssrc": slot.tap.ssrc,
                "codecs": [
                    {"payload_type": c.payload_type, "name": c.name, "clock_rate": c.clock_rate}
                    for c in slot.tap.codecs
                ],
            }
        return tracks

    def _connection(self) -> RTCPeerConnection:
        if self._pc is None:
            self._pc = RTCPeerConnection(self._config or rtc_configuration())

            @self._pc.on("connectionstatechange")
            def _state() -> None:
                assert self._pc is not None
                logger.info("participant=%s subscriber connection=%s", self.participant_id, self._pc.connectionState)

        return self._pc

    def add_track(self, track: PublishedTrack) -> bool:
        """Start forwarding ``track`` (takes effect with the next offer). False if the node is full."""
        if self._closed or track.track_id in self._by_track:
            return False
        if self._limits is not None and not self._limits.try_acquire():
            self.rejected += 1
            self._metrics.forward_rejected.inc()
            logger.warning(
                "participant=%s track=%s not forwarded: node stream limit",
                self.participant_id,
                track.track_id,
            )
            return False
        slot: OutputSlot | None
        if self._plain is not None:  # a new SSRC per track: the recorder keys its tracks by SSRC
            slot = OutputSlot(
                None,
                track.kind,
                self._metrics,
                self._handle_remb,
                self._handle_report,
                plain=self._plain,
                index=self._plain_outputs,
            )
            self._plain_outputs += 1
            self._slots.append(slot)
        else:
            slot = next((s for s in self._slots if s.track is None and s.kind == track.kind), None)
            if slot is None:
                transceiver = self._connection().addTransceiver(track.kind, direction="sendonly")
                slot = OutputSlot(transceiver, track.kind, self._metrics, self._handle_remb, self._handle_report)
                self._slots.append(slot)
        if slot.transceiver is not None:
            slot.transceiver.direction = "sendonly"
        slot.tap.set_msid(track.participant_id, f"{track.source}:{track.track_id}")
        slot.assign(track)
        if self.video_paused and track.kind == "video":
            slot.set_paused(True)
        self._by_track[track.track_id] = slot
        self._metrics.kind(track.kind).forwarded_tracks.inc()
        return True

    def remove_track(self, track: PublishedTrack) -> bool:
        slot = self._by_track.pop(track.track_id, None)
        if slot is None:
            return False
        slot.assign(None)
        if slot.transceiver is not None:
            slot.transceiver.direction = "inactive"
        elif self._plain is not None:
            self._slots.remove(slot)
            if isinstance(slot.tap, PlainTap):
                self._plain.drop(slot.tap)
        if self._limits is not None:
            self._limits.release()
        self._metrics.kind(track.kind).forwarded_tracks.dec()
        return True

    async def negotiate(self) -> None:
        """Send a new offer if anything changed and no negotiation is in flight."""
        async with self._lock:
            if self._closed:
                return
            if self._plain is not None:
                if self._on_plain_tracks is not None:
                    self._on_plain_tracks(self._plain_tracks())
                return
            if not self._slots:
                return
            if self._offering:
                self._dirty = True
                return
            pc = self._connection()
            if pc.connectionState == "closed":
                return  # the participant is going away (its connection closed); nothing to offer
            offer = await pc.createOffer()
            await pc.setLocalDescription(offer)
            self._offering = True
            self._dirty = False
            self._on_offer(pc.localDescription.sdp)

    async def handle_answer(self, sdp: str) -> None:
        async with self._lock:
            if self._closed:
                return
            if not self._offering or self._pc is None:
                raise NegotiationError("no subscriber offer is waiting for an answer")  # always so for plain
            try:
                await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
            except Exception as exc:  # aiortc raises several types for bad SDP
                raise NegotiationError(f"invalid subscriber answer: {exc}") from exc
            self._offering = False
            for slot in self._slots:
                slot.refresh()
        if self._dirty:
            await self.negotiate()

    def request_keyframes(self) -> None:
        for slot in self._slots:
            if slot.track is not None and slot.kind == "video":
                slot.restart()
                slot.track.request_keyframe()

    # -- feedback --------------------------------------------------------------------------------

    def _video_bitrate(self) -> float:
        return sum(s.track.bitrate.bps for s in self._slots if s.track is not None and s.kind == "video")

    def _congested(self, bitrate: int, needed: float) -> bool:
        """Below the video bitrate *and* either losing packets or far below it.

        A receiver's REMB grows only with what it receives (Chrome caps it near 1.5x the incoming rate), so an
        estimate just below the bitrate is not congestion: it is a receiver that has not ramped up yet. Pausing
        on that alone would starve the estimate and keep video paused for good.
        """
        if bitrate >= needed:
            return False
        loss = max((s.loss for s in self._slots if s.track is not None), default=0.0)
        return loss > 0.05 or bitrate < needed * 0.25

    def _handle_remb(self, bitrate: int) -> None:
        now = time.monotonic()
        self.remb = bitrate
        needed = self._video_bitrate()
        if needed <= 0:
            return
        if not self.video_paused:
            if self._congested(bitrate, needed):
                self._below_since = self._below_since if self._below_since is not None else now
                if now - self._below_since >= self.pause_after:
                    if self._resumed_at is not None and now - self._resumed_at < 2 * self.probe_after:
                        self._probe_interval = min(self._probe_interval * 2, self.probe_max)
                    else:
                        self._probe_interval = self.probe_after
                    self._set_video_paused(True)
                    self._paused_at = now
            else:
                self._below_since = None
        else:
            if bitrate >= needed * 1.2:
                self._above_since = self._above_since if self._above_since is not None else now
                if now - self._above_since >= self.resume_after:
                    self._set_video_paused(False)
                    self._resumed_at = now
            else:
                self._above_since = None
                # probe: with video paused the estimate cannot grow, so try again now and then
                if self._paused_at is not None and now - self._paused_at >= self._probe_interval:
                    logger.info("participant=%s probing with video (remb=%d)", self.participant_id, bitrate)
                    self._set_video_paused(False)
                    self._resumed_at = now

    def _set_video_paused(self, paused: bool) -> None:
        self.video_paused = paused
        self._below_since = None
        self._above_since = None
        if paused:
            self._metrics.video_pauses.inc()
        logger.info(
            "participant=%s video %s (remb=%s)",
            self.participant_id,
            "paused" if paused else "resumed",
            self.remb,
        )
        for slot in self._slots:
            if slot.kind == "video":
                slot.set_paused(paused)
        self._update_quality()

    def _handle_report(self, loss: float, rtt: float | None) -> None:
        self._update_quality()

    def _update_quality(self) -> None:
        active = [s for s in self._slots if s.track is not None]
        loss = max((s.loss for s in active), default=0.0)
        rtts = [s.rtt for s in active if s.rtt is not None]
        rtt = max(rtts) if rtts else None
        if self.video_paused or loss > 0.1 or (rtt is not None and rtt > 0.4):
            quality: Quality = "poor"
        elif loss > 0.02 or (rtt is not None and rtt > 0.15):
            quality = "good"
        else:
            quality = "excellent"
        if quality != self.quality:
            self.quality = quality
            self._on_quality(quality, loss, rtt * 1000 if rtt is not None else None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for slot in self._slots:
            if slot.track is not None and self._limits is not None:
                self._limits.release()
            if slot.track is not None:
                self._metrics.kind(slot.kind).forwarded_tracks.dec()
            slot.close()
        self._by_track.clear()
        if self._plain_reports is not None:
            self._plain_reports.cancel()
        if self._plain is not None:
            self._plain.close()
        if self._pc is not None:
            await asyncio.shield(self._pc.close())  # a cancelled caller must not cancel aiortc's close future
