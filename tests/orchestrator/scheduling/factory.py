"""Small builders for hand-written scheduling scenarios."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from orchestrator.scheduling import (
    Instructor,
    InstructorId,
    Organisation,
    Scheduler,
    Session,
    SessionId,
    Student,
    StudentId,
    Subject,
    SubjectId,
    SubstitutionPolicy,
    TimeOff,
    WeeklyWindow,
)
from orchestrator.scheduling.model import BookingId

from .checker import check_schedule

MATH = SubjectId("math")
ART = SubjectId("art")
ALL_WEEK = tuple(WeeklyWindow(d, "00:00", "24:00") for d in range(7))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type, misc]


def local(tz: str, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(tz), fold=fold).astimezone(UTC)  # type: ignore[arg-type, misc]


def instructor(
    iid: str,
    *,
    tz: str = "UTC",
    quals: Mapping[str, int] | None = None,
    windows: Sequence[WeeklyWindow] = ALL_WEEK,
    buffer: int = 0,
    per_day: int = 10,
    per_week: int = 40,
    leave: Sequence[TimeOff] = (),
    prefers: Sequence[str] = (),
) -> Instructor:
    return Instructor(
        instructor_id=InstructorId(iid),
        name=iid.upper(),
        email=f"{iid}@example.org",
        time_zone=tz,
        qualifications={SubjectId(k): v for k, v in (quals or {MATH: 5}).items()},
        weekly_availability=tuple(windows),
        exceptions=tuple(leave),
        buffer_minutes=buffer,
        max_sessions_per_day=per_day,
        max_sessions_per_week=per_week,
        preferred_student_ids=frozenset(StudentId(p) for p in prefers),
    )


def student(
    sid: str, *, tz: str = "UTC", levels: Mapping[str, int] | None = None, prefers: Sequence[str] = ()
) -> Student:
    return Student(
        student_id=StudentId(sid),
        name=sid.upper(),
        time_zone=tz,
        levels={SubjectId(k): v for k, v in (levels or {MATH: 2, ART: 1}).items()},
        preferred_instructor_ids=frozenset(InstructorId(p) for p in prefers),
    )


def session(
    sid: str,
    start: datetime,
    minutes: int = 60,
    *,
    instructor_id: str | None = "i1",
    students: Sequence[str] = ("s1",),
    subject: SubjectId = MATH,
    unit: str | None = None,
) -> Session:
    return Session(
        session_id=SessionId(sid),
        booking_id=BookingId(f"b-{sid}"),
        occurrence_index=0,
        start=start,
        end=start + timedelta(minutes=minutes),
        instructor_id=InstructorId(instructor_id) if instructor_id else None,
        student_ids=tuple(StudentId(s) for s in students),
        subject_id=subject,
        curriculum_unit=unit,
    )


def scheduler(
    instructors: Sequence[Instructor],
    students: Sequence[Student],
    sessions: Sequence[Session] = (),
    policy: SubstitutionPolicy = SubstitutionPolicy.PROPOSE,
) -> Scheduler:
    org = Organisation(
        tuple(instructors),
        tuple(students),
        (Subject(MATH, "Mathematics"), Subject(ART, "Art")),
        tuple(sessions),
        substitution_policy=policy,
    )
    return Scheduler(org)


def assert_clean(engine: Scheduler) -> None:
    """The independent checker finds nothing wrong with the engine's current schedule."""
    findings = check_schedule(engine.instructors(), engine.students(), engine.sessions.values())
    assert findings == []
