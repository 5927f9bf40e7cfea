from __future__ import annotations

from collections import Counter
from datetime import timedelta

from orchestrator.scheduling import InstructorId, SessionId, SubstitutionPolicy, TimeOff

from .factory import assert_clean, instructor, scheduler, session, student, utc


def test_substitutes_rank_who_taught_the_student_then_the_unit_then_the_rest() -> None:
    history = [
        session("h1", utc(2025, 12, 1, 10), instructor_id="taught_student"),
        session("h2", utc(2025, 12, 2, 10), instructor_id="taught_unit", students=("s2",), unit="fractions"),
    ]
    target = session("t", utc(2026, 1, 12, 10), instructor_id="i1", unit="fractions")
    engine = scheduler(
        [
            instructor("i1"),
            instructor("taught_student"),
            instructor("taught_unit"),
            instructor("liked"),  # best score by preference, but no continuity
        ],
        [student("s1", prefers=["liked"]), student("s2")],
        [*history, target],
    )
    ranked = engine.substitutes(SessionId("t"))
    assert [(c.instructor_id, c.tier) for c in ranked] == [
        ("taught_student", 0),
        ("taught_unit", 1),
        ("liked", 2),
    ]
    assert ranked[2].score > ranked[0].score  # the tier, not the score, put continuity first
    assert "i1" not in {c.instructor_id for c in ranked}


def test_substitutes_respect_buffers_leave_and_qualification() -> None:
    target = session("t", utc(2026, 1, 12, 10), instructor_id="i1")
    neighbour = session("n", utc(2026, 1, 12, 11, 5), instructor_id="buffered", students=("s2",))
    engine = scheduler(
        [
            instructor("i1"),
            instructor("buffered", buffer=10),
            instructor("away", leave=[TimeOff(utc(2026, 1, 12), utc(2026, 1, 13), "leave")]),
            instructor("artist", quals={"art": 5}),
            instructor("free"),
        ],
        [student("s1"), student("s2")],
        [target, neighbour],
    )
    assert [c.instructor_id for c in engine.substitutes(SessionId("t"))] == ["free"]


def _twenty_sessions() -> list:  # type: ignore[type-arg]
    out = []
    for day in range(5):
        for slot in range(4):
            start = utc(2026, 1, 12 + day, 9) + timedelta(minutes=75 * slot)
            out.append(session(f"l{day}{slot}", start, instructor_id="lead", students=(f"s{slot}",)))
    return out


def test_leave_over_twenty_sessions_assigns_consistently() -> None:
    sessions = _twenty_sessions()
    # The student s0 has a history with "favourite", who has room for only 2 sessions a day and a
    # 20-minute buffer, so naive per-session ranking would give it back-to-back sessions.
    history = [
        session(f"h{k}", utc(2025, 12, 1 + k, 9), instructor_id="favourite", students=(f"s{k}",)) for k in range(4)
    ]
    engine = scheduler(
        [
            instructor("lead"),
            instructor("favourite", buffer=20, per_day=2),
            instructor("helper", per_day=3),
            instructor("backup"),
        ],
        [student(f"s{k}") for k in range(4)],
        [*history, *sessions],
        policy=SubstitutionPolicy.AUTO_ASSIGN,
    )
    outcome = engine.add_leave(InstructorId("lead"), utc(2026, 1, 12), utc(2026, 1, 17), "parental leave")
    assert len(outcome.proposals) == 20 and outcome.uncovered == ()
    assert all(p.applied and p.previous_instructor_id == "lead" for p in outcome.proposals)
    per_day = Counter((p.chosen, p.session_id[1]) for p in outcome.proposals)
    assert max(n for (who, _), n in per_day.items() if who == "favourite") == 2
    assert max(n for (who, _), n in per_day.items() if who == "helper") <= 3
    assert all(engine.sessions[p.session_id].instructor_id == p.chosen for p in outcome.proposals)
    assert "lead" not in {engine.sessions[p.session_id].instructor_id for p in outcome.proposals}
    assert_clean(engine)


def test_two_leaves_at_the_same_time_never_share_a_substitute() -> None:
    a = session("a", utc(2026, 1, 12, 10), instructor_id="x", students=("s1",))
    b = session("b", utc(2026, 1, 12, 10), instructor_id="y", students=("s2",))
    engine = scheduler(
        [instructor("x"), instructor("y"), instructor("sub1"), instructor("sub2")],
        [student("s1"), student("s2")],
        [a, b],
        policy=SubstitutionPolicy.AUTO_ASSIGN,
    )
    first = engine.add_leave(InstructorId("x"), utc(2026, 1, 12), utc(2026, 1, 13), "sick")
    second = engine.add_leave(InstructorId("y"), utc(2026, 1, 12), utc(2026, 1, 13), "sick")
    chosen = {first.proposals[0].chosen, second.proposals[0].chosen}
    assert chosen == {"sub1", "sub2"}
    assert_clean(engine)


def test_propose_policy_leaves_sessions_unassigned_until_confirmed() -> None:
    sessions = _twenty_sessions()
    engine = scheduler(
        [instructor("lead"), instructor("a", buffer=20, per_day=2), instructor("b")],
        [student(f"s{k}") for k in range(4)],
        sessions,
        policy=SubstitutionPolicy.PROPOSE,
    )
    outcome = engine.add_leave(InstructorId("lead"), utc(2026, 1, 12), utc(2026, 1, 17), "leave")
    assert outcome.policy == SubstitutionPolicy.PROPOSE and outcome.uncovered == ()
    assert not any(p.applied for p in outcome.proposals)
    assert all(engine.sessions[p.session_id].instructor_id is None for p in outcome.proposals)
    for p in outcome.proposals:  # the proposals are jointly feasible: confirming all succeeds
        assert p.chosen is not None
        engine.confirm(p.session_id, p.chosen)
    assert_clean(engine)


def test_cancellation_by_instructor_with_nobody_available_is_reported_uncovered() -> None:
    target = session("t", utc(2026, 1, 12, 10), instructor_id="i1")
    engine = scheduler([instructor("i1"), instructor("artist", quals={"art": 5})], [student("s1")], [target])
    outcome = engine.instructor_cancels(SessionId("t"), policy=SubstitutionPolicy.AUTO_ASSIGN)
    assert outcome.uncovered == ("t",)
    assert engine.sessions[SessionId("t")].instructor_id is None
