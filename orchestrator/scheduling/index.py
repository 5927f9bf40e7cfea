"""The engine's in-memory index: who is busy when, how loaded each instructor is, who taught whom.

Kept current by :meth:`ScheduleIndex.add` and :meth:`ScheduleIndex.discard`; every query is a bisect
over sorted integer intervals or a dictionary lookup, never a scan over all sessions.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from .clock import ZoneClock, compile_windows, merge, utc_week
from .model import Instructor, InstructorId, Session, SessionId, StudentId, SubjectId, TimeOff
from .occupancy import epoch_minutes


class Timeline:
    """Sorted busy intervals ``[start, end)`` of one person, each tagged with its session id."""

    __slots__ = ("_items", "_longest", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._items: list[tuple[int, int, SessionId]] = []
        self._longest = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, start: int, end: int, session_id: SessionId) -> None:
        item = (start, end, session_id)
        pos = bisect.bisect_left(self._items, item)
        self._items.insert(pos, item)
        self._starts.insert(pos, start)
        self._longest = max(self._longest, end - start)

    def remove(self, start: int, end: int, session_id: SessionId) -> None:
        item = (start, end, session_id)
        pos = bisect.bisect_left(self._items, item)
        if pos < len(self._items) and self._items[pos] == item:
            del self._items[pos]
            del self._starts[pos]

    def overlapping(self, lo: int, hi: int) -> Iterator[tuple[int, int, SessionId]]:
        """Intervals that intersect ``[lo, hi)``, in start order."""
        first = bisect.bisect_left(self._starts, lo - self._longest)
        last = bisect.bisect_left(self._starts, hi)
        for i in range(first, last):
            item = self._items[i]
            if item[1] > lo:
                yield item

    def items(self) -> list[tuple[int, int, SessionId]]:
        return list(self._items)

    def copy(self) -> Timeline:
        other = Timeline()
        other._starts = list(self._starts)
        other._items = list(self._items)
        other._longest = self._longest
        return other


@dataclass(frozen=True, slots=True)
class Span:
    """A session as integer minutes, with the instructor's claim end (end + buffer)."""

    start: int
    end: int
    claim_end: int


class InstructorState:
    """One instructor's rules compiled for fast checks, plus their live load."""

    def __init__(self, instructor: Instructor, clock: ZoneClock) -> None:
        self.instructor = instructor
        self.clock = clock
        self.windows = compile_windows(instructor.weekly_availability)
        self.leave: list[tuple[int, int, str]] = []
        self.timeline = Timeline()
        self.per_day: Counter[int] = Counter()
        self.per_week: Counter[int] = Counter()
        self._availability: dict[int, list[tuple[int, int]]] = {}
        self.set_leave(instructor.exceptions)

    @property
    def instructor_id(self) -> InstructorId:
        return self.instructor.instructor_id

    def copy(self) -> InstructorState:
        """An independent copy of the live load; rules and the availability cache are shared."""
        other = InstructorState.__new__(InstructorState)
        other.instructor = self.instructor
        other.clock = self.clock
        other.windows = self.windows
        other.leave = list(self.leave)
        other.timeline = self.timeline.copy()
        other.per_day = Counter(self.per_day)
        other.per_week = Counter(self.per_week)
        other._availability = self._availability
        return other

    @property
    def buffer(self) -> int:
        return self.instructor.buffer_minutes

    def set_leave(self, exceptions: tuple[TimeOff, ...]) -> None:
        items = [TimeOff(*raw) for raw in exceptions]
        self.leave = sorted((epoch_minutes(t.start), epoch_minutes(t.end), t.reason) for t in items)

    def availability_week(self, week: int) -> list[tuple[int, int]]:
        cached = self._availability.get(week)
        if cached is None:
            cached = self.clock.windows_in_week(self.windows, week)
            self._availability[week] = cached
        return cached

    def precompute(self, first_week: int, last_week: int) -> None:
        for week in range(first_week, last_week + 1):
            self.availability_week(week)

    def available(self, start: int, end: int) -> bool:
        """True when ``[start, end)`` lies inside one continuous availability stretch."""
        first, last = utc_week(start), utc_week(end - 1)
        if first == last:
            intervals = self.availability_week(first)
        else:
            intervals = merge([iv for w in range(first, last + 1) for iv in self.availability_week(w)])
        pos = bisect.bisect_right(intervals, (start, 1 << 62)) - 1
        return pos >= 0 and intervals[pos][0] <= start and intervals[pos][1] >= end

    def leave_overlapping(self, start: int, end: int) -> tuple[int, int, str] | None:
        for item in self.leave:
            if item[0] < end and item[1] > start:
                return item
            if item[0] >= end:
                break
        return None


