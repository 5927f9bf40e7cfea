"""Frozen value objects the store returns, and the typed ids they carry.

Field names follow the domain model shared with the scheduling engine (``orchestrator/scheduling``).
Every ``datetime`` is timezone-aware UTC.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, NewType, TypeVar

SubjectId = NewType("SubjectId", str)
InstructorId = NewType("InstructorId", str)
StudentId = NewType("StudentId", str)
BookingId = NewType("BookingId", str)
SessionId = NewType("SessionId", str)
ApiKeyId = NewType("ApiKeyId", str)
SubscriptionId = NewType("SubscriptionId", str)
EventId = NewType("EventId", str)
ExceptionId = NewType("ExceptionId", str)
RecordingId = NewType("RecordingId", str)

T = TypeVar("T")

SLOT_MINUTES = 5
"""Granularity of the occupancy table: one row per person per 5-minute bucket."""


def new_id(prefix: str) -> str:
    """A fresh opaque id such as ``bkg_3f9c0a...`` (prefix, underscore, 20 hex digits)."""
    return f"{prefix}_{secrets.token_hex(10)}"


class BookingStatus(enum.StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"


class SessionStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    PROVISIONED = "provisioned"
    LIVE = "live"
    ENDED = "ended"
    CANCELLED = "cancelled"


MUTABLE_SESSION_STATUSES = frozenset({SessionStatus.SCHEDULED, SessionStatus.PROVISIONED})
"""Sessions in these states still follow their booking when it is rescheduled or cancelled."""


class PersonKind(enum.StrEnum):
    INSTRUCTOR = "instructor"
    STUDENT = "student"


class ExceptionStatus(enum.StrEnum):
    OPEN = "open"
    ACKED = "acked"
    RESOLVED = "resolved"
    SNOOZED = "snoozed"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # given up after the last attempt


@dataclass(frozen=True, slots=True)
class Subject:
    subject_id: SubjectId
    name: str


@dataclass(frozen=True, slots=True)
class WeeklyWindow:
    """A recurring availability window in the instructor's own time zone; ``weekday`` 0 = Monday."""

    weekday: int
    start: str  # "HH:MM"
    end: str  # "HH:MM"; "24:00" allowed for end of day


@dataclass(frozen=True, slots=True)
class AvailabilityException:
    """Leave or time off, in UTC."""

    start: datetime
    end: datetime
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Instructor:
    instructor_id: InstructorId
    name: str
    email: str
    time_zone: str
    qualifications: dict[SubjectId, int] = field(default_factory=dict)
    weekly_availability: tuple[WeeklyWindow, ...] = ()
    exceptions: tuple[AvailabilityException, ...] = ()
    buffer_minutes: int = 0
    max_sessions_per_day: int | None = None
    max_sessions_per_week: int | None = None
    preferred_student_ids: tuple[StudentId, ...] = ()


@dataclass(frozen=True, slots=True)
class Student:
    student_id: StudentId
    name: str
    time_zone: str
    country: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    guardian_name: str | None = None
    guardian_email: str | None = None
    levels: dict[SubjectId, int] = field(default_factory=dict)
    preferred_instructor_ids: tuple[InstructorId, ...] = ()


