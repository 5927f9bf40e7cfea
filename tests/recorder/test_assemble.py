"""assemble: two copies with holes -> one playable recording, coverage and exact gaps."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from recorder.assemble import assemble
from recorder.verify import verify_file
from recorder.writer import SegmentWriter, TrackInfo

from .media import Encoded, FedTrack, feed, packetize

BASE = 1_800_000_000.0
SECONDS = 12.0


def record(
    directory: Path, copy_id: str, video: list[Encoded], audio: list[Encoded], missing: tuple[float, float]
) -> list:
    writer = SegmentWriter(directory / copy_id, copy_id, segment_seconds=5.0)
    writer.add_track(TrackInfo("cam", "video", "vp8", "p1", "camera"))
    writer.add_track(TrackInfo("mic", "audio", "opus", "p1", "microphone"))
    video = [e for e in video if e.time < SECONDS]
    audio = [e for e in audio if e.time < SECONDS]
    feed(
        writer,
        [
            FedTrack("cam", "vp8", packetize("vp8", video)),
            FedTrack("mic", "opus", packetize("opus", audio, seq0=7, ts0=5000), ts0=5000),
        ],
        BASE,
        drop={"cam": [missing], "mic": [missing]},  # the copy's network was down
    )
    return writer.close()


def test_two_copies_with_different_holes_give_full_coverage(
    tmp_path: Path, vp8_frames: list[Encoded], opus_frames: list[Encoded]
) -> None:
    a = record(tmp_path, "a", vp8_frames, opus_frames, (3.0, 5.0))
    b = record(tmp_path, "b", vp8_frames, opus_frames, (7.0, 8.0))
    assert any(t.gaps for s in a for t in s.tracks.values())
    result = assemble([a, b], tmp_path / "final.mkv", BASE, BASE + SECONDS)
    assert result.coverage == 1.0, result.gaps
    assert result.gaps == ()
    assert result.switches >= 2
    report = verify_file(tmp_path / "final.mkv", expected_duration=SECONDS, expected_tracks={"video": 1, "audio": 1})
    assert report.ok, report.problems
    video = next(s for s in report.streams if s.kind == "video")
    assert abs(video.frames - SECONDS * 30) <= 2
    assert report.av_start_offset_ms is not None and abs(report.av_start_offset_ms) < 100
    assert report.av_end_offset_ms is not None and abs(report.av_end_offset_ms) < 100


def test_hole_in_both_copies_is_reported_exactly(
    tmp_path: Path, vp8_frames: list[Encoded], opus_frames: list[Encoded]
) -> None:
    a = record(tmp_path, "a", vp8_frames, opus_frames, (4.0, 5.0))
    b = record(tmp_path, "b", vp8_frames, opus_frames, (4.0, 5.0))
    result = assemble([a, b], tmp_path / "final.mkv", BASE, BASE + SECONDS)
    assert len(result.gaps) == 1
    start, end = result.gaps[0]
    frame = 1 / 30
    assert abs(start - (BASE + 4.0)) <= frame and abs(end - (BASE + 5.0)) <= frame
    assert abs(result.coverage - (SECONDS - 1.0) / SECONDS) < 0.01
    report = verify_file(tmp_path / "final.mkv", expected_duration=SECONDS, expected_tracks={"video": 1, "audio": 1})
    assert report.ok, report.problems


def test_single_copy_without_holes_is_complete(
    tmp_path: Path, vp8_frames: list[Encoded], opus_frames: list[Encoded]
) -> None:
    a = record(tmp_path, "a", vp8_frames, opus_frames, (99.0, 99.0))
    result = assemble([a], tmp_path / "final.mkv", BASE, BASE + SECONDS)
    assert result.coverage == 1.0 and result.switches == 0
    # a 2 s longer media interval than recorded: the tail is a gap
    longer = assemble([a], tmp_path / "longer.mkv", BASE, BASE + SECONDS + 2)
    assert longer.gaps and abs(longer.gaps[-1][0] - (BASE + SECONDS)) < 0.05


def test_a_pause_of_the_source_is_neither_a_gap_nor_a_reason_to_wait_for_a_keyframe(
    tmp_path: Path, vp8_frames: list[Encoded], opus_frames: list[Encoded]
) -> None:
    """A browser that sends no frame for half a second (its encoder stalled) leaves a time gap in the video with a
    continuous RTP sequence: the copy was alive (its audio went on) and lost nothing, so it is not a hole."""
    paused = [e if e.time < 6.0 else dataclasses.replace(e, time=e.time + 0.5) for e in vp8_frames]
    a = record(tmp_path, "a", paused, opus_frames, (0.0, 0.0))
    result = assemble([a], tmp_path / "final.mkv", BASE, BASE + SECONDS)
    assert result.gaps == () and result.coverage == 1.0
    report = verify_file(tmp_path / "final.mkv", expected_duration=SECONDS, expected_tracks={"video": 1, "audio": 1})
    assert report.ok, report.problems
    video = next(s for s in report.streams if s.kind == "video")
    assert video.frames == len([e for e in paused if e.time < SECONDS])  # nothing dropped to wait for a keyframe
