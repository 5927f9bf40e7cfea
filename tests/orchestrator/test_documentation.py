"""Session documents: the draft's content from a session's data, the leader's documenter on a real store
(SQLite and PostgreSQL: once per session, waiting for a recording being built, flagging a missing completion).
The endpoints: api/test_documents_api.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.documentation import DocumentationConfig, Documenter, draft_for
from orchestrator.store import Store
from orchestrator.store.engagement import EngagementEvent, summarise
from orchestrator.store.models import (
    Attendance,
    BookingDraft,
    ExceptionStatus,
    Instructor,
    Occurrence,
    Recording,
    SessionStatus,
    Student,
    Subject,
    WeeklyWindow,
)
from tests.orchestrator.test_engagement import T0, at, session
from tests.orchestrator.test_provisioning import events as webhook_events


def test_the_draft_says_who_came_who_took_part_and_what_to_follow_up() -> None:
    s = session()  # instructor "ins", students s1 and s2, 09:00-10:00
    attendance = [
        Attendance("ins", "instructor", at(-2), at(60)),
        Attendance("s1", "student", at(0), at(60)),
        # s2 never came
    ]

    def ev(who: str, kind: str, minute: float, **details: object) -> EngagementEvent:
        role = "instructor" if who == "ins" else "student"
        return EngagementEvent("ses_1", who, role, kind, at(minute), 1.0, dict(details) or None)

    events = [
        EngagementEvent("ses_1", "ins", "instructor", "talk", at(1), 300.0),
        EngagementEvent("ses_1", "s1", "student", "talk", at(2), 100.0),
        ev("ins", "question", 10, poll_id="q1", question="2+2?", options=["3", "4"], check=True, correct=1),
        ev("s1", "check_answer", 11, poll_id="q1", choice=0),
        ev("ins", "question", 20, poll_id="q2", question="Pace?", options=["slow", "ok", "fast"], check=False),
        ev("s1", "poll_answer", 21, poll_id="q2", choice=1),
        ev("ins", "question", 30, poll_id="q3", question="odd", options=[], check=True, correct=-1),  # no crash
    ]
    people = summarise(s, attendance, events, now=at(120))
    failed = Recording("rec_1", "ses_1", "failed", 0.9, ((1.0, 2.0),), (), T0, T0)  # type: ignore[arg-type]
    draft = draft_for(s, people, events, failed)
    assert draft["attendance"] == {"students": 2, "present": ["s1"], "absent": ["s2"], "late": [], "rate": 0.5}
    assert draft["talk"] == {"total_s": 400.0, "instructor_share": 0.75}
    check, poll, odd = draft["questions"]
    assert (odd["answers"], odd["right"], odd["choices"]) == (0, 0, [])
    assert (check["question"], check["check"], check["correct"], check["answers"], check["right"]) == (
        "2+2?",
        True,
        1,
        1,
        0,
    )
    assert (poll["check"], poll["choices"], poll["answers"]) == (False, [0, 1, 0], 1)
    assert draft["follow_up"] == ["s2 was absent", "only 0 of 1 answered '2+2?' right", "the recording is incomplete"]
    assert draft["recording"] == {"recording_id": "rec_1", "status": "failed", "coverage": 0.9}
    assert draft["transcript"] is None


async def ended_session(store: Store, *, hours_ago: float) -> str:
    await store.create_subject(Subject("math", "Maths"))
    await store.create_instructor(
        Instructor("ins", "Ada", "ada@example.org", "UTC", {"math": 5}, (WeeklyWindow(0, "00:00", "24:00"),))  # type: ignore[arg-type]
    )
    await store.create_student(Student("s1", "Sam", "UTC", levels={"math": 1}))  # type: ignore[arg-type]
    end = (datetime.now(UTC) - timedelta(hours=hours_ago)).replace(minute=0, second=0, microsecond=0)
    draft = BookingDraft(
        subject_id="math", student_ids=("s1",), instructor_id="ins", start=end - timedelta(hours=1), duration_minutes=60
    )  # type: ignore[arg-type]
    _, (s,) = await store.create_booking(draft, [Occurrence(0, end - timedelta(hours=1), end, "ins")])  # type: ignore[arg-type]
    await store.update_session(s.session_id, status=SessionStatus.ENDED)
    return str(s.session_id)


async def test_the_documenter_drafts_once_waits_for_the_recording_and_flags_a_missing_completion(
    store: Store,
) -> None:
    session_id = await ended_session(store, hours_ago=2)
    await store.upsert_recording(session_id, status="assembling")
    documenter = Documenter(store, DocumentationConfig(recording_wait=timedelta(hours=3)))
    now = datetime.now(UTC)
    ended = (await store.get_session(session_id)).end
    assert await documenter.run_once(ended + timedelta(minutes=1)) == 0  # the room's last events may be on the way
    assert await documenter.run_once(now) == 0  # the recording is still being built: wait for it
    await store.upsert_recording(session_id, status="ready", coverage=1.0, gaps=(), files=["x.mkv"])
    assert await documenter.run_once(now) == 1
    assert await documenter.run_once(now) == 0  # once per session
    document = await store.get_document(session_id)
    assert document.status == "draft" and document.draft["recording"]["status"] == "ready"
    assert document.draft["follow_up"] == ["s1 was absent"]
    sent = await webhook_events(store, "session.documented")
    assert [e["session_id"] for e in sent] == [session_id]

    # a day later and still a draft: one documentation_missing exception, however many rounds
    later = now + timedelta(hours=25)
    await documenter.run_once(later)
    await documenter.run_once(later)
    missing = await store.exception_by_key(f"documentation_missing:{session_id}")
    assert missing is not None and missing.occurrences == 1 and missing.status is ExceptionStatus.OPEN
    assert await store.documents_in_draft(later, unflagged=True) == []  # flagged drafts leave room for new ones
    assert len(await store.documents_in_draft(later)) == 1
    assert missing.subject_refs == {"session_id": session_id, "instructor_id": "ins"}
