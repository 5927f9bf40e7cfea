"""TrackClock: RTP timestamps on the node's wall clock from sender reports."""

from __future__ import annotations

from recorder.clock import TrackClock

from .media import ntp

BASE = 1_800_000_000.0
EXT = 1 << 32  # the depacketizer's extended timestamps start one wrap up


def test_sender_report_maps_timestamps_to_wall_clock() -> None:
    clock = TrackClock(90000)
    clock.sender_report(ntp(BASE), 1000)
    assert clock.source == "sr" and not clock.synced
    assert abs(clock.wall(EXT + 1000 + 90000) - (BASE + 1.0)) < 1e-6


def test_arrival_fallback_is_corrected_by_the_first_sender_report() -> None:
    clock = TrackClock(48000)
    clock.observe(EXT + 0, BASE + 0.120)  # arrived 120 ms after capture
    assert clock.source == "arrival" and abs(clock.wall(EXT + 48000) - (BASE + 1.120)) < 1e-6
    clock.sender_report(ntp(BASE + 2.0), 96000)
    assert clock.source == "sr"
    assert abs(clock.correction + 0.120) < 1e-6
    assert abs(clock.wall(EXT + 48000) - (BASE + 1.0)) < 1e-6


def test_jittered_reports_are_smoothed_by_their_median() -> None:
    clock = TrackClock(90000)
    jitter = [0.012, -0.008, 0.004, -0.010, 0.002, 0.009, -0.003]
    for i, j in enumerate(jitter):
        clock.sender_report(ntp(BASE + i + j), (i * 90000) & 0xFFFFFFFF)
        clock.observe(EXT + i * 90000, BASE + i)
    assert clock.synced
    assert abs(clock.wall(EXT) - BASE) < 0.0031  # the median jitter, not the first report's 12 ms


def test_one_outlier_is_ignored_two_reanchor() -> None:
    clock = TrackClock(90000)
    for i in range(3):
        clock.sender_report(ntp(BASE + i), i * 90000)
    clock.sender_report(ntp(BASE + 3 + 0.2), 3 * 90000)  # a late SFU loop
    assert abs(clock.wall(EXT + 3 * 90000) - (BASE + 3)) < 1e-6
    assert abs(clock.drift - 0.2) < 1e-6
    clock.sender_report(ntp(BASE + 4 + 0.2), 4 * 90000)  # still 200 ms off: the stream was re-based
    assert abs(clock.wall(EXT + 4 * 90000) - (BASE + 4.2)) < 1e-6
