"""The weekly report on a real store (SQLite and PostgreSQL): attendance, recording issues, documentation,
students under half, instructors against their peers; then the endpoint, its default window, errors and scope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.api import create_api_key
from orchestrator.reports import week_report
from orchestrator.store import Store
from orchestrator.store.engagement import EngagementEvent
from orchestrator.store.models import (
    BookingDraft,
    Instructor,
    Occurrence,
    SessionStatus,
    Student,
    Subject,
    WeeklyWindow,
)
from tests.orchestrator.api.conftest import ApiFactory

MONDAY = datetime(2026, 11, 16, tzinfo=UTC)


async def a_week(store: Store) -> dict[str, list[str]]:
    """Three instructors, two ended sessions each in the week of MONDAY; returns their session ids."""
    await store.create_subject(Subject("math", "Maths"))
    for i in ("i1", "i2", "i3"):
        await store.create_instructor(
            Instructor(i, i.upper(), f"{i}@example.org", "UTC", {"math": 5}, (WeeklyWindow(0, "00:00", "24:00"),))  # type: ignore[arg-type]
        )
    for s in ("a", "b", "c", "d", "e"):
        await store.create_student(Student(s, s.upper(), "UTC", levels={"math": 1}))  # type: ignore[arg-type]
    plan = {"i1": ("a", "b", "e"), "i2": ("c",), "i3": ("d",)}
    out: dict[str, list[str]] = {}
    for n, (instructor, students) in enumerate(plan.items()):
        starts = [MONDAY + timedelta(days=n, hours=9 + k * 2) for k in range(2)]
        draft = BookingDraft(
            subject_id="math", student_ids=students, instructor_id=instructor, start=starts[0], duration_minutes=60
        )  # type: ignore[arg-type]
        _, sessions = await store.create_booking(
            draft,
            [Occurrence(k, s, s + timedelta(hours=1), instructor) for k, s in enumerate(starts)],  # type: ignore[arg-type]
        )
        out[instructor] = [str(s.session_id) for s in sessions]
        for s in sessions:
            await store.record_join(s.session_id, instructor, "instructor", at=s.start)
            await store.record_leave(s.session_id, instructor, at=s.end)
            came = {"i1": ("a",), "i2": ("c",), "i3": ("d",)}[instructor]
            for student in came:
                await store.record_join(s.session_id, student, "student", at=s.start)
                await store.record_leave(s.session_id, student, at=s.end)
                for k in range(2 if instructor == "i1" else 3):
                    event = EngagementEvent(s.session_id, student, "student", "chat", s.start + timedelta(minutes=k))
                    await store.record_engagement(event, f"{s.session_id}:{k}")
            await store.update_session(s.session_id, status=SessionStatus.ENDED)
    # next week's session: not this week's business
    later = MONDAY + timedelta(days=8, hours=9)
    draft = BookingDraft(subject_id="math", student_ids=("a",), instructor_id="i1", start=later, duration_minutes=60)  # type: ignore[arg-type]
    _, (next_week,) = await store.create_booking(draft, [Occurrence(0, later, later + timedelta(hours=1), "i1")])  # type: ignore[arg-type]
    await store.update_session(next_week.session_id, status=SessionStatus.ENDED)
    # a class nobody taught (the instructor never came): counted apart, nobody's absence
    untaught = MONDAY + timedelta(days=4, hours=9)
    draft = BookingDraft(subject_id="math", student_ids=("b",), instructor_id="i2", start=untaught, duration_minutes=60)  # type: ignore[arg-type]
    _, (not_held,) = await store.create_booking(draft, [Occurrence(0, untaught, untaught + timedelta(hours=1), "i2")])  # type: ignore[arg-type]
    await store.update_session(not_held.session_id, status=SessionStatus.ENDED)
    await store.upsert_recording(out["i2"][0], status="failed", coverage=0.8, gaps=((1.0, 2.0),), files=[])
    await store.upsert_recording(out["i2"][1], status="ready", coverage=1.0, gaps=(), files=["x.mkv"])
    for sid in out["i3"]:
        await store.add_document_draft(sid, "bkg", {"instructor_id": "i3"})
    await store.complete_document(out["i3"][0], notes="done", curriculum_covered=None, completed_by="i3")
    return out


async def test_the_week_report(store: Store) -> None:
    ids = await a_week(store)
    report = await week_report(store, MONDAY, MONDAY + timedelta(days=7), now=MONDAY + timedelta(days=7))
    assert (report["sessions"], report["sessions_not_held"]) == (6, 1)
    assert report["attendance_rate"] == 0.6  # a 2/2, b 0/2, e 0/2, c 2/2, d 2/2: 6 of 10 places
    assert report["recording_issues"] == [
        {
            "session_id": ids["i2"][0],
            "recording_id": report["recording_issues"][0]["recording_id"],
            "status": "failed",
            "coverage": 0.8,
        }
    ]
    assert report["documents"] == {"completed": 1, "pending": 5}
    assert report["students_under_half"] == [
        {"student_id": "b", "sessions": 2, "attended": 0},
        {"student_id": "e", "sessions": 2, "attended": 0},
    ]
    by_id = {i["instructor_id"]: i for i in report["instructors"]}
    assert by_id["i1"]["attendance_rate"] == 0.3333 and by_id["i1"]["participation_per_student"] == 0.67
    assert by_id["i1"]["below_peers"] == ["attendance_rate", "participation_per_student"]
    assert by_id["i2"]["below_peers"] == by_id["i3"]["below_peers"] == []
    assert (by_id["i3"]["documents_completed"], by_id["i3"]["documents_pending"]) == (1, 1)


async def test_the_week_report_endpoint(make_api: ApiFactory) -> None:
    api = await make_api()
    await a_week(api.store)
    resp = await api.client.get("/v1/reports/week", params={"start": "2026-11-16T00:00:00Z"}, headers=api.auth())
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["start"], body["end"], body["sessions"]) == ("2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z", 6)
    resp = await api.client.get(
        "/v1/reports/week", params={"start": "2026-11-16T00:00:00Z", "days": 1}, headers=api.auth()
    )
    assert (await resp.json())["sessions"] == 2  # Monday's: i1's two
    resp = await api.client.get("/v1/reports/week", headers=api.auth())  # this week: nothing ended in it here
    body = await resp.json()
    assert resp.status == 200 and datetime.fromisoformat(body["start"]).weekday() == 0
    for bad in ({"start": "last week"}, {"days": "0"}, {"days": "32"}, {"start": "9999-12-30T00:00:00Z"}):
        resp = await api.client.get("/v1/reports/week", params=bad, headers=api.auth())
        assert resp.status == 400, bad
    _, narrow = await create_api_key(api.store, "ops", ["ops:read"])
    assert (await api.client.get("/v1/reports/week", headers=api.auth(narrow))).status == 403
