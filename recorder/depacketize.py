"""RTP packets of one track -> encoded frames, without decoding.

``Depacketizer`` takes the RTP packets of one stream in arrival order and returns whole encoded
frames (:class:`EncodedFrame`):

* VP8 (RFC 7741): the payload descriptor is stripped; a frame is every packet of one RTP timestamp,
  starting at a packet with S=1 and partition index 0 and ending at the marker bit (or at the
  first packet of the next timestamp). Keyframe: the P bit of the first payload byte is 0.
* H.264 (RFC 6184): single NAL unit packets, STAP-A and FU-A are turned into one Annex-B access
  unit (``00 00 00 01`` before every NAL) per timestamp. Keyframe: the access unit holds an IDR
  slice (NAL type 5).
* Opus: one packet is one frame; every frame is a "keyframe".

Packets pass a small reorder buffer keyed by (extended) sequence number. A missing sequence number
is waited for up to ``reorder_window`` packets or ``reorder_delay`` seconds (NACK retransmissions,
already unwrapped from RTX by the receiver, fill holes in that time). After that it is lost: the
frame it belonged to is dropped, and video frames are dropped until the next keyframe (a decoder
cannot use them). The first frame written after a loss carries ``after_loss=True`` so the writer
can record the gap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

START_CODE = b"\x00\x00\x00\x01"

VIDEO_CODECS = ("vp8", "h264")
AUDIO_CODECS = ("opus",)


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded frame (video) or packet (audio), as it is muxed."""

    data: bytes
    timestamp: int  # extended (64-bit, unwrapped) RTP timestamp
    keyframe: bool
    arrival: float  # local time (time.time()) its last packet arrived
    after_loss: bool = False


@dataclass(slots=True)
class DepacketizerStats:
    packets: int = 0
    frames: int = 0
    lost_packets: int = 0
    dropped_frames: int = 0
    late_packets: int = 0
    keyframes: int = 0


@dataclass(slots=True)
class _Packet:
    seq: int  # extended
    timestamp: int  # extended
    marker: bool
    payload: bytes
    arrival: float


@dataclass(slots=True)
class _Partial:
    timestamp: int
    arrival: float
    chunks: list[bytes] = field(default_factory=list)
    intact: bool = True
    started: bool = False  # the frame's first packet was seen
    keyframe: bool = False


class _Unwrapper:
    """Extends a wrapping counter of ``bits`` bits to an unbounded integer."""

    __slots__ = ("_half", "_last", "_modulo")

    def __init__(self, bits: int) -> None:
        self._modulo = 1 << bits
        self._half = 1 << (bits - 1)
        self._last: int | None = None

    def extend(self, value: int) -> int:
        if self._last is None:
            self._last = value + self._modulo  # room to go back a little
            return self._last
        delta = (value - self._last) % self._modulo
        if delta >= self._half:
            delta -= self._modulo
        extended = self._last + delta
        if delta > 0:
            self._last = extended
        return extended


class ReorderBuffer:
    """Puts packets back in sequence order, declaring a missing one lost after a bounded wait."""

    def __init__(self, window: int = 64, delay: float = 0.15) -> None:
        self.window = window
        self.delay = delay
        self._expected: int | None = None
        self._pending: dict[int, _Packet] = {}
        self._first_arrival: float | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def push(self, packet: _Packet) -> tuple[list[_Packet | None], int]:
        """Add a packet; returns the packets now in order (``None`` marks a loss) and how many
        were late (arrived after their slot was given up, or duplicates)."""
        if self._expected is None:
            # the very first packets may arrive out of order too: collect for ``delay`` first
            if packet.seq not in self._pending:
                self._pending[packet.seq] = packet
            if self._first_arrival is None:
                self._first_arrival = packet.arrival
            if packet.arrival - self._first_arrival < self.delay and len(self._pending) < self.window:
                return [], 0
            self._expected = min(self._pending)
            return self._release(packet.arrival), 0
        if packet.seq == self._expected and not self._pending:  # in order, nothing waiting: the common case
            self._expected += 1
            return [packet], 0
        if packet.seq < self._expected or packet.seq in self._pending:
            return [], 1
        if packet.seq - self._expected > 3000:  # the stream restarted far ahead: resynchronise
            out: list[_Packet | None] = [*self._drain_all(), None]
            self._expected = packet.seq
            self._pending[packet.seq] = packet
            return out + self._release(packet.arrival), 0
        self._pending[packet.seq] = packet
        return self._release(packet.arrival), 0

    def _release(self, now: float) -> list[_Packet | None]:
        out: list[_Packet | None] = []
        assert self._expected is not None
        while self._pending:
            packet = self._pending.pop(self._expected, None)
            if packet is not None:
                out.append(packet)
                self._expected += 1
                continue
            oldest = min(p.arrival for p in self._pending.values())
            if len(self._pending) < self.window and now - oldest < self.delay:
                break
            # give up on the hole: skip to the lowest sequence number we hold
            lost_to = min(self._pending)
            out.append(None)
            self._expected = lost_to
        return out

    def poll(self, now: float) -> list[_Packet | None]:
        """Release what waited longer than ``delay`` (call when no packet arrives for a while)."""
        if not self._pending:
            return []
        if self._expected is None:
            if self._first_arrival is not None and now - self._first_arrival < self.delay:
                return []
            self._expected = min(self._pending)
        return self._release(now)

    def _drain_all(self) -> list[_Packet | None]:
        out: list[_Packet | None] = []
        if self._expected is None and self._pending:
            self._expected = min(self._pending)
        for seq in sorted(self._pending):
            if self._expected is not None and seq != self._expected:
                out.append(None)
            out.append(self._pending[seq])
            self._expected = seq + 1
        self._pending.clear()
        return out

    def flush(self) -> list[_Packet | None]:
        return self._drain_all()


