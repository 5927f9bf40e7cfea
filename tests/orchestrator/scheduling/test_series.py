from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from orchestrator.scheduling import (
    Booking,
    BookingId,
    InstructorId,
    InvalidInputError,
    RuleCode,
    SessionStatus,
    StudentId,
    TimeOff,
)

from .factory import MATH, assert_clean, instructor, local, scheduler, session, student, utc

NY = "America/New_York"


def booking(
    bid: str,
    start: datetime,
    rrule: str | None,
    *,
    instructor_id: str | None = "i1",
    students: tuple[str, ...] = ("s1",),
    minutes: int = 60,
) -> Booking:
    return Booking(
        booking_id=BookingId(bid),
        subject_id=MATH,
        student_ids=tuple(StudentId(s) for s in students),
        instructor_id=InstructorId(instructor_id) if instructor_id else None,
        start=start,
        duration_minutes=minutes,
        rrule=rrule,
    )


def test_weekly_series_keeps_the_students_wall_clock_across_the_march_change() -> None:
    engine = scheduler([instructor("i1")], [student("s1", tz=NY)])
    occ = engine.expand_series(booking("b", local(NY, 2026, 2, 26, 16), "FREQ=WEEKLY;COUNT=4"))
    assert [o.start for o in occ] == [
        utc(2026, 2, 26, 21),
        utc(2026, 3, 5, 21),
        utc(2026, 3, 12, 20),  # EDT since March 8
        utc(2026, 3, 19, 20),
    ]
    assert [o.index for o in occ] == [0, 1, 2, 3]
    assert all(o.end - o.start == timedelta(minutes=60) for o in occ)


def test_series_keeps_wall_clock_across_the_november_change_and_accepts_utc_until() -> None:
    engine = scheduler([instructor("i1")], [student("s1", tz=NY)])
    rule = "RRULE:FREQ=WEEKLY;BYDAY=TU,TH;UNTIL=20261106T000000Z"
    occ = engine.expand_series(booking("b", local(NY, 2026, 10, 27, 9), rule))
    assert [o.start for o in occ] == [
        utc(2026, 10, 27, 13),
        utc(2026, 10, 29, 13),
        utc(2026, 11, 3, 14),
        utc(2026, 11, 5, 14),
    ]


def test_open_ended_series_stops_at_the_horizon_and_bad_rules_are_refused() -> None:
    engine = scheduler([instructor("i1")], [student("s1")])
    assert len(engine.expand_series(booking("b", utc(2026, 1, 5, 10), "FREQ=WEEKLY"))) == 27
    with pytest.raises(InvalidInputError, match="bad RRULE"):
        engine.expand_series(booking("b", utc(2026, 1, 5, 10), "FREQ=SOMETIMES"))


def test_book_series_applies_all_when_every_occurrence_passes() -> None:
    engine = scheduler([instructor("i1")], [student("s1")])
    plan = engine.book_series(booking("b", utc(2026, 1, 5, 10), "FREQ=DAILY;COUNT=5"))
    assert plan.ok and plan.applied
    assert len(engine.series_sessions(BookingId("b"))) == 5
    assert_clean(engine)


def test_one_conflicting_occurrence_rejects_the_series_and_is_reported_alone() -> None:
    blocker = session("x", utc(2026, 1, 7, 10, 30), students=("s2",))
    engine = scheduler([instructor("i1")], [student("s1"), student("s2")], [blocker])
    plan = engine.book_series(booking("b", utc(2026, 1, 5, 10), "FREQ=DAILY;COUNT=5"))
    assert not plan.applied
    assert list(plan.conflicts) == [2]
    assert [(v.rule, v.conflicting_session_id) for v in plan.conflicts[2]] == [(RuleCode.INSTRUCTOR_DOUBLE_BOOKED, "x")]
    assert engine.series_sessions(BookingId("b")) == []


def test_overlapping_series_conflict_only_on_shared_days() -> None:
    engine = scheduler([instructor("i1")], [student("s1"), student("s2")])
    first = engine.book_series(booking("mw", utc(2026, 1, 5, 10), "FREQ=WEEKLY;BYDAY=MO,WE;COUNT=6"))
    assert first.applied
    second = engine.book_series(
        booking("wf", utc(2026, 1, 7, 10, 30), "FREQ=WEEKLY;BYDAY=WE,FR;COUNT=6", students=("s2",))
    )
    assert not second.applied
    assert sorted(second.conflicts) == [0, 2, 4]  # every Wednesday
    assert all(v[0].rule == RuleCode.INSTRUCTOR_DOUBLE_BOOKED for v in second.conflicts.values())


