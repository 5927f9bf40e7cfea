"""A seeded synthetic organisation for scheduling tests and bench/scheduling.py.

At scale 1: 100 instructors, 300 students, 12 subjects, 7 time zones, and 500 session requests in
one week (Monday 2026-03-09, the first week after the US DST change while Europe is still on winter
time), plus a history week of sessions assigned by the engine for continuity.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from orchestrator.scheduling import (
    Instructor,
    InstructorId,
    MatchRequest,
    Organisation,
    Session,
    SessionId,
    Student,
    StudentId,
    Subject,
    SubjectId,
    WeeklyWindow,
)
from orchestrator.scheduling.model import BookingId

TIME_ZONES = (
    "America/New_York",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Australia/Sydney",
    "Asia/Tokyo",
)
WEEK = datetime(2026, 3, 9, tzinfo=UTC)
HISTORY_WEEK = datetime(2026, 3, 2, tzinfo=UTC)


@dataclass(frozen=True)
class Generated:
    organisation: Organisation
    requests: list[MatchRequest]
    """Requests for WEEK: each student free at its time (students never collide with each other)."""


def _instructor(rng: random.Random, n: int, subjects: list[SubjectId]) -> Instructor:
    tz = rng.choice(TIME_ZONES)
    quals = {s: rng.randint(3, 5) for s in rng.sample(subjects, rng.randint(2, 4))}
    days = sorted(rng.sample(range(7), rng.randint(5, 6)))
    morning = rng.choice([("07:00", "12:00"), ("08:00", "13:00"), ("06:00", "11:30")])
    evening = rng.choice([("13:00", "21:00"), ("14:00", "22:00"), ("12:30", "20:00")])
    windows = tuple(WeeklyWindow(d, *w) for d in days for w in (morning, evening))
    return Instructor(
        instructor_id=InstructorId(f"i{n:05d}"),
        name=f"Instructor {n}",
        email=f"i{n}@example.org",
        time_zone=tz,
        qualifications=quals,
        weekly_availability=windows,
        buffer_minutes=rng.choice([0, 5, 10, 15]),
        max_sessions_per_day=rng.choice([5, 6, 8]),
        max_sessions_per_week=rng.choice([20, 25, 30]),
    )


def _student(rng: random.Random, n: int, subjects: list[SubjectId], instructors: list[Instructor]) -> Student:
    levels = {s: rng.randint(1, 4) for s in rng.sample(subjects, rng.randint(1, 3))}
    preferred: frozenset[InstructorId] = frozenset()
    if rng.random() < 0.3:
        preferred = frozenset(i.instructor_id for i in rng.sample(instructors, 2))
    return Student(
        student_id=StudentId(f"s{n:05d}"),
        name=f"Student {n}",
        time_zone=rng.choice(TIME_ZONES),
        country="GB",
        guardian_name="Guardian",
        guardian_email=f"g{n}@example.org",
        levels=levels,
        preferred_instructor_ids=preferred,
    )


def _requests(rng: random.Random, students: list[Student], week: datetime, count: int) -> list[MatchRequest]:
    busy: dict[StudentId, list[tuple[datetime, datetime]]] = {}
    out: list[MatchRequest] = []
    while len(out) < count:
        student = rng.choice(students)
        tz = ZoneInfo(student.time_zone)
        local_monday = week.astimezone(tz).replace(hour=0, minute=0) + timedelta(days=1)
        day = rng.randint(0, 4)
        local = (local_monday + timedelta(days=day)).replace(
            hour=rng.randint(8, 19), minute=rng.choice([0, 15, 30, 45])
        )
        start = local.astimezone(UTC)
        duration = rng.choice([45, 60])
        end = start + timedelta(minutes=duration)
        mine = busy.setdefault(student.student_id, [])
        if any(s < end and e > start for s, e in mine):
            continue
        mine.append((start, end))
        subject = rng.choice(sorted(student.levels))
        out.append(MatchRequest(SubjectId(subject), (student.student_id,), start, duration))
    return out


def generate(scale: int = 1, seed: int = 7, *, history: bool = True) -> Generated:
    """A deterministic organisation; history sessions are assigned by a simple greedy rule here
    (qualified, available, free), then verified by the checker like everything else."""
    from orchestrator.scheduling import Scheduler

    rng = random.Random(seed)
    subjects = [SubjectId(f"sub{k:02d}") for k in range(12)]
    instructors = [_instructor(rng, n, subjects) for n in range(100 * scale)]
    students = [_student(rng, n, subjects, instructors) for n in range(300 * scale)]
    subject_values = tuple(Subject(s, s.upper()) for s in subjects)
    org = Organisation(tuple(instructors), tuple(students), subject_values)
    sessions: list[Session] = []
    if history:
        scheduler = Scheduler(org)
        for k, req in enumerate(_requests(rng, students, HISTORY_WEEK, 400 * scale)):
            result = scheduler.match(req)
            if not result.candidates:
                continue
            # Not always the best: history should not already be the optimiser's answer.
            pick = rng.choice(result.candidates[:3])
            session = Session(
                session_id=SessionId(f"h{k:06d}"),
                booking_id=BookingId(f"hb{k:06d}"),
                occurrence_index=0,
                start=req.start,
                end=req.start + timedelta(minutes=req.duration_minutes),
                instructor_id=pick.instructor_id,
                student_ids=req.student_ids,
                subject_id=req.subject_id,
            )
            scheduler.book(session)
            sessions.append(session)
    requests = _requests(rng, students, WEEK, 500 * scale)
    org = Organisation(tuple(instructors), tuple(students), subject_values, tuple(sessions))
    return Generated(org, requests)


def unassigned_sessions(requests: list[MatchRequest], prefix: str = "w") -> list[Session]:
    return [
        Session(
            session_id=SessionId(f"{prefix}{k:06d}"),
            booking_id=BookingId(f"{prefix}b{k:06d}"),
            occurrence_index=0,
            start=r.start,
            end=r.start + timedelta(minutes=r.duration_minutes),
            instructor_id=None,
            student_ids=r.student_ids,
            subject_id=r.subject_id,
        )
        for k, r in enumerate(requests)
    ]
