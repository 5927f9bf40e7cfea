"""aiortc internals the forwarder relies on, and forwarding over real aiortc peers on loopback.

If one of these tests fails after an aiortc/aioice upgrade, media/forwarding.py needs porting.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiortc.codecs.h264
import aiortc.codecs.opus
import aiortc.codecs.vpx
import aiortc.rtcrtpsender
import pylibsrtp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from prometheus_client import REGISTRY

from media import forwarding
from media.forwarding import ReceiverTap, SenderTap, check_internals, configure_ice, observe_receiver_rtcp
from media.room import Room, RoomSettings
from media.rtp import SenderReport, is_h264_keyframe, is_vp8_keyframe, parse_rtcp

from .peers import Harness, info, wait_for


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness(lambda on_event: Room("r1", RoomSettings(), node_id="test", on_event=on_event))
    yield h
    await h.close()


async def test_internals_present() -> None:
    await check_internals()


async def test_taps_replace_aiortc_methods_on_the_instance() -> None:
    pc = RTCPeerConnection(forwarding.rtc_configuration())
    try:
        t = pc.addTransceiver("video", direction="sendrecv")

        def on_rtp(packet: Any, arrival: float) -> None:
            pass

        async def on_rtcp(data: bytes) -> None:
            pass

        receiver_tap = ReceiverTap(t.receiver, on_rtp, lambda sr: None)
        sender_tap = SenderTap(t, on_rtcp, lambda: None)
        assert t.receiver._handle_rtp_packet == receiver_tap._handle_rtp
        assert t.receiver._handle_rtcp_packet == receiver_tap._handle_rtcp
        assert t.sender._run_rtp == sender_tap._idle_rtp
        assert t.sender._run_rtcp == sender_tap._run_rtcp
        assert t.sender._handle_rtcp_packet == sender_tap._handle_rtcp
        assert sender_tap.ssrc == t.sender._ssrc and sender_tap.rtx_ssrc == t.sender._rtx_ssrc
        sender_tap.set_msid("alice", "camera:TR_1")
        await pc.setLocalDescription(await pc.createOffer())
        assert "a=msid:alice camera:TR_1" in pc.localDescription.sdp
    finally:
        await pc.close()


async def test_rtc_configuration_has_no_ice_servers() -> None:
    assert forwarding.rtc_configuration().iceServers == []


async def _publish_file(h: Harness, path: Path, codec: str | None = None) -> tuple[Any, MediaPlayer]:
    pub = await h.join(info("alice"))
    player = MediaPlayer(str(path), decode=False, loop=True)
    assert player.video is not None
    await pub.publish([("camera", player.video)], video_codec=codec)
    return pub, player


async def _forwarding_to_bob(h: Harness, path: Path, codec: str | None = None) -> tuple[Any, Any, MediaPlayer]:
    """alice publishes ``path``; returns alice, bob once he has received 30 of its packets, and alice's player."""
    alice, player = await _publish_file(h, path, codec)
    bob = await h.join(info("bob"))
    await wait_for(lambda: any(r.packets > 30 for r in bob.received.values()), within=15)
    return alice, bob, player


async def test_raw_packets_reach_subscriber_with_its_ssrc_and_payload_type(harness: Harness, vp8_file: Path) -> None:
    _, player = await _publish_file(harness, vp8_file)
    bob = await harness.join(info("bob"))
    await wait_for(lambda: any(r.packets > 60 for r in bob.received.values()), within=15)
    (rec,) = bob.by_publisher("alice", "video")
    slot = bob.participant and harness.room.participant("bob").subscriber
    assert slot is not None
    (out,) = [s for s in slot.slots if s.track is not None]
    # The subscriber sees the SFU sender's SSRC and the payload type negotiated on its own m-section.
    assert rec.ssrc == out.tap.ssrc
    vp8 = [c for c in out.tap.codecs if c.name == "vp8"]
    assert rec.payload_types == {vp8[0].payload_type}
    assert rec.label.startswith("camera:TR_")
    # It starts at a keyframe and sequence numbers are contiguous.
    assert rec.first_payload is not None and is_vp8_keyframe(rec.first_payload)
    seqs = sorted(rec.seqs)
    assert len(seqs) == seqs[-1] - seqs[0] + 1
    forwarded = REGISTRY.get_sample_value("classmesh_media_forwarded_packets_total", {"node": "test", "kind": "video"})
    assert forwarded is not None and forwarded >= rec.packets
    player.video.stop()