def test_series_occurrences_conflict_with_each_other() -> None:
    engine = scheduler([instructor("i1")], [student("s1")])
    plan = engine.book_series(booking("b", utc(2026, 1, 5, 10), "FREQ=MINUTELY;INTERVAL=20;COUNT=3"), apply=False)
    assert sorted(plan.conflicts) == [1, 2]
    assert {v.rule for vs in plan.conflicts.values() for v in vs} == {
        RuleCode.INSTRUCTOR_DOUBLE_BOOKED,
        RuleCode.STUDENT_DOUBLE_BOOKED,
    }


def test_skip_one_frees_its_slot() -> None:
    engine = scheduler([instructor("i1")], [student("s1"), student("s2")])
    engine.book_series(booking("b", utc(2026, 1, 5, 10), "FREQ=DAILY;COUNT=3"))
    other = session("o", utc(2026, 1, 6, 10), students=("s2",))
    assert engine.check(other)
    skipped = engine.skip_occurrence(BookingId("b"), 1)
    assert skipped.status == SessionStatus.CANCELLED
    assert engine.check(other) == []


def test_move_one_is_checked_and_refusal_keeps_the_original() -> None:
    blocker = session("x", utc(2026, 1, 6, 15), students=("s2",))
    engine = scheduler([instructor("i1")], [student("s1"), student("s2")], [blocker])
    engine.book_series(booking("b", utc(2026, 1, 5, 10), "FREQ=DAILY;COUNT=3"))
    refused = engine.move_occurrence(BookingId("b"), 1, utc(2026, 1, 6, 15, 30))
    assert not refused.applied and refused.conflicts[1][0].conflicting_session_id == "x"
    assert engine.series_sessions(BookingId("b"))[1].start == utc(2026, 1, 6, 10)
    moved = engine.move_occurrence(BookingId("b"), 1, utc(2026, 1, 6, 17))
    assert moved.applied
    assert engine.series_sessions(BookingId("b"))[1].start == utc(2026, 1, 6, 17)
    assert_clean(engine)


def test_move_this_and_following_shifts_the_tail_by_the_same_wall_clock_step() -> None:
    engine = scheduler([instructor("i1")], [student("s1", tz=NY)])
    engine.book_series(booking("b", local(NY, 2026, 2, 23, 9), "FREQ=WEEKLY;COUNT=4"))  # Mondays 09:00
    plan = engine.move_following(BookingId("b"), 1, local(NY, 2026, 3, 3, 11))  # Tuesday 11:00
    assert plan.applied
    starts = [s.start for s in engine.series_sessions(BookingId("b"))]
    assert starts == [
        local(NY, 2026, 2, 23, 9),
        local(NY, 2026, 3, 3, 11),
        local(NY, 2026, 3, 10, 11),  # across the DST change: still 11:00 New York
        local(NY, 2026, 3, 17, 11),
    ]
    assert_clean(engine)


def test_move_following_is_all_or_nothing() -> None:
    blocker = session("x", utc(2026, 1, 19, 11, 30), students=("s2",))
    engine = scheduler([instructor("i1")], [student("s1"), student("s2")], [blocker])
    engine.book_series(booking("b", utc(2026, 1, 5, 10), "FREQ=WEEKLY;COUNT=4"))
    plan = engine.move_following(BookingId("b"), 1, utc(2026, 1, 12, 11))
    assert not plan.applied and list(plan.conflicts) == [2]
    assert [s.start.hour for s in engine.series_sessions(BookingId("b"))] == [10, 10, 10, 10]


def test_cancel_all_and_cancel_from_a_date() -> None:
    engine = scheduler([instructor("i1")], [student("s1")])
    engine.book_series(booking("b", utc(2026, 1, 5, 10), "FREQ=DAILY;COUNT=4"))
    tail = engine.cancel_series(BookingId("b"), from_start=utc(2026, 1, 7))
    assert [s.occurrence_index for s in tail] == [2, 3]
    rest = engine.cancel_series(BookingId("b"))
    assert [s.occurrence_index for s in rest] == [0, 1]
    assert engine.check(session("n", utc(2026, 1, 5, 10))) == []


def test_series_without_instructor_gets_one_feasible_for_every_occurrence() -> None:
    on_leave = TimeOff(utc(2026, 1, 19), utc(2026, 1, 20), "conference")
    history = [session(f"h{k}", utc(2025, 12, 1 + k, 10)) for k in range(3)]  # i1 has continuity
    engine = scheduler([instructor("i1", leave=[on_leave]), instructor("i2")], [student("s1")], history)
    series = booking("b", utc(2026, 1, 5, 10), "FREQ=WEEKLY;COUNT=4", instructor_id=None)
    result = engine.match_series(series)
    assert [c.instructor_id for c in result.candidates] == ["i2"]
    assert result.failure_counts == {RuleCode.INSTRUCTOR_ON_LEAVE: 1}
    plan = engine.book_series(series)
    assert plan.applied and {s.instructor_id for s in engine.series_sessions(BookingId("b"))} == {"i2"}
    assert_clean(engine)
