"""Values of the scheduling domain: people, subjects, bookings, sessions and rule outcomes.

Every value here is a frozen dataclass (or a NamedTuple when the store and the engine agreed on a
plain tuple shape). Times are timezone-aware UTC ``datetime`` objects at the edge; inside the engine
they are integer minutes since the Unix epoch.

These field names are shared with ``orchestrator/store``: keep them in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple, NewType

InstructorId = NewType("InstructorId", str)
StudentId = NewType("StudentId", str)
SubjectId = NewType("SubjectId", str)
BookingId = NewType("BookingId", str)
SessionId = NewType("SessionId", str)

SLOT_MINUTES = 5
"""Granularity of session starts/durations and of the ``occupancy`` table buckets."""


class RuleCode(StrEnum):
    """Stable codes of the hard rules; the API returns them verbatim."""

    NOT_QUALIFIED = "not_qualified"
    OUTSIDE_AVAILABILITY = "outside_availability"
    INSTRUCTOR_ON_LEAVE = "instructor_on_leave"
    INSTRUCTOR_DOUBLE_BOOKED = "instructor_double_booked"
    STUDENT_DOUBLE_BOOKED = "student_double_booked"
    BUFFER_VIOLATED = "buffer_violated"
    DAILY_CAP_EXCEEDED = "daily_cap_exceeded"
    WEEKLY_CAP_EXCEEDED = "weekly_cap_exceeded"
    INVALID_TIME = "invalid_time"


class SessionStatus(StrEnum):
    SCHEDULED = "scheduled"
    PROVISIONED = "provisioned"
    LIVE = "live"
    ENDED = "ended"
    CANCELLED = "cancelled"


class BookingStatus(StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"


class SubstitutionPolicy(StrEnum):
    """What the engine does when an instructor drops sessions (per organisation)."""

    AUTO_ASSIGN = "auto_assign"
    PROPOSE = "propose"


class WeeklyWindow(NamedTuple):
    """A recurring availability window in the instructor's own time zone.

    ``weekday`` is 0=Monday..6=Sunday; ``start``/``end`` are ``"HH:MM"`` with ``end`` up to ``"24:00"``.
    """

    weekday: int
    start: str
    end: str


class TimeOff(NamedTuple):
    """An exception (leave, time off) in UTC: the instructor takes no session overlapping it."""

    start: datetime
    end: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class Subject:
    subject_id: SubjectId
    name: str


@dataclass(frozen=True, slots=True, eq=False)
class Instructor:
    instructor_id: InstructorId
    name: str
    email: str
    time_zone: str
    qualifications: Mapping[SubjectId, int]
    weekly_availability: tuple[WeeklyWindow, ...] = ()
    exceptions: tuple[TimeOff, ...] = ()
    buffer_minutes: int = 0
    max_sessions_per_day: int = 8
    max_sessions_per_week: int = 30
    preferred_student_ids: frozenset[StudentId] = frozenset()


@dataclass(frozen=True, slots=True, eq=False)
class Student:
    student_id: StudentId
    name: str
    time_zone: str
    country: str | None = None
    lat: float | None = None
    lon: float | None = None
    guardian_name: str = ""
    guardian_email: str = ""
    levels: Mapping[SubjectId, int] = field(default_factory=dict)
    preferred_instructor_ids: frozenset[InstructorId] = frozenset()


@dataclass(frozen=True, slots=True)
class Booking:
    """A request for one session or a recurring series (``rrule``) of sessions."""

    booking_id: BookingId
    subject_id: SubjectId
    student_ids: tuple[StudentId, ...]
    instructor_id: InstructorId | None
    start: datetime
    duration_minutes: int
    rrule: str | None = None
    recording: bool = True
    notes: str = ""
    status: BookingStatus = BookingStatus.ACTIVE
    curriculum_unit: str | None = None


@dataclass(frozen=True, slots=True)
class Session:
    """One occurrence of a booking. ``instructor_id`` is None while unassigned."""

    session_id: SessionId
    booking_id: BookingId
    occurrence_index: int
    start: datetime
    end: datetime
    instructor_id: InstructorId | None
    student_ids: tuple[StudentId, ...]
    subject_id: SubjectId
    status: SessionStatus = SessionStatus.SCHEDULED
    room_id: str | None = None
    region: str | None = None
    node_id: str | None = None
    recording: bool = True
    curriculum_unit: str | None = None

    @property
    def active(self) -> bool:
        return self.status != SessionStatus.CANCELLED


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken hard rule. ``conflicting_session_id`` names the other session when there is one."""

    rule: RuleCode
    message: str
    conflicting_session_id: SessionId | None = None


@dataclass(frozen=True, slots=True)
class Organisation:
    """A snapshot the engine is built from (the store loads it)."""

    instructors: tuple[Instructor, ...]
    students: tuple[Student, ...]
    subjects: tuple[Subject, ...]
    sessions: tuple[Session, ...] = ()
    bookings: tuple[Booking, ...] = ()
    substitution_policy: SubstitutionPolicy = SubstitutionPolicy.PROPOSE


@dataclass(frozen=True, slots=True)
class RankReason:
    """One factor of a ranking: its normalised score in [0, 1], its weight and a human sentence."""

    factor: str
    score: float
    weight: float
    detail: str


