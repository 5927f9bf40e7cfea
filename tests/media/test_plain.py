"""Plain RTP outputs (media/plain.py) from a real room: what a recorder on the node's private network receives."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiortc.contrib.media import MediaPlayer

from media import events as ev
from media.room import Room, RoomSettings
from media.rtp import SenderReport, build_pli, is_rtcp, is_vp8_keyframe, parse_rtcp, parse_rtp

from .peers import Harness, info, wait_for


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.rtp: dict[int, list[tuple[int, bytes]]] = {}  # ssrc -> (seq, payload)
        self.reports: list[SenderReport] = []
        self.source: tuple[str, int] | None = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.source = addr
        if is_rtcp(data):
            self.reports += [m for m in parse_rtcp(data) if isinstance(m, SenderReport)]
        else:
            packet = parse_rtp(data)
            self.rtp.setdefault(packet.ssrc, []).append((packet.sequence_number, packet.payload))


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness(lambda on_event: Room("room-1", RoomSettings(), node_id="test", on_event=on_event))
    yield h
    await h.close()


async def test_a_recorder_gets_each_track_as_plain_rtp_and_only_its_own_rtcp_is_heard(
    harness: Harness, vp8_file: Path
) -> None:
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        alice = await harness.join(info("alice"))
        player = MediaPlayer(str(vp8_file), decode=False, loop=True)
        assert player.video is not None
        await alice.publish([("camera", player.video)])
        port = transport.get_extra_info("sockname")[1]
        recorder = replace(info("rec", role="recorder", publish="", hidden=True), plain=("127.0.0.1", port))
        await harness.room.join(recorder)
        await wait_for(
            lambda: bool(harness.of_type(ev.PlainTracks)) and bool(harness.of_type(ev.PlainTracks)[-1].tracks)
        )
        (desc,) = harness.of_type(ev.PlainTracks)[-1].tracks.values()
        assert desc["participant_id"] == "alice" and desc["source"] == "camera" and desc["kind"] == "video"
        ssrc = desc["ssrc"]
        assert isinstance(ssrc, int)
        await wait_for(lambda: len(sink.rtp.get(ssrc, [])) > 30 and any(r.ssrc == ssrc for r in sink.reports))
        seqs = [s for s, _ in sink.rtp[ssrc]]
        assert is_vp8_keyframe(sink.rtp[ssrc][0][1])  # starts at a keyframe
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # contiguous, in order on loopback
        assert sink.source is not None
        # A PLI from anyone else is ignored; from the recorder's own address it reaches the publisher.
        (slot,) = harness.room.participant("rec").subscriber.slots  # type: ignore[union-attr]
        track = slot.track
        assert track is not None
        await asyncio.sleep(1.1)  # out of the PLI window of the subscription's own request
        before = track.plis_sent
        pli = build_pli(1, ssrc)
        stranger.sendto(pli, sink.source)
        await asyncio.sleep(0.3)
        assert track.plis_sent == before
        transport.sendto(pli, sink.source)
        await wait_for(lambda: track.plis_sent == before + 1, within=3)
        # Leaving closes the output's socket.
        await harness.room.leave("rec")
        await asyncio.sleep(0.3)
        count = len(sink.rtp[ssrc])
        await asyncio.sleep(0.5)
        assert len(sink.rtp[ssrc]) == count
        player.video.stop()
    finally:
        stranger.close()
        transport.close()
