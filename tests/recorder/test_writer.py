"""SegmentWriter: real encoded media through the depacketizer into segments that decode."""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import av
import pytest

from recorder.errors import StorageFullError
from recorder.verify import verify_file
from recorder.writer import SegmentWriter, TrackInfo, h264_sps_dimensions, load_manifest

from .media import Encoded, FedTrack, feed, packetize

BASE = 1_800_000_000.0  # wall-clock time of the first frame


def tracks(video_codec: str, video: list[Encoded], audio: list[Encoded]) -> list[FedTrack]:
    return [
        FedTrack("cam", video_codec, packetize(video_codec, video)),
        FedTrack("mic", "opus", packetize("opus", audio, seq0=100, ts0=1_000), ts0=1_000),
    ]


@pytest.mark.parametrize("video_codec,container", [("vp8", "webm"), ("vp8", "mkv"), ("h264", "mkv")])
def test_segments_decode_with_right_duration_and_sync(
    tmp_path: Path, video_codec: str, container: str, request: pytest.FixtureRequest, opus_frames: list[Encoded]
) -> None:
    video: list[Encoded] = request.getfixturevalue(f"{video_codec}_frames")
    writer = SegmentWriter(tmp_path, "copy-a", container=container, segment_seconds=5.0)
    writer.add_track(TrackInfo("cam", "video", video_codec, "p1", "camera"))
    writer.add_track(TrackInfo("mic", "audio", "opus", "p1", "microphone"))
    feed(writer, tracks(video_codec, video, opus_frames), BASE)
    segments = writer.close()
    assert writer.close() == segments  # idempotent

    assert [s.index for s in segments] == [1, 2, 3]
    assert segments == load_manifest(tmp_path)
    assert not list(tmp_path.glob("*.part"))
    total_frames = 0
    for seg in segments:
        cam, mic = seg.tracks["cam"], seg.tracks["mic"]
        assert cam.start is not None and cam.end is not None and mic.start is not None and mic.end is not None
        report = verify_file(Path(seg.path), expected_tracks={"video": 1, "audio": 1})
        assert report.ok, report.problems
        assert report.av_start_offset_ms is not None and abs(report.av_start_offset_ms) < 100
        assert abs(report.duration - (seg.end - seg.start)) < 0.1  # type: ignore[operator]
        video_stream = next(s for s in report.streams if s.kind == "video")
        assert (video_stream.width, video_stream.height) == (320, 240)
        assert video_stream.frames == cam.packets
        total_frames += video_stream.frames
        assert cam.keyframes >= 1 and cam.gaps == () and mic.gaps == ()
        sidecar = json.loads(Path(seg.path).with_suffix(".json").read_text())
        assert sidecar["copy_id"] == "copy-a" and sidecar["bytes"] == os.path.getsize(seg.path)
    # cuts happen at video keyframes once a segment is >= 5 s long: 0-5, 5-10, 10-14
    cuts = [round(s.tracks["cam"].start - BASE, 2) for s in segments]  # type: ignore[operator]
    assert cuts == [0.0, 5.0, 10.0]
    # every frame written exactly once across segments, continuous in time
    assert total_frames == len(video)
    for a, b in itertools.pairwise(segments):
        assert abs(a.tracks["cam"].end - b.tracks["cam"].start) < 0.04  # type: ignore[operator]
        assert abs(a.tracks["mic"].end - b.tracks["mic"].start) < 0.025  # type: ignore[operator]
    assert abs(segments[-1].tracks["cam"].end - BASE - 14.0) < 0.05  # type: ignore[operator]
    epoch = segments[0].epoch
    with av.open(segments[1].path) as c:
        first = next(c.demux(c.streams.video[0]))
        assert first.pts is not None and first.time_base is not None
        assert abs(epoch + float(first.pts * first.time_base) - (BASE + 5.0)) < 0.002


