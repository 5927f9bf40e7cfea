"""Test media for the recorder tests: real encoded VP8/H.264/Opus made by ffmpeg, cut into RTP.

Encoding happens here, in the tests, never in the recorder. RTP payloads for video come from
aiortc's public packetisers (``Vp8Encoder.pack`` / ``H264Encoder.pack``); an Opus packet is one
RTP payload.
"""

from __future__ import annotations

import fractions
import random
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from recorder.clock import TrackClock
from recorder.depacketize import Depacketizer, EncodedFrame
from recorder.writer import SegmentWriter

CLOCK = {"vp8": 90000, "h264": 90000, "opus": 48000}
NTP_UNIX_OFFSET = 2_208_988_800


def ffmpeg(out: Path, source: str, seconds: float, *codec_args: str) -> Path:
    binary = shutil.which("ffmpeg")
    assert binary is not None, "ffmpeg is not installed"
    subprocess.run(
        [
            binary,
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            source,
            "-t",
            str(seconds),
            *codec_args,
            "-y",
            str(out),
        ],
        check=True,
    )
    return out


def make_vp8(
    out: Path, seconds: float, *, fps: int = 30, gop: int = 30, bitrate: str = "300k", size: str = "320x240"
) -> Path:
    return ffmpeg(
        out,
        f"testsrc=size={size}:rate={fps}",
        seconds,
        "-c:v",
        "libvpx",
        "-b:v",
        bitrate,
        "-g",
        str(gop),
        "-keyint_min",
        str(gop),
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
    )


def make_h264(out: Path, seconds: float, *, fps: int = 30, gop: int = 30) -> Path:
    return ffmpeg(
        out,
        f"testsrc=size=320x240:rate={fps}",
        seconds,
        "-c:v",
        "libx264",
        "-profile:v",
        "baseline",
        "-pix_fmt",
        "yuv420p",
        "-b:v",
        "300k",
        "-g",
        str(gop),
        "-keyint_min",
        str(gop),
        "-sc_threshold",
        "0",
        "-x264-params",
        "repeat-headers=1",
        "-bsf:v",
        "h264_mp4toannexb",
    )


def make_opus(out: Path, seconds: float) -> Path:
    return ffmpeg(
        out,
        "sine=frequency=440:sample_rate=48000",
        seconds,
        "-c:a",
        "libopus",
        "-b:a",
        "32k",
        "-frame_duration",
        "20",
        "-ac",
        "1",
    )


@dataclass(frozen=True, slots=True)
class Encoded:
    data: bytes
    time: float  # media time, seconds from the first packet
    keyframe: bool


def demux(path: Path) -> list[Encoded]:
    out: list[Encoded] = []
    with av.open(str(path)) as container:
        stream = container.streams[0]
        first: float | None = None
        for packet in container.demux(stream):
            if not packet.size or packet.pts is None:
                continue
            t = float(packet.pts * packet.time_base)
            first = t if first is None else first
            out.append(Encoded(bytes(packet), t - first, packet.is_keyframe))
    return out


@dataclass(frozen=True, slots=True)
class Rtp:
    seq: int
    timestamp: int
    marker: bool
    payload: bytes
    time: float  # media time of its frame


def packetize(codec: str, frames: Iterable[Encoded], *, seq0: int = 65000, ts0: int = 4_294_000_000) -> list[Rtp]:
    """RTP packets of a stream (sequence numbers and timestamps start near their wrap on purpose)."""
    rate = CLOCK[codec]
    out: list[Rtp] = []
    seq = seq0
    encoder: Vp8Encoder | H264Encoder | None = (
        Vp8Encoder() if codec == "vp8" else H264Encoder() if codec == "h264" else None
    )
    for frame in frames:
        ts = (ts0 + round(frame.time * rate)) & 0xFFFFFFFF
        if encoder is None:
            payloads = [frame.data]
        else:
            packet = av.Packet(frame.data)
            packet.pts = 0
            packet.time_base = fractions.Fraction(1, 90000)
            payloads, _ = encoder.pack(packet)
        for i, payload in enumerate(payloads):
            out.append(Rtp(seq & 0xFFFF, ts, i == len(payloads) - 1, payload, frame.time))
            seq += 1
    return out


def shuffle_nearby(packets: list[Rtp], rng: random.Random, span: int = 4) -> list[Rtp]:
    """Reorder packets locally (each moves at most ``span`` places), as a network might."""
    keyed = sorted(enumerate(packets), key=lambda p: p[0] + rng.uniform(0, span))
    return [p for _, p in keyed]


def ntp(unix: float) -> int:
    return int((unix + NTP_UNIX_OFFSET) * (1 << 32))


@dataclass
class FedTrack:
    track_id: str
    codec: str
    packets: list[Rtp]
    ts0: int = 4_294_000_000


def feed(
    writer: SegmentWriter,
    tracks: list[FedTrack],
    base_wall: float,
    *,
    drop: dict[str, list[tuple[float, float]]] | None = None,
) -> dict[str, Depacketizer]:
    """Depacketize and write several tracks interleaved by media time, like the recorder does.

    Packets whose media time falls in a ``drop`` interval of their track never arrive. The clock
    mapping comes from a sender report saying RTP ``ts0`` was at ``base_wall``.
    """
    deps = {t.track_id: Depacketizer(t.codec) for t in tracks}
    clocks = {t.track_id: TrackClock(CLOCK[t.codec]) for t in tracks}
    for t in tracks:
        clocks[t.track_id].sender_report(ntp(base_wall), t.ts0)
    merged = sorted(
        ((p.time, t.track_id, i, p) for t in tracks for i, p in enumerate(t.packets)), key=lambda x: (x[0], x[1], x[2])
    )

    def write(tid: str, frames: list[EncodedFrame]) -> None:
        for frame in frames:
            clock = clocks[tid]
            clock.observe(frame.timestamp, frame.arrival)
            writer.write(tid, frame, clock.wall(frame.timestamp))

    for at, tid, _, p in merged:
        lost = any(a <= p.time < b for a, b in (drop or {}).get(tid, []))
        if lost:
            continue
        arrival = base_wall + at
        write(tid, deps[tid].push(p.seq, p.timestamp, p.marker, p.payload, arrival))
    for tid, dep in deps.items():
        write(tid, dep.flush())
    return deps


def iter_frames(path: Path) -> Iterator[tuple[str, float]]:
    with av.open(str(path)) as container:
        for frame in container.decode(*container.streams):
            yield (frame.__class__.__name__, float(frame.time or 0.0))
