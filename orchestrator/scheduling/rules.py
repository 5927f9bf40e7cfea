"""The hard rules, evaluated against the in-memory index.

Each function returns structured :class:`Violation` values; nothing is ever adjusted silently.
"""

from __future__ import annotations

from collections.abc import Iterable

from .clock import to_datetime
from .index import InstructorState, ScheduleIndex
from .model import SLOT_MINUTES, RuleCode, SessionId, StudentId, SubjectId, Violation

MAX_SESSION_MINUTES = 24 * 60


def _iso(minute: int) -> str:
    return to_datetime(minute).strftime("%Y-%m-%dT%H:%MZ")


def time_violations(start: int, end: int) -> list[Violation]:
    if start % SLOT_MINUTES or end % SLOT_MINUTES:
        return [
            Violation(
                RuleCode.INVALID_TIME,
                f"start and duration must be multiples of {SLOT_MINUTES} minutes",
            )
        ]
    if end <= start:
        return [Violation(RuleCode.INVALID_TIME, "a session must end after it starts")]
    if end - start > MAX_SESSION_MINUTES:
        return [Violation(RuleCode.INVALID_TIME, "a session may last at most 24 hours")]
    return []


def student_violations(
    index: ScheduleIndex,
    student_ids: Iterable[StudentId],
    start: int,
    end: int,
    exclude: SessionId | None,
) -> list[Violation]:
    out: list[Violation] = []
    for student_id in student_ids:
        timeline = index.students.get(student_id)
        if timeline is None:
            continue
        for _lo, _hi, other in timeline.overlapping(start, end):
            if other != exclude:
                out.append(
                    Violation(
                        RuleCode.STUDENT_DOUBLE_BOOKED,
                        f"student {student_id} already has session {other} at that time",
                        other,
                    )
                )
                break
    return out


def required_level(levels: Iterable[int]) -> int:
    return max(levels, default=1)


def instructor_violations(
    index: ScheduleIndex,
    state: InstructorState,
    subject_id: SubjectId,
    level: int,
    start: int,
    end: int,
    exclude: SessionId | None,
    *,
    stop_at_first: bool = False,
    explain: bool = True,
) -> list[Violation]:
    """Every instructor-side rule for teaching ``subject_id`` at ``level`` over ``[start, end)``.

    ``exclude`` is the session being re-checked (moved or re-assigned): it never conflicts with itself.
    ``explain=False`` leaves messages empty (the hot path of matching only counts rule codes).
    """
    out: list[Violation] = []
    instructor = state.instructor
    iid = instructor.instructor_id
    qualified = instructor.qualifications.get(subject_id, 0)
    if qualified < level:
        out.append(
            Violation(
                RuleCode.NOT_QUALIFIED,
                f"instructor {iid} is qualified for {subject_id} up to level {qualified}, level {level} needed",
            )
        )
        if stop_at_first:
            return out
    if not state.available(start, end):
        out.append(
            Violation(
                RuleCode.OUTSIDE_AVAILABILITY,
                f"{_iso(start)}..{_iso(end)} is outside instructor {iid}'s availability ({instructor.time_zone})"
                if explain
                else "",
            )
        )
        if stop_at_first:
            return out
    leave = state.leave_overlapping(start, end)
    if leave is not None:
        out.append(
            Violation(
                RuleCode.INSTRUCTOR_ON_LEAVE,
                f"instructor {iid} is on leave {_iso(leave[0])}..{_iso(leave[1])} ({leave[2]})" if explain else "",
            )
        )
        if stop_at_first:
            return out
    buffer = state.buffer
    for other_start, other_claim_end, other in state.timeline.overlapping(start, end + buffer):
        if other == exclude:
            continue
        if other_claim_end <= start:
            continue
        other_end = other_claim_end - buffer
        if other_start < end and start < other_end:
            out.append(
                Violation(
                    RuleCode.INSTRUCTOR_DOUBLE_BOOKED,
                    f"instructor {iid} already teaches session {other} at that time",
                    other,
                )
            )
        else:
            out.append(
                Violation(
                    RuleCode.BUFFER_VIOLATED,
                    f"instructor {iid} needs {buffer} minutes between sessions; session {other} is too close",
                    other,
                )
            )
        if stop_at_first:
            return out
    own = index.spans.get(exclude) if exclude is not None else None
    counts_own = False
    if own is not None:
        own_session = index.sessions.get(exclude) if exclude is not None else None
        counts_own = own_session is not None and own_session.instructor_id == iid
    day, week = state.clock.day_week(start)
    own_day, own_week = state.clock.day_week(own.start) if counts_own and own is not None else (None, None)
    used = state.per_day[day] - (1 if own_day == day else 0)
    if used + 1 > instructor.max_sessions_per_day:
        out.append(
            Violation(
                RuleCode.DAILY_CAP_EXCEEDED,
                f"instructor {iid} already has {used} sessions that day (cap {instructor.max_sessions_per_day})",
            )
        )
        if stop_at_first:
            return out
    used = state.per_week[week] - (1 if own_week == week else 0)
    if used + 1 > instructor.max_sessions_per_week:
        out.append(
            Violation(
                RuleCode.WEEKLY_CAP_EXCEEDED,
                f"instructor {iid} already has {used} sessions that week (cap {instructor.max_sessions_per_week})",
            )
        )
    return out