@dataclass(frozen=True, slots=True)
class BookingDraft:
    """A booking as requested, before the scheduling engine assigns instructors to its occurrences."""

    subject_id: SubjectId
    student_ids: tuple[StudentId, ...]
    start: datetime
    duration_minutes: int
    instructor_id: InstructorId | None = None
    rrule: str | None = None
    recording: bool = False
    notes: str = ""
    curriculum_unit: str | None = None
    booking_id: BookingId | None = None  # set when the draft describes a reschedule of an existing booking


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One planned session of a booking, as returned by ``ApiHooks.validate_and_assign``."""

    occurrence_index: int
    start: datetime
    end: datetime
    instructor_id: InstructorId


@dataclass(frozen=True, slots=True)
class Booking:
    booking_id: BookingId
    subject_id: SubjectId
    student_ids: tuple[StudentId, ...]
    instructor_id: InstructorId | None
    start: datetime
    duration_minutes: int
    rrule: str | None
    recording: bool
    notes: str
    status: BookingStatus
    curriculum_unit: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Attendance:
    participant_id: str
    role: str
    joined_at: datetime
    left_at: datetime | None


@dataclass(frozen=True, slots=True)
class Session:
    session_id: SessionId
    booking_id: BookingId
    occurrence_index: int
    start: datetime
    end: datetime
    instructor_id: InstructorId
    student_ids: tuple[StudentId, ...]
    subject_id: SubjectId
    status: SessionStatus
    room_id: str | None
    region: str | None
    node_id: str | None
    recording: bool
    curriculum_unit: str | None


@dataclass(frozen=True, slots=True)
class JoinLink:
    jti: str
    session_id: SessionId
    participant_id: str
    role: str
    expires_at: datetime
    created_at: datetime
    revoked_at: datetime | None = None
    """Set when the link stopped being valid (its holder is no longer the session's instructor)."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: ApiKeyId
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    api_key_id: ApiKeyId
    key: str
    method_path: str
    request_hash: str
    response_status: int | None  # None while the first request is still running
    response_body: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class WebhookSubscription:
    subscription_id: SubscriptionId
    url: str
    secret: str
    event_types: tuple[str, ...]
    active: bool
    created_at: datetime
    updated_at: datetime

    def wants(self, event_type: str) -> bool:
        return self.active and (not self.event_types or event_type in self.event_types)


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    event_id: EventId
    event_type: str
    payload: dict[str, Any]
    ordering_key: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    delivery_id: int
    event: OutboxEvent
    subscription_id: SubscriptionId
    attempts: int
    next_attempt_at: datetime
    status: DeliveryStatus
    last_error: str | None
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class OperationalException:
    exception_id: ExceptionId
    dedup_key: str
    kind: str
    severity: str
    status: ExceptionStatus
    owner: str | None
    subject_refs: dict[str, Any]
    details: dict[str, Any]
    occurrences: int
    snoozed_until: datetime | None
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class Recording:
    recording_id: RecordingId
    session_id: SessionId
    status: str
    coverage: float
    gaps: tuple[tuple[float, float], ...]
    files: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    media_start: float | None = None  # unix seconds: the interval media was sent in the room
    media_end: float | None = None
    duration: float | None = None  # of the final file, from decoding it
    size_bytes: int | None = None
    failovers: int = 0
    details: dict[str, Any] | None = None  # verification, per-track figures, copies used


class RecordingJobStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for a worker
    ASSIGNED = "assigned"  # a worker was asked to start it
    RECORDING = "recording"  # the worker holds its lease and reports progress
    DONE = "done"  # stopped cleanly at the end of the class
    REPLACED = "replaced"  # failed or drained while the class ran: another attempt of the slot took over
    FAILED = "failed"  # ended without a replacement (e.g. the class ended meanwhile)


ACTIVE_JOB_STATUSES = (RecordingJobStatus.PENDING, RecordingJobStatus.ASSIGNED, RecordingJobStatus.RECORDING)


@dataclass(frozen=True, slots=True)
class RecordingJob:
    """One attempt at one of a session's two recording copies ("slot" a or b)."""

    job_id: str
    session_id: SessionId
    slot: str
    attempt: int
    status: RecordingJobStatus
    worker_id: str | None
    node_id: str | None
    failure: dict[str, Any] | None
    progress: dict[str, Any] | None
    started_at: datetime | None
    ended_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def copy_id(self) -> str:
        """Names the copy's files: unique per session (``a1``, ``b1``, ``a2`` after a failover...)."""
        return f"{self.slot}{self.attempt}"


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a keyset-paginated listing; ``next_cursor`` is None on the last page."""

    items: tuple[T, ...]
    next_cursor: str | None


# ---------------------------------------------------------------------- scheduling operations

SubstitutionId = NewType("SubstitutionId", str)
OptimizationJobId = NewType("OptimizationJobId", str)


class SubstitutionPolicy(enum.StrEnum):
    """What happens to a session whose instructor becomes unavailable (one policy per organisation)."""

    AUTO_ASSIGN = "auto_assign"  # the best feasible substitute is assigned at once
    PROPOSE = "propose"  # a proposal waits for someone to confirm or decline it


@dataclass(frozen=True, slots=True)
class OrganisationSettings:
    """The deployment's organisation-wide scheduling settings (one organisation per deployment)."""

    substitution_policy: SubstitutionPolicy = SubstitutionPolicy.PROPOSE
    substitute_candidates: int = 5
    """How many ranked substitutes a proposal keeps (and auto-assign tries, in order)."""
    updated_at: datetime | None = None


class SubstitutionStatus(enum.StrEnum):
    """``proposed`` -> ``confirmed`` | ``declined``; auto-assigned ones are born ``assigned``."""

    PROPOSED = "proposed"
    ASSIGNED = "assigned"
    CONFIRMED = "confirmed"
    DECLINED = "declined"


@dataclass(frozen=True, slots=True)
class SubstitutionDraft:
    """A substitution about to be recorded: the engine's ranking for one session that lost its instructor."""

    session_id: SessionId
    booking_id: BookingId
    previous_instructor_id: InstructorId
    trigger: str  # "leave" | "instructor_cancel"
    reason: str
    policy: SubstitutionPolicy
    candidates: tuple[dict[str, Any], ...]
    """Ranked substitutes, best first: ``{instructor_id, rank, tier, score, reasons}``."""
    alternatives: tuple[dict[str, Any], ...] = ()
    """When nobody can take it as booked: the nearest feasible times and instructors."""


@dataclass(frozen=True, slots=True)
class Substitution:
    substitution_id: SubstitutionId
    session_id: SessionId
    booking_id: BookingId
    previous_instructor_id: InstructorId
    trigger: str
    reason: str
    policy: SubstitutionPolicy
    status: SubstitutionStatus
    candidates: tuple[dict[str, Any], ...]
    alternatives: tuple[dict[str, Any], ...]
    instructor_id: InstructorId | None
    """The substitute who took the session (assigned or confirmed)."""
    exception_id: ExceptionId | None
    """The ``no_substitute`` operational exception raised when nobody could take it."""
    decision_reason: str
    created_at: datetime
    updated_at: datetime
    decided_at: datetime | None


@dataclass(frozen=True, slots=True)
class Reassignment:
    """Give ``session_id`` to ``to_instructor_id``, provided ``from_instructor_id`` still holds it."""

    session_id: SessionId
    from_instructor_id: InstructorId
    to_instructor_id: InstructorId


@dataclass(frozen=True, slots=True)
class InstructorChange:
    """A committed reassignment: the session before and after, and the join links it revoked."""

    before: Session
    after: Session
    revoked_links: tuple[JoinLink, ...]


class OptimizationStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED_OPTIMIZATION_STATUSES = (OptimizationStatus.QUEUED, OptimizationStatus.RUNNING)


@dataclass(frozen=True, slots=True)
class OptimizationJobRecord:
    """A bulk re-optimisation job as stored: every replica can answer a poll from this row.

    ``owner`` is the replica running it; it refreshes ``heartbeat_at`` every second or so, so a job whose
    owner died is recognised by a stale heartbeat and reported as failed.
    """

    job_id: OptimizationJobId
    status: OptimizationStatus
    week_start: datetime
    time_limit_s: float
    reassign: bool
    owner: str
    heartbeat_at: datetime
    cancel_requested: bool
    progress: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    applied_at: datetime | None
    apply_report: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class OccurrenceMove:
    """Move one session of a series to ``[start, end)`` (UTC, on the 5-minute grid)."""

    session_id: SessionId
    start: datetime
    end: datetime