def test_loss_is_reported_as_a_gap_in_the_manifest(
    tmp_path: Path, vp8_frames: list[Encoded], opus_frames: list[Encoded]
) -> None:
    writer = SegmentWriter(tmp_path, "copy-a", segment_seconds=10.0)
    writer.add_track(TrackInfo("cam", "video", "vp8"))
    writer.add_track(TrackInfo("mic", "audio", "opus"))
    feed(writer, tracks("vp8", vp8_frames, opus_frames), BASE, drop={"cam": [(3.0, 3.2)], "mic": [(3.0, 3.2)]})
    segments = writer.close()
    gaps = [g for s in segments for g in s.tracks["cam"].gaps]
    assert len(gaps) == 1
    start, end = gaps[0]
    assert abs(start - (BASE + 3.0)) < 0.04 and abs(end - (BASE + 4.0)) < 0.04  # until the next keyframe
    ((astart, aend),) = [g for s in segments for g in s.tracks["mic"].gaps]
    assert abs(astart - (BASE + 3.0)) < 0.021 and abs(aend - (BASE + 3.2)) < 0.021
    for seg in segments:
        assert verify_file(Path(seg.path)).ok


def test_h264_sps_dimensions(h264_frames: list[Encoded]) -> None:
    from recorder.depacketize import h264_nal_units

    sps = next(n for n in h264_nal_units(h264_frames[0].data) if n[0] & 0x1F == 7)
    assert h264_sps_dimensions(sps) == (320, 240)


def test_new_track_mid_segment_starts_a_segment_that_has_it(
    tmp_path: Path, vp8_frames: list[Encoded], opus_frames: list[Encoded]
) -> None:
    writer = SegmentWriter(tmp_path, "c", segment_seconds=10.0)
    writer.add_track(TrackInfo("mic", "audio", "opus"))
    feed(writer, [FedTrack("mic", "opus", packetize("opus", opus_frames[:150]))], BASE)
    writer.add_track(TrackInfo("cam", "video", "vp8"))  # a camera is published at 3 s
    later = [Encoded(e.data, e.time + 3.0, e.keyframe) for e in vp8_frames[:60]]
    feed(
        writer,
        [
            FedTrack("cam", "vp8", packetize("vp8", later)),
            FedTrack("mic", "opus", packetize("opus", opus_frames[150:300], seq0=65150)),
        ],
        BASE,
    )
    segments = writer.close()
    assert len(segments) == 2
    assert set(segments[0].tracks) == {"mic"} and set(segments[1].tracks) == {"mic", "cam"}
    mic0, mic1 = segments[0].tracks["mic"], segments[1].tracks["mic"]
    # the cut happens when the camera's first frame is written (after the reorder hold-back)
    assert mic0.end == mic1.start and 3.0 <= mic1.start - BASE < 3.3  # type: ignore[operator]
    report = verify_file(Path(segments[1].path), expected_tracks={"video": 1, "audio": 1})
    assert report.ok, report.problems
    assert abs(report.duration - 3.0) < 0.05  # the camera starts it at 3 s


def _mount_tiny_tmpfs(directory: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)], capture_output=True)
    return result.returncode == 0


def test_storage_full_raises_with_the_cause(
    tmp_path: Path, vp8_frames: list[Encoded], opus_frames: list[Encoded]
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if not _mount_tiny_tmpfs(small):
        pytest.skip("needs root and mount to create a 1 MiB tmpfs")
    try:
        writer = SegmentWriter(small, "copy-a", segment_seconds=2.0)
        writer.add_track(TrackInfo("cam", "video", "vp8"))
        writer.add_track(TrackInfo("mic", "audio", "opus"))
        big = [Encoded(e.data * 8, e.time, e.keyframe) for e in vp8_frames]  # ~2.4 Mbit/s: fills 1 MiB in 4 s
        with pytest.raises(StorageFullError) as info:
            feed(writer, tracks("vp8", big, opus_frames), BASE)
        error = info.value
        assert error.errno == errno.ENOSPC
        assert error.describe()["cause"] == "ENOSPC"
        assert "No space left on device" in error.message
        assert writer.failed is error
        writer.close()
        # whatever completed before the disk filled is listed and playable; nothing half-written is
        for seg in load_manifest(small):
            assert verify_file(Path(seg.path)).ok
    finally:
        subprocess.run(["umount", str(small)], check=False)
