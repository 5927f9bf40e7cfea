"""What the generator records, at RTP level and without decoding.

Publishers: every RTP packet their DTLS transport sends, as (CLOCK_MONOTONIC time, payload CRC-32,
flags). Subscribers: every RTP packet that reaches their ICE socket, the same way, decrypted and counted
right there (time: the kernel's receive stamp); with ``loss`` > 0 a random fraction is dropped right
there, and a NACK generator (aiortc's) asks the SFU for them; the RTX answers are recorded. Nothing is
depacketised or decoded. CLOCK_MONOTONIC is shared by all processes of one Linux machine, so publisher
send times and subscriber receive times can be subtracted directly.

The payload (not the header) identifies a packet across the SFU: SFUs that forward rewrite SSRC,
sequence number and timestamp but leave the payload alone. VP8 payloads carry a picture id that
grows with every frame, so a payload is unique within a loop of the clip.
"""

from __future__ import annotations

import asyncio
import fcntl
import random
import struct
import time
import zlib
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpTransceiver
from aiortc.rtcrtpreceiver import NackGenerator
from pylibsrtp import Error as SrtpError

from media.forwarding import ReceiverTap, transceiver_codecs

# flags of a record
VIDEO = 1
MARKER = 2
RTX = 4  # a retransmission (payload unwrapped before hashing)
DROPPED = 8  # dropped by the injected loss


@dataclass
class PacketLog:
    """Parallel arrays: one entry per packet (times in CLOCK_MONOTONIC seconds)."""

    times: array = field(default_factory=lambda: array("d"))
    hashes: array = field(default_factory=lambda: array("I"))
    flags: array = field(default_factory=lambda: array("B"))

    def add(self, t: float, h: int, f: int) -> None:
        self.times.append(t)
        self.hashes.append(h)
        self.flags.append(f)

    def __len__(self) -> int:
        return len(self.times)


SIOCGSTAMPNS = 0x8907  # Linux: the kernel's receive time (CLOCK_REALTIME) of the last datagram read from a socket
_TIMESPEC = struct.Struct("@qq")


def kernel_arrival(fd: int) -> float | None:
    """When the datagram just read from ``fd`` reached the socket, on CLOCK_MONOTONIC; None if unknown.

    The kernel stamps each datagram as it is queued; reading the stamp right after the read takes the
    receiving process's own wait for a CPU out of the forwarding delay (a generator sharing two cores
    with the SFU would otherwise dominate it)."""
    try:
        sec, nsec = _TIMESPEC.unpack(fcntl.ioctl(fd, SIOCGSTAMPNS, bytes(_TIMESPEC.size)))
    except OSError:  # ENOENT until the first stamped datagram
        return None
    return sec + nsec * 1e-9 - (time.time() - time.monotonic())


def _payload_offset(data: bytes) -> int:
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    return offset


def _is_rtcp(data: bytes) -> bool:
    return len(data) > 1 and 192 <= data[1] <= 223


class Pacer:
    """Spreads a publisher's video packets over time as a browser's pacer does.

    aiortc hands every packet of a frame to the socket at once, so a 25 kB keyframe leaves as a burst
    of ~20 packets; libwebrtc's pacer sends at a multiple (2.5 by default) of the target bitrate, in
    5 ms bursts. Without this, the generator's keyframe bursts, not the SFU, set the delay's tail."""

    BURST = 0.005  # seconds of sending that may go out at once

    def __init__(self, bitrate: float, factor: float) -> None:
        self._bytes_per_second = bitrate * factor / 8
        self._next = 0.0  # when the budget of the packets already released runs out

    async def wait(self, size: int) -> None:
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + size / self._bytes_per_second
        if slot - now > self.BURST:
            await asyncio.sleep(slot - now)


def _wrap_send(
    pc: RTCPeerConnection,
    observer: Callable[[bytes], None],
    pace: Callable[[bytes], Awaitable[None]] | None = None,
) -> None:
    # RTCDtlsTransport._send_rtp is where aiortc hands every outgoing RTP/RTCP packet (before SRTP).
    # With BUNDLE all transceivers end up on one transport; every distinct one is wrapped (once, on
    # the instance), so it does not matter whether bundling has been settled yet. ``pace`` runs
    # before the observer, so that a packet's recorded send time is when it leaves.
    for transceiver in pc.getTransceivers():
        transport = transceiver.sender.transport
        if getattr(transport, "_bench_wrapped", False):
            continue
        original = transport._send_rtp

        async def send(data: bytes, original: Callable[[bytes], Any] = original) -> None:
            if pace is not None:
                await pace(data)
            observer(data)
            await original(data)

        transport._send_rtp = send  # type: ignore[method-assign]
        setattr(transport, "_bench_wrapped", True)  # noqa: B010 - a marker on a foreign object