async def test_outputs_send_below_aiortc_once_connected_and_carry_no_bandwidth_estimator(
    harness: Harness, vp8_file: Path
) -> None:
    _, bob, player = await _forwarding_to_bob(harness, vp8_file)
    subscriber = harness.room.participant("bob").subscriber
    assert subscriber is not None
    (out,) = [s for s in subscriber.slots if s.track is not None]
    assert isinstance(out.tap, SenderTap)
    # the sendonly transceiver's receiver never gets RTP: its 1000-bucket estimator is gone
    assert out.transceiver is not None
    assert out.transceiver.receiver.__dict__["_RTCRtpReceiver__remote_bitrate_estimator"] is None
    # the direct path is open on a connected output, and what it sends is decrypted by the peer like the rest
    before = sum(r.packets for r in bob.received.values())
    calls = 0
    original = out.tap.send_rtp_now

    def counting(data: bytes) -> bool:
        nonlocal calls
        sent = original(data)
        calls += sent
        return sent

    out.tap.send_rtp_now = counting  # type: ignore[method-assign]
    await wait_for(lambda: calls >= 30 and sum(r.packets for r in bob.received.values()) >= before + 30, within=10)
    # aioice nominates another pair (a check from a new address after a NAT rebinding): the route follows it
    nominated = out.tap._sender.transport.transport._connection._nominated
    nominated[1] = copy.copy(nominated[1])
    before = sum(r.packets for r in bob.received.values())
    await wait_for(lambda: sum(r.packets for r in bob.received.values()) >= before + 10, within=10)
    assert out.tap._route is not None and out.tap._route[4] is nominated[1]
    # a packet libsrtp refuses (too long for its buffer) is dropped for this output alone, not raised into the fan-out
    assert original(b"\x80\x60" + bytes(1500)) is False and out.tap.protect_failures == 1
    before = sum(r.packets for r in bob.received.values())
    await wait_for(lambda: sum(r.packets for r in bob.received.values()) >= before + 10, within=10)
    player.video.stop()


async def test_publisher_packets_arrive_below_aiortc_and_bad_datagrams_change_nothing(
    harness: Harness, vp8_file: Path
) -> None:
    alice, _, player = await _forwarding_to_bob(harness, vp8_file)
    (track,) = harness.room.participant("alice").published_tracks()
    assert track._tap is not None
    receiver = track._tap._receiver
    direct = forwarding.DirectReceive.of(receiver.transport)
    assert direct.taps[receiver] is track._tap
    # once SRTP is up the publisher's RTP takes the direct path: aiortc's queue stays empty
    before, direct_before = track.packets, direct.packets
    await wait_for(lambda: direct.packets >= direct_before + 30, within=10)
    assert track.packets - before >= direct.packets - direct_before - 1
    queue = receiver.transport.transport._connection._queue
    assert queue.empty()
    # what a hostile or broken peer might send on the same socket: too short, not decryptable, RTCP-shaped.
    # None of it raises, reaches the track, or is counted as direct.
    player.video.stop()
    await asyncio.sleep(0.2)
    counted, direct_counted = track.packets, direct.packets
    for junk in (b"\x80", b"\x80\x60" + bytes(30), b"\x80\xc8" + bytes(30)):
        direct.data_received(junk, 1)
    assert track.packets == counted and direct.packets == direct_counted
    # the short and the RTCP-shaped ones went to aiortc's path (which drops them), in arrival order
    await asyncio.sleep(0.05)
    assert queue.empty()
    # a packet from the publisher itself (right keys) with a 2-byte abs-send-time: dropped as malformed
    (sent,) = alice.pub.getTransceivers()
    ext_id = forwarding.transceiver_extensions(sent).abs_send_time
    assert ext_id
    seq = (receiver.__dict__["_RTCRtpReceiver__nack_generator"].max_seq + 1) & 0xFFFF
    header = bytes([0x90, next(iter(track.codecs))]) + seq.to_bytes(2, "big") + bytes(4)
    header += track.media_ssrc.to_bytes(4, "big") + b"\xbe\xde\x00\x01" + bytes([ext_id << 4 | 1, 1, 2, 0])
    direct.data_received(sent.sender.transport._tx_srtp.protect(header + b"payload"), 1)
    assert direct.malformed == 1 and track.packets == counted and track._tap.failures == 0


