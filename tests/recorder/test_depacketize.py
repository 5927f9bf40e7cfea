"""Depacketizer: real VP8/H.264/Opus RTP back to the encoded frames, with reordering and loss."""

from __future__ import annotations

import itertools
import random

import pytest

from recorder.depacketize import Depacketizer, EncodedFrame, ReorderBuffer, vp8_dimensions

from .media import Encoded, Rtp, packetize, shuffle_nearby


def run(codec: str, packets: list[Rtp]) -> tuple[Depacketizer, list[EncodedFrame]]:
    dep = Depacketizer(codec)
    frames: list[EncodedFrame] = []
    for i, p in enumerate(packets):
        frames += dep.push(p.seq, p.timestamp, p.marker, p.payload, 1000.0 + i * 0.001)
    frames += dep.flush()
    return dep, frames


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_video_frames_come_back_byte_exact(codec: str, request: pytest.FixtureRequest) -> None:
    source: list[Encoded] = request.getfixturevalue(f"{codec}_frames")[:90]
    packets = packetize(codec, source)
    assert len(packets) > len(source)  # some frames span several packets
    dep, frames = run(codec, packets)
    assert len(frames) == len(source)
    assert [f.keyframe for f in frames] == [e.keyframe for e in source]
    if codec == "vp8":
        assert [f.data for f in frames] == [e.data for e in source]
        assert vp8_dimensions(frames[0].data) == (320, 240)
    else:
        # aiortc's packetiser drops access unit delimiters; every other NAL survives
        assert all(f.data.startswith(b"\x00\x00\x00\x01") for f in frames)
    steps = {b.timestamp - a.timestamp for a, b in itertools.pairwise(frames)}
    assert all(2900 <= s <= 3100 for s in steps)  # 30 fps at 90 kHz (webm keeps ms), across the wrap
    assert dep.stats.lost_packets == 0 and dep.stats.dropped_frames == 0


def test_opus_one_packet_one_frame(opus_frames: list[Encoded]) -> None:
    packets = packetize("opus", opus_frames[:100])
    _, frames = run("opus", packets)
    assert [f.data for f in frames] == [e.data for e in opus_frames[:100]]
    assert all(f.keyframe for f in frames)


def test_reordered_packets_are_put_back_in_order(vp8_frames: list[Encoded]) -> None:
    packets = packetize("vp8", vp8_frames[:90])
    shuffled = shuffle_nearby(packets, random.Random(7), span=6)
    assert shuffled != packets
    dep, frames = run("vp8", shuffled)
    assert [f.data for f in frames] == [e.data for e in vp8_frames[:90]]
    assert dep.stats.lost_packets == 0


def test_loss_drops_the_frame_and_waits_for_the_next_keyframe(vp8_frames: list[Encoded]) -> None:
    source = vp8_frames[:90]
    packets = packetize("vp8", source)
    victim = next(i for i, p in enumerate(packets) if 0.5 <= p.time)  # a delta frame at 0.5 s
    dep, frames = run("vp8", packets[:victim] + packets[victim + 1 :])
    times = [round((f.timestamp - frames[0].timestamp) / 90000, 3) for f in frames]
    # frames from 0.5 s until the keyframe at 1.0 s are gone, nothing else
    assert 0.5 not in times and 0.967 not in times and 1.0 in times and 0.467 in times
    after = next(f for f in frames if round((f.timestamp - frames[0].timestamp) / 90000, 3) == 1.0)
    assert after.keyframe and after.after_loss
    assert sum(f.after_loss for f in frames) == 1
    assert dep.stats.lost_packets == 1
    assert len(frames) == len(source) - 15


def test_h264_fu_a_loss_drops_the_access_unit(h264_frames: list[Encoded]) -> None:
    packets = packetize("h264", h264_frames[:60])
    # a middle fragment of the first IDR: nothing can be written before the second IDR
    middle = next(i for i, p in enumerate(packets) if p.payload[0] & 0x1F == 28 and not p.payload[1] & 0xC0)
    _dep, frames = run("h264", packets[:middle] + packets[middle + 1 :])
    assert frames and frames[0].keyframe
    assert round((frames[0].timestamp - (packets[0].timestamp + (1 << 32))) / 90000, 3) == 1.0
    assert len(frames) == 30


def test_reorder_buffer_gives_up_after_its_delay() -> None:
    from recorder.depacketize import _Packet

    buf = ReorderBuffer(window=64, delay=0.1)
    out, _ = buf.push(_Packet(10, 0, True, b"a", 0.0))
    assert out == []  # the start is held for ``delay``: 9 might still come
    out, _ = buf.push(_Packet(9, 0, True, b"z", 0.005))
    assert out == [] and [p.seq for p in buf.poll(0.11) if p] == [9, 10]
    out, _ = buf.push(_Packet(12, 0, True, b"c", 0.12))
    assert out == []  # 11 may still come
    out, late = buf.push(_Packet(11, 0, True, b"b", 0.13))
    assert [p.seq for p in out if p] == [11, 12] and late == 0
    out, _ = buf.push(_Packet(14, 0, True, b"e", 0.14))
    assert out == [] and buf.poll(0.16) == []
    released = buf.poll(0.3)
    assert released[0] is None and [p.seq for p in released if p] == [14]
    out, late = buf.push(_Packet(13, 0, True, b"d", 0.35))
    assert out == [] and late == 1
