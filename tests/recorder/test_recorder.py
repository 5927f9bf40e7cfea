"""Recorder against a real MediaNode on a LocalBus, with an aiortc publisher sending pre-encoded
VP8 + Opus (``MediaPlayer(decode=False)``: nothing is encoded on the live path)."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from core.bus import LocalBus
from core.messages import node_rpc
from core.service import ServiceState
from media.forwarding import rtc_configuration
from media.node import MediaNode, MediaNodeConfig
from recorder.assemble import assemble
from recorder.errors import StorageFullError
from recorder.recorder import Progress, Recorder, RecorderConfig
from recorder.verify import verify_file
from recorder.writer import SegmentInfo, load_manifest

from .media import ffmpeg

NODE = "node-1"
ROOM = "room-1"


@pytest.fixture(scope="module")
def av_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s of VP8 (keyframe every second) + Opus in one WebM file."""
    out = tmp_path_factory.mktemp("pub") / "class.webm"
    return ffmpeg(
        out,
        "testsrc=size=320x240:rate=30",
        20,
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "libvpx",
        "-b:v",
        "500k",
        "-g",
        "30",
        "-keyint_min",
        "30",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-c:a",
        "libopus",
        "-b:a",
        "32k",
        "-shortest",
    )


@pytest.fixture
async def node() -> AsyncIterator[tuple[LocalBus, MediaNode]]:
    bus = LocalBus()
    config = MediaNodeConfig(node_id=NODE, region="test", public_url="http://127.0.0.1", ice_addresses=("127.0.0.1",))
    media_node = MediaNode(config, bus)
    await media_node.start()
    media_node.set_state(ServiceState.SERVING)  # what ServiceHost does after start()
    yield bus, media_node
    await media_node.close()
    await bus.close()


async def publish(bus: LocalBus, player: MediaPlayer, pid: str) -> RTCPeerConnection:
    await bus.request(
        node_rpc(NODE),
        {
            "op": "join",
            "room_id": ROOM,
            "participant_id": pid,
            "identity": pid,
            "name": pid,
            "role": "student",
            "permissions": ["publish_audio", "publish_video", "subscribe"],
        },
    )
    pc = RTCPeerConnection(rtc_configuration())
    assert player.video is not None and player.audio is not None
    video = pc.addTransceiver(player.video, direction="sendonly")
    audio = pc.addTransceiver(player.audio, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sources = {video.mid: "camera", audio.mid: "microphone"}
    reply = await bus.request(
        node_rpc(NODE), {"op": "publish", "participant_id": pid, "sdp": pc.localDescription.sdp, "sources": sources}
    )
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
    return pc


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["plain", "webrtc"])
async def test_recorder_records_a_published_class(
    tmp_path: Path, av_file: Path, node: tuple[LocalBus, MediaNode], transport: str
) -> None:
    bus, media_node = node
    player = MediaPlayer(str(av_file), decode=False)
    publisher = await publish(bus, player, "alice")
    reports: list[Progress] = []
    recorder = Recorder(
        RecorderConfig(
            node_id=NODE,
            room_id=ROOM,
            participant_id="rec-a",
            copy_id="a",
            directory=tmp_path / "a",
            segment_seconds=3.0,
            transport=transport,
        ),
        bus,
        on_progress=reports.append,
    )
    started = time.time()
    await recorder.start()
    subscriber = media_node.rooms[ROOM].participant("rec-a").subscriber
    assert subscriber is not None and subscriber.plain is (transport == "plain")
    await asyncio.sleep(6.0)
    segments = await recorder.close()
    stopped = time.time()
    await recorder.close()  # idempotent
    await publisher.close()
    await asyncio.sleep(0.5)  # aiortc closes the node's side of the publisher in a background task

    assert segments and segments == load_manifest(tmp_path / "a")
    assert len(segments) >= 2  # cut at ~3 s
    assert len(reports) >= 5 and reports[-1].bytes > 100_000 and reports[-1].error is None
    tracks = reports[-1].tracks
    assert {t["kind"] for t in tracks.values()} == {"audio", "video"}
    assert all(t["last_keyframe"] is not None for t in tracks.values() if t["kind"] == "video")
    assert all(abs(d) < 100 for d in reports[-1].clock_drift_ms.values())
    video_time = audio_time = 0.0
    for seg in segments:
        report = verify_file(Path(seg.path))
        assert report.ok, report.problems
        for t in seg.tracks.values():
            assert t.clock == "sr" and t.clamped == 0 and t.packets > 0
            assert t.start is not None and t.end is not None
            assert started - 0.5 <= t.start and t.end <= stopped + 0.5
            if t.kind == "video":
                video_time += t.end - t.start
            else:
                audio_time += t.end - t.start
    # ~6 s recorded; video starts at a keyframe: the next one (<= 1 s after the audio) or one the node still had
    # cached when the recorder's output came up (a keyframe replay: at most 0.5 s old)
    assert 4.5 <= audio_time <= 6.5 and 4.0 <= video_time <= 6.5
    video_start = min(t.start for s in segments for t in s.tracks.values() if t.kind == "video" and t.start)
    audio_start = min(t.start for s in segments for t in s.tracks.values() if t.kind == "audio" and t.start)
    assert -0.6 <= video_start - audio_start <= 1.2
    last = segments[-1].tracks
    v1 = next(t for t in last.values() if t.kind == "video")
    a1 = next(t for t in last.values() if t.kind == "audio")
    # both end when the recorder leaves; what was in flight at that moment differs (loaded CI: ~250 ms)
    assert abs(v1.end - a1.end) < 0.4  # type: ignore[operator]


