"""The independent checker is not vacuous: it flags hand-made bad schedules on its own."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from orchestrator.scheduling import SessionStatus, WeeklyWindow

from .checker import check_schedule
from .factory import instructor, local, session, student, utc


def rules(instructors: list, students: list, sessions: list) -> set[str]:  # type: ignore[type-arg]
    return {f.rule for f in check_schedule(instructors, students, sessions)}


def test_off_grid_session_is_invalid_time() -> None:
    s = session("a", utc(2026, 1, 5, 10, 3))
    assert rules([instructor("i1")], [student("s1")], [s]) == {"invalid_time"}


def test_cancelled_sessions_are_ignored() -> None:
    a = session("a", utc(2026, 1, 5, 10))
    b = dataclasses.replace(session("b", utc(2026, 1, 5, 10)), status=SessionStatus.CANCELLED)
    assert rules([instructor("i1")], [student("s1")], [a, b]) == set()


def test_availability_is_read_minute_by_minute_in_local_time_across_dst() -> None:
    ny = instructor("i1", tz="America/New_York", windows=[WeeklyWindow(d, "09:00", "17:00") for d in range(7)])
    ok = session("a", local("America/New_York", 2026, 3, 8, 16))  # Sunday of the change, EDT
    bad = session("b", utc(2026, 3, 8, 21) - timedelta(minutes=30))  # 16:30-17:30 EDT
    assert rules([ny], [student("s1")], [ok]) == set()
    assert rules([ny], [student("s1")], [bad]) == {"outside_availability"}


def test_pairwise_rules_and_caps() -> None:
    people = [instructor("i1", buffer=10, per_day=2), instructor("i2")]
    students = [student("s1"), student("s2"), student("s3")]
    a = session("a", utc(2026, 1, 5, 10), students=("s1",))
    b = session("b", utc(2026, 1, 5, 11, 5), students=("s2",))  # 5 min after a: buffer
    c = session("c", utc(2026, 1, 5, 13), students=("s3",))  # third that day: daily cap
    d = session("d", utc(2026, 1, 5, 10, 30), instructor_id="i2", students=("s1",))  # s1 twice
    found = rules(people, students, [a, b, c, d])
    assert found == {"buffer_violated", "daily_cap_exceeded", "student_double_booked"}