async def test_publisher_feedback_leaves_from_the_direct_path(harness: Harness, vp8_file: Path) -> None:
    """REMB, and NACKs for packets lost on the way in, reach the publisher while its RTP takes the direct path."""
    alice, player = await _publish_file(harness, vp8_file)
    (track,) = harness.room.participant("alice").published_tracks()
    assert track._tap is not None
    dtls = track._tap._receiver.transport
    direct = forwarding.DirectReceive.of(dtls)
    await wait_for(lambda: direct.packets > 30, within=15)
    await wait_for(lambda: len(alice.rembs) > 0, within=10)
    assert alice.nacks == []
    # the network loses every 10th RTP datagram from the publisher
    connection = dtls.transport._connection
    arrived = connection.data_received
    seen = 0

    def lossy(data: bytes, component: int) -> None:
        nonlocal seen
        if 127 < data[0] < 192 and not 192 <= data[1] <= 208:
            seen += 1
            if seen % 10 == 0:
                return
        arrived(data, component)

    connection.data_received = lossy
    streams = track._tap._receiver.__dict__["_RTCRtpReceiver__remote_streams"]
    await wait_for(lambda: len(alice.nacks) >= 3, within=10)
    assert streams  # aiortc's receiver statistics (behind its receiver reports) are kept on this path too
    player.video.stop()


def test_srtp_protector_matches_pylibsrtp_and_keeps_its_errors() -> None:
    key = bytes(range(30))

    def session() -> pylibsrtp.Session:
        return pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))

    reference, fast = session(), session()
    protect = forwarding.srtp_protector(fast)
    for seq in range(40):
        packet = bytes([0x80, 96]) + seq.to_bytes(2, "big") + bytes(8) + bytes([seq]) * (seq * 30)
        assert protect(packet) == reference.protect(packet)
    with pytest.raises(pylibsrtp.Error):  # the same sequence number again: libsrtp's replay check
        protect(packet)
    with pytest.raises(ValueError):
        protect(bytes([0x80, 96, 0, 99]) + bytes(1500))


async def test_a_sender_tap_that_is_not_connected_leaves_the_packet_to_aiortc() -> None:
    pc = RTCPeerConnection(forwarding.rtc_configuration())
    try:
        t = pc.addTransceiver("video", direction="sendonly")

        async def on_rtcp(data: bytes) -> None:
            pass

        tap = SenderTap(t, on_rtcp, lambda: None)
        assert tap.send_rtp_now(b"\x80" + bytes(20)) is False
    finally:
        await pc.close()


async def test_h264_is_forwarded_from_a_keyframe(harness: Harness, h264_file: Path) -> None:
    _, bob, player = await _forwarding_to_bob(harness, h264_file, "H264")
    (rec,) = bob.by_publisher("alice", "video")
    assert rec.first_payload is not None and is_h264_keyframe(rec.first_payload)
    track = harness.room.participant("alice").published_tracks()[0]
    assert "h264" in {c.name for c in track.codecs.values()}
    player.video.stop()