# -- codec payload handling ---------------------------------------------------------------------


def vp8_descriptor_size(payload: bytes) -> int:
    """Length of the RFC 7741 payload descriptor at the start of ``payload``."""
    if not payload:
        raise ValueError("empty VP8 payload")
    size = 1
    if payload[0] & 0x80:  # X: extension byte follows
        if len(payload) < 2:
            raise ValueError("truncated VP8 descriptor")
        ext = payload[1]
        size = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) < 3:
                raise ValueError("truncated VP8 picture id")
            size += 2 if payload[2] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            size += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX byte
            size += 1
    if size > len(payload):
        raise ValueError("truncated VP8 descriptor")
    return size


def vp8_frame_start(payload: bytes) -> bool:
    """S bit set and partition index 0: the first packet of a frame."""
    return bool(payload and payload[0] & 0x10 and payload[0] & 0x0F == 0)


def vp8_dimensions(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from a VP8 keyframe's uncompressed header (RFC 6386 9.1)."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return width, height


def h264_nal_units(access_unit: bytes) -> list[bytes]:
    """Split an Annex-B byte stream into NAL units (without start codes)."""
    out: list[bytes] = []
    i = access_unit.find(b"\x00\x00\x01")
    while i >= 0:
        start = i + 3
        nxt = access_unit.find(b"\x00\x00\x01", start)
        end = len(access_unit) if nxt < 0 else nxt
        nal = access_unit[start:end]
        if nxt >= 0 and nal.endswith(b"\x00"):
            nal = nal.rstrip(b"\x00")
        if nal:
            out.append(nal)
        i = nxt
    return out


class Depacketizer:
    """RTP -> encoded frames for one stream of one codec (``vp8``, ``h264`` or ``opus``)."""

    def __init__(
        self,
        codec: str,
        *,
        reorder_window: int = 64,
        reorder_delay: float = 0.15,
    ) -> None:
        codec = codec.lower()
        if codec not in VIDEO_CODECS + AUDIO_CODECS:
            raise ValueError(f"unsupported codec {codec!r} (vp8, h264, opus)")
        self.codec = codec
        self.video = codec in VIDEO_CODECS
        self.stats = DepacketizerStats()
        self._reorder = ReorderBuffer(reorder_window, reorder_delay)
        self._seq = _Unwrapper(16)
        self._ts = _Unwrapper(32)
        self._partial: _Partial | None = None
        self._lost_since_last_frame = False  # a loss happened after the last completed frame
        self._need_keyframe = self.video
        self._after_loss = False

    # -- input ---------------------------------------------------------------------------------

    def push(self, seq: int, timestamp: int, marker: bool, payload: bytes, arrival: float) -> list[EncodedFrame]:
        """Feed one RTP packet (sequence number and timestamp as on the wire)."""
        self.stats.packets += 1
        packet = _Packet(self._seq.extend(seq), self._ts.extend(timestamp), marker, payload, arrival)
        ordered, late = self._reorder.push(packet)
        self.stats.late_packets += late
        return self._consume(ordered)

    def poll(self, now: float) -> list[EncodedFrame]:
        """Give up on holes that waited too long (call periodically)."""
        return self._consume(self._reorder.poll(now))

    def flush(self) -> list[EncodedFrame]:
        """End of stream: release everything; a frame missing its end is dropped."""
        out = self._consume(self._reorder.flush())
        partial = self._partial
        self._partial = None
        if partial is not None and self.codec == "h264" and partial.intact and partial.started:
            # H.264 senders may omit the marker; an intact unit with its start is complete
            frame = self._finish(partial)
            if frame is not None:
                out.append(frame)
        elif partial is not None:
            self._drop(partial)
        return out

    # -- assembly ------------------------------------------------------------------------------

    def _consume(self, ordered: list[_Packet | None]) -> list[EncodedFrame]:
        out: list[EncodedFrame] = []
        for packet in ordered:
            if packet is None:
                self.stats.lost_packets += 1
                self._lost(self.stats.frames > 0)
                continue
            try:
                frame = self._add(packet)
            except ValueError as exc:
                logger.debug("codec=%s malformed packet seq=%d: %s", self.codec, packet.seq, exc)
                self._lost(True)
                continue
            out.extend(frame)
        return out

    def _add(self, packet: _Packet) -> list[EncodedFrame]:
        if not self.video:
            return self._emit_audio(packet)
        out: list[EncodedFrame] = []
        partial = self._partial
        if partial is not None and partial.timestamp != packet.timestamp:
            # the previous frame never saw its marker: its tail is missing
            self._partial = None
            if self.codec == "h264" and partial.intact and partial.started:
                frame = self._finish(partial)
                if frame is not None:
                    out.append(frame)
            else:
                self._drop(partial)
            partial = None
        if partial is None:
            partial = self._partial = _Partial(packet.timestamp, packet.arrival)
            lost_head = self._lost_since_last_frame
            self._lost_since_last_frame = False
            starts = self._is_start(packet.payload)
            partial.started = starts
            # a loss just before this frame may have taken its first packets
            partial.intact = starts and not (lost_head and self.codec == "h264")
        partial.arrival = packet.arrival
        self._append(partial, packet.payload)
        if packet.marker:
            self._partial = None
            if partial.intact:
                frame = self._finish(partial)
                if frame is not None:
                    out.append(frame)
            else:
                self._drop(partial)
        return out

    def _is_start(self, payload: bytes) -> bool:
        if self.codec == "vp8":
            return vp8_frame_start(payload)
        if not payload:
            return False
        nal_type = payload[0] & 0x1F
        if nal_type == 28:  # FU-A: start bit of the FU header
            return len(payload) > 1 and bool(payload[1] & 0x80)
        return True

    def _append(self, partial: _Partial, payload: bytes) -> None:
        if self.codec == "vp8":
            body = payload[vp8_descriptor_size(payload) :]
            if not partial.chunks and body:
                partial.keyframe = not (body[0] & 0x01)
            partial.chunks.append(body)
            return
        if not payload:
            raise ValueError("empty H.264 payload")
        nal_type = payload[0] & 0x1F
        if 1 <= nal_type <= 23:
            partial.chunks.append(START_CODE + payload)
            partial.keyframe |= nal_type == 5
        elif nal_type == 24:  # STAP-A
            i = 1
            while i + 2 <= len(payload):
                size = int.from_bytes(payload[i : i + 2], "big")
                i += 2
                if size == 0 or i + size > len(payload):
                    raise ValueError("truncated STAP-A")
                nal = payload[i : i + size]
                partial.chunks.append(START_CODE + nal)
                partial.keyframe |= nal[0] & 0x1F == 5
                i += size
        elif nal_type == 28:  # FU-A
            if len(payload) < 2:
                raise ValueError("truncated FU-A")
            header = payload[1]
            original = header & 0x1F
            if header & 0x80:
                partial.chunks.append(START_CODE + bytes([(payload[0] & 0xE0) | original]))
                partial.keyframe |= original == 5
            elif not partial.chunks:
                raise ValueError("FU-A continuation without its start")
            partial.chunks.append(payload[2:])
        else:
            raise ValueError(f"unsupported H.264 packetization (NAL type {nal_type})")

    def _finish(self, partial: _Partial) -> EncodedFrame | None:
        data = b"".join(partial.chunks)
        if not data:
            self._drop(partial)
            return None
        if self._need_keyframe and not partial.keyframe:
            self._drop(partial)
            return None
        self._need_keyframe = False
        frame = EncodedFrame(data, partial.timestamp, partial.keyframe, partial.arrival, self._after_loss)
        self._after_loss = False
        self.stats.frames += 1
        self.stats.keyframes += partial.keyframe
        return frame

    def _lost(self, gap: bool) -> None:
        """A packet is missing: its frame is unusable and so (video) is every frame until a keyframe."""
        self._lost_since_last_frame = True
        if self._partial is not None:
            self._partial.intact = False
        if gap:
            self._after_loss = True
        if self.video:
            self._need_keyframe = True

    def _drop(self, partial: _Partial) -> None:
        self.stats.dropped_frames += 1
        if self.stats.frames:  # losing the very start of a stream is not a gap in the recording
            self._after_loss = True
        if self.video:
            self._need_keyframe = True

    def _emit_audio(self, packet: _Packet) -> list[EncodedFrame]:
        after_loss = self._after_loss
        self._after_loss = False
        self._lost_since_last_frame = False
        if not packet.payload:
            return []
        self.stats.frames += 1
        self.stats.keyframes += 1
        return [EncodedFrame(packet.payload, packet.timestamp, True, packet.arrival, after_loss)]

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._need_keyframe
