from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator.scheduling import (
    MatchRequest,
    NoFeasibleInstructorError,
    RuleCode,
    StudentId,
    TimeOff,
    UnknownEntityError,
    WeeklyWindow,
)

from .factory import MATH, assert_clean, instructor, scheduler, session, student, utc


def request(start: object, *, students: tuple[str, ...] = ("s1",), **kw: object) -> MatchRequest:
    return MatchRequest(MATH, tuple(StudentId(s) for s in students), start, 60, **kw)  # type: ignore[arg-type]


def factor(candidate: object, name: str) -> float:
    return next(r.score for r in candidate.reasons if r.factor == name)  # type: ignore[attr-defined]


def test_continuity_ranks_the_instructor_who_already_teaches_the_student_first() -> None:
    history = [session(f"h{k}", utc(2026, 1, 5 + k, 10), instructor_id="i2") for k in range(3)]
    engine = scheduler([instructor("i1"), instructor("i2"), instructor("i3")], [student("s1")], history)
    result = engine.match(request(utc(2026, 1, 12, 10)))
    assert result.candidates[0].instructor_id == "i2"
    top = result.candidates[0]
    assert top.rank == 1 and factor(top, "continuity") == pytest.approx(3 / 5)
    assert "3 sessions with these students" in next(r.detail for r in top.reasons if r.factor == "continuity")
    assert [c.rank for c in result.candidates] == [1, 2, 3]


def test_student_preference_then_time_zone_fit_then_load() -> None:
    engine = scheduler(
        [
            instructor("far", tz="Asia/Tokyo"),
            instructor("near", tz="Europe/London"),
            instructor("liked", tz="Asia/Tokyo"),
        ],
        [student("s1", tz="Europe/London", prefers=["liked"])],
    )
    result = engine.match(request(utc(2026, 1, 12, 10)))
    order = [c.instructor_id for c in result.candidates]
    assert order == ["liked", "near", "far"]
    near = result.candidates[1]
    assert factor(near, "time_zone") == 1.0
    assert factor(result.candidates[2], "time_zone") == pytest.approx(1 - 9 / 12)


def test_load_breaks_ties_between_equal_instructors() -> None:
    busy = [session(f"x{k}", utc(2026, 1, 12 + k, 15), instructor_id="i1", students=("s9",)) for k in range(4)]
    engine = scheduler([instructor("i1"), instructor("i2")], [student("s1"), student("s9")], busy)
    result = engine.match(request(utc(2026, 1, 12, 10)))
    assert [c.instructor_id for c in result.candidates] == ["i2", "i1"]
    assert factor(result.candidates[1], "load") == pytest.approx(1 - 4 / 40)


def test_no_feasible_instructor_reports_counts_per_rule_and_alternatives() -> None:
    weekdays = [WeeklyWindow(d, "09:00", "17:00") for d in range(5)]
    engine = scheduler(
        [
            instructor("i1", windows=weekdays),
            instructor("i2", windows=weekdays, leave=[TimeOff(utc(2026, 1, 12), utc(2026, 1, 13), "sick")]),
            instructor("i3", quals={"art": 5}),
        ],
        [student("s1")],
    )
    result = engine.match(request(utc(2026, 1, 12, 8, 30)))  # Monday 08:30 UTC: before 09:00
    assert not result.feasible
    assert result.failure_counts == {
        RuleCode.NOT_QUALIFIED: 1,
        RuleCode.OUTSIDE_AVAILABILITY: 2,
        RuleCode.INSTRUCTOR_ON_LEAVE: 1,
    }
    assert result.alternatives, "nearby slots must be offered"
    first = result.alternatives[0]
    assert first.start == utc(2026, 1, 12, 9) and first.instructor_id == "i1"
    assert first.why == "+30 minutes on the same day"
    for alt in result.alternatives:
        probe = session("probe", alt.start, instructor_id=alt.instructor_id)
        assert engine.check(probe) == []


def test_alternatives_include_the_same_local_time_on_other_days() -> None:
    engine = scheduler(
        [instructor("i1", leave=[TimeOff(utc(2026, 1, 12, 6), utc(2026, 1, 12, 14), "dentist")])],
        [student("s1", tz="America/New_York")],
    )
    result = engine.match(request(utc(2026, 1, 12, 10)))
    whys = {a.why for a in result.alternatives}
    assert "same local time +1 day(s)" in whys
    plus_day = next(a for a in result.alternatives if a.why == "same local time +1 day(s)")
    assert plus_day.start == utc(2026, 1, 13, 10)


def test_named_instructor_that_is_busy_gets_other_instructors_at_the_same_time() -> None:
    busy = session("x", utc(2026, 1, 12, 10), students=("s2",))
    engine = scheduler([instructor("i1"), instructor("i2")], [student("s1"), student("s2")], [busy])
    result = engine.match(request(utc(2026, 1, 12, 10), instructor_id="i1"))
    assert result.failure_counts == {RuleCode.INSTRUCTOR_DOUBLE_BOOKED: 1}
    assert result.alternatives[0].instructor_id == "i2"
    assert result.alternatives[0].start == utc(2026, 1, 12, 10)


def test_busy_student_is_a_request_level_violation() -> None:
    busy = session("x", utc(2026, 1, 12, 10))
    engine = scheduler([instructor("i1"), instructor("i2")], [student("s1")], [busy])
    result = engine.match(request(utc(2026, 1, 12, 10, 30)))
    assert not result.feasible
    assert [v.rule for v in result.request_violations] == [RuleCode.STUDENT_DOUBLE_BOOKED]
    assert all(a.start >= utc(2026, 1, 12, 11) or a.start <= utc(2026, 1, 12, 9) for a in result.alternatives)


def test_auto_assign_takes_the_best_and_the_result_passes_the_checker() -> None:
    engine = scheduler([instructor("i1"), instructor("i2")], [student("s1", prefers=["i2"]), student("s2")])
    made = engine.auto_assign(request(utc(2026, 1, 12, 10)), session_id="n1", booking_id="b1")  # type: ignore[arg-type]
    assert made.instructor_id == "i2" and made.end - made.start == timedelta(minutes=60)
    engine.book(made)
    made2 = engine.auto_assign(request(utc(2026, 1, 12, 10), students=("s2",)), "n2", "b2")  # type: ignore[arg-type]
    assert made2.instructor_id == "i1"
    engine.book(made2)
    assert_clean(engine)
    with pytest.raises(NoFeasibleInstructorError) as err:
        engine.auto_assign(request(utc(2026, 1, 12, 10, 15)), "n3", "b3")  # type: ignore[arg-type]
    assert err.value.result.failure_counts[RuleCode.INSTRUCTOR_DOUBLE_BOOKED] == 2
    with pytest.raises(UnknownEntityError, match="unknown student 's3'"):
        engine.match(request(utc(2026, 1, 12, 10), students=("s3",)))


def test_invalid_request_time() -> None:
    engine = scheduler([instructor("i1")], [student("s1")])
    result = engine.match(request(utc(2026, 1, 12, 10, 7)))
    assert result.failure_counts == {RuleCode.INVALID_TIME: 1}
