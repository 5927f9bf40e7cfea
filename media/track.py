"""Published tracks and their outputs: the forwarding core.

``PublishedTrack`` (mediasoup's Producer): one track a participant publishes. States:
pending (no packet yet) → live → closed. It caches recent packets for NACKs, measures its
bitrate, reads audio levels, detects keyframes and fans each packet out to its outputs. Keyframe
requests to the publisher are throttled to one per ``pli_interval`` (``KEYFRAME_WINDOW``); a request inside the window
is coalesced and sent when the window opens. The packets since the latest keyframe stay in the cache,
so a subscriber whose connection comes up just after that keyframe passed starts on it at once (a
"keyframe replay", at most ``replay_age`` old) instead of waiting for the next one.

``OutputSlot`` (mediasoup's Consumer): one sender on a subscriber connection. A slot shows one
published track at a time and can be reassigned to another one; its ``SequenceRewriter`` keeps the
sequence numbers and timestamps continuous across such switches. States: unassigned → waiting
for a keyframe (video) → forwarding ⇄ paused (bandwidth) → closed.

``NodeLimits``: the node-wide budget of forwarded streams, shared by all rooms of a node.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from . import rtp
from .forwarding import CodecInfo, ReceiverTap, SenderTap
from .metrics import NodeMetrics
from .plain import PlainTap, PlainTransport
from .rtp import RtpPacketLike, SenderReport

if TYPE_CHECKING:
    from aiortc import RTCRtpReceiver, RTCRtpTransceiver

logger = logging.getLogger(__name__)

KIND_OF_SOURCE = {"camera": "video", "screen": "video", "microphone": "audio"}


class NodeLimits:
    """Node-wide limit on forwarded streams (one stream = one track to one subscriber)."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self._forwarded = 0

    @property
    def forwarded(self) -> int:
        return self._forwarded

    def try_acquire(self) -> bool:
        if self._forwarded >= self.max_streams:
            return False
        self._forwarded += 1
        return True

    def release(self) -> None:
        self._forwarded = max(0, self._forwarded - 1)


#: Both how old a keyframe a new output may replay and how often keyframes are requested from a publisher. Equal
#: on purpose: a new output then either replays a keyframe or its request goes out at once. With requests
#: throttled to one a second, a subscriber arriving 0.5-1 s after the last request waited up to half a second
#: for the throttle (measured: most joins of bench/join_latency.py).
KEYFRAME_WINDOW = 0.5


