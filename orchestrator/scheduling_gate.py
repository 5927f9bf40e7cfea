"""SchedulingGate: the scheduling engine at the booking API's seam (``ApiHooks.validate_and_assign``).

For every booking write (create or reschedule) it builds a *scoped* snapshot of the organisation from the store
(the instructors in play, the booking's students, and their sessions around the booking's occurrences), asks the
engine to check or match the whole series, and either returns the occurrences with their instructor or raises a
``RuleViolation`` with the rule's code and the conflicting session. A fresh snapshot per write keeps every
replica correct without sharing an in-memory index; "no double booking" is additionally enforced by the database
(occupancy claims), which is what makes concurrent writes safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from orchestrator import scheduling as eng
from orchestrator.errors import FieldError, InvalidInputError, RuleViolation
from orchestrator.store import Store
from orchestrator.store import models as st

MARGIN = timedelta(days=8)  # weekly caps look at the whole ISO week around an occurrence
CONFLICT_CODES = {
    eng.RuleCode.INSTRUCTOR_DOUBLE_BOOKED,
    eng.RuleCode.STUDENT_DOUBLE_BOOKED,
    eng.RuleCode.BUFFER_VIOLATED,
}


def engine_instructor(i: st.Instructor) -> eng.Instructor:
    return eng.Instructor(
        instructor_id=eng.InstructorId(i.instructor_id),
        name=i.name,
        email=i.email,
        time_zone=i.time_zone,
        qualifications={eng.SubjectId(k): v for k, v in i.qualifications.items()},
        weekly_availability=tuple(eng.WeeklyWindow(w.weekday, w.start, w.end) for w in i.weekly_availability),
        exceptions=tuple(eng.TimeOff(e.start, e.end, e.reason) for e in i.exceptions),
        buffer_minutes=i.buffer_minutes,
        max_sessions_per_day=i.max_sessions_per_day if i.max_sessions_per_day is not None else 10_000,
        max_sessions_per_week=i.max_sessions_per_week if i.max_sessions_per_week is not None else 10_000,
        preferred_student_ids=frozenset(eng.StudentId(s) for s in i.preferred_student_ids),
    )


def engine_student(s: st.Student) -> eng.Student:
    return eng.Student(
        student_id=eng.StudentId(s.student_id),
        name=s.name,
        time_zone=s.time_zone,
        country=s.country,
        lat=s.latitude,
        lon=s.longitude,
        guardian_name=s.guardian_name or "",
        guardian_email=s.guardian_email or "",
        levels={eng.SubjectId(k): v for k, v in s.levels.items()},
        preferred_instructor_ids=frozenset(eng.InstructorId(i) for i in s.preferred_instructor_ids),
    )


def engine_session(s: st.Session) -> eng.Session:
    return eng.Session(
        session_id=eng.SessionId(s.session_id),
        booking_id=eng.BookingId(s.booking_id),
        occurrence_index=s.occurrence_index,
        start=s.start,
        end=s.end,
        instructor_id=eng.InstructorId(s.instructor_id),
        student_ids=tuple(eng.StudentId(x) for x in s.student_ids),
        subject_id=eng.SubjectId(s.subject_id),
        status=eng.SessionStatus(s.status.value),
        recording=s.recording,
        curriculum_unit=s.curriculum_unit,
    )


class SchedulingGate:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def _all_instructors(self) -> list[st.Instructor]:
        out: list[st.Instructor] = []
        cursor: str | None = None
        while True:
            page = await self._store.list_instructors(limit=200, cursor=cursor)
            out += page.items
            cursor = page.next_cursor
            if not cursor:
                return out

    async def snapshot(
        self,
        *,
        instructor_ids: Iterable[str] | None,
        student_ids: Iterable[str],
        start: datetime,
        end: datetime,
        exclude_booking: str | None = None,
        subject_id: str | None = None,
    ) -> eng.Organisation:
        if instructor_ids is None:
            instructors = await self._all_instructors()
        else:
            instructors = await self._store.get_instructors(list(instructor_ids))
        students = await self._store.get_students(list(student_ids))
        sessions = await self._store.sessions_between(start - MARGIN, end + MARGIN)
        ids = {i.instructor_id for i in instructors}
        pupils = {s.student_id for s in students}
        relevant = [
            s
            for s in sessions
            if s.booking_id != exclude_booking and (s.instructor_id in ids or pupils & set(s.student_ids))
        ]
        subjects = {s.subject_id for s in relevant} | ({subject_id} if subject_id else set())
        return eng.Organisation(
            instructors=tuple(engine_instructor(i) for i in instructors),
            students=tuple(engine_student(s) for s in students),
            subjects=tuple(eng.Subject(eng.SubjectId(x), x) for x in subjects),
            sessions=tuple(engine_session(s) for s in relevant),
        )

    @staticmethod
    def _series_end(draft: st.BookingDraft) -> datetime:
        return draft.start + (timedelta(days=183) if draft.rrule else timedelta(minutes=draft.duration_minutes))

    async def scheduler_for(self, draft: st.BookingDraft) -> eng.Scheduler:
        org = await self.snapshot(
            instructor_ids=None if draft.instructor_id is None else [draft.instructor_id],
            student_ids=draft.student_ids,
            start=draft.start,
            end=self._series_end(draft),
            exclude_booking=draft.booking_id,
            subject_id=draft.subject_id,
        )
        # building the index and checking a series is CPU work: keep it off the event loop
        return await asyncio.to_thread(eng.Scheduler, org)

    @staticmethod
    def _booking(draft: st.BookingDraft) -> eng.Booking:
        return eng.Booking(
            booking_id=eng.BookingId(draft.booking_id or "new"),
            subject_id=eng.SubjectId(draft.subject_id),
            student_ids=tuple(eng.StudentId(s) for s in draft.student_ids),
            instructor_id=eng.InstructorId(draft.instructor_id) if draft.instructor_id else None,
            start=draft.start,
            duration_minutes=draft.duration_minutes,
            rrule=draft.rrule,
            recording=draft.recording,
            notes=draft.notes,
            curriculum_unit=draft.curriculum_unit,
        )

    async def validate_and_assign(self, draft: st.BookingDraft) -> list[st.Occurrence]:
        try:
            return await self._validate_and_assign(draft)
        except eng.UnknownEntityError as exc:
            raise InvalidInputError(str(exc), [FieldError("/", str(exc))]) from None

    async def _validate_and_assign(self, draft: st.BookingDraft) -> list[st.Occurrence]:
        scheduler = await self.scheduler_for(draft)
        booking = self._booking(draft)
        try:
            plan = await asyncio.to_thread(scheduler.book_series, booking, apply=False)
        except eng.NoFeasibleInstructorError as exc:
            raise self._no_instructor(scheduler, booking, str(exc)) from None
        except eng.InvalidInputError as exc:
            raise RuleViolation(code="invalid_time", detail=str(exc), status=422) from None
        if any(o.session.instructor_id is None for o in plan.occurrences):
            raise self._no_instructor(scheduler, booking, "every instructor breaks a rule")
        if plan.conflicts:
            raise self._violation(plan)
        if not plan.occurrences:
            raise RuleViolation(code="invalid_time", detail="the booking has no occurrence", status=422)
        return [
            st.Occurrence(
                o.occurrence.index,
                o.occurrence.start,
                o.occurrence.end,
                st.InstructorId(str(o.session.instructor_id)),
            )
            for o in plan.occurrences
        ]

    def _no_instructor(self, scheduler: eng.Scheduler, booking: eng.Booking, why: str) -> RuleViolation:
        result = scheduler.match_series(booking)
        counts = {str(k): v for k, v in result.failure_counts.items()}
        return RuleViolation(
            code="no_feasible_instructor",
            detail=f"no instructor can take every occurrence: {why}",
            status=409,
            extra={"failure_counts": counts, "alternatives": [alternative(a) for a in result.alternatives]},
        )

    @staticmethod
    def _violation(plan: eng.SeriesPlan) -> RuleViolation:
        conflicts = plan.conflicts
        first_index = min(conflicts)
        first = conflicts[first_index][0]
        per_occurrence = {
            str(i): [
                {"rule": str(v.rule), "message": v.message, "conflicting_session_id": v.conflicting_session_id}
                for v in vs
            ]
            for i, vs in sorted(conflicts.items())
        }
        return RuleViolation(
            code=str(first.rule),
            detail=f"occurrence {first_index}: {first.message}"
            + (f" ({len(conflicts)} occurrences conflict)" if len(conflicts) > 1 else ""),
            status=409 if first.rule in CONFLICT_CODES else 422,
            conflicting_session_id=first.conflicting_session_id,
            extra={"occurrences": per_occurrence},
        )

    async def match(self, draft: st.BookingDraft) -> dict[str, Any]:
        """Ranked feasible instructors with the reasons for each rank, or why none and the nearest alternatives."""
        try:
            return await self._match(draft)
        except eng.UnknownEntityError as exc:
            raise InvalidInputError(str(exc), [FieldError("/", str(exc))]) from None

    async def _match(self, draft: st.BookingDraft) -> dict[str, Any]:
        scheduler = await self.scheduler_for(draft)
        request = eng.MatchRequest(
            subject_id=eng.SubjectId(draft.subject_id),
            student_ids=tuple(eng.StudentId(s) for s in draft.student_ids),
            start=draft.start,
            duration_minutes=draft.duration_minutes,
            instructor_id=eng.InstructorId(draft.instructor_id) if draft.instructor_id else None,
            curriculum_unit=draft.curriculum_unit,
        )
        result = await asyncio.to_thread(scheduler.match, request)
        return {
            "feasible": result.feasible,
            "candidates": [
                {
                    "instructor_id": c.instructor_id,
                    "rank": c.rank,
                    "score": round(c.score, 4),
                    "reasons": [
                        {"factor": r.factor, "score": round(r.score, 4), "weight": r.weight, "detail": r.detail}
                        for r in c.reasons
                    ],
                }
                for c in result.candidates
            ],
            "failure_counts": {str(k): v for k, v in result.failure_counts.items()},
            "alternatives": [alternative(a) for a in result.alternatives],
            "request_violations": [
                {"rule": str(v.rule), "message": v.message, "conflicting_session_id": v.conflicting_session_id}
                for v in result.request_violations
            ],
        }


def alternative(a: eng.Alternative) -> dict[str, Any]:
    return {
        "start": a.start.isoformat().replace("+00:00", "Z"),
        "instructor_id": a.instructor_id,
        "score": round(a.score, 4),
        "why": a.why,
    }