class ScheduleIndex:
    """All active sessions, indexed by person and by time."""

    def __init__(self) -> None:
        self.sessions: dict[SessionId, Session] = {}
        self.spans: dict[SessionId, Span] = {}
        self.instructors: dict[InstructorId, InstructorState] = {}
        self.students: dict[StudentId, Timeline] = {}
        self.taught: Counter[tuple[InstructorId, StudentId, SubjectId]] = Counter()
        """Sessions (any status but cancelled) per instructor, student and subject: continuity."""
        self.taught_unit: Counter[tuple[InstructorId, str]] = Counter()
        self.by_booking: dict[str, set[SessionId]] = {}

    def copy(self) -> ScheduleIndex:
        """A snapshot another thread may read and mutate while this index moves on."""
        other = ScheduleIndex()
        other.sessions = dict(self.sessions)
        other.spans = dict(self.spans)
        other.instructors = {iid: st.copy() for iid, st in self.instructors.items()}
        other.students = {sid: tl.copy() for sid, tl in self.students.items()}
        other.taught = Counter(self.taught)
        other.taught_unit = Counter(self.taught_unit)
        other.by_booking = {bid: set(ids) for bid, ids in self.by_booking.items()}
        return other

    def span_of(self, session: Session) -> Span:
        start, end = epoch_minutes(session.start), epoch_minutes(session.end)
        buffer = 0
        if session.instructor_id is not None and session.instructor_id in self.instructors:
            buffer = self.instructors[session.instructor_id].buffer
        return Span(start, end, end + buffer)

    def add(self, session: Session) -> None:
        if session.session_id in self.sessions:
            self.discard(session.session_id)
        self.sessions[session.session_id] = session
        self.by_booking.setdefault(session.booking_id, set()).add(session.session_id)
        if not session.active:
            return
        span = self.span_of(session)
        self.spans[session.session_id] = span
        for student_id in session.student_ids:
            self.students.setdefault(student_id, Timeline()).add(span.start, span.end, session.session_id)
        state = self.instructors.get(session.instructor_id) if session.instructor_id else None
        if state is not None:
            state.timeline.add(span.start, span.claim_end, session.session_id)
            state.per_day[state.clock.local_day(span.start)] += 1
            state.per_week[state.clock.iso_week(span.start)] += 1
            for student_id in session.student_ids:
                self.taught[(state.instructor_id, student_id, session.subject_id)] += 1
            if session.curriculum_unit:
                self.taught_unit[(state.instructor_id, session.curriculum_unit)] += 1

    def discard(self, session_id: SessionId) -> Session | None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return None
        self.by_booking.get(session.booking_id, set()).discard(session_id)
        span = self.spans.pop(session_id, None)
        if span is None:
            return session
        for student_id in session.student_ids:
            self.students[student_id].remove(span.start, span.end, session_id)
        state = self.instructors.get(session.instructor_id) if session.instructor_id else None
        if state is not None:
            state.timeline.remove(span.start, span.claim_end, session_id)
            state.per_day[state.clock.local_day(span.start)] -= 1
            state.per_week[state.clock.iso_week(span.start)] -= 1
            for student_id in session.student_ids:
                self.taught[(state.instructor_id, student_id, session.subject_id)] -= 1
            if session.curriculum_unit:
                self.taught_unit[(state.instructor_id, session.curriculum_unit)] -= 1
        return session
