"""The scheduling engine's one seam: :class:`Scheduler`.

Built from an :class:`Organisation` snapshot, it answers rule checks, matches, series plans and
substitute rankings from its in-memory index, and starts bulk re-optimisation jobs.

Life cycle: the store builds it at start-up, then mirrors every committed write with :meth:`apply`
or :meth:`remove` (and :meth:`update_instructor` for profile changes). Query methods never change
the index; the ``book_*``/``move_*``/``cancel_*``/``add_leave`` verbs check first and change the
index only when every rule holds (all-or-nothing), returning what they did so the store persists it.
The engine is single-threaded: call it from one event loop (optimisation jobs work on a copy).
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from .clock import ZoneClock, to_datetime, utc_week
from .errors import ConflictError, InvalidInputError, NoFeasibleInstructorError, UnknownEntityError
from .index import InstructorState, ScheduleIndex
from .model import (
    Alternative,
    Booking,
    BookingId,
    CoverageOutcome,
    Instructor,
    InstructorId,
    MatchRequest,
    MatchResult,
    Occurrence,
    OccurrenceCheck,
    Organisation,
    RankedCandidate,
    RuleCode,
    SeriesPlan,
    Session,
    SessionId,
    SessionStatus,
    Student,
    StudentId,
    SubjectId,
    SubstituteProposal,
    SubstitutionPolicy,
    TimeOff,
    Violation,
)
from .occupancy import epoch_minutes
from .optimizer import OptimizationJob, build_problem
from .ranking import RankInput, rank
from .rules import instructor_violations, required_level, student_violations, time_violations
from .series import expand, shift_local

logger = logging.getLogger(__name__)

NEARBY_SLOT_OFFSETS = (30, -30, 60, -60, 90, -90, 120, -120, 180, -180)
"""Minutes around a failed request tried as alternatives on the same day."""


def default_session_id(booking_id: BookingId, occurrence_index: int) -> SessionId:
    return SessionId(f"{booking_id}#{occurrence_index}")


class Scheduler:
    """Hard rules, matching, series, substitutes and optimisation over one organisation."""

    def __init__(
        self,
        organisation: Organisation,
        *,
        horizon: tuple[datetime, datetime] | None = None,
        series_horizon_days: int = 182,
    ) -> None:
        self._clocks: dict[str, ZoneClock] = {}
        self._index = ScheduleIndex()
        self._students: dict[StudentId, Student] = {}
        self._by_subject: dict[SubjectId, list[InstructorState]] = {}
        self._subject_levels: dict[SubjectId, list[int]] = {}
        self._subjects = {s.subject_id: s for s in organisation.subjects}
        self._bookings: dict[BookingId, Booking] = {b.booking_id: b for b in organisation.bookings}
        self.policy = organisation.substitution_policy
        self.series_horizon_days = series_horizon_days
        for student in organisation.students:
            self._students[student.student_id] = student
            self.clock(student.time_zone)
        for instructor in organisation.instructors:
            self._add_instructor(instructor)
        for session in organisation.sessions:
            self._index.add(session)
        if horizon is not None:
            first, last = utc_week(epoch_minutes(horizon[0])), utc_week(epoch_minutes(horizon[1]))
            for state in self._index.instructors.values():
                state.precompute(first, last)

    # -- snapshot maintenance ------------------------------------------------------------------

    def clock(self, time_zone: str) -> ZoneClock:
        clock = self._clocks.get(time_zone)
        if clock is None:
            clock = self._clocks[time_zone] = ZoneClock(time_zone)
        return clock

    def _add_instructor(self, instructor: Instructor) -> None:
        state = InstructorState(instructor, self.clock(instructor.time_zone))
        self._index.instructors[instructor.instructor_id] = state
        self._rebuild_subject_map()

    def _rebuild_subject_map(self) -> None:
        """Per subject: qualified instructors by descending level, so a level cut is one bisect."""
        by_subject: dict[SubjectId, list[tuple[int, InstructorId, InstructorState]]] = {}
        for state in self._index.instructors.values():
            for subject_id, level in state.instructor.qualifications.items():
                if level > 0:
                    by_subject.setdefault(subject_id, []).append((-level, state.instructor_id, state))
        self._by_subject = {}
        self._subject_levels = {}
        for subject_id, rows in by_subject.items():
            rows.sort(key=lambda r: (r[0], r[1]))
            self._by_subject[subject_id] = [r[2] for r in rows]
            self._subject_levels[subject_id] = [r[0] for r in rows]

    def qualified(self, subject_id: SubjectId, level: int) -> list[InstructorState]:
        """Instructors qualified for ``subject_id`` at ``level`` or above."""
        levels = self._subject_levels.get(subject_id)
        if not levels:
            return []
        return self._by_subject[subject_id][: bisect.bisect_right(levels, -level)]

    def update_instructor(self, instructor: Instructor) -> None:
        """Replace an instructor's profile (availability, leave, caps...); their sessions stay."""
        own = [s for s in self._index.sessions.values() if s.instructor_id == instructor.instructor_id and s.active]
        for session in own:
            self._index.discard(session.session_id)
        self._add_instructor(instructor)
        for session in own:
            self._index.add(session)

    def update_student(self, student: Student) -> None:
        self._students[student.student_id] = student
        self.clock(student.time_zone)

    def apply(self, session: Session) -> None:
        """Mirror a committed session (new, changed or cancelled) into the index, without checks."""
        self._index.add(session)

    def remove(self, session_id: SessionId) -> Session | None:
        """Forget a session (deleted in the store)."""
        return self._index.discard(session_id)

    @property
    def sessions(self) -> dict[SessionId, Session]:
        """Every known session by id (read-only view by convention)."""
        return self._index.sessions

    @property
    def index(self) -> ScheduleIndex:
        return self._index

    def instructor(self, instructor_id: InstructorId) -> Instructor:
        return self._state(instructor_id).instructor

    def instructors(self) -> list[Instructor]:
        return [s.instructor for s in self._index.instructors.values()]

    def students(self) -> list[Student]:
        return list(self._students.values())

    def session(self, session_id: SessionId) -> Session:
        session = self._index.sessions.get(session_id)
        if session is None:
            raise UnknownEntityError("session", session_id)
        return session

    def _state(self, instructor_id: InstructorId) -> InstructorState:
        state = self._index.instructors.get(instructor_id)
        if state is None:
            raise UnknownEntityError("instructor", instructor_id)
        return state

    def _student(self, student_id: StudentId) -> Student:
        student = self._students.get(student_id)
        if student is None:
            raise UnknownEntityError("student", student_id)
        return student

    def required_level(self, subject_id: SubjectId, student_ids: Iterable[StudentId]) -> int:
        if self._subjects and subject_id not in self._subjects:
            raise UnknownEntityError("subject", subject_id)
        return required_level(self._student(s).levels.get(subject_id, 1) for s in student_ids)

    # -- checks ---------------------------------------------------------------------------------

    def check(self, session: Session) -> list[Violation]:
        """Every hard rule for writing ``session`` (new, or replacing the one with its id).

        A cancelled session breaks no rule: cancelling is always allowed.
        """
        if not session.active:
            return []
        try:
            start, end = epoch_minutes(session.start), epoch_minutes(session.end)
        except InvalidInputError as exc:
            return [Violation(RuleCode.INVALID_TIME, str(exc))]
        invalid = time_violations(start, end)
        if invalid:
            return invalid
        if not session.student_ids:
            raise InvalidInputError("a session needs at least one student")
        level = self.required_level(session.subject_id, session.student_ids)
        exclude = session.session_id
        out = student_violations(self._index, session.student_ids, start, end, exclude)
        if session.instructor_id is not None:
            state = self._state(session.instructor_id)
            out = instructor_violations(self._index, state, session.subject_id, level, start, end, exclude) + out
        return out

    def book(self, session: Session) -> Session:
        """Check and apply one session; raises :class:`ConflictError` with the violations."""
        violations = self.check(session)
        if violations:
            raise ConflictError(violations)
        self._index.add(session)
        return session

    # -- matching -------------------------------------------------------------------------------

    def rank_input(
        self, subject_id: SubjectId, student_ids: Sequence[StudentId], start: int, unit: str | None
    ) -> RankInput:
        students = [self._student(s) for s in student_ids]
        return RankInput(subject_id, students, [self.clock(s.time_zone) for s in students], start, unit)

    def _feasible(
        self,
        pool: Sequence[InstructorState],
        subject_id: SubjectId,
        level: int,
        start: int,
        end: int,
        exclude: SessionId | None,
        counts: dict[RuleCode, int] | None,
    ) -> list[InstructorState]:
        feasible: list[InstructorState] = []
        for state in pool:
            violations = instructor_violations(
                self._index,
                state,
                subject_id,
                level,
                start,
                end,
                exclude,
                stop_at_first=counts is None,
                explain=False,
            )
            if not violations:
                feasible.append(state)
            elif counts is not None:
                for code in {v.rule for v in violations}:
                    counts[code] = counts.get(code, 0) + 1
        return feasible

    def match(self, request: MatchRequest) -> MatchResult:
        """Ranked feasible instructors for a request, or failure counts and nearest alternatives."""
        if not request.student_ids:
            raise InvalidInputError("a request needs at least one student")
        start = epoch_minutes(request.start)
        end = start + request.duration_minutes
        invalid = time_violations(start, end)
        if invalid:
            return MatchResult((), {RuleCode.INVALID_TIME: 1}, (), tuple(invalid))
        level = self.required_level(request.subject_id, request.student_ids)
        busy = student_violations(self._index, request.student_ids, start, end, None)
        counts: dict[RuleCode, int] = {}
        if request.instructor_id is not None:
            pool: Sequence[InstructorState] = [self._state(request.instructor_id)]
        else:
            pool = self.qualified(request.subject_id, level)
            unqualified = len(self._index.instructors) - len(pool)
            if unqualified:
                counts[RuleCode.NOT_QUALIFIED] = unqualified
        feasible = self._feasible(pool, request.subject_id, level, start, end, None, counts)
        if feasible and not busy:
            req = self.rank_input(request.subject_id, request.student_ids, start, request.curriculum_unit)
            return MatchResult(tuple(rank(self._index, feasible, req)), counts)
        if busy:
            counts[RuleCode.STUDENT_DOUBLE_BOOKED] = len(busy)
        alternatives = self._alternatives(request, level, start)
        return MatchResult((), counts, tuple(alternatives), tuple(busy))

    def _alternatives(self, request: MatchRequest, level: int, start: int, limit: int = 10) -> list[Alternative]:
        duration = request.duration_minutes
        anchor = self.clock(self._student(request.student_ids[0]).time_zone)
        qualified = self.qualified(request.subject_id, level)
        tries: list[tuple[int, Sequence[InstructorState], str]] = []
        if request.instructor_id is not None:
            others = [s for s in qualified if s.instructor_id != request.instructor_id]
            tries.append((start, others, "same time, another instructor"))
        local = anchor.local(start)
        for days in range(1, request.alternative_days + 1):
            for sign in (1, -1):
                moved = anchor.utc_of_local(local + sign * days * 1440)
                tries.append((moved, qualified, f"same local time {'+' if sign > 0 else '-'}{days} day(s)"))
        for offset in NEARBY_SLOT_OFFSETS:
            tries.append((start + offset, qualified, f"{offset:+d} minutes on the same day"))
        tries.sort(key=lambda t: (abs(t[0] - start), t[0]))
        out: list[Alternative] = []
        for moment, pool, why in tries:
            end = moment + duration
            if time_violations(moment, end):
                continue
            if student_violations(self._index, request.student_ids, moment, end, None):
                continue
            feasible = self._feasible(pool, request.subject_id, level, moment, end, None, None)
            if not feasible:
                continue
            req = self.rank_input(request.subject_id, request.student_ids, moment, request.curriculum_unit)
            for candidate in rank(self._index, feasible, req, limit=2):
                out.append(Alternative(to_datetime(moment), candidate.instructor_id, candidate.score, why))
            if len(out) >= limit:
                break
        return out[:limit]

    def auto_assign(self, request: MatchRequest, session_id: SessionId, booking_id: BookingId) -> Session:
        """The session the best match would create (not applied); raises when nobody is feasible."""
        result = self.match(request)
        best = result.best
        if best is None:
            raise NoFeasibleInstructorError(result)
        return Session(
            session_id=session_id,
            booking_id=booking_id,
            occurrence_index=0,
            start=request.start,
            end=request.start + timedelta(minutes=request.duration_minutes),
            instructor_id=best.instructor_id,
            student_ids=tuple(request.student_ids),
            subject_id=request.subject_id,
            curriculum_unit=request.curriculum_unit,
        )

    # -- recurring series -----------------------------------------------------------------------

    def _anchor(self, booking: Booking) -> ZoneClock:
        if not booking.student_ids:
            raise InvalidInputError("a booking needs at least one student")
        return self.clock(self._student(booking.student_ids[0]).time_zone)

    def expand_series(self, booking: Booking) -> list[Occurrence]:
        """Occurrences of a booking in the anchor (first student's) time zone; see series.py."""
        return expand(booking, self._anchor(booking), self.series_horizon_days)

    def _plan(
        self,
        booking_id: BookingId,
        sessions: list[Session],
        *,
        apply: bool,
        replace: Iterable[SessionId] = (),
    ) -> SeriesPlan:
        """Check sessions one after another against the index and each other; all or nothing."""
        removed = [s for sid in replace if (s := self._index.discard(sid)) is not None]
        checks: list[OccurrenceCheck] = []
        added: list[Session] = []
        for session in sessions:
            violations = tuple(self.check(session))
            occ = Occurrence(session.occurrence_index, session.start, session.end)
            checks.append(OccurrenceCheck(occ, session, violations))
            if not violations:
                self._index.add(session)
                added.append(session)
        ok = all(c.ok for c in checks)
        if not (ok and apply):
            for session in added:
                self._index.discard(session.session_id)
            for session in removed:
                self._index.add(session)
        return SeriesPlan(booking_id, tuple(checks), applied=ok and apply)

    def _series_sessions(
        self,
        booking: Booking,
        instructor_id: InstructorId | None,
        make_id: Callable[[BookingId, int], SessionId],
    ) -> list[Session]:
        return [
            Session(
                session_id=make_id(booking.booking_id, occ.index),
                booking_id=booking.booking_id,
                occurrence_index=occ.index,
                start=occ.start,
                end=occ.end,
                instructor_id=instructor_id,
                student_ids=tuple(booking.student_ids),
                subject_id=booking.subject_id,
                recording=booking.recording,
                curriculum_unit=booking.curriculum_unit,
            )
            for occ in self.expand_series(booking)
        ]

    def match_series(self, booking: Booking) -> MatchResult:
        """Instructors feasible for every occurrence of a series, ranked at its first occurrence."""
        occurrences = self.expand_series(booking)
        if not occurrences:
            raise InvalidInputError("the RRULE yields no occurrence")
        level = self.required_level(booking.subject_id, booking.student_ids)
        counts: dict[RuleCode, int] = {}
        pool = self.qualified(booking.subject_id, level)
        unqualified = len(self._index.instructors) - len(pool)
        if unqualified:
            counts[RuleCode.NOT_QUALIFIED] = unqualified
        feasible: list[InstructorState] = []
        for state in pool:
            probe = self._series_sessions(booking, state.instructor_id, default_session_id)
            plan = self._plan(booking.booking_id, probe, apply=False)
            instructor_codes = {
                v.rule for c in plan.occurrences for v in c.violations if v.rule != RuleCode.STUDENT_DOUBLE_BOOKED
            }
            if not instructor_codes:
                feasible.append(state)
            for code in instructor_codes:
                counts[code] = counts.get(code, 0) + 1
        first = epoch_minutes(occurrences[0].start)
        req = self.rank_input(booking.subject_id, booking.student_ids, first, booking.curriculum_unit)
        return MatchResult(tuple(rank(self._index, feasible, req)), counts)

    def book_series(
        self,
        booking: Booking,
        *,
        make_id: Callable[[BookingId, int], SessionId] = default_session_id,
        apply: bool = True,
    ) -> SeriesPlan:
        """Check every occurrence and apply them all when all pass (``apply=False``: dry run).

        A booking without instructor gets the best instructor feasible for the whole series.
        """
        instructor_id = booking.instructor_id
        if instructor_id is None:
            best = self.match_series(booking).best
            instructor_id = best.instructor_id if best else None
        sessions = self._series_sessions(booking, instructor_id, make_id)
        plan = self._plan(booking.booking_id, sessions, apply=apply)
        if plan.applied:
            self._bookings[booking.booking_id] = dataclasses.replace(booking, instructor_id=instructor_id)
        return plan

    def series_sessions(self, booking_id: BookingId) -> list[Session]:
        ids = self._index.by_booking.get(booking_id, set())
        return sorted((self._index.sessions[i] for i in ids), key=lambda s: s.occurrence_index)

    def _occurrence(self, booking_id: BookingId, occurrence_index: int) -> Session:
        for session in self.series_sessions(booking_id):
            if session.occurrence_index == occurrence_index:
                return session
        raise UnknownEntityError("occurrence", f"{booking_id}#{occurrence_index}")

    def skip_occurrence(self, booking_id: BookingId, occurrence_index: int) -> Session:
        """Cancel one occurrence; returns the cancelled session."""
        session = self._occurrence(booking_id, occurrence_index)
        cancelled = dataclasses.replace(session, status=SessionStatus.CANCELLED)
        self._index.add(cancelled)
        return cancelled

    def move_occurrence(
        self,
        booking_id: BookingId,
        occurrence_index: int,
        new_start: datetime,
        *,
        instructor_id: InstructorId | None = None,
    ) -> SeriesPlan:
        """Move one occurrence (optionally to another instructor); applied only when it passes."""
        session = self._occurrence(booking_id, occurrence_index)
        moved = dataclasses.replace(
            session,
            start=new_start,
            end=new_start + (session.end - session.start),
            instructor_id=instructor_id or session.instructor_id,
        )
        return self._plan(booking_id, [moved], apply=True, replace=[session.session_id])

    def move_following(self, booking_id: BookingId, occurrence_index: int, new_start: datetime) -> SeriesPlan:
        """Move this occurrence and every later active one by the same wall-clock shift (anchor zone)."""
        pivot = self._occurrence(booking_id, occurrence_index)
        anchor = self._anchor_for_session(pivot)
        old_first, new_first = epoch_minutes(pivot.start), epoch_minutes(new_start)
        moved: list[Session] = []
        for session in self.series_sessions(booking_id):
            if session.occurrence_index < occurrence_index or not session.active:
                continue
            start = shift_local(anchor, epoch_minutes(session.start), old_first, new_first)
            length = session.end - session.start
            moved.append(dataclasses.replace(session, start=to_datetime(start), end=to_datetime(start) + length))
        return self._plan(booking_id, moved, apply=True, replace=[s.session_id for s in moved])

    def _anchor_for_session(self, session: Session) -> ZoneClock:
        return self.clock(self._student(session.student_ids[0]).time_zone)

    def cancel_series(self, booking_id: BookingId, *, from_start: datetime | None = None) -> list[Session]:
        """Cancel every active occurrence (from ``from_start`` on, when given); returns them."""
        cutoff = epoch_minutes(from_start) if from_start is not None else None
        out: list[Session] = []
        for session in self.series_sessions(booking_id):
            if not session.active or (cutoff is not None and epoch_minutes(session.start) < cutoff):
                continue
            cancelled = dataclasses.replace(session, status=SessionStatus.CANCELLED)
            self._index.add(cancelled)
            out.append(cancelled)
        return out

    # -- substitutes ----------------------------------------------------------------------------

    def substitutes(
        self, session_id: SessionId, *, exclude_instructor: InstructorId | None = None
    ) -> list[RankedCandidate]:
        """Instructors who could take this session instead, continuity tiers first.

        ``exclude_instructor`` defaults to the session's current instructor.
        """
        session = self.session(session_id)
        excluded = exclude_instructor or session.instructor_id
        start, end = epoch_minutes(session.start), epoch_minutes(session.end)
        level = self.required_level(session.subject_id, session.student_ids)
        pool = [s for s in self.qualified(session.subject_id, level) if s.instructor_id != excluded]
        feasible = self._feasible(pool, session.subject_id, level, start, end, session_id, None)
        req = self.rank_input(session.subject_id, session.student_ids, start, session.curriculum_unit)
        return rank(self._index, feasible, req, by_tier=True)

    def instructor_cancels(self, session_id: SessionId, *, policy: SubstitutionPolicy | None = None) -> CoverageOutcome:
        """The instructor drops one session: it is unassigned and covered per policy."""
        return self._cover([self.session(session_id)], policy or self.policy)

    def add_leave(
        self,
        instructor_id: InstructorId,
        start: datetime,
        end: datetime,
        reason: str,
        *,
        policy: SubstitutionPolicy | None = None,
    ) -> CoverageOutcome:
        """Record leave and cover every session of the instructor it overlaps."""
        state = self._state(instructor_id)
        lo, hi = epoch_minutes(start), epoch_minutes(end)
        if hi <= lo:
            raise InvalidInputError("leave must end after it starts")
        affected = [
            self._index.sessions[sid]
            for s, claim_end, sid in state.timeline.items()
            if s < hi and claim_end - state.buffer > lo
        ]
        updated = dataclasses.replace(
            state.instructor, exceptions=(*state.instructor.exceptions, TimeOff(start, end, reason))
        )
        self.update_instructor(updated)
        logger.info("instructor=%s leave sessions=%d", instructor_id, len(affected))
        return self._cover(affected, policy or self.policy)

    def _cover(self, affected: list[Session], policy: SubstitutionPolicy) -> CoverageOutcome:
        """Unassign the affected sessions, then pick substitutes most-constrained first.

        Each pick is applied to the index before the next is ranked, so two sessions at the same time
        never receive the same substitute and buffers and caps hold across the whole batch. Under
        ``propose`` the picks are rolled back afterwards and the sessions stay unassigned until
        :meth:`confirm`.
        """
        previous = {s.session_id: s.instructor_id for s in affected}
        for session in affected:
            self._index.add(dataclasses.replace(session, instructor_id=None))
        options = {
            s.session_id: self.substitutes(s.session_id, exclude_instructor=previous[s.session_id]) for s in affected
        }
        order = sorted(affected, key=lambda s: (len(options[s.session_id]), s.start, s.session_id))
        proposals: dict[SessionId, SubstituteProposal] = {}
        for session in order:
            sid = session.session_id
            ranked = self.substitutes(sid, exclude_instructor=previous[sid])
            chosen = ranked[0].instructor_id if ranked else None
            if chosen is not None:
                self._index.add(dataclasses.replace(self._index.sessions[sid], instructor_id=chosen))
            applied = chosen is not None and policy == SubstitutionPolicy.AUTO_ASSIGN
            proposals[sid] = SubstituteProposal(sid, previous[sid], chosen, tuple(ranked), applied)
        if policy == SubstitutionPolicy.PROPOSE:
            for sid, proposal in proposals.items():
                if proposal.chosen is not None:
                    self._index.add(dataclasses.replace(self._index.sessions[sid], instructor_id=None))
        return CoverageOutcome(policy, tuple(proposals[s.session_id] for s in affected))

    def confirm(self, session_id: SessionId, instructor_id: InstructorId) -> Session:
        """Assign a proposed (or any) substitute after re-checking every rule."""
        session = dataclasses.replace(self.session(session_id), instructor_id=instructor_id)
        return self.book(session)

    # -- optimisation ---------------------------------------------------------------------------

    def optimize(
        self,
        week_start: datetime,
        time_limit_s: float = 5.0,
        *,
        days: int = 7,
        workers: int = 0,
        max_candidates: int = 0,
        part_size: int | None = None,
        start_job: bool = True,
    ) -> OptimizationJob:
        """Start a background CP-SAT job over the sessions starting in ``[week_start, +days)``.

        Large weeks are decomposed: ``max_candidates`` keeps the best K instructors per session and
        ``part_size`` solves consecutive parts of that many sessions (default: one model up to
        1500 sessions, parts of 700 above).
        """
        window_start = epoch_minutes(week_start)
        snapshot = self.snapshot()
        if part_size is None:
            window_end = window_start + days * 1440
            movable = sum(
                1
                for span_id, span in snapshot.index.spans.items()
                if window_start <= span.start < window_end
                and snapshot.index.sessions[span_id].status == SessionStatus.SCHEDULED
            )
            part_size = 0 if movable <= 1500 else 700
        job = OptimizationJob(
            lambda: build_problem(snapshot, window_start, days, max_candidates),
            time_limit_s=time_limit_s,
            workers=workers,
            part_size=part_size,
        )
        if start_job:
            job.start()
        return job

    def snapshot(self) -> Scheduler:
        """A copy whose index is independent of this one (for work on another thread).

        Copying is linear in the number of sessions and much cheaper than checking them.
        """
        other = Scheduler.__new__(Scheduler)
        other._clocks = self._clocks
        other._index = self._index.copy()
        other._students = dict(self._students)
        other._subjects = self._subjects
        other._bookings = dict(self._bookings)
        other.policy = self.policy
        other.series_horizon_days = self.series_horizon_days
        other._rebuild_subject_map()
        return other

    def apply_assignments(self, assignments: dict[SessionId, InstructorId]) -> list[SessionId]:
        """Apply an optimisation result session by session; returns the ids refused as stale."""
        stale: list[SessionId] = []
        changed: list[Session] = []
        assignments_before: dict[SessionId, InstructorId | None] = {}
        for sid, iid in assignments.items():
            current = self._index.sessions.get(sid)
            if current is None or not current.active:
                stale.append(sid)
                continue
            if current.instructor_id == iid:
                continue
            assignments_before[sid] = current.instructor_id
            changed.append(dataclasses.replace(current, instructor_id=iid))
            # Free the old slot first so swaps between two instructors can be re-applied.
            self._index.add(dataclasses.replace(current, instructor_id=None))
        for session in changed:
            if self.check(session):
                stale.append(session.session_id)
                original = self._index.sessions[session.session_id]
                restored = dataclasses.replace(original, instructor_id=assignments_before[session.session_id])
                if not self.check(restored):
                    self._index.add(restored)
                continue
            self._index.add(session)
        return stale
