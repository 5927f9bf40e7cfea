"""Recorder: one copy of one room's recording.

States: created -> joining (bus join as a hidden, subscribe-only participant, role "recorder")
-> recording -> closed | failed (storage error, join refused).

Two ways to receive (``RecorderConfig.transport``):

* ``plain`` (the default): the node sends plain RTP to this copy's UDP socket (``media.plain``), one SSRC per
  track, described by ``plain_tracks`` messages; the recorder NACKs holes in the sequence numbers and sends PLIs
  itself. About a third of the CPU of a peer connection (docs/recording.md): meant for the node's private network.
* ``webrtc``: a subscriber peer connection like a browser's; answers every subscriber offer and taps each
  receiver's RTP before aiortc depacketises it (``media.forwarding.ReceiverTap``).

Per received track: ``Depacketizer`` (RTP -> frames) -> ``TrackClock`` (RTP timestamp -> node
wall clock from the SFU's sender reports) -> ``SegmentWriter``. Frames are held back per track
until its clock has enough SRs (``TrackClock.synced``), at most ``sr_wait`` seconds; after that
they are written with the arrival-time fallback (see recorder/clock.py). Every second ``on_progress`` receives a
:class:`Progress` (bytes per track, last keyframe time, gaps, clock drift, storage error).

``close()`` is idempotent: it leaves the room, closes the peer connection and completes the open
segment(s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription

from core.bus import Bus, Subscription
from core.messages import node_rpc, participant_channel
from media.forwarding import ReceiverTap, rtc_configuration, transceiver_codecs
from media.rtp import SenderReport, build_nack, build_pli, is_rtcp, parse_rtcp, parse_rtp

from . import metrics
from .clock import TrackClock
from .depacketize import Depacketizer, EncodedFrame
from .errors import JoinError, StorageError
from .writer import SegmentInfo, SegmentWriter, TrackInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecorderConfig:
    node_id: str
    room_id: str
    participant_id: str  # this copy's hidden participant id
    copy_id: str
    directory: Path
    container: str = "mkv"
    segment_seconds: float = 10.0
    sr_wait: float = 4.0
    progress_interval: float = 1.0
    transport: str = "plain"  # or "webrtc"
    plain_host: str = "127.0.0.1"  # the address the node sends plain RTP to (this host's, on the node's network)
    plain_batch_s: float = 0.2  # how often the plain RTP socket is read, at most (shorter when it fills up)


@dataclass(frozen=True, slots=True)
class Progress:
    copy_id: str
    room_id: str
    at: float
    bytes: int
    segments: int
    tracks: dict[str, dict[str, Any]]
    gaps: int
    clock_drift_ms: dict[str, float]
    error: dict[str, object] | None = None


@dataclass
class _Track:
    info: TrackInfo
    clock_rate: int
    depacketizer: Depacketizer
    clock: TrackClock
    tap: ReceiverTap | None = None
    held: list[EncodedFrame] = field(default_factory=list)
    first_arrival: float | None = None
    ssrc: int | None = None
    last_seq: int | None = None  # plain RTP: the highest sequence number seen, for NACKs
    streaming: bool = False  # its frames were released once; never held again
    bytes_metric: Any = None  # the labelled child of BYTES_WRITTEN, looked up once
    unreported_bytes: int = 0  # written since the metric was last advanced (once a second, not per frame)


_BWE_LINE = re.compile(r"^a=(extmap:\d+ \S*abs-send-time|rtcp-fb:\d+ goog-remb)\b.*$")


def without_bandwidth_estimation(sdp: str) -> str:
    """The offer minus abs-send-time and goog-remb, so the recorder's peer connection never sends
    REMB: a recorder takes full quality and must not make the SFU pause its video (the SFU pauses a
    subscriber's video when its REMB is below the bitrate of the tracks it receives)."""
    return "\r\n".join(line for line in sdp.split("\r\n") if not _BWE_LINE.match(line))


class Recorder:
    def __init__(
        self,
        config: RecorderConfig,
        bus: Bus,
        on_progress: Callable[[Progress], None] | None = None,
        on_segment: Callable[[SegmentInfo], None] | None = None,
    ) -> None:
        self.config = config
        self._bus = bus
        self._on_progress = on_progress
        self._on_segment = on_segment
        self._pc: RTCPeerConnection | None = None
        self._subscription: Subscription | None = None
        self._listener: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._tracks: dict[str, _Track] = {}  # by mid
        self._error: StorageError | None = None
        self._closed = False
        self._pli_tasks: set[asyncio.Task[None]] = set()
        self._udp: socket.socket | None = None
        self._rcvbuf = 1 << 21  # the plain RTP socket's buffer, as the kernel granted it
        self._drainer: asyncio.Task[None] | None = None
        self._by_ssrc: dict[int, _Track] = {}  # plain RTP
        self._node_addr: tuple[str, int] | None = None  # where the plain RTP comes from (RTCP goes back there)
        self._rtcp_ssrc = random.getrandbits(32) or 1
        self.nacks_sent = 0
        self.writer = SegmentWriter(
            config.directory,
            config.copy_id,
            container=config.container,
            segment_seconds=config.segment_seconds,
            header_wait=config.sr_wait + 3.0,  # hold-back plus a 2 s GOP before the first keyframe
            on_keyframe_needed=self._keyframe_needed,
            on_segment=self._segment_done,
        )

    @property
    def error(self) -> StorageError | None:
        return self._error

    async def start(self) -> None:
        c = self.config
        self._subscription = await self._bus.subscribe(participant_channel(c.participant_id))
        join: dict[str, Any] = {
            "op": "join",
            "room_id": c.room_id,
            "participant_id": c.participant_id,
            "identity": f"recorder:{c.copy_id}",
            "name": "recorder",
            "role": "recorder",
            "permissions": ["subscribe"],
        }
        if c.transport == "plain":
            family = socket.AF_INET6 if ":" in c.plain_host else socket.AF_INET
            self._udp = socket.socket(family, socket.SOCK_DGRAM)
            self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            self._rcvbuf = self._udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)  # capped by rmem_max
            if self._rcvbuf < 1 << 21:
                logger.info(
                    "copy=%s plain RTP socket buffer is %d bytes (net.core.rmem_max); reading it more often",
                    *(c.copy_id, self._rcvbuf),
                )
            self._udp.bind((c.plain_host, 0))
            self._udp.setblocking(False)
            host, port = self._udp.getsockname()[:2]
            join["transport"] = {"type": "plain", "host": host, "port": port}
            self._drainer = asyncio.create_task(self._drain_loop(), name=f"recorder-rtp:{c.copy_id}")
        else:
            self._pc = RTCPeerConnection(rtc_configuration())
            self._pc.on("track", self._on_track)
        try:
            await self._bus.request(node_rpc(c.node_id), join)
        except Exception as exc:
            await self.close()
            raise JoinError(f"room={c.room_id} node={c.node_id}: join refused: {exc}") from exc
        metrics.ACTIVE_RECORDINGS.inc()
        self._listener = asyncio.create_task(self._listen(), name=f"recorder-signal:{c.copy_id}")
        self._reporter = asyncio.create_task(self._report_loop(), name=f"recorder-progress:{c.copy_id}")
        logger.info("copy=%s room=%s node=%s recording", c.copy_id, c.room_id, c.node_id)

    # -- signaling -----------------------------------------------------------------------------

    async def _listen(self) -> None:
        assert self._subscription is not None
        async for message in self._subscription:
            try:
                if message.get("type") == "subscriber_offer" and self._pc is not None:
                    await self._answer(str(message["sdp"]), message.get("tracks") or {})
                elif message.get("type") == "plain_tracks" and self._udp is not None:
                    self._plain_tracks(message.get("tracks") or {})
                elif message.get("type") == "removed":
                    logger.warning("copy=%s removed from room: %s", self.config.copy_id, message.get("reason"))
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("copy=%s could not handle %s", self.config.copy_id, message.get("type"))

    async def _answer(self, sdp: str, tracks: dict[str, dict[str, str]]) -> None:
        assert self._pc is not None
        offer = without_bandwidth_estimation(sdp)
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        for mid, state in list(self._tracks.items()):
            desc = tracks.get(mid)
            if desc is None or self._track_id(desc, mid) != state.info.track_id:
                self._end_track(mid)  # the node stopped or reused this m-section
        answer = await self._pc.createAnswer()
        await self._pc.setLocalDescription(answer)
        await self._bus.request(
            node_rpc(self.config.node_id),
            {
                "op": "subscriber_answer",
                "participant_id": self.config.participant_id,
                "sdp": self._pc.localDescription.sdp,
            },
        )
        for transceiver in self._pc.getTransceivers():
            tmid = transceiver.mid
            if tmid is not None and tmid in tracks and tmid not in self._tracks:
                self._begin_track(transceiver, tmid, tracks[tmid])

    def _plain_tracks(self, tracks: dict[str, dict[str, Any]]) -> None:
        """What the node sends us now: end the tracks that went away, begin the new ones (keyed by SSRC). The
        packets the node sent before this message wait in the socket (read every ``plain_batch_s``): read them
        first, or a track that ends would lose its last batch."""
        self._drain()
        wanted = {int(d["ssrc"]): (mid, d) for mid, d in tracks.items() if isinstance(d.get("ssrc"), int)}
        for ssrc, state in list(self._by_ssrc.items()):
            mid, desc = wanted.get(ssrc, ("", {}))
            if not desc or self._track_id(desc, mid) != state.info.track_id:
                del self._by_ssrc[ssrc]
                self._end_track(next(m for m, s in self._tracks.items() if s is state))
        for ssrc, (mid, desc) in wanted.items():
            if ssrc in self._by_ssrc:
                continue
            codecs = desc.get("codecs") or []
            kind = str(desc.get("kind", ""))
            name = next((str(c["name"]) for c in codecs if c.get("name") in ("vp8", "h264", "opus")), "")
            if not name:
                logger.warning("copy=%s ssrc=%d no recordable codec in %s", self.config.copy_id, ssrc, codecs)
                continue
            clock_rate = int(next(c["clock_rate"] for c in codecs if c["name"] == name))
            key = f"{mid}:{ssrc}"
            state = self._add_track(key, desc, kind, name, clock_rate)
            state.ssrc = ssrc
            self._by_ssrc[ssrc] = state

    def _on_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """One datagram from the plain RTP socket. The per-packet path of a recording: kept to a few calls."""
        if is_rtcp(data):
            try:
                messages = parse_rtcp(data)
            except ValueError:
                return
            for msg in messages:
                if isinstance(msg, SenderReport) and (state := self._by_ssrc.get(msg.ssrc)) is not None:
                    state.clock.sender_report(msg.ntp_timestamp, msg.rtp_timestamp)
                    self._release(state, force=False)
            return
        try:
            packet = parse_rtp(data)
        except ValueError:
            return
        state = self._by_ssrc.get(packet.ssrc)
        if state is None:
            return  # a track we were not told about (yet): its first keyframe request comes with the writer
        self._node_addr = addr
        seq = packet.sequence_number
        last = state.last_seq
        if last is None:
            state.last_seq = seq
        elif (ahead := (seq - last) & 0xFFFF) < 0x8000:  # ahead of the highest seen (not a late one)
            if 1 < ahead <= 64:  # a hole: ask the node's packet cache once (the depacketizer waits for it)
                lost = [(last + i) & 0xFFFF for i in range(1, ahead)]
                self._send_rtcp(build_nack(self._rtcp_ssrc, packet.ssrc, lost))
                self.nacks_sent += len(lost)
                metrics.NACKED_PACKETS.inc(len(lost))
            state.last_seq = seq
        frames = state.depacketizer.push(seq, packet.timestamp, packet.marker, packet.payload, now)
        if frames:  # most video packets complete no frame
            self._write(state, frames)

    async def _drain_loop(self) -> None:
        """Read the plain RTP socket every ``plain_batch_s``, everything queued at once: one wakeup per batch
        instead of one per packet (a recorder has no use for lower latency, and on small VMs a wakeup of this
        process costs as much CPU as processing dozens of packets). A batch that filled more than a quarter of
        the socket buffer halves the interval (down to 20 ms); quieter batches let it grow back."""
        interval = self.config.plain_batch_s
        while True:
            await asyncio.sleep(interval)
            used = self._drain()
            if used > self._rcvbuf // 4:
                interval = max(interval / 2, 0.02)
            elif used < self._rcvbuf // 16:
                interval = min(interval * 1.5, self.config.plain_batch_s)

    def _drain(self) -> int:
        """Process what the socket holds; returns about how much of its buffer that took (a datagram costs its
        size plus ~1 KiB of kernel bookkeeping)."""
        sock = self._udp
        used = 0
        if sock is not None and self._error is None and not self._closed:
            now = time.time()  # one arrival time per batch: the packets waited in the socket together
            for _ in range(20000):
                try:
                    data, addr = sock.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # e.g. ICMP unreachable for our RTCP: the node went away
                    logger.debug("copy=%s plain socket: %s", self.config.copy_id, exc)
                    continue
                used += len(data) + 1024
                try:
                    self._on_datagram(data, addr, now)
                except Exception:  # one bad datagram must not stop the recording
                    logger.exception("copy=%s bad datagram from %s", self.config.copy_id, addr)
        return used

    def _send_rtcp(self, data: bytes) -> None:
        if self._udp is not None and self._node_addr is not None:
            with contextlib.suppress(OSError):  # a full socket buffer or a vanished node: RTCP is best effort
                self._udp.sendto(data, self._node_addr)

    @staticmethod
    def _track_id(desc: dict[str, str], mid: str) -> str:
        """The same for both copies: publisher and source (not the mid, which is per connection)."""
        return f"{desc.get('participant_id', '')}:{desc.get('source', mid)}"

    def _on_track(self, track: Any) -> None:
        pass  # receivers are tapped in _begin_track; aiortc's decoding path never runs

    def _begin_track(self, transceiver: Any, mid: str, desc: dict[str, str]) -> None:
        codecs = transceiver_codecs(transceiver)
        if not codecs:
            return
        codec = codecs[0].name
        if codec not in ("vp8", "h264", "opus"):
            logger.warning("copy=%s mid=%s codec %s not recordable", self.config.copy_id, mid, codec)
            return
        state = self._add_track(mid, desc, desc.get("kind", transceiver.kind), codec, codecs[0].clock_rate)

        def on_rtp(packet: Any, arrival: float) -> None:
            state.ssrc = packet.ssrc
            self._on_packet(state, packet, time.time())

        def on_sr(report: SenderReport) -> None:
            state.clock.sender_report(report.ntp_timestamp, report.rtp_timestamp)
            self._release(state, force=False)

        state.tap = ReceiverTap(transceiver.receiver, on_rtp, on_sr)

    def _add_track(self, key: str, desc: dict[str, Any], kind: str, codec: str, clock_rate: int) -> _Track:
        info = TrackInfo(
            self._track_id(desc, key.split(":")[0]),
            kind,
            codec,
            str(desc.get("participant_id", "")),
            str(desc.get("source", "")),
        )
        # A packet NACKed after one batch is read with the next: wait a batch longer than the default for it.
        # The window holds a batch of a keyframe burst.
        if self._udp is not None:
            depacketizer = Depacketizer(codec, reorder_window=512, reorder_delay=0.15 + self.config.plain_batch_s)
        else:
            depacketizer = Depacketizer(codec)
        state = _Track(info, clock_rate, depacketizer, TrackClock(clock_rate))
        state.bytes_metric = metrics.BYTES_WRITTEN.labels(info.kind)
        self._tracks[key] = state
        self.writer.add_track(info)
        return state

    def _end_track(self, mid: str) -> None:
        state = self._tracks.pop(mid, None)
        if state is None:
            return
        if state.tap is not None:
            state.tap.close()
        self._write(state, state.depacketizer.flush())
        self._release(state, force=True)
        self._count_bytes(state)
        self.writer.remove_track(state.info.track_id)

    @staticmethod
    def _count_bytes(state: _Track) -> None:
        if state.unreported_bytes:
            state.bytes_metric.inc(state.unreported_bytes)
            state.unreported_bytes = 0

    # -- media ---------------------------------------------------------------------------------

    def _on_packet(self, state: _Track, packet: Any, now: float) -> None:
        if self._error is not None or self._closed:
            return
        frames = state.depacketizer.push(
            packet.sequence_number, packet.timestamp, bool(packet.marker), packet.payload, now
        )
        if frames:
            self._write(state, frames)

    def _write(self, state: _Track, frames: list[EncodedFrame]) -> None:
        for frame in frames:
            state.clock.observe(frame.timestamp, frame.arrival)
        if state.streaming:  # the steady state: straight to the writer
            if self._error is None:
                try:
                    for frame in frames:
                        self._put(state, frame)
                except StorageError as exc:
                    self._storage_failed(exc)
            return
        if frames and state.first_arrival is None:
            state.first_arrival = frames[0].arrival
        state.held += frames
        self._release(state, force=False)

    def _ready(self, state: _Track, now: float) -> bool:
        waited = state.first_arrival is not None and now - state.first_arrival >= self.config.sr_wait
        return state.clock.synced or waited

    def _release(self, state: _Track, *, force: bool) -> None:
        """Write held frames. At the start every track holds its frames until its clock is synced;
        the held frames of all starting tracks are then written together in wall-clock order, so
        the segment cuts (decided on wall time) see the tracks side by side, not one burst after
        another. Once streaming, a track is never held again (a re-anchored clock must not stall it)."""
        if not state.held or self._error is not None:
            return
        if state.streaming:
            batch = [(state, frame) for frame in state.held]
            state.held = []
        else:
            now = time.time()
            starting = [s for s in self._tracks.values() if not s.streaming and s.held]
            if state not in starting:
                starting.append(state)
            if not force and not all(self._ready(s, now) for s in starting):
                return
            batch = []
            for s in starting:
                s.streaming = True
                batch += [(s, frame) for frame in s.held]
                s.held = []
            batch.sort(key=lambda item: item[0].clock.wall(item[1].timestamp))
        try:
            for s, frame in batch:
                self._put(s, frame)
        except StorageError as exc:
            self._storage_failed(exc)

    def _put(self, state: _Track, frame: EncodedFrame) -> None:
        clock = state.clock
        self.writer.write(state.info.track_id, frame, clock.wall(frame.timestamp), clock=clock.source or "arrival")
        state.unreported_bytes += len(frame.data)  # into the metric with the next progress report
        if frame.after_loss:
            metrics.GAPS.labels(state.info.kind).inc()

    def _storage_failed(self, exc: StorageError) -> None:
        if self._error is None:
            self._error = exc
            metrics.STORAGE_ERRORS.labels(exc.code).inc()
            logger.error("copy=%s storage error: %s", self.config.copy_id, exc.message)
            self._report()

    def _keyframe_needed(self, track_id: str) -> None:
        for state in self._tracks.values():
            if state.info.track_id == track_id and state.tap is None and state.ssrc is not None:
                self._send_rtcp(build_pli(self._rtcp_ssrc, state.ssrc))
            elif state.info.track_id == track_id and state.tap is not None and state.ssrc is not None:
                task = asyncio.get_running_loop().create_task(state.tap.send_pli(state.ssrc))
                self._pli_tasks.add(task)
                task.add_done_callback(self._pli_tasks.discard)

    def _segment_done(self, info: SegmentInfo) -> None:
        metrics.SEGMENTS.inc()
        if self._on_segment is not None:
            self._on_segment(info)

    # -- progress ------------------------------------------------------------------------------

    def progress(self) -> Progress:
        stats = self.writer.stats()
        return Progress(
            copy_id=self.config.copy_id,
            room_id=self.config.room_id,
            at=time.time(),
            bytes=stats.bytes,
            segments=stats.segments,
            tracks=stats.per_track,
            gaps=stats.gaps,
            clock_drift_ms={s.info.track_id: round(s.clock.drift * 1000, 2) for s in self._tracks.values()},
            error=self._error.describe() if self._error else None,
        )

    def _report(self) -> None:
        for state in self._tracks.values():
            self._count_bytes(state)
        if self._on_progress is not None:
            try:
                self._on_progress(self.progress())
            except Exception:
                logger.exception("copy=%s progress callback failed", self.config.copy_id)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.progress_interval)
            now = time.time()
            for state in list(self._tracks.values()):
                self._write(state, state.depacketizer.poll(now))
            self._report()

    # -- lifecycle -----------------------------------------------------------------------------

    async def close(self) -> list[SegmentInfo]:
        if self._closed:
            return self.writer.segments
        self._closed = True
        for task in (self._listener, self._reporter, self._drainer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(Exception):
            await self._bus.request(
                node_rpc(self.config.node_id), {"op": "leave", "participant_id": self.config.participant_id}
            )
        if self._subscription is not None:
            await self._subscription.close()
        self._closed = False  # let the last frames through
        self._drain()
        for mid in list(self._tracks):
            self._end_track(mid)
        self._closed = True
        if self._pc is not None:
            await self._pc.close()
        if self._udp is not None:
            self._udp.close()
        segments = await asyncio.to_thread(self.writer.close)
        if self._listener is not None:
            metrics.ACTIVE_RECORDINGS.dec()
        self._report()
        return segments