@pytest.mark.timeout(60)
async def test_a_publisher_leaving_loses_no_tail_of_its_tracks(
    tmp_path: Path, av_file: Path, node: tuple[LocalBus, MediaNode]
) -> None:
    """The node says a publisher's tracks are gone (``plain_tracks``) while their last packets still wait in the
    recorder's socket, which is read only every ``plain_batch_s``: they are recorded before the tracks end."""
    bus, _ = node
    player = MediaPlayer(str(av_file), decode=False)
    publisher = await publish(bus, player, "alice")
    config = RecorderConfig(NODE, ROOM, "rec-a", "a", tmp_path / "a", segment_seconds=3.0)
    recorder = Recorder(config, bus)
    await recorder.start()
    await asyncio.sleep(6.0)  # past the sender-report hold-back: streaming
    # Pause the socket reader (white box: it pins the race) so that the leave finds the last 0.8 s still unread,
    # as it finds up to a batch interval of packets in production.
    assert recorder._drainer is not None
    recorder._drainer.cancel()
    await asyncio.sleep(0.8)
    left = time.time()
    await bus.request(node_rpc(NODE), {"op": "leave", "participant_id": "alice"})
    await asyncio.sleep(0.5)  # the plain_tracks message reaches the recorder
    segments = await recorder.close()
    await publisher.close()
    for kind in ("audio", "video"):
        end = max(t.end for seg in segments for t in seg.tracks.values() if t.kind == kind and t.end is not None)
        assert left - 0.2 <= end <= left + 0.2, (kind, end - left)


