"""Pure RTP/RTCP building blocks: rewriting, cache, keyframes, audio level, RTCP messages."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from aiortc.rtp import RtcpPacket, RtpPacket

from media import rtp


@dataclass
class Ext:
    audio_level: tuple[bool, int] | None = None
    abs_send_time: int | None = None


@dataclass
class Pkt:
    sequence_number: int
    timestamp: int
    payload: bytes = b"\x10\x00"
    payload_type: int = 96
    ssrc: int = 1
    marker: int = 0
    padding_size: int = 0
    extensions: Ext = field(default_factory=Ext)


def test_rewriter_continues_across_a_source_switch() -> None:
    rw = rtp.SequenceRewriter(90000, initial_seq=1000, initial_ts=5000)
    assert rw.rewrite(40000, 123456, now=10.0) == (1000, 5000)
    assert rw.rewrite(40001, 126456, now=10.033) == (1001, 8000)
    rw.switch()  # another publisher's track behind the same output
    seq, ts = rw.rewrite(7, 999, now=10.533)
    assert seq == 1002
    assert ts == 8000 + int(0.5 * 90000)  # elapsed wall time in clock units
    assert rw.rewrite(8, 999 + 3000, now=10.566) == (1003, ts + 3000)
    assert rw.original_seq(1003) == 8


def test_rewriter_wraps_sequence_and_timestamp() -> None:
    rw = rtp.SequenceRewriter(90000, initial_seq=0xFFFE, initial_ts=0xFFFFFF00)
    out = [rw.rewrite(100 + i, 10 + i * 3000, now=1 + i / 30) for i in range(4)]
    assert [s for s, _ in out] == [0xFFFE, 0xFFFF, 0, 1]
    assert out[1][1] == (0xFFFFFF00 + 3000) & 0xFFFFFFFF
    assert rw.last_seq == 1
    # Input wrap-around too.
    rw2 = rtp.SequenceRewriter(48000, initial_seq=10, initial_ts=0)
    assert rw2.rewrite(0xFFFF, 0, 0.0)[0] == 10
    assert rw2.rewrite(0, 960, 0.02)[0] == 11


def test_rewriter_keeps_reordered_packets_in_place() -> None:
    rw = rtp.SequenceRewriter(90000, initial_seq=500, initial_ts=0)
    rw.rewrite(10, 0, 0.0)
    rw.rewrite(12, 0, 0.01)
    assert rw.rewrite(11, 0, 0.02)[0] == 501
    assert rw.last_seq == 502


def test_seq_helpers() -> None:
    assert rtp.seq_gt(1, 0xFFFF) and not rtp.seq_gt(0xFFFF, 1)
    assert rtp.seq_diff(2, 0xFFFE) == 4 and rtp.seq_diff(0xFFFE, 2) == -4


def test_packet_cache_ring() -> None:
    cache = rtp.PacketCache(8)
    for seq in range(65530, 65536 + 6):
        cache.put(Pkt(seq & 0xFFFF, 0))
    assert cache.get(65535) is not None
    assert cache.get(3) is not None and cache.get(3).sequence_number == 3  # type: ignore[union-attr]
    assert cache.get(65530) is None  # overwritten
    assert cache.get(100) is None
    with pytest.raises(ValueError):
        rtp.PacketCache(100)


def test_vp8_keyframe_detection() -> None:
    # X=1,S=1 / I=1 with 15-bit picture id / VP8 header with P=0 (key frame)
    assert rtp.is_vp8_keyframe(bytes([0x90, 0x80, 0x81, 0x23, 0x10, 0x02, 0x00]))
    assert not rtp.is_vp8_keyframe(bytes([0x90, 0x80, 0x81, 0x23, 0x11, 0x02, 0x00]))  # P=1: inter frame
    assert not rtp.is_vp8_keyframe(bytes([0x80, 0x80, 0x81, 0x23, 0x10]))  # not a partition start
    assert rtp.is_vp8_keyframe(bytes([0x10, 0x50]))  # minimal descriptor
    assert not rtp.is_vp8_keyframe(b"")
    assert rtp.is_keyframe("VP8", bytes([0x10, 0x50]))


def test_h264_keyframe_detection() -> None:
    sps, pps, idr, slice_ = b"\x67\x42\x00\x1f", b"\x68\xce", b"\x65\x88\x84", b"\x41\x9a"
    assert rtp.is_h264_keyframe(idr) and rtp.is_h264_keyframe(sps)
    assert not rtp.is_h264_keyframe(slice_) and not rtp.is_h264_keyframe(pps)
    stap = b"\x18" + len(sps).to_bytes(2, "big") + sps + len(pps).to_bytes(2, "big") + pps
    assert rtp.is_h264_keyframe(stap)
    assert not rtp.is_h264_keyframe(b"\x18" + len(pps).to_bytes(2, "big") + pps)
    assert rtp.is_h264_keyframe(bytes([0x7C, 0x85, 0x00]))  # FU-A start of IDR
    assert not rtp.is_h264_keyframe(bytes([0x7C, 0x05, 0x00]))  # FU-A continuation
    assert not rtp.is_h264_keyframe(bytes([0x7C, 0x81, 0x00]))  # FU-A start of a non-IDR slice
    assert rtp.is_keyframe("h264", idr) and not rtp.is_keyframe("opus", idr)


def test_audio_level_and_one_byte_extensions() -> None:
    assert rtp.parse_audio_level(bytes([0x80 | 30])) == (True, 30)
    assert rtp.parse_audio_level(bytes([127])) == (False, 127)
    with pytest.raises(ValueError):
        rtp.parse_audio_level(b"")
    assert rtp.parse_one_byte_extensions(bytes([0x10, 0x61, 0x00, 0x20, 0x9E])) == [(1, b"a"), (2, b"\x9e")]


def test_writer_output_parses_with_aiortc_and_maps_extension_ids() -> None:
    ids = rtp.ExtensionIds.from_uris([(1, rtp.URI_MID), (4, rtp.URI_AUDIO_LEVEL), (3, rtp.URI_ABS_SEND_TIME)])
    assert ids == rtp.ExtensionIds(mid=1, audio_level=4, abs_send_time=3)
    writer = rtp.RtpWriter(0xDEADBEEF, ids, "7")
    pkt = Pkt(1, 2, payload=b"opus!", payload_type=111, marker=1, extensions=Ext(audio_level=(True, 42)))
    data = writer.build(pkt, 109, 4242, 90000, send_time=0x123456)
    parsed = RtpPacket.parse(data)
    assert (parsed.ssrc, parsed.payload_type, parsed.sequence_number, parsed.timestamp) == (
        0xDEADBEEF,
        109,
        4242,
        90000,
    )
    assert parsed.marker == 1 and parsed.payload == b"opus!"
    assert data[12:14] == b"\xbe\xde"
    words = int.from_bytes(data[14:16], "big")
    elements = dict(rtp.parse_one_byte_extensions(data[16 : 16 + 4 * words]))
    assert elements == {1: b"7", 3: b"\x12\x34\x56", 4: bytes([0x80 | 42])}
    # Extensions the output did not negotiate are dropped; padding is kept.
    bare = rtp.RtpWriter(5, rtp.ExtensionIds(), None)
    padded = Pkt(9, 9, payload=b"", padding_size=4, extensions=Ext(audio_level=(False, 3)))
    parsed = RtpPacket.parse(bare.build(padded, 96, 1, 2))
    assert not parsed.extensions.mid and parsed.padding_size == 4 and len(parsed.payload) == 0
    # RTX: own ssrc, payload prefixed with the original sequence number.
    rtx = RtpPacket.parse(writer.build(pkt, 110, 7, 90000, ssrc=99, payload=b"\x10\x92" + pkt.payload))
    assert rtx.ssrc == 99 and rtx.payload[:2] == b"\x10\x92"


def test_writer_shortcut_for_send_time_only_packets_equals_the_general_layout() -> None:
    ids = rtp.ExtensionIds.from_uris([(1, rtp.URI_MID), (3, rtp.URI_ABS_SEND_TIME)])
    video = Pkt(1, 2, payload=b"vp8 payload", payload_type=96, marker=1)
    for mid in ("0", "12", "123", "abcd", "a" * 16):  # every padding length
        writer = rtp.RtpWriter(77, ids, mid)
        for send_time in (0, 1, 0xABCDEF, 0xFFFFFF):
            data = writer.build(video, 98, 65535, 0xFFFFFFFF, send_time=send_time)
            general = writer._extensions(None, send_time)
            assert data[12:] == general + video.payload
            parsed = RtpPacket.parse(data)
            assert (parsed.ssrc, parsed.payload_type, parsed.marker, parsed.payload) == (77, 98, 1, video.payload)
            elements = dict(rtp.parse_one_byte_extensions(data[16 : 16 + 4 * int.from_bytes(data[14:16], "big")]))
            assert elements == {1: mid.encode(), 3: send_time.to_bytes(3, "big")}


def test_sender_report_round_trip_and_aiortc_agrees() -> None:
    block = rtp.ReportBlock(ssrc=7, fraction_lost=25, packets_lost=-3, highest_sequence=70000, jitter=12, lsr=5, dlsr=6)
    sr = rtp.SenderReport(
        ssrc=1,
        ntp_timestamp=rtp.ntp_from_unix(1.7e9),
        rtp_timestamp=123,
        packet_count=4,
        octet_count=5,
        reports=(block,),
    )
    data = rtp.build_sr(sr)
    assert rtp.parse_rtcp(data) == [sr]
    (theirs,) = RtcpPacket.parse(data)
    assert theirs.ssrc == 1 and theirs.sender_info.rtp_timestamp == 123 and theirs.reports[0].packets_lost == -3
    rr = rtp.ReceiverReport(ssrc=3, reports=(block,))
    assert rtp.parse_rtcp(rtp.build_rr(rr) + rtp.build_sdes_cname(3, "x")) == [rr]


def test_nack_build_and_parse() -> None:
    lost = [65534, 65535, 0, 5, 40]
    data = rtp.build_nack(1, 2, lost)
    (msg,) = rtp.parse_rtcp(data)
    assert isinstance(msg, rtp.Nack) and msg.media_ssrc == 2
    assert sorted(msg.lost) == sorted(lost)
    (theirs,) = RtcpPacket.parse(data)
    assert sorted(theirs.lost) == sorted(lost)


def test_pli_fir_remb() -> None:
    assert rtp.parse_rtcp(rtp.build_pli(1, 2)) == [rtp.Pli(1, 2)]
    assert rtp.parse_rtcp(rtp.build_fir(1, 9, 3)) == [rtp.Fir(1, (9,))]
    (remb,) = rtp.parse_rtcp(rtp.build_remb(1, 1_234_567, [5, 6]))
    assert isinstance(remb, rtp.Remb) and remb.ssrcs == (5, 6)
    assert abs(remb.bitrate - 1_234_567) < 1_234_567 / 2**17
    assert rtp.parse_remb_fci(bytes(RtcpPacket.parse(rtp.build_remb(1, 50_000, [5]))[0].fci)) == (
        50_000,
        (5,),
    )


def test_rtt_from_report_block() -> None:
    now = rtp.ntp_from_unix(1000.0)
    sent = rtp.ntp_from_unix(999.5)
    rtt = rtp.rtt_from_report(rtp.compact_ntp(sent), int(0.2 * 65536), rtp.compact_ntp(now))
    assert rtt is not None and abs(rtt - 0.3) < 0.001
    assert rtp.rtt_from_report(0, 0, rtp.compact_ntp(now)) is None


def test_audio_level_meter_hysteresis_and_talk_time() -> None:
    meter = rtp.AudioLevelMeter()
    t = 0.0
    changes = []
    for _ in range(50):  # 1 s of loud audio
        t += 0.02
        c = meter.add(10, t)
        if c is not None:
            changes.append((c, t))
    assert changes and changes[0][0] is True and meter.speaking
    # A short dip does not stop speaking.
    for _ in range(5):
        t += 0.02
        assert meter.add(127, t) is None
    for _ in range(10):
        t += 0.02
        meter.add(10, t)
    for _ in range(60):  # 1.2 s of silence
        t += 0.02
        c = meter.add(127, t)
        if c is not None:
            changes.append((c, t))
    assert [c for c, _ in changes] == [True, False] and not meter.speaking
    assert 1100 <= meter.talk_time_ms(t) <= 1500
    assert meter.last_segment_ms == meter.talk_time_ms(t)  # one stretch of speech so far
    before = meter.talk_time_ms(t)
    for _ in range(30):  # a second stretch: the segment is its own length, the talk time the sum
        t += 0.02
        meter.add(10, t)
    assert meter.tick(t + 1.0) is False
    assert 300 <= meter.last_segment_ms <= 700
    assert meter.talk_time_ms(t) - before - meter.last_segment_ms in (0, 1)  # rounding to whole ms


def test_bitrate_meter() -> None:
    meter = rtp.BitrateMeter()
    for i in range(100):
        meter.add(1000, i / 50)  # 50 kB/s = 400 kbit/s
    assert 350_000 <= meter.bps <= 450_000


def _sr(ssrc: int, sent: float, rtp_time: int) -> rtp.SenderReport:
    return rtp.SenderReport(ssrc, rtp.ntp_from_unix(sent), rtp_time, 0, 0)


def test_sender_clock_holds_still_when_one_report_is_handled_late() -> None:
    clock = rtp.SenderClock()
    assert clock.rtp_at(1000.0, 90000) is None
    skew = 3.25  # the sender's clock is behind ours; the trip takes 2 ms
    for k in range(5):
        sent = 100.0 + k
        clock.add(_sr(7, sent, 90000 * k), arrival=sent + skew + 0.002)
    expected = clock.rtp_at(105.5 + skew, 90000)
    assert expected is not None and abs(expected - 90000 * 5.5) <= 90000 * 0.0021
    # the next SR waited 40 ms in a busy loop before it was handled: the mapping does not move
    clock.add(_sr(7, 105.0, 90000 * 5), arrival=105.0 + skew + 0.040)
    assert clock.rtp_at(105.5 + skew, 90000) == expected
    # a sender whose RTP clock runs at its nominal rate keeps mapping from its latest SR
    clock.add(_sr(7, 106.0, 90000 * 6 + 45), arrival=106.0 + skew + 0.002)
    assert clock.rtp_at(106.5 + skew, 90000) == (expected + 90000 + 45) & 0xFFFFFFFF


def test_sender_clock_starts_over_for_a_new_source_or_a_clock_that_was_set() -> None:
    clock = rtp.SenderClock()
    clock.add(_sr(7, 100.0, 0), arrival=100.001)
    clock.add(_sr(7, 101.0, 90000), arrival=101.001 + 30.0)  # the sender's clock was set back 30 s
    assert clock.rtp_at(101.001 + 30.0, 90000) == 0 + 90000
    clock.add(_sr(9, 50.0, 1234), arrival=200.0)  # another source
    assert clock.ssrc == 9
    assert clock.rtp_at(200.0, 90000) == 1234
    # wraps at 32 bits
    clock.add(_sr(9, 51.0, 0xFFFFFFFF), arrival=201.0)
    assert clock.rtp_at(202.0, 90000) == 90000 - 1
