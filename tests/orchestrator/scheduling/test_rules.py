"""Each hard rule yields its stable code; the independent checker agrees when the rule is forced."""

from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator.scheduling import ConflictError, RuleCode, Scheduler, Session, TimeOff, WeeklyWindow

from .checker import check_schedule
from .factory import ART, assert_clean, instructor, local, scheduler, session, student, utc

NY = "America/New_York"


def codes(engine: Scheduler, s: Session) -> list[RuleCode]:
    return [v.rule for v in engine.check(s)]


def forced_findings(engine: Scheduler, s: Session) -> set[str]:
    """Write the session without checks and ask the checker what it sees."""
    engine.apply(s)
    return {f.rule for f in check_schedule(engine.instructors(), engine.students(), engine.sessions.values())}


def test_a_clean_session_has_no_violations() -> None:
    engine = scheduler([instructor("i1")], [student("s1")])
    s = session("a", utc(2026, 1, 5, 10))
    assert engine.check(s) == []
    engine.book(s)
    assert_clean(engine)


def test_not_qualified_for_the_students_level() -> None:
    engine = scheduler([instructor("i1", quals={"math": 1})], [student("s1", levels={"math": 3})])
    s = session("a", utc(2026, 1, 5, 10))
    assert codes(engine, s) == [RuleCode.NOT_QUALIFIED]
    assert "not_qualified" in forced_findings(engine, s)


def test_not_qualified_for_the_subject_at_all() -> None:
    engine = scheduler([instructor("i1", quals={"math": 5})], [student("s1")])
    assert codes(engine, session("a", utc(2026, 1, 5, 10), subject=ART)) == [RuleCode.NOT_QUALIFIED]


def test_outside_availability_is_judged_in_the_instructors_zone() -> None:
    weekdays = [WeeklyWindow(d, "09:00", "17:00") for d in range(5)]
    engine = scheduler([instructor("i1", tz=NY, windows=weekdays)], [student("s1")])
    inside = session("a", local(NY, 2026, 1, 5, 16))  # Monday 16:00-17:00 New York
    late = session("b", local(NY, 2026, 1, 5, 16, 30))  # runs past 17:00
    assert codes(engine, inside) == []
    assert codes(engine, late) == [RuleCode.OUTSIDE_AVAILABILITY]
    assert "outside_availability" in forced_findings(engine, late)


@pytest.mark.parametrize(
    "day, hour, ok",
    [
        ((2026, 3, 6), 9, True),  # Friday before the March change, EST
        ((2026, 3, 9), 9, True),  # Monday after, EDT: still 09:00 local
        ((2026, 3, 9), 8, False),  # 08:00 EDT would have been 07:00 EST: not available
        ((2026, 10, 30), 16, True),  # Friday before November change, EDT
        ((2026, 11, 2), 16, True),  # Monday after, EST
        ((2026, 11, 2), 17, False),
    ],
)
def test_availability_follows_new_york_dst(day: tuple[int, int, int], hour: int, ok: bool) -> None:
    weekdays = [WeeklyWindow(d, "09:00", "17:00") for d in range(5)]
    engine = scheduler([instructor("i1", tz=NY, windows=weekdays)], [student("s1")])
    s = session("a", local(NY, *day, hour))
    assert (codes(engine, s) == []) is ok
    assert (not forced_findings(engine, s)) is ok


def test_availability_follows_london_dst() -> None:
    windows = [WeeklyWindow(d, "08:00", "12:00") for d in range(7)]
    engine = scheduler([instructor("i1", tz="Europe/London", windows=windows)], [student("s1")])
    outside = [RuleCode.OUTSIDE_AVAILABILITY]
    assert codes(engine, session("a", utc(2026, 3, 28, 11))) == []  # 11:00 GMT, Saturday
    assert codes(engine, session("b", utc(2026, 3, 30, 11))) == outside  # 12:00 BST, Monday
    assert codes(engine, session("c", utc(2026, 3, 30, 7))) == []  # 08:00 BST
    assert codes(engine, session("d", utc(2026, 3, 28, 7))) == outside  # 07:00 GMT


def test_window_ending_at_midnight_joins_the_next_days_window() -> None:
    windows = [WeeklyWindow(0, "20:00", "24:00"), WeeklyWindow(1, "00:00", "02:00")]
    engine = scheduler([instructor("i1", windows=windows)], [student("s1")])
    assert codes(engine, session("a", utc(2026, 1, 5, 23, 30), 60)) == []
    assert codes(engine, session("b", utc(2026, 1, 6, 1, 30), 60)) == [RuleCode.OUTSIDE_AVAILABILITY]


def test_instructor_on_leave() -> None:
    leave = TimeOff(utc(2026, 1, 5, 12), utc(2026, 1, 6), "holiday")
    engine = scheduler([instructor("i1", leave=[leave])], [student("s1")])
    assert codes(engine, session("a", utc(2026, 1, 5, 11, 30))) == [RuleCode.INSTRUCTOR_ON_LEAVE]
    assert codes(engine, session("b", utc(2026, 1, 5, 11))) == []
    assert "instructor_on_leave" in forced_findings(engine, session("a", utc(2026, 1, 5, 11, 30)))


def test_instructor_double_booked_names_the_conflicting_session() -> None:
    existing = session("a", utc(2026, 1, 5, 10))
    engine = scheduler([instructor("i1")], [student("s1"), student("s2")], [existing])
    clash = session("b", utc(2026, 1, 5, 10, 30), students=("s2",))
    violations = engine.check(clash)
    assert [(v.rule, v.conflicting_session_id) for v in violations] == [(RuleCode.INSTRUCTOR_DOUBLE_BOOKED, "a")]
    with pytest.raises(ConflictError) as err:
        engine.book(clash)
    assert err.value.violations == violations
    assert "instructor_double_booked" in forced_findings(engine, clash)