class PublisherTap:
    """Records the send time of every RTP packet a publisher's peer connection sends; with a
    :class:`Pacer`, its video packets (first sends and retransmissions) leave paced."""

    def __init__(self, pc: RTCPeerConnection, pacer: Pacer | None = None) -> None:
        self.log = PacketLog()
        self._video_pts: set[int] = set()
        self._rtx_pts: set[int] = set()
        for transceiver in pc.getTransceivers():
            for codec in transceiver_codecs(transceiver):
                if transceiver.kind == "video":
                    self._video_pts.add(codec.payload_type)
                if codec.rtx_payload_type is not None:
                    self._rtx_pts.add(codec.rtx_payload_type)
        self._pacer, self._paced_pts = pacer, self._video_pts | self._rtx_pts
        _wrap_send(pc, self._observe, self._pace if pacer is not None else None)

    async def _pace(self, data: bytes) -> None:
        assert self._pacer is not None
        if not _is_rtcp(data) and len(data) >= 12 and data[1] & 0x7F in self._paced_pts:
            await self._pacer.wait(len(data))

    def _observe(self, data: bytes) -> None:
        if _is_rtcp(data) or len(data) < 12:
            return
        now = time.monotonic()
        pt = data[1] & 0x7F
        payload = data[_payload_offset(data) :]
        if pt in self._rtx_pts:
            self.log.add(now, zlib.crc32(payload[2:]), VIDEO | RTX)
            return
        flags = (VIDEO if pt in self._video_pts else 0) | (MARKER if data[1] & 0x80 else 0)
        self.log.add(now, zlib.crc32(payload), flags)


def count_nacks(data: bytes) -> tuple[int, int]:
    """(NACK messages, sequence numbers asked for) in one compound RTCP packet."""
    messages = requested = 0
    pos = 0
    while pos + 4 <= len(data):
        fmt, pt = data[pos] & 0x1F, data[pos + 1]
        length = 4 * (int.from_bytes(data[pos + 2 : pos + 4], "big") + 1)
        if pt == 205 and fmt == 1:
            messages += 1
            for fci in range(pos + 12, pos + length, 4):
                blp = int.from_bytes(data[fci + 2 : fci + 4], "big")
                requested += 1 + blp.bit_count()
        pos += length
    return messages, requested


class _Seq:
    """What aiortc's NackGenerator reads of a packet."""

    __slots__ = ("sequence_number",)

    def __init__(self, sequence_number: int) -> None:
        self.sequence_number = sequence_number