RANK_WEIGHTS: dict[str, float] = {"continuity": 0.40, "preference": 0.30, "time_zone": 0.15, "load": 0.15}
"""Weights of the ranking factors; see ranking.py for the model."""


@dataclass(frozen=True, slots=True)
class RankFactors:
    """The raw numbers behind one instructor's rank; reasons are spelled out from them on demand."""

    shared: int
    """Sessions this instructor has (had) with these students in this subject."""
    unit_count: int
    """Sessions this instructor has taught on this curriculum unit."""
    preferred_by: int
    students: int
    likes: bool
    tz_hours: float
    week_load: int
    cap: int
    subject_id: SubjectId
    curriculum_unit: str | None

    @property
    def tier(self) -> int:
        return 0 if self.shared else (1 if self.unit_count else 2)

    def scores(self) -> tuple[float, float, float, float]:
        continuity = self.shared / (self.shared + 2)
        preference = min(1.0, self.preferred_by / self.students + (0.5 if self.likes else 0.0))
        tz_fit = max(0.0, 1.0 - self.tz_hours / 12)
        load = max(0.0, 1.0 - self.week_load / self.cap)
        return continuity, preference, tz_fit, load

    def score(self) -> float:
        c, p, t, lo = self.scores()
        w = RANK_WEIGHTS
        return round(c * w["continuity"] + p * w["preference"] + t * w["time_zone"] + lo * w["load"], 6)

    def reasons(self) -> tuple[RankReason, ...]:
        c, p, t, lo = self.scores()
        w = RANK_WEIGHTS
        unit = f"; taught unit {self.curriculum_unit!r} {self.unit_count}x" if self.unit_count else ""
        liked = "; instructor prefers a student" if self.likes else ""
        return (
            RankReason(
                "continuity",
                c,
                w["continuity"],
                f"{self.shared} sessions with these students in {self.subject_id}{unit}",
            ),
            RankReason(
                "preference", p, w["preference"], f"preferred by {self.preferred_by}/{self.students} students{liked}"
            ),
            RankReason("time_zone", t, w["time_zone"], f"{self.tz_hours:.1f} h from the students' clocks"),
            RankReason("load", lo, w["load"], f"{self.week_load}/{self.cap} sessions this week"),
        )


@dataclass(frozen=True, slots=True)
class RankedCandidate:
    instructor_id: InstructorId
    rank: int
    score: float
    factors: RankFactors
    tier: int = 0
    """0 taught these students in this subject, 1 taught this curriculum unit, 2 neither (substitutes
    are ordered by tier first)."""

    @property
    def reasons(self) -> tuple[RankReason, ...]:
        """One reason per factor: its score in [0, 1], its weight and a sentence."""
        return self.factors.reasons()


@dataclass(frozen=True, slots=True)
class MatchRequest:
    """Ask for an instructor (``instructor_id`` None) or test one named instructor."""

    subject_id: SubjectId
    student_ids: tuple[StudentId, ...]
    start: datetime
    duration_minutes: int
    instructor_id: InstructorId | None = None
    curriculum_unit: str | None = None
    alternative_days: int = 3
    """How many days either side to search for alternatives when nothing is feasible."""


@dataclass(frozen=True, slots=True)
class Alternative:
    start: datetime
    instructor_id: InstructorId
    score: float
    why: str


@dataclass(frozen=True, slots=True)
class MatchResult:
    """Ranked feasible instructors, or why none was feasible and the nearest alternatives."""

    candidates: tuple[RankedCandidate, ...]
    failure_counts: Mapping[RuleCode, int]
    """For each rule, how many instructors it excluded (an instructor may break several)."""
    alternatives: tuple[Alternative, ...] = ()
    request_violations: tuple[Violation, ...] = ()
    """Violations that no instructor can fix (invalid time, a student already booked)."""

    @property
    def feasible(self) -> bool:
        return bool(self.candidates)

    @property
    def best(self) -> RankedCandidate | None:
        return self.candidates[0] if self.candidates else None


@dataclass(frozen=True, slots=True)
class Occurrence:
    index: int
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class OccurrenceCheck:
    """One occurrence of a series with the session it would create and what it breaks."""

    occurrence: Occurrence
    session: Session
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass(frozen=True, slots=True)
class SeriesPlan:
    """The outcome of a series operation; ``applied`` is False when any occurrence is rejected."""

    booking_id: BookingId
    occurrences: tuple[OccurrenceCheck, ...]
    applied: bool

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.occurrences)

    @property
    def conflicts(self) -> dict[int, tuple[Violation, ...]]:
        return {o.occurrence.index: o.violations for o in self.occurrences if o.violations}


@dataclass(frozen=True, slots=True)
class SubstituteProposal:
    """A substitute for one affected session; ``chosen`` is None when nobody fits."""

    session_id: SessionId
    previous_instructor_id: InstructorId | None
    chosen: InstructorId | None
    ranked: tuple[RankedCandidate, ...]
    applied: bool


@dataclass(frozen=True, slots=True)
class CoverageOutcome:
    """Result of a leave or a cancellation by an instructor under the organisation's policy."""

    policy: SubstitutionPolicy
    proposals: tuple[SubstituteProposal, ...]

    @property
    def uncovered(self) -> tuple[SessionId, ...]:
        return tuple(p.session_id for p in self.proposals if p.chosen is None)
