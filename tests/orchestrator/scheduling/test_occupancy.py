from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator.scheduling import INSTRUCTOR, STUDENT, InvalidInputError, occupancy_slots

from .factory import session, utc


def test_instructor_claims_buffer_after_the_session_and_students_only_the_session() -> None:
    s = session("a", utc(2026, 1, 5, 10, 0), 30, students=("s1", "s2"))
    rows = occupancy_slots(s, instructor_buffer_minutes=10)
    first = int(s.start.timestamp()) // 300
    assert [r for r in rows if r[0] == INSTRUCTOR] == [(INSTRUCTOR, "i1", first + k) for k in range(8)]
    assert [r for r in rows if r[1] == "s1"] == [(STUDENT, "s1", first + k) for k in range(6)]
    assert len([r for r in rows if r[1] == "s2"]) == 6


def test_back_to_back_sessions_collide_only_inside_the_buffer() -> None:
    a = session("a", utc(2026, 1, 5, 10, 0), 60)
    b_ok = session("b", utc(2026, 1, 5, 11, 10), 60, students=("s2",))
    b_bad = session("c", utc(2026, 1, 5, 11, 5), 60, students=("s2",))
    claims_a = {r for r in occupancy_slots(a, 10) if r[0] == INSTRUCTOR}
    assert not claims_a & {r for r in occupancy_slots(b_ok, 10) if r[0] == INSTRUCTOR}
    assert claims_a & {r for r in occupancy_slots(b_bad, 10) if r[0] == INSTRUCTOR}


def test_unassigned_session_claims_only_students() -> None:
    s = session("a", utc(2026, 1, 5, 10, 0), 30, instructor_id=None)
    assert {r[0] for r in occupancy_slots(s, 15)} == {STUDENT}


@pytest.mark.parametrize("start_minute, minutes", [(3, 30), (0, 32), (0, 0)])
def test_off_grid_or_empty_sessions_are_rejected(start_minute: int, minutes: int) -> None:
    s = session("a", utc(2026, 1, 5, 10, start_minute), 30)
    s = type(s)(**{**{f: getattr(s, f) for f in s.__slots__}, "end": s.start + timedelta(minutes=minutes)})
    with pytest.raises(InvalidInputError):
        occupancy_slots(s, 0)


@pytest.mark.parametrize("buffer", [0, 5, 10, 15])
def test_occupancy_claims_collide_exactly_when_the_engine_reports_a_conflict(buffer: int) -> None:
    import random

    from orchestrator.scheduling import RuleCode

    from .factory import instructor, scheduler, student

    rng = random.Random(buffer)
    clashes = 0
    for k in range(150):
        a = session(f"a{k}", utc(2026, 1, 5, 10), rng.choice([30, 45, 60]))
        b_start = utc(2026, 1, 5, 8) + timedelta(minutes=5 * rng.randint(0, 60))
        b = session(f"b{k}", b_start, rng.choice([30, 45, 60]), students=("s2",))
        engine = scheduler([instructor("i1", buffer=buffer)], [student("s1"), student("s2")], [a])
        engine_says = {v.rule for v in engine.check(b)} & {
            RuleCode.INSTRUCTOR_DOUBLE_BOOKED,
            RuleCode.BUFFER_VIOLATED,
        }
        mine = {r for r in occupancy_slots(a, buffer) if r[0] == INSTRUCTOR}
        theirs = {r for r in occupancy_slots(b, buffer) if r[0] == INSTRUCTOR}
        assert bool(engine_says) == bool(mine & theirs)
        clashes += bool(engine_says)
    assert 20 < clashes < 130  # both outcomes are exercised