class SubscriberTap:
    """Counts what one subscriber peer connection receives; injects loss; keeps NACKs working.

    Call :meth:`tap` for each receiving transceiver once it exists and before media flows, and
    :meth:`watch_rtcp` once (counts the NACKs this peer sends).
    """

    def __init__(self, loss: float = 0.0, seed: int | None = None) -> None:
        self.log = PacketLog()
        self.loss = loss
        self.nack_messages = 0
        self.nacked_packets = 0
        self.first_video = 0.0
        self.receiving = asyncio.Event()  # set with the first video packet
        self._random = random.Random(seed)
        self._arrivals: dict[int, float] = {}  # (ssrc << 16 | seq) -> time the datagram reached the socket
        self._watched: set[int] = set()
        self.stack_lags: list[float] = []  # sampled: socket arrival -> our handler (the generator's own lag)
        self._tapped: set[int] = set()
        self._receiver_taps: list[ReceiverTap] = []
        self._pc: RTCPeerConnection | None = None
        self._lag_counter = 0

    def watch_rtcp(self, pc: RTCPeerConnection) -> None:
        self._pc = pc
        _wrap_send(pc, self._outgoing)

    def _outgoing(self, data: bytes) -> None:
        if _is_rtcp(data):
            messages, requested = count_nacks(data)
            self.nack_messages += messages
            self.nacked_packets += requested

    def _watch_arrivals(self, transceiver: RTCRtpTransceiver) -> None:
        """Stamp RTP datagrams with the time they reached the ICE socket (the kernel's stamp, read as
        aioice's socket protocol receives them; this process's clock when the kernel has none).

        From here on RTP is decrypted and counted right at the socket, below aiortc's queues, tasks and
        router, which cost the generator three times what the counting does (a generator that needs
        fewer cores disturbs the SFU less); injected loss and the NACKs that ask for it happen there
        too. Only the first packets, and every packet of a tap made without :meth:`watch_rtcp`, go
        through aiortc and :meth:`tap`'s handler: SRTP leaves the RTP header in the clear, so SSRC and
        sequence number pair the stamp with the decrypted packet there."""
        dtls = transceiver.receiver.transport
        count = self._counter(dtls._rx_srtp) if self._pc is not None else None
        connection = getattr(dtls.transport, "_connection", None)
        for protocol in getattr(connection, "_protocols", ()):
            if id(protocol) in self._watched:
                continue
            self._watched.add(id(protocol))
            sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
            fd = sock.fileno() if sock is not None else -1

            def received(
                data: bytes,
                addr: Any,
                original: Callable[[bytes, Any], None] = protocol.datagram_received,
                arrivals: dict[int, float] = self._arrivals,
                fd: int = fd,
            ) -> None:
                if len(data) >= 12 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:
                    stamp = kernel_arrival(fd) if fd >= 0 else None
                    if stamp is None:
                        stamp = time.monotonic()
                    if count is not None:
                        count(data, stamp)
                        return
                    arrivals[int.from_bytes(data[8:12], "big") << 16 | int.from_bytes(data[2:4], "big")] = stamp
                original(data, addr)

            protocol.datagram_received = received

    def _counter(self, srtp: Any) -> Callable[[bytes, float], None]:
        """Counts one SRTP datagram of this peer connection the way the handler of :meth:`tap` does, drops
        the injected loss, and asks for what is missing with generic NACKs as aiortc's receiver would."""
        assert self._pc is not None
        video_pts: set[int] = set()
        rtx_pts: set[int] = set()
        video_receiver: RTCRtpReceiver | None = None
        for transceiver in self._pc.getTransceivers():
            if transceiver.kind != "video":
                continue
            video_receiver = transceiver.receiver
            for codec in transceiver_codecs(transceiver):
                video_pts.add(codec.payload_type)
                if codec.rtx_payload_type:
                    rtx_pts.add(codec.rtx_payload_type)
        record = self._record
        nacks = NackGenerator()
        media_ssrc = 0
        sending: set[asyncio.Task[None]] = set()

        def count(data: bytes, stamp: float) -> None:
            nonlocal media_ssrc
            try:
                plain = srtp.unprotect(data)
            except SrtpError:  # a replay, or a packet from before the keys
                return
            pt = plain[1] & 0x7F
            end = len(plain) - plain[-1] if plain[0] & 0x20 else len(plain)  # padding
            payload = plain[_payload_offset(plain) : end]
            if pt in rtx_pts:
                flags, h, seq = VIDEO | RTX, zlib.crc32(payload[2:]), int.from_bytes(payload[:2], "big")
            else:
                flags = (VIDEO if pt in video_pts else 0) | (MARKER if plain[1] & 0x80 else 0)
                h, seq = zlib.crc32(payload), int.from_bytes(plain[2:4], "big")
            if not record(stamp, h, flags) or not flags & VIDEO:
                return
            if not flags & RTX:
                media_ssrc = int.from_bytes(plain[8:12], "big")
            if nacks.add(_Seq(seq)) and video_receiver is not None and media_ssrc:
                task = asyncio.ensure_future(video_receiver._send_rtcp_nack(media_ssrc, sorted(nacks.missing)))
                sending.add(task)
                task.add_done_callback(sending.discard)

        return count

    def tap(self, transceiver: RTCRtpTransceiver) -> None:
        receiver = transceiver.receiver
        if id(receiver) in self._tapped or transceiver.kind not in ("audio", "video"):
            return
        self._tapped.add(id(receiver))
        video = transceiver.kind == "video"
        inner: Callable[[Any, int], Any] | None = None
        if video:
            # keeps aiortc's receiver statistics, RTX unwrapping and NACK generator, never decodes
            tap = ReceiverTap(receiver, self._ignore_rtp, self._ignore_report, direct=False)
            self._receiver_taps.append(tap)
            inner = receiver._handle_rtp_packet
        self._install(receiver, transceiver, video, inner)

    def _install(
        self,
        receiver: RTCRtpReceiver,
        transceiver: RTCRtpTransceiver,
        video: bool,
        inner: Callable[[Any, int], Any] | None,
    ) -> None:
        kind_flag = VIDEO if video else 0
        rtx_pts: set[int] | None = None

        async def handle(packet: Any, arrival_time_ms: int) -> None:
            nonlocal rtx_pts
            now = self._arrivals.pop(packet.ssrc << 16 | packet.sequence_number, None) or time.monotonic()
            if rtx_pts is None:
                # the ICE sockets exist once the answer is applied: from the first packet on
                self._watch_arrivals(transceiver)
                rtx_pts = {c.rtx_payload_type for c in transceiver_codecs(transceiver) if c.rtx_payload_type}
            payload = packet.payload
            if packet.payload_type in rtx_pts:
                flags, h = kind_flag | RTX, zlib.crc32(payload[2:])
            else:
                flags, h = kind_flag | (MARKER if packet.marker else 0), zlib.crc32(payload)
            if self._record(now, h, flags) and inner is not None:
                await inner(packet, arrival_time_ms)

        # aiortc's RTP router looks the handler up on the receiver instance
        receiver._handle_rtp_packet = handle  # type: ignore[method-assign]

    def _record(self, stamp: float, h: int, flags: int) -> bool:
        """Log one received packet (both paths); False when the injected loss dropped it."""
        if self.loss and self._random.random() < self.loss:
            self.log.add(stamp, h, flags | DROPPED)
            return False
        if flags & VIDEO and not self.first_video:
            self.first_video = stamp
            self.receiving.set()
        self.log.add(stamp, h, flags)
        self._lag_counter += 1
        if self._lag_counter % 8 == 0:
            self.stack_lags.append(time.monotonic() - stamp)
        return True

    def _ignore_rtp(self, packet: Any, arrival: float) -> None:
        return None

    def _ignore_report(self, report: Any) -> None:
        return None

    def close(self) -> None:
        for tap in self._receiver_taps:
            tap.close()
