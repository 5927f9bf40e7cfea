"""An independent checker of the scheduling hard rules.

Written from the rules as stated in issue 6, deliberately sharing no code with
orchestrator/scheduling: it reads any objects with the agreed field names (Instructor, Student,
Session), works with ``datetime``/``zoneinfo`` directly, checks availability minute by minute and
compares sessions pairwise. It is slow and obvious on purpose.

Rules: instructor qualified (level >= every student's level, missing level = 1); every minute of
the session falls in a weekly window of the instructor's local weekday; no overlap with an exception;
no two sessions of one instructor overlapping (double booked) or closer than the instructor's buffer
(buffer violated); no student in two overlapping sessions; per instructor at most
max_sessions_per_day sessions starting on one local date and max_sessions_per_week in one local ISO
week; starts and durations on 5-minute multiples, end after start.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Finding:
    rule: str
    session_id: str
    other_session_id: str | None
    message: str


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def _is_active(session: Any) -> bool:
    return str(getattr(session, "status", "scheduled")) != "cancelled"


def _available(instructor: Any, start: datetime, end: datetime) -> bool:
    tz = ZoneInfo(instructor.time_zone)
    windows: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for weekday, lo, hi in instructor.weekly_availability:
        windows[int(weekday)].append((_minutes(lo), _minutes(hi)))
    moment = start
    while moment < end:
        local = moment.astimezone(tz)
        minute_of_day = local.hour * 60 + local.minute
        if not any(lo <= minute_of_day < hi for lo, hi in windows.get(local.weekday(), [])):
            return False
        moment += timedelta(minutes=1)
    return True


def check_schedule(instructors: Iterable[Any], students: Iterable[Any], sessions: Iterable[Any]) -> list[Finding]:
    """Every hard-rule breach in a set of sessions (cancelled ones are ignored)."""
    by_instructor_id = {i.instructor_id: i for i in instructors}
    by_student_id = {s.student_id: s for s in students}
    active = [s for s in sessions if _is_active(s)]
    findings: list[Finding] = []
    for s in active:
        if s.start.tzinfo is None or s.end.tzinfo is None:
            findings.append(Finding("invalid_time", s.session_id, None, "naive datetime"))
            continue
        length = (s.end - s.start).total_seconds()
        if (
            s.start.second
            or s.start.microsecond
            or s.start.astimezone(ZoneInfo("UTC")).minute % 5
            or length <= 0
            or length % 300
        ):
            findings.append(Finding("invalid_time", s.session_id, None, f"{s.start}..{s.end}"))
            continue
        if s.instructor_id is None:
            continue
        instructor = by_instructor_id[s.instructor_id]
        needed = max((by_student_id[st].levels.get(s.subject_id, 1) for st in s.student_ids), default=1)
        if instructor.qualifications.get(s.subject_id, 0) < needed:
            findings.append(Finding("not_qualified", s.session_id, None, f"needs level {needed}"))
        if not _available(instructor, s.start, s.end):
            findings.append(Finding("outside_availability", s.session_id, None, f"{s.start}..{s.end}"))
        for leave in instructor.exceptions:
            leave_start, leave_end = leave[0], leave[1]
            if leave_start < s.end and leave_end > s.start:
                findings.append(Finding("instructor_on_leave", s.session_id, None, str(leave)))
    # Pairwise: instructors (overlap, then buffer) and students (overlap).
    per_instructor: dict[str, list[Any]] = defaultdict(list)
    per_student: dict[str, list[Any]] = defaultdict(list)
    for s in active:
        if s.instructor_id is not None:
            per_instructor[s.instructor_id].append(s)
        for st in s.student_ids:
            per_student[st].append(s)
    for iid, own in per_instructor.items():
        buffer = timedelta(minutes=by_instructor_id[iid].buffer_minutes)
        own.sort(key=lambda s: s.start)
        for i, a in enumerate(own):
            for b in own[i + 1 :]:
                if b.start >= a.end + buffer and b.start >= a.end:
                    # sorted by start: later ones start even later, but a longer `a` could still
                    # overlap them only if b.start < a.end, which is false here.
                    break
                if b.start < a.end and a.start < b.end:
                    findings.append(Finding("instructor_double_booked", b.session_id, a.session_id, iid))
                else:
                    findings.append(Finding("buffer_violated", b.session_id, a.session_id, iid))
    for st, own in per_student.items():
        own.sort(key=lambda s: s.start)
        for i, a in enumerate(own):
            for b in own[i + 1 :]:
                if b.start >= a.end:
                    break
                findings.append(Finding("student_double_booked", b.session_id, a.session_id, st))
    for iid, own in per_instructor.items():
        instructor = by_instructor_id[iid]
        tz = ZoneInfo(instructor.time_zone)
        days: dict[object, list[str]] = defaultdict(list)
        weeks: dict[object, list[str]] = defaultdict(list)
        for s in own:
            local = s.start.astimezone(tz)
            days[local.date()].append(s.session_id)
            weeks[local.isocalendar()[:2]].append(s.session_id)
        for day, ids in days.items():
            if len(ids) > instructor.max_sessions_per_day:
                findings.append(Finding("daily_cap_exceeded", ids[-1], None, f"{iid} {day}: {len(ids)}"))
        for week, ids in weeks.items():
            if len(ids) > instructor.max_sessions_per_week:
                findings.append(Finding("weekly_cap_exceeded", ids[-1], None, f"{iid} {week}: {len(ids)}"))
    return findings