def test_student_double_booked() -> None:
    existing = session("a", utc(2026, 1, 5, 10))
    engine = scheduler([instructor("i1"), instructor("i2")], [student("s1")], [existing])
    clash = session("b", utc(2026, 1, 5, 10, 55), instructor_id="i2")
    assert [(v.rule, v.conflicting_session_id) for v in engine.check(clash)] == [(RuleCode.STUDENT_DOUBLE_BOOKED, "a")]
    assert "student_double_booked" in forced_findings(engine, clash)


@pytest.mark.parametrize("gap, ok", [(0, False), (5, False), (10, True), (30, True)])
def test_buffer_between_sessions_either_order(gap: int, ok: bool) -> None:
    first = session("a", utc(2026, 1, 5, 10))
    engine = scheduler([instructor("i1", buffer=10)], [student("s1"), student("s2")], [first])
    after = session("b", utc(2026, 1, 5, 11) + timedelta(minutes=gap), students=("s2",))
    before = session("c", utc(2026, 1, 5, 9) - timedelta(minutes=gap), students=("s2",))
    for s in (after, before):
        expected = [] if ok else [RuleCode.BUFFER_VIOLATED]
        assert codes(engine, s) == expected


def test_buffer_applies_across_midnight_and_local_day_boundaries() -> None:
    tokyo = "Asia/Tokyo"
    late = session("a", local(tokyo, 2026, 1, 5, 23, 15), 40)  # ends 23:55 local
    engine = scheduler([instructor("i1", tz=tokyo, buffer=15)], [student("s1"), student("s2")], [late])
    early = session("b", local(tokyo, 2026, 1, 6, 0, 5), 30, students=("s2",))
    fine = session("c", local(tokyo, 2026, 1, 6, 0, 10), 30, students=("s2",))
    assert [(v.rule, v.conflicting_session_id) for v in engine.check(early)] == [(RuleCode.BUFFER_VIOLATED, "a")]
    assert codes(engine, fine) == []
    assert "buffer_violated" in forced_findings(engine, early)


def test_daily_cap_counts_the_instructors_local_day() -> None:
    # Sydney is UTC+11 in January: 13:00Z on Jan 5 is already Jan 6 there.
    sydney = "Australia/Sydney"
    existing = [
        session("a", local(sydney, 2026, 1, 6, 9), students=("s1",)),
        session("b", local(sydney, 2026, 1, 6, 11), students=("s2",)),
    ]
    engine = scheduler([instructor("i1", tz=sydney, per_day=2)], [student(f"s{k}") for k in range(1, 5)], existing)
    same_day = session("c", utc(2026, 1, 5, 13), students=("s3",))  # Jan 6, 00:00 Sydney
    prev_day = session("d", utc(2026, 1, 5, 12), students=("s3",))  # Jan 5, 23:00 Sydney
    assert codes(engine, same_day) == [RuleCode.DAILY_CAP_EXCEEDED]
    assert codes(engine, prev_day) == []
    assert "daily_cap_exceeded" in forced_findings(engine, same_day)


def test_weekly_cap_uses_the_local_iso_week() -> None:
    existing = [session(f"x{k}", utc(2026, 1, 5 + k, 10), students=(f"s{k}",)) for k in range(3)]
    engine = scheduler([instructor("i1", per_week=3)], [student(f"s{k}") for k in range(5)], existing)
    same_week = session("c", utc(2026, 1, 11, 10), students=("s4",))  # Sunday
    next_week = session("d", utc(2026, 1, 12, 10), students=("s4",))  # Monday
    assert codes(engine, same_week) == [RuleCode.WEEKLY_CAP_EXCEEDED]
    assert codes(engine, next_week) == []
    assert "weekly_cap_exceeded" in forced_findings(engine, same_week)


@pytest.mark.parametrize("minute, length", [(2, 60), (0, 61), (0, -30)])
def test_invalid_time(minute: int, length: int) -> None:
    engine = scheduler([instructor("i1")], [student("s1")])
    s = session("a", utc(2026, 1, 5, 10, minute), length)
    assert codes(engine, s) == [RuleCode.INVALID_TIME]


def test_rechecking_a_session_ignores_itself_and_its_own_cap_slot() -> None:
    existing = session("a", utc(2026, 1, 5, 10))
    engine = scheduler([instructor("i1", per_day=1, buffer=30)], [student("s1")], [existing])
    moved = session("a", utc(2026, 1, 5, 10, 30))
    assert engine.check(moved) == []


def test_several_rules_are_reported_together() -> None:
    existing = session("a", utc(2026, 1, 5, 10))
    engine = scheduler(
        [instructor("i1", quals={"math": 1}, per_day=1)],
        [student("s1", levels={"math": 3}), student("s2")],
        [existing],
    )
    got = set(codes(engine, session("b", utc(2026, 1, 5, 10), students=("s1",))))
    assert got == {
        RuleCode.NOT_QUALIFIED,
        RuleCode.INSTRUCTOR_DOUBLE_BOOKED,
        RuleCode.STUDENT_DOUBLE_BOOKED,
        RuleCode.DAILY_CAP_EXCEEDED,
    }


def test_remove_frees_the_slot() -> None:
    existing = session("a", utc(2026, 1, 5, 10))
    engine = scheduler([instructor("i1")], [student("s1")], [existing])
    clash = session("b", utc(2026, 1, 5, 10))
    assert engine.check(clash)
    engine.remove(existing.session_id)
    assert engine.check(clash) == []