class PublishedTrack:
    def __init__(
        self,
        *,
        track_id: str,
        participant_id: str,
        kind: str,
        source: str,
        codecs: list[CodecInfo],
        metrics: NodeMetrics,
        on_audio_level: Callable[[int, float], None] | None = None,
        cache_size: int = 512,
        pli_interval: float = KEYFRAME_WINDOW,
    ) -> None:
        self.track_id = track_id
        self.participant_id = participant_id
        self.kind = kind
        self.source = source
        self.codecs = {c.payload_type: c for c in codecs}
        self.clock_rate = codecs[0].clock_rate if codecs else (48000 if kind == "audio" else 90000)
        self.cache = rtp.PacketCache(cache_size)
        self.bitrate = rtp.BitrateMeter()
        self.muted = False
        self.media_ssrc: int | None = None
        self.sender_clock = rtp.SenderClock()
        self.packets = 0
        self.keyframes = 0
        self.plis_sent = 0
        self.nacks_upstream = 0
        self.forward_failures = 0
        #: the oldest keyframe a new output may start from (seconds): older ones would put a burst of
        #: stale frames in front of the live ones
        self.replay_age = KEYFRAME_WINDOW
        self._keyframe_seq: int | None = None  # first packet of the latest keyframe
        self._keyframe_ts = -1
        self._keyframe_at = -1e9
        self._metrics = metrics
        self._kind_metrics = metrics.kind(kind)
        self._on_audio_level = on_audio_level
        self._outputs: list[OutputSlot] = []
        self._tap: ReceiverTap | None = None
        self._pli_interval = pli_interval
        self._last_pli = -1e9
        self._pli_unanswered_since: float | None = None
        self._pli_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._kind_metrics.published_tracks.inc()

    @property
    def outputs(self) -> tuple[OutputSlot, ...]:
        return tuple(self._outputs)

    def attach(self, receiver: RTCRtpReceiver) -> None:
        self._tap = ReceiverTap(receiver, self._on_rtp, self._on_sender_report)

    def add_output(self, slot: OutputSlot) -> None:
        if slot not in self._outputs:
            self._outputs.append(slot)

    def remove_output(self, slot: OutputSlot) -> None:
        if slot in self._outputs:
            self._outputs.remove(slot)

    def codec_for(self, payload_type: int) -> CodecInfo | None:
        return self.codecs.get(payload_type)

    def _on_rtp(self, packet: RtpPacketLike, arrival: float) -> None:
        now = time.monotonic()
        self.media_ssrc = packet.ssrc
        self.packets += 1
        self._kind_metrics.received_packets.inc()
        self.cache.put(packet)
        self.bitrate.add(len(packet.payload) + 12, now)
        keyframe = False
        if self.kind == "audio":
            level = packet.extensions.audio_level
            if level is not None and self._on_audio_level is not None and not self.muted:
                self._on_audio_level(level[1], now)
        else:
            codec = self.codecs.get(packet.payload_type)
            if codec is not None and rtp.is_keyframe(codec.name, packet.payload):
                keyframe = True
                if packet.timestamp != self._keyframe_ts:  # H.264 marks several packets of one keyframe
                    if self._pli_unanswered_since is not None:  # the answer to our requests (or a periodic one)
                        self._metrics.keyframe_response.observe(now - self._pli_unanswered_since)
                        self._pli_unanswered_since = None
                    self.keyframes += 1
                    self._keyframe_ts = packet.timestamp
                    self._keyframe_seq = packet.sequence_number
                    self._keyframe_at = now
        if self.muted or not self._outputs:
            return
        send_time = rtp.abs_send_time(time.time())
        sent = 0
        octets = 0
        for slot in tuple(self._outputs):
            try:
                size = slot.forward(packet, keyframe, now, send_time)
            except Exception:  # one output's failure must not cost the others this packet
                self.forward_failures += 1
                if self.forward_failures % 1000 == 1:
                    logger.exception("track=%s forwarding failed (%d so far)", self.track_id, self.forward_failures)
                continue
            if size:
                sent += 1
                octets += size
        if sent:  # one metric update per input packet, not per output
            self._kind_metrics.forwarded_packets.inc(sent)
            self._kind_metrics.forwarded_bytes.inc(octets)

    def _on_sender_report(self, report: SenderReport) -> None:
        self.sender_clock.add(report, time.time())

    def since_keyframe(self, upto: int, now: float) -> list[RtpPacketLike] | None:
        """The cached packets from the latest keyframe through ``upto``, or None if that keyframe is older than
        ``replay_age`` or no longer whole in the cache (packets lost upstream are left out: NACKs recover them)."""
        first = self._keyframe_seq
        if first is None or now - self._keyframe_at > self.replay_age:
            return None
        count = ((upto - first) & 0xFFFF) + 1
        if count > self.cache.size // 2:  # also what a reordered ``upto`` before the keyframe looks like
            return None
        packets = [p for i in range(count) if (p := self.cache.get((first + i) & 0xFFFF)) is not None]
        return packets if packets and packets[0].sequence_number == first else None

    def keyframe_on_its_way(self, now: float) -> bool:
        """A keyframe request went out recently and no keyframe has come since."""
        return self._last_pli > self._keyframe_at and now - self._last_pli < 0.5

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (PLI), at most once per ``pli_interval``."""
        if self.kind != "video" or self._closed:
            return
        now = time.monotonic()
        wait = self._last_pli + self._pli_interval - now
        if wait <= 0 and self.media_ssrc is not None:
            self._send_pli(now)
        elif self._pli_timer is None:
            loop = asyncio.get_running_loop()
            self._pli_timer = loop.call_later(max(wait, 0.05), self._pli_due)

    def _pli_due(self) -> None:
        self._pli_timer = None
        self.request_keyframe()

    def _send_pli(self, now: float) -> None:
        if self._tap is None or self.media_ssrc is None:
            return
        self._last_pli = now
        if self._pli_unanswered_since is None:
            self._pli_unanswered_since = now  # the publisher's turnaround counts from its first unanswered request
        self.plis_sent += 1
        self._metrics.plis_sent.inc()
        self._spawn(self._tap.send_pli(self.media_ssrc))

    def forward_nack(self, lost: list[int]) -> None:
        """Ask the publisher to retransmit packets missing from the cache."""
        if self._tap is None or self.media_ssrc is None or not lost:
            return
        self.nacks_upstream += len(lost)
        self._metrics.nacks_forwarded.inc(len(lost))
        self._spawn(self._tap.send_nack(self.media_ssrc, lost))

    def set_muted(self, muted: bool) -> None:
        if muted == self.muted:
            return
        self.muted = muted
        if not muted:
            for slot in self._outputs:
                slot.restart()
            self.request_keyframe()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kind_metrics.published_tracks.dec()
        if self._tap is not None:
            self._tap.close()
        if self._pli_timer is not None:
            self._pli_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._outputs.clear()


def _match_codec(codec: CodecInfo, candidates: list[CodecInfo]) -> CodecInfo | None:
    same = [c for c in candidates if c.mime_type.lower() == codec.mime_type.lower()]
    if codec.name == "h264":
        params = dict(codec.parameters)
        mode = params.get("packetization-mode", "0")
        same = [c for c in same if dict(c.parameters).get("packetization-mode", "0") == mode]
        profile = params.get("profile-level-id", "")[:2]
        preferred = [c for c in same if dict(c.parameters).get("profile-level-id", "")[:2] == profile]
        same = preferred or same
    return same[0] if same else None


class OutputSlot:
    """One sender of a subscriber connection, forwarding one published track at a time."""

    def __init__(
        self,
        transceiver: RTCRtpTransceiver | None,
        kind: str,
        metrics: NodeMetrics,
        on_remb: Callable[[int], None],
        on_report: Callable[[float, float | None], None],
        *,
        plain: PlainTransport | None = None,
        index: int = 0,
    ) -> None:
        """A sender on ``transceiver`` (a subscriber peer connection), or, with ``plain``, a plain RTP output."""
        self.kind = kind
        self.transceiver = transceiver
        self.tap: SenderTap | PlainTap
        if plain is not None:
            self.tap = plain.tap(kind, index, self._on_rtcp)
        else:
            assert transceiver is not None
            self.tap = SenderTap(transceiver, self._on_rtcp, self.sender_reports)
        self.track: PublishedTrack | None = None
        self.paused = False
        self.waiting_keyframe = False
        self.packets_sent = 0
        self.octets_sent = 0
        self.nacks_received = 0
        self.nacks_served = 0
        self.retransmitted = 0
        self.dropped_by_hook = 0
        self.replayed = 0
        self.loss = 0.0
        self.rtt: float | None = None
        #: Test hook: called with each first-transmission output sequence number; True drops it.
        self.drop: Callable[[int], bool] | None = None
        self._metrics = metrics
        self._kind_metrics = metrics.kind(kind)
        self._on_remb = on_remb
        self._on_report = on_report
        clock = 48000 if kind == "audio" else 90000
        self._rewriter = rtp.SequenceRewriter(clock, random.randrange(0x8000), random.getrandbits(32))
        self._writer: rtp.RtpWriter | None = None
        self._pt_map: dict[int, tuple[int, int | None]] = {}
        self._rtx_seq = random.randrange(0x8000)
        self._wait_since = 0.0
        self._cname = ""
        self._closed = False

    @property
    def ready(self) -> bool:
        return self._writer is not None

    def assign(self, track: PublishedTrack | None) -> None:
        if self.track is not None:
            self.track.remove_output(self)
        self.track = track
        self.paused = False
        if track is None:
            return
        self._rewriter.set_clock_rate(track.clock_rate)
        self._refresh_pt_map()
        track.add_output(self)
        self.restart()
        # Also when the subscriber's connection is not up yet: the keyframe stays in the track's cache and
        # ``forward`` starts from it when the first packet can go out (if it is still fresh).
        track.request_keyframe()

    def restart(self) -> None:
        """Continue the output from a fresh point of the source (keyframe for video)."""
        self._rewriter.switch()
        self.waiting_keyframe = self.kind == "video"
        self._wait_since = time.monotonic()

    def refresh(self) -> None:
        """Re-read negotiated parameters (call after each applied answer)."""
        if not self.tap.started.is_set():
            return
        params = self.tap.parameters
        self._cname = params.rtcp.cname or "" if params is not None else ""
        self._writer = rtp.RtpWriter(self.tap.ssrc, self.tap.extensions, self.tap.mid)
        self._refresh_pt_map()

    def _refresh_pt_map(self) -> None:
        self._pt_map = {}
        if self.track is None or not self.tap.started.is_set():
            return
        mine = self.tap.codecs
        for pt, codec in self.track.codecs.items():
            match = _match_codec(codec, mine)
            if match is not None:
                self._pt_map[pt] = (match.payload_type, match.rtx_payload_type)

    def original_seq(self, out_seq: int) -> int:
        """The publisher's sequence number behind output sequence number ``out_seq``."""
        return self._rewriter.original_seq(out_seq)

    def set_paused(self, paused: bool) -> None:
        if paused == self.paused:
            return
        self.paused = paused
        if not paused:
            self.restart()
            if self.track is not None:
                self.track.request_keyframe()

    def forward(self, packet: RtpPacketLike, keyframe: bool, now: float, send_time: int) -> int:
        """Send one packet of the assigned track; returns the bytes sent (0 if not sent, or if it was sent in a
        keyframe replay, whose packets are counted here)."""
        if self._writer is None:
            if not self.tap.started.is_set():
                return 0
            self.refresh()
            if self._writer is None:
                return 0
            if self.waiting_keyframe and self.track is not None and not self.paused:
                self._wait_since = now
                replay = self.track.since_keyframe(packet.sequence_number, now)
                if replay is not None:  # the connection just came up: start on the keyframe that just passed
                    self.waiting_keyframe = False
                    self._rewriter.switch()
                    self.replayed += len(replay)
                    self._metrics.keyframe_replays.inc()
                    packets = octets = 0
                    for cached in replay:
                        size = self._send(cached, now, send_time)
                        packets += size > 0
                        octets += size
                    self._kind_metrics.forwarded_packets.inc(packets)  # counted here: the caller counts one
                    self._kind_metrics.forwarded_bytes.inc(octets)
                    return 0
                if not self.track.keyframe_on_its_way(now):
                    self.track.request_keyframe()
        if self.paused:
            return 0
        if self.waiting_keyframe:
            if not keyframe:
                if now - self._wait_since >= 1.0 and self.track is not None:
                    # the keyframe request (or its answer) was lost: ask again
                    self._wait_since = now
                    self.track.request_keyframe()
                return 0
            self.waiting_keyframe = False
            self._rewriter.switch()
        return self._send(packet, now, send_time)

    def _send(self, packet: RtpPacketLike, now: float, send_time: int) -> int:
        pts = self._pt_map.get(packet.payload_type)
        if pts is None or self._writer is None:
            return 0
        seq, ts = self._rewriter.rewrite(packet.sequence_number, packet.timestamp, now)
        data = self._writer.build(packet, pts[0], seq, ts, send_time=send_time)
        self.packets_sent += 1
        self.octets_sent += len(packet.payload)
        if self.drop is not None and self.drop(seq):
            self.dropped_by_hook += 1
            return 0
        # not sent: the connection is not up yet (aiortc would drop it too), or libsrtp refused it
        return len(data) if self.tap.send_rtp_now(data) else 0

    async def _retransmit(self, out_seq: int) -> bool:
        track = self.track
        if track is None or self._writer is None:
            return False
        packet = track.cache.get(self._rewriter.original_seq(out_seq))
        if packet is None:
            return False
        pts = self._pt_map.get(packet.payload_type)
        if pts is None:
            return False
        ts = self._rewriter.output_ts(packet.timestamp)
        pt, rtx_pt = pts
        if rtx_pt is not None:
            data = self._writer.build(
                packet,
                rtx_pt,
                self._rtx_seq,
                ts,
                ssrc=self.tap.rtx_ssrc,
                payload=out_seq.to_bytes(2, "big") + packet.payload,
            )
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        else:
            data = self._writer.build(packet, pt, out_seq, ts)
        self.retransmitted += 1
        await self.tap.send(data)
        return True

    async def _on_rtcp(self, data: bytes) -> None:
        ssrc = self.tap.ssrc
        for msg in rtp.parse_rtcp(data):
            if isinstance(msg, rtp.Nack):
                if msg.media_ssrc != ssrc:
                    continue
                self.nacks_received += len(msg.lost)
                self._metrics.nacks_received.inc(len(msg.lost))
                misses: list[int] = []
                for out_seq in msg.lost:
                    if await self._retransmit(out_seq):
                        self.nacks_served += 1
                        self._metrics.nacks_served.inc()
                    else:
                        misses.append(self._rewriter.original_seq(out_seq))
                if misses and self.track is not None:
                    self.track.forward_nack(misses)
            elif isinstance(msg, rtp.Pli) and msg.media_ssrc == ssrc:
                self._keyframe_requested()
            elif isinstance(msg, rtp.Fir) and ssrc in msg.media_ssrcs:
                self._keyframe_requested()
            elif isinstance(msg, rtp.Remb):
                if ssrc in msg.ssrcs:
                    self._on_remb(msg.bitrate)
            elif isinstance(msg, (rtp.ReceiverReport, rtp.SenderReport)):
                for block in msg.reports:
                    if block.ssrc == ssrc:
                        self._handle_report(block)

    def _keyframe_requested(self) -> None:
        if self.track is not None:
            self.track.request_keyframe()

    def _handle_report(self, block: rtp.ReportBlock) -> None:
        self.loss = block.fraction_lost / 256.0
        self.rtt = rtp.rtt_from_report(block.lsr, block.dlsr, rtp.compact_ntp(rtp.ntp_now()))
        self._metrics.loss.observe(self.loss)
        if self.rtt is not None:
            self._metrics.rtt.observe(self.rtt)
        self._on_report(self.loss, self.rtt)

    def sender_reports(self) -> bytes | None:
        """SR (+SDES) for this output: NTP now, with the RTP time mapped from the publisher's SRs."""
        track = self.track
        rw = self._rewriter
        if track is None or not rw.anchored or rw.last_time is None or self.packets_sent == 0:
            return None
        wall = time.time()
        clock = track.sender_clock
        rtp_in = clock.rtp_at(wall, track.clock_rate) if clock.ssrc == track.media_ssrc else None
        if rtp_in is not None:
            rtp_out = rw.output_ts(rtp_in)
        else:
            rtp_out = (rw.last_ts + int((time.monotonic() - rw.last_time) * track.clock_rate)) & 0xFFFFFFFF
        report = rtp.SenderReport(
            ssrc=self.tap.ssrc,
            ntp_timestamp=rtp.ntp_from_unix(wall),
            rtp_timestamp=rtp_out,
            packet_count=self.packets_sent,
            octet_count=self.octets_sent,
        )
        data = rtp.build_sr(report)
        if self._cname:
            data += rtp.build_sdes_cname(self.tap.ssrc, self._cname)
        return data

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.assign(None)
