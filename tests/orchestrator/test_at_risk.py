"""At-risk detection: the rules on their own, then the leader's watch on a real store (SQLite and PostgreSQL)
raising, keeping, reopening and resolving a student's exception as sessions end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.at_risk import KIND, AtRiskRules, AtRiskWatch, assess
from orchestrator.store import Store
from orchestrator.store.engagement import EngagementEvent, ParticipantEngagement
from orchestrator.store.models import (
    BookingDraft,
    ExceptionStatus,
    Instructor,
    Occurrence,
    SessionStatus,
    Student,
    Subject,
    WeeklyWindow,
)

RULES = AtRiskRules(lookback=timedelta(days=30))


def row(attendance: float, contributions: int = 0, checks: tuple[int, int] = (0, 0)) -> ParticipantEngagement:
    return ParticipantEngagement(
        participant_id="s1",
        role="student",
        expected=True,
        attended_s=attendance * 3600,
        attendance_fraction=attendance,
        first_joined_at=None,
        talk_s=0.0,
        talk_share=0.0,
        chat_messages=contributions,
        hands_raised=0,
        reactions=0,
        answers=0,
        checks_answered=checks[0],
        checks_correct=checks[1],
        questions_asked=0,
    )


def rules_of(history: list[ParticipantEngagement]) -> list[str]:
    return [r["rule"] for r in assess(history, RULES)]


def test_the_rules() -> None:
    assert rules_of([row(0), row(0)]) == []  # too few sessions for a verdict
    assert rules_of([row(1, 3)] * 6) == []  # steady
    assert rules_of([row(1, 3), row(0.3, 3), row(0.2, 3), row(0.4, 3), row(1, 3)]) == ["low_attendance"]
    assert rules_of([row(1, 3), row(1, 3), row(1, 0)]) == []  # one session against one: no trend yet
    assert rules_of([row(1, 3), row(1, 3), row(1, 3), row(0), row(0)]) == [
        "consecutive_absences",
        "declining_participation",
    ]
    assert rules_of([row(1, 4), row(1, 4), row(1, 4), row(1, 1), row(1, 1), row(1, 1)]) == ["declining_participation"]
    assert rules_of([row(1, 4), row(1, 4), row(1, 4), row(1, 2), row(1, 2), row(1, 2)]) == []  # half: not below
    assert rules_of([row(1), row(1), row(1)]) == []  # never contributed: nothing declined
    # checks mostly wrong in three sessions with checks in a row (a session without checks in between)
    wrong = [row(1, 3, (2, 0)), row(1, 3), row(1, 3, (3, 1)), row(1, 3, (1, 0))]
    assert rules_of(wrong) == ["comprehension_gaps"]
    assert assess(wrong, RULES)[0] == {"rule": "comprehension_gaps", "checks_right": 1, "checks": 6}
    assert rules_of([row(1, 3, (2, 0)), row(1, 3, (2, 1)), row(1, 3, (1, 0))]) == []  # half right is no gap


async def test_the_watch_raises_keeps_reopens_and_resolves(store: Store) -> None:
    await store.create_subject(Subject("math", "Maths"))
    await store.create_instructor(
        Instructor("ins", "Ada", "ada@example.org", "UTC", {"math": 5}, (WeeklyWindow(0, "00:00", "24:00"),))  # type: ignore[arg-type]
    )
    await store.create_student(Student("s1", "Sam", "UTC", levels={"math": 1}))  # type: ignore[arg-type]
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    starts = [now - timedelta(days=10 - i) for i in range(6)]
    draft = BookingDraft(
        subject_id="math", student_ids=("s1",), instructor_id="ins", start=starts[0], duration_minutes=60
    )  # type: ignore[arg-type]
    _, sessions = await store.create_booking(
        draft,
        [Occurrence(i, s, s + timedelta(hours=1), "ins") for i, s in enumerate(starts)],  # type: ignore[arg-type]
    )
    ids = [str(s.session_id) for s in sessions]

    async def ended(index: int, *, present: bool, chats: int = 0, taught: bool = True) -> None:
        start = starts[index]
        if taught:
            await store.record_join(ids[index], "ins", "instructor", at=start)
            await store.record_leave(ids[index], "ins", at=start + timedelta(hours=1))
        if present:
            await store.record_join(ids[index], "s1", "student", at=start)
            await store.record_leave(ids[index], "s1", at=start + timedelta(hours=1))
        for n in range(chats):
            event = EngagementEvent(ids[index], "s1", "student", "chat", start + timedelta(minutes=n + 1))
            await store.record_engagement(event, f"{index}:{n}")
        await store.update_session(ids[index], status=SessionStatus.ENDED)

    watch = AtRiskWatch(store, RULES)
    for index, present in enumerate((True, True, False)):
        await ended(index, present=present, chats=2 if present else 0)
    assert await watch.run_once(now) == 0  # 2 of 3 attended, one absence, too short for a trend: not yet
    assert await store.exception_by_key(f"{KIND}:s1") is None

    # a class the instructor never came to is not the student's absence
    await ended(3, present=False, taught=False)
    assert await watch.run_once(now) == 0
    await store.record_join(ids[3], "ins", "instructor", at=starts[3])  # ... but now the instructor came
    await store.record_leave(ids[3], "ins", at=starts[3] + timedelta(hours=1))
    assert await watch.run_once(now) == 1
    flag = await store.exception_by_key(f"{KIND}:s1")
    assert flag is not None and flag.kind == KIND and flag.status is ExceptionStatus.OPEN
    assert [r["rule"] for r in flag.details["reasons"]] == ["consecutive_absences", "declining_participation"]
    assert flag.details["as_of_session_id"] == ids[3] and flag.subject_refs == {
        "student_id": "s1",
        "session_id": ids[3],
    }
    assert [s["session_id"] for s in flag.details["sessions"]] == ids[:4]

    # the same evidence again: no new occurrence; an operator's resolution stands until something new happens
    assert await watch.run_once(now) == 1
    assert (await store.exception_by_key(f"{KIND}:s1")).occurrences == 1  # type: ignore[union-attr]
    await store.set_exception_status(flag.exception_id, ExceptionStatus.RESOLVED, owner="ops")
    await watch.run_once(now)
    assert (await store.exception_by_key(f"{KIND}:s1")).status is ExceptionStatus.RESOLVED  # type: ignore[union-attr]

    await ended(4, present=False)  # a third absence: new evidence reopens it
    await watch.run_once(now)
    flag = await store.exception_by_key(f"{KIND}:s1")
    assert flag is not None and flag.status is ExceptionStatus.OPEN and flag.occurrences == 2
    assert flag.details["as_of_session_id"] == ids[4] and flag.subject_refs["session_id"] == ids[4]

    await ended(5, present=True, chats=4)  # back, and taking part: 3 of 6 attended, participation 1.33 -> 1.33
    assert await watch.run_once(now) == 0
    assert (await store.exception_by_key(f"{KIND}:s1")).status is ExceptionStatus.RESOLVED  # type: ignore[union-attr]