@pytest.mark.timeout(60)
async def test_plain_rtp_losses_are_nacked_and_filled_from_the_node_cache(
    tmp_path: Path, av_file: Path, node: tuple[LocalBus, MediaNode]
) -> None:
    """5 % of the node's plain RTP to the recorder is dropped: every hole is NACKed, retransmitted from the node's
    packet cache, and the recording has no gap."""
    bus, media_node = node
    player = MediaPlayer(str(av_file), decode=False)
    publisher = await publish(bus, player, "alice")
    config = RecorderConfig(
        node_id=NODE, room_id=ROOM, participant_id="rec-a", copy_id="a", directory=tmp_path / "a", segment_seconds=3
    )
    recorder = Recorder(config, bus)
    await recorder.start()
    subscriber = media_node.rooms[ROOM].participant("rec-a").subscriber
    assert subscriber is not None
    await asyncio.sleep(1.0)
    slots = [s for s in subscriber.slots if s.track is not None]
    assert {s.kind for s in slots} == {"audio", "video"}
    for slot in slots:
        slot.drop = lambda seq: seq % 20 == 7
    await asyncio.sleep(5.0)
    for slot in slots:
        slot.drop = None
    await asyncio.sleep(0.5)
    segments = await recorder.close()
    await publisher.close()
    dropped = sum(s.dropped_by_hook for s in slots)
    assert dropped >= 20
    assert recorder.nacks_sent >= dropped
    assert sum(s.nacks_served for s in slots) >= dropped
    assert recorder.progress().gaps == 0
    for seg in segments:
        assert verify_file(Path(seg.path)).ok
        for t in seg.tracks.values():
            assert t.gaps == ()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: fills up within seconds of recording."""
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount to create a 256 KiB tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    yield small
    subprocess.run(["umount", str(small)], check=False)


@pytest.mark.timeout(60)
async def test_recorder_reports_a_full_disk_with_its_cause(
    small_disk: Path, av_file: Path, node: tuple[LocalBus, MediaNode]
) -> None:
    bus, _ = node
    player = MediaPlayer(str(av_file), decode=False)
    publisher = await publish(bus, player, "bob")
    reports: list[Progress] = []
    failed = asyncio.Event()

    def on_progress(progress: Progress) -> None:
        reports.append(progress)
        if progress.error:
            failed.set()

    recorder = Recorder(
        RecorderConfig(
            node_id=NODE, room_id=ROOM, participant_id="rec-b", copy_id="b", directory=small_disk, segment_seconds=1.0
        ),
        bus,
        on_progress=on_progress,
    )
    await recorder.start()
    await asyncio.wait_for(failed.wait(), 20)
    await recorder.close()
    await publisher.close()
    await asyncio.sleep(0.5)
    assert isinstance(recorder.error, StorageFullError)
    error = reports[-1].error
    assert error is not None and error["code"] == "storage_full" and error["cause"] == "ENOSPC"
    assert error["errno"] == errno.ENOSPC
    completed = load_manifest(small_disk)
    assert completed  # 1 s segments: some completed before the disk filled, and they are intact
    for seg in completed:
        report = verify_file(Path(seg.path))
        assert report.ok, (report.problems, {k: (t.kind, t.packets, t.start, t.end) for k, t in seg.tracks.items()})


def _frames_by_content(segments: list[SegmentInfo]) -> dict[bytes, float]:
    """Wall-clock time of every video frame of a copy, keyed by its bytes."""
    out: dict[bytes, float] = {}
    for seg in segments:
        with av.open(seg.path) as container:
            for packet in container.demux(container.streams.video[0]):
                if packet.pts is not None and packet.size:
                    out[bytes(packet)] = seg.epoch + float(packet.pts * packet.time_base)
    return out


# One re-run, as for the browser and multi-process suites: in a full fresh-clone `make test` on 2026-11-26 the two
# copies were once 1.19 s apart, every common frame by the same amount. Not understood yet; the suspect is the file
# publisher starved under load, which moves what its SRs map (aiortc pairs an SR's RTP time with the moment that
# packet was sent), and the copies re-anchoring on that at different moments. Twice in a row still fails.
@pytest.mark.flaky(reruns=1, reruns_delay=1)
@pytest.mark.timeout(60)
async def test_two_copies_align_on_the_node_clock_and_assemble(
    tmp_path: Path, av_file: Path, node: tuple[LocalBus, MediaNode]
) -> None:
    bus, _ = node
    player = MediaPlayer(str(av_file), decode=False)
    publisher = await publish(bus, player, "carol")
    copies = [
        Recorder(
            RecorderConfig(
                node_id=NODE,
                room_id=ROOM,
                participant_id=f"rec-{c}",
                copy_id=c,
                directory=tmp_path / c,
                segment_seconds=2.0,
            ),
            bus,
        )
        for c in ("a", "b")
    ]
    await copies[0].start()
    await asyncio.sleep(1.0)  # the second copy joins later, as after a failover
    await copies[1].start()
    await asyncio.sleep(5.0)
    a, b = [await r.close() for r in copies]
    await publisher.close()
    await asyncio.sleep(0.5)

    in_a, in_b = _frames_by_content(a), _frames_by_content(b)
    common = set(in_a) & set(in_b)
    assert len(common) > 60  # > 2 s of the same frames in both copies
    offsets = [abs(in_a[k] - in_b[k]) for k in common]
    # the same frame is at the same instant in both copies, within a frame: measured 1-3 ms alone and 11-17 ms in a
    # full `make test` since the node maps RTP time through the least delayed of the publisher's last SRs (alone
    # 5-23 ms, once 27 ms in a full run, when the latest SR's arrival set it)
    assert max(offsets) < 0.025

    start = min(s.start for s in a if s.start is not None)
    end = max(s.end for s in b if s.end is not None)
    result = assemble([a, b], tmp_path / "final.mkv", start, end)
    report = verify_file(
        tmp_path / "final.mkv", expected_duration=end - start, expected_tracks={"video": 1, "audio": 1}
    )
    assert report.ok, report.problems
    assert result.coverage > 0.97, result.gaps
