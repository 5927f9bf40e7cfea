from __future__ import annotations

from orchestrator.scheduling.clock import ZoneClock, compile_windows, utc_week
from orchestrator.scheduling.model import WeeklyWindow
from orchestrator.scheduling.occupancy import epoch_minutes

from .factory import local, utc


def m(moment: object) -> int:
    return epoch_minutes(moment)  # type: ignore[arg-type]


def test_new_york_offset_changes_at_the_march_and_november_transitions() -> None:
    ny = ZoneClock("America/New_York")
    assert ny.offset(m(utc(2026, 3, 8, 6, 59))) == -300
    assert ny.offset(m(utc(2026, 3, 8, 7, 0))) == -240
    assert ny.offset(m(utc(2026, 11, 1, 5, 59))) == -240
    assert ny.offset(m(utc(2026, 11, 1, 6, 0))) == -300


def test_london_offset_changes_on_the_last_sunday_of_march() -> None:
    london = ZoneClock("Europe/London")
    assert london.offset(m(utc(2026, 3, 29, 0, 59))) == 0
    assert london.offset(m(utc(2026, 3, 29, 1, 0))) == 60


def test_wall_time_in_the_spring_gap_maps_to_the_transition_instant() -> None:
    ny = ZoneClock("America/New_York")
    wall_0230 = ny.local(m(utc(2026, 3, 8, 5, 0))) + 150  # local 00:00 EST + 2h30
    assert ny.utc_of_local(wall_0230) == m(utc(2026, 3, 8, 7, 0))


def test_repeated_fall_back_hour_maps_to_its_first_pass() -> None:
    ny = ZoneClock("America/New_York")
    wall_0130 = ny.local(m(utc(2026, 11, 1, 4, 0))) + 90
    assert ny.utc_of_local(wall_0130) == m(utc(2026, 11, 1, 5, 30))


def test_window_keeps_its_wall_clock_hours_across_the_march_change() -> None:
    ny = ZoneClock("America/New_York")
    windows = compile_windows([WeeklyWindow(d, "09:00", "17:00") for d in range(7)])
    intervals = ny.windows_in_week(windows, utc_week(m(utc(2026, 3, 5))))
    assert (
        m(local("America/New_York", 2026, 3, 6, 9)),
        m(local("America/New_York", 2026, 3, 6, 17)),
    ) in intervals
    assert (m(utc(2026, 3, 6, 14)), m(utc(2026, 3, 6, 22))) in intervals  # EST
    assert (m(utc(2026, 3, 8, 13)), m(utc(2026, 3, 8, 21))) in intervals  # EDT, Sunday


def test_window_over_the_gap_is_one_hour_shorter_and_over_fall_back_one_hour_longer() -> None:
    ny = ZoneClock("America/New_York")
    windows = compile_windows([WeeklyWindow(6, "01:00", "04:00")])  # Sundays
    spring = ny.windows_in_week(windows, utc_week(m(utc(2026, 3, 8, 8))))
    autumn = ny.windows_in_week(windows, utc_week(m(utc(2026, 11, 1, 8))))
    assert spring == [(m(utc(2026, 3, 8, 6)), m(utc(2026, 3, 8, 8)))]
    assert autumn == [(m(utc(2026, 11, 1, 5)), m(utc(2026, 11, 1, 9)))]