async def test_no_video_decoder_or_encoder_is_ever_created(
    harness: Harness, vp8_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[str] = []

    def forbid(name: str) -> Callable[..., Any]:
        def init(*args: Any, **kwargs: Any) -> None:
            created.append(name)
            raise AssertionError(f"{name} created")

        return init

    for cls in (aiortc.codecs.vpx.Vp8Decoder, aiortc.codecs.h264.H264Decoder, aiortc.codecs.opus.OpusDecoder):
        monkeypatch.setattr(cls, "__init__", forbid(cls.__name__))
    for cls in (aiortc.codecs.vpx.Vp8Encoder, aiortc.codecs.h264.H264Encoder):
        monkeypatch.setattr(cls, "encode", forbid(f"{cls.__name__}.encode"))
    real_get_encoder = aiortc.rtcrtpsender.get_encoder
    encoders: list[str] = []

    def get_encoder(codec: Any) -> Any:
        encoders.append(codec.mimeType)
        return real_get_encoder(codec)

    monkeypatch.setattr(aiortc.rtcrtpsender, "get_encoder", get_encoder)

    _, player = await _publish_file(harness, vp8_file)
    bob = await harness.join(info("bob"))
    carol = await harness.join(info("carol"))
    await wait_for(lambda: all(any(r.packets > 90 for r in c.received.values()) for c in (bob, carol)), within=15)
    assert created == []
    # Only the publishing client asked for a packer (MediaPlayer(decode=False) packs, never encodes).
    assert encoders == ["video/VP8"]
    player.video.stop()


async def test_sender_reports_carry_counts_and_the_forwarded_clock(harness: Harness, vp8_file: Path) -> None:
    _, player = await _publish_file(harness, vp8_file)
    bob = await harness.join(info("bob"))
    reports: list[tuple[float, SenderReport]] = []

    def collect(data: bytes) -> None:
        loop = asyncio.get_running_loop()
        reports.extend((loop.time(), m) for m in parse_rtcp(data) if isinstance(m, SenderReport))

    await wait_for(lambda: bool(bob.received), within=10)
    for t in bob.sub.getTransceivers():
        observe_receiver_rtcp(t.receiver, collect)
    await wait_for(lambda: len(reports) >= 2, within=10)
    (rec,) = bob.by_publisher("alice", "video")
    _, sr = reports[-1]
    assert sr.ssrc == rec.ssrc
    assert sr.packet_count > 0 and sr.octet_count > sr.packet_count
    # The SR's RTP time is on the forwarded timeline: within 1 s of the newest packet received.
    newest = max(ts for _, ts in rec.timestamps[-30:])
    assert abs(((sr.rtp_timestamp - newest + 2**31) % 2**32) - 2**31) < 90000
    player.video.stop()


async def test_port_range_binds_host_candidates_inside_it() -> None:
    configure_ice(["127.0.0.1"], (41000, 41050))
    a = RTCPeerConnection(forwarding.rtc_configuration())
    b = RTCPeerConnection(forwarding.rtc_configuration())
    try:
        a.addTransceiver("audio", direction="sendrecv")
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(RTCSessionDescription(sdp=a.localDescription.sdp, type="offer"))
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(RTCSessionDescription(sdp=b.localDescription.sdp, type="answer"))
        for desc in (a.localDescription.sdp, b.localDescription.sdp):
            candidates = [line for line in desc.splitlines() if line.startswith("a=candidate:")]
            assert candidates
            for line in candidates:
                parts = line.split()
                assert parts[4] == "127.0.0.1"
                assert 41000 <= int(parts[5]) <= 41050
        await wait_for(lambda: a.connectionState == "connected" and b.connectionState == "connected", within=10)
    finally:
        configure_ice(["127.0.0.1"])
        await a.close()
        await b.close()
