"""``Store``: the orchestrator's SQL store (SQLAlchemy Core, async) and its repository methods.

States and lifecycle: ``await Store.open(url)`` creates the engine and runs ``alembic upgrade head``
under a cross-process lock; ``await store.close()`` disposes the engine (idempotent).

Every repository method takes an optional ``conn``: pass one from ``store.transaction()`` to compose
several changes (and ``emit_event``) atomically, or leave it out to run in a transaction of its own.
Double booking is refused by the database itself: a session inserts one ``occupancy`` row per
person per 5-minute slot, and ``(person_kind, person_id, slot)`` is the primary key.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from orchestrator.errors import (
    AlreadyExistsError,
    FieldError,
    InvalidInputError,
    InvalidStateError,
    NotFoundError,
    OrchestratorError,
    SlotConflictError,
)
from orchestrator.store import codec
from orchestrator.store import schema as t
from orchestrator.store.documents import MAX_SESSION, DocumentsStore
from orchestrator.store.engagement import EngagementStore
from orchestrator.store.migrate import upgrade_to_head
from orchestrator.store.models import (
    MUTABLE_SESSION_STATUSES,
    SLOT_MINUTES,
    UNFINISHED_OPTIMIZATION_STATUSES,
    ApiKey,
    ApiKeyId,
    Attendance,
    AvailabilityException,
    Booking,
    BookingDraft,
    BookingId,
    BookingStatus,
    DeliveryStatus,
    EventId,
    ExceptionId,
    ExceptionStatus,
    IdempotencyRecord,
    Instructor,
    InstructorChange,
    InstructorId,
    JoinLink,
    Occurrence,
    OccurrenceMove,
    OperationalException,
    OptimizationJobId,
    OptimizationJobRecord,
    OptimizationStatus,
    OrganisationSettings,
    OutboxEvent,
    Page,
    PersonKind,
    Reassignment,
    Session,
    SessionId,
    SessionStatus,
    Student,
    StudentId,
    Subject,
    SubjectId,
    SubscriptionId,
    Substitution,
    SubstitutionDraft,
    SubstitutionId,
    SubstitutionPolicy,
    SubstitutionStatus,
    WebhookDelivery,
    WebhookSubscription,
    WeeklyWindow,
    new_id,
)
from orchestrator.store.outbox import emit_event
from orchestrator.store.recordings import RecordingsStore

logger = logging.getLogger(__name__)

_SLOT_SECONDS = SLOT_MINUTES * 60
_CONFLICT_RETRIES = 5


def slot_of(moment: datetime) -> int:
    """The occupancy bucket of ``moment``: minutes since the Unix epoch // 5."""
    return int(moment.timestamp()) // _SLOT_SECONDS


def slot_range(start: datetime, end: datetime) -> range:
    """Buckets covering ``[start, end)``; both ends must be on 5-minute boundaries."""
    return range(slot_of(start), slot_of(end))


def _now() -> datetime:
    return datetime.now(UTC)


class _Unset(enum.Enum):
    UNSET = "unset"


UNSET = _Unset.UNSET
"""Marks an optional argument as "not given" where ``None`` is a meaningful value."""


class _ClaimRace(Exception):
    """Another transaction took a slot between our check and our insert: retry from the start."""


class Store(RecordingsStore, EngagementStore, DocumentsStore):
    """The orchestrator's SQL store."""

    def __init__(self, engine: AsyncEngine, *, memory: bool = False) -> None:
        self._engine = engine
        self._closed = False
        # An in-memory SQLite database lives in one shared connection: serialise transactions on it.
        self._memory_lock: asyncio.Lock | None = asyncio.Lock() if memory else None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, echo: bool = False) -> Store:
        """Connect to ``url`` (``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://...``) and migrate."""
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        sqlite_path: str | None = None
        memory = False
        if backend == "sqlite":
            database = parsed.database or ""
            memory = database in ("", ":memory:")
            if memory:
                kwargs["poolclass"] = StaticPool
            else:
                sqlite_path = database
            kwargs["connect_args"] = {"timeout": 30}
        elif backend == "postgresql":
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        else:
            raise ValueError(f"unsupported store URL scheme {parsed.drivername!r}")
        engine = create_async_engine(url, **kwargs)
        if backend == "sqlite":
            _configure_sqlite(engine)
        store = cls(engine, memory=memory)
        if migrate:
            try:
                await upgrade_to_head(engine, sqlite_path)
            except BaseException:
                await engine.dispose()
                raise
        logger.info("store opened backend=%s", backend)
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A read-write transaction; on SQLite it starts with ``BEGIN IMMEDIATE`` (one writer at a time)."""
        if self._memory_lock is not None:
            async with self._memory_lock, self._engine.begin() as conn:
                yield conn
            return
        async with self._engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _creating(
        self, kind: str, resource_id: str, conn: AsyncConnection | None
    ) -> AsyncIterator[AsyncConnection]:
        """A write transaction in which a unique violation means "someone created it first"."""
        try:
            async with self._tx(conn) as c:
                yield c
        except IntegrityError as exc:
            if await self._exists_now(kind, resource_id):
                raise AlreadyExistsError(kind, resource_id) from exc
            raise

    async def _exists_now(self, kind: str, resource_id: str) -> bool:
        column = {
            "subject": t.subjects.c.subject_id,
            "instructor": t.instructors.c.instructor_id,
            "student": t.students.c.student_id,
        }[kind]
        async with self.read() as c:
            return await _exists(c, column, resource_id)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction; on SQLite a plain (deferred) BEGIN that does not wait for writers."""
        if self._memory_lock is not None:
            async with self._memory_lock, self._engine.begin() as conn:
                yield conn
            return
        async with self._engine.connect() as raw:
            conn = await raw.execution_options(classmesh_read_only=True)
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def _rx(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        if conn is not None:
            yield conn
            return
        async with self.read() as own:
            yield own

    @asynccontextmanager
    async def _tx(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        if conn is not None:
            yield conn
            return
        async with self.transaction() as own:
            yield own

    # ------------------------------------------------------------------ subjects

    async def create_subject(self, subject: Subject, *, conn: AsyncConnection | None = None) -> Subject:
        async with self._creating("subject", subject.subject_id, conn) as c:
            if await _exists(c, t.subjects.c.subject_id, subject.subject_id):
                raise AlreadyExistsError("subject", subject.subject_id)
            await c.execute(
                t.subjects.insert().values(subject_id=subject.subject_id, name=subject.name, created_at=_now())
            )
        return subject

    async def update_subject(self, subject: Subject, *, conn: AsyncConnection | None = None) -> Subject:
        async with self._tx(conn) as c:
            res = await c.execute(
                t.subjects.update().where(t.subjects.c.subject_id == subject.subject_id).values(name=subject.name)
            )
            if res.rowcount == 0:
                raise NotFoundError("subject", subject.subject_id)
        return subject

    async def get_subject(self, subject_id: str, *, conn: AsyncConnection | None = None) -> Subject:
        async with self._rx(conn) as c:
            row = (await c.execute(sa.select(t.subjects).where(t.subjects.c.subject_id == subject_id))).first()
        if row is None:
            raise NotFoundError("subject", subject_id)
        return Subject(SubjectId(row.subject_id), row.name)

    async def list_subjects(self, *, limit: int = 50, cursor: str | None = None) -> Page[Subject]:
        async with self.read() as c:
            rows, nxt = await _page_by_id(c, t.subjects, t.subjects.c.subject_id, limit, cursor)
        return Page(tuple(Subject(SubjectId(r.subject_id), r.name) for r in rows), nxt)

    # ------------------------------------------------------------------ instructors

    async def create_instructor(self, instructor: Instructor, *, conn: AsyncConnection | None = None) -> Instructor:
        async with self._creating("instructor", instructor.instructor_id, conn) as c:
            if await _exists(c, t.instructors.c.instructor_id, instructor.instructor_id):
                raise AlreadyExistsError("instructor", instructor.instructor_id)
            await _check_subjects(c, instructor.qualifications, "/qualifications")
            now = _now()
            await c.execute(
                t.instructors.insert().values(**_instructor_row(instructor), created_at=now, updated_at=now)
            )
            await _write_instructor_children(c, instructor)
        return instructor

    async def replace_instructor(self, instructor: Instructor, *, conn: AsyncConnection | None = None) -> Instructor:
        """Overwrite every field of an existing instructor (the API's PATCH merges before calling this)."""
        async with self._tx(conn) as c:
            await _check_subjects(c, instructor.qualifications, "/qualifications")
            res = await c.execute(
                t.instructors.update()
                .where(t.instructors.c.instructor_id == instructor.instructor_id)
                .values(**_instructor_row(instructor), updated_at=_now())
            )
            if res.rowcount == 0:
                raise NotFoundError("instructor", instructor.instructor_id)
            for table in (t.instructor_qualifications, t.instructor_availability, t.instructor_exceptions):
                await c.execute(table.delete().where(table.c.instructor_id == instructor.instructor_id))
            await _write_instructor_children(c, instructor)
        return instructor

    async def get_instructor(self, instructor_id: str, *, conn: AsyncConnection | None = None) -> Instructor:
        async with self._rx(conn) as c:
            found = await _load_instructors(c, [instructor_id])
        if not found:
            raise NotFoundError("instructor", instructor_id)
        return found[0]

    async def get_instructors(
        self, instructor_ids: Iterable[str], *, conn: AsyncConnection | None = None
    ) -> list[Instructor]:
        """The instructors that exist among ``instructor_ids`` (for the scheduling engine)."""
        async with self._rx(conn) as c:
            return await _load_instructors(c, list(instructor_ids))

    async def list_instructors(self, *, limit: int = 50, cursor: str | None = None) -> Page[Instructor]:
        async with self.read() as c:
            rows, nxt = await _page_by_id(c, t.instructors, t.instructors.c.instructor_id, limit, cursor)
            items = await _load_instructors(c, [r.instructor_id for r in rows])
        return Page(tuple(items), nxt)

    # ------------------------------------------------------------------ students

    async def create_student(self, student: Student, *, conn: AsyncConnection | None = None) -> Student:
        async with self._creating("student", student.student_id, conn) as c:
            if await _exists(c, t.students.c.student_id, student.student_id):
                raise AlreadyExistsError("student", student.student_id)
            await _check_subjects(c, student.levels, "/levels")
            now = _now()
            await c.execute(t.students.insert().values(**_student_row(student), created_at=now, updated_at=now))
            await _write_student_levels(c, student)
        return student

    async def replace_student(self, student: Student, *, conn: AsyncConnection | None = None) -> Student:
        async with self._tx(conn) as c:
            await _check_subjects(c, student.levels, "/levels")
            res = await c.execute(
                t.students.update()
                .where(t.students.c.student_id == student.student_id)
                .values(**_student_row(student), updated_at=_now())
            )
            if res.rowcount == 0:
                raise NotFoundError("student", student.student_id)
            await c.execute(t.student_levels.delete().where(t.student_levels.c.student_id == student.student_id))
            await _write_student_levels(c, student)
        return student

    async def get_student(self, student_id: str, *, conn: AsyncConnection | None = None) -> Student:
        async with self._rx(conn) as c:
            found = await _load_students(c, [student_id])
        if not found:
            raise NotFoundError("student", student_id)
        return found[0]

    async def get_students(self, student_ids: Iterable[str], *, conn: AsyncConnection | None = None) -> list[Student]:
        async with self._rx(conn) as c:
            return await _load_students(c, list(student_ids))

    async def list_students(self, *, limit: int = 50, cursor: str | None = None) -> Page[Student]:
        async with self.read() as c:
            rows, nxt = await _page_by_id(c, t.students, t.students.c.student_id, limit, cursor)
            items = await _load_students(c, [r.student_id for r in rows])
        return Page(tuple(items), nxt)

    # ------------------------------------------------------------------ bookings and sessions

    async def create_booking(
        self, draft: BookingDraft, occurrences: Sequence[Occurrence]
    ) -> tuple[Booking, list[Session]]:
        """Insert a booking, its sessions and their occupancy claims, and emit ``booking.created``.

        Raises ``SlotConflictError`` (naming the session that holds the slot) on a double booking and
        ``InvalidInputError`` when a referenced subject, instructor or student does not exist.
        """
        _check_occurrences(occurrences, draft.duration_minutes)
        booking_id = draft.booking_id or BookingId(new_id("bkg"))
        for attempt in range(_CONFLICT_RETRIES):
            try:
                async with self.transaction() as c:
                    await _check_booking_refs(c, draft, occurrences)
                    now = _now()
                    await c.execute(
                        t.bookings.insert().values(
                            booking_id=booking_id,
                            subject_id=draft.subject_id,
                            instructor_id=draft.instructor_id,
                            starts_at=draft.start,
                            duration_minutes=draft.duration_minutes,
                            rrule=draft.rrule,
                            recording=draft.recording,
                            notes=draft.notes,
                            status=BookingStatus.ACTIVE.value,
                            curriculum_unit=draft.curriculum_unit,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                    await c.execute(
                        t.booking_students.insert(),
                        [
                            {"booking_id": booking_id, "student_id": s, "position": i}
                            for i, s in enumerate(draft.student_ids)
                        ],
                    )
                    sessions = [
                        _new_session(booking_id, draft, occ)
                        for occ in sorted(occurrences, key=lambda o: o.occurrence_index)
                    ]
                    await _insert_sessions(c, sessions, now)
                    await _claim(c, sessions)
                    booking = await _load_booking(c, booking_id)
                    await emit_event(
                        c,
                        "booking.created",
                        {
                            "booking": codec.booking_to_dict(booking),
                            "sessions": [codec.session_to_dict(s) for s in sessions],
                        },
                        booking_id,
                    )
                return booking, sessions
            except _ClaimRace:
                logger.debug("booking=%s attempt=%d occupancy race, retrying", booking_id, attempt)
        raise SlotConflictError(PersonKind.INSTRUCTOR, draft.instructor_id or "?", None)

    async def reschedule_booking(
        self, booking_id: str, draft: BookingDraft, occurrences: Sequence[Occurrence]
    ) -> tuple[Booking, Booking, list[Session]]:
        """Move a booking to ``draft``'s start/duration; returns (old booking, new booking, sessions).

        Sessions still ``scheduled`` or ``provisioned`` follow their occurrence index to the new times
        (and re-claim occupancy); live, ended and cancelled ones are left alone. Emits
        ``booking.rescheduled`` with the old and new times.
        """
        _check_occurrences(occurrences, draft.duration_minutes)
        for attempt in range(_CONFLICT_RETRIES):
            try:
                async with self.transaction() as c:
                    old = await _lock_booking(c, booking_id)
                    if old.status is BookingStatus.CANCELLED:
                        raise InvalidStateError(f"booking {booking_id!r} is cancelled and cannot be rescheduled")
                    await _check_booking_refs(c, draft, occurrences)
                    now = _now()
                    existing = {s.occurrence_index: s for s in await _sessions_of(c, [booking_id])}
                    movable = {i: s for i, s in existing.items() if s.status in MUTABLE_SESSION_STATUSES}
                    if movable:
                        await c.execute(
                            t.occupancy.delete().where(
                                t.occupancy.c.session_id.in_([s.session_id for s in movable.values()])
                            )
                        )
                    wanted = {o.occurrence_index: o for o in occurrences}
                    updated: list[Session] = []
                    created: list[Session] = []
                    for index, occ in sorted(wanted.items()):
                        current = existing.get(index)
                        if current is None:
                            created.append(_new_session(BookingId(booking_id), draft, occ))
                        elif index in movable:
                            moved = replace(current, start=occ.start, end=occ.end, instructor_id=occ.instructor_id)
                            updated.append(moved)
                            await c.execute(
                                t.sessions.update()
                                .where(t.sessions.c.session_id == moved.session_id)
                                .values(
                                    starts_at=moved.start,
                                    ends_at=moved.end,
                                    instructor_id=moved.instructor_id,
                                    updated_at=now,
                                )
                            )
                    dropped = [s for i, s in movable.items() if i not in wanted]
                    if dropped:
                        await c.execute(
                            t.sessions.update()
                            .where(t.sessions.c.session_id.in_([s.session_id for s in dropped]))
                            .values(status=SessionStatus.CANCELLED.value, updated_at=now)
                        )
                    await _insert_sessions(c, created, now)
                    await _claim(c, updated + created)
                    await c.execute(
                        t.bookings.update()
                        .where(t.bookings.c.booking_id == booking_id)
                        .values(
                            starts_at=draft.start,
                            duration_minutes=draft.duration_minutes,
                            instructor_id=draft.instructor_id,
                            updated_at=now,
                        )
                    )
                    new = await _load_booking(c, booking_id)
                    sessions = await _sessions_of(c, [booking_id])
                    await emit_event(
                        c,
                        "booking.rescheduled",
                        {
                            "booking": codec.booking_to_dict(new),
                            "old": {"start": codec.iso(old.start), "duration_minutes": old.duration_minutes},
                            "new": {"start": codec.iso(new.start), "duration_minutes": new.duration_minutes},
                            "sessions": [codec.session_to_dict(s) for s in sessions],
                        },
                        booking_id,
                    )
                return old, new, sessions
            except _ClaimRace:
                logger.debug("booking=%s attempt=%d occupancy race on reschedule, retrying", booking_id, attempt)
        raise SlotConflictError(PersonKind.INSTRUCTOR, draft.instructor_id or "?", None)

    async def update_booking_details(
        self,
        booking_id: str,
        *,
        notes: str | None = None,
        recording: bool | None = None,
        curriculum_unit: str | _Unset | None = UNSET,
    ) -> Booking:
        """Change fields that do not move the booking in time (no event); ``curriculum_unit=None`` clears it."""
        values: dict[str, Any] = {}
        if notes is not None:
            values["notes"] = notes
        if not isinstance(curriculum_unit, _Unset):
            values["curriculum_unit"] = curriculum_unit
        if recording is not None:
            values["recording"] = recording
        async with self.transaction() as c:
            booking = await _lock_booking(c, booking_id)
            if not values:
                return booking
            if booking.status is BookingStatus.CANCELLED:
                raise InvalidStateError(f"booking {booking_id!r} is cancelled and cannot be changed")
            await c.execute(
                t.bookings.update().where(t.bookings.c.booking_id == booking_id).values(**values, updated_at=_now())
            )
            session_values = {k: v for k, v in values.items() if k in ("recording", "curriculum_unit")}
            if session_values:
                await c.execute(
                    t.sessions.update()
                    .where(
                        t.sessions.c.booking_id == booking_id,
                        t.sessions.c.status.in_([s.value for s in MUTABLE_SESSION_STATUSES]),
                    )
                    .values(**session_values)
                )
            return await _load_booking(c, booking_id)

    async def cancel_booking(self, booking_id: str, *, reason: str = "") -> tuple[Booking, bool]:
        """Cancel a booking and its not-yet-started sessions, freeing their slots.

        Returns ``(booking, changed)``; cancelling a cancelled booking changes nothing and emits nothing.
        """
        async with self.transaction() as c:
            booking = await _lock_booking(c, booking_id)
            if booking.status is BookingStatus.CANCELLED:
                return booking, False
            now = _now()
            sessions = await _sessions_of(c, [booking_id])
            doomed = [s.session_id for s in sessions if s.status in MUTABLE_SESSION_STATUSES]
            if doomed:
                await c.execute(t.occupancy.delete().where(t.occupancy.c.session_id.in_(doomed)))
                await c.execute(
                    t.sessions.update()
                    .where(t.sessions.c.session_id.in_(doomed))
                    .values(status=SessionStatus.CANCELLED.value, updated_at=now)
                )
            await c.execute(
                t.bookings.update()
                .where(t.bookings.c.booking_id == booking_id)
                .values(status=BookingStatus.CANCELLED.value, updated_at=now)
            )
            booking = await _load_booking(c, booking_id)
            await emit_event(
                c,
                "booking.cancelled",
                {
                    "booking": codec.booking_to_dict(booking),
                    "cancelled_session_ids": doomed,
                    "reason": reason,
                },
                booking_id,
            )
        return booking, True

    async def get_booking(self, booking_id: str, *, conn: AsyncConnection | None = None) -> Booking:
        async with self._rx(conn) as c:
            return await _load_booking(c, booking_id)

    async def list_bookings(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        status: BookingStatus | None = None,
        student_id: str | None = None,
        instructor_id: str | None = None,
    ) -> Page[Booking]:
        where: list[sa.ColumnElement[bool]] = []
        if status is not None:
            where.append(t.bookings.c.status == status.value)
        if instructor_id is not None:
            where.append(t.bookings.c.instructor_id == instructor_id)
        if student_id is not None:
            where.append(
                t.bookings.c.booking_id.in_(
                    sa.select(t.booking_students.c.booking_id).where(t.booking_students.c.student_id == student_id)
                )
            )
        async with self.read() as c:
            rows, nxt = await _page_by_time(
                c, t.bookings, t.bookings.c.starts_at, t.bookings.c.booking_id, where, limit, cursor
            )
            items = [await _load_booking(c, r.booking_id) for r in rows]
        return Page(tuple(items), nxt)

    async def get_session(self, session_id: str, *, conn: AsyncConnection | None = None) -> Session:
        async with self._rx(conn) as c:
            found = await _load_sessions(c, t.sessions.c.session_id == session_id)
        if not found:
            raise NotFoundError("session", session_id)
        return found[0]

    async def sessions_of_booking(self, booking_id: str) -> list[Session]:
        async with self.read() as c:
            await _load_booking(c, booking_id)
            return await _sessions_of(c, [booking_id])

    async def list_sessions(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        booking_id: str | None = None,
        instructor_id: str | None = None,
        student_id: str | None = None,
        status: SessionStatus | None = None,
        start_from: datetime | None = None,
        start_before: datetime | None = None,
    ) -> Page[Session]:
        where: list[sa.ColumnElement[bool]] = []
        if booking_id is not None:
            where.append(t.sessions.c.booking_id == booking_id)
        if instructor_id is not None:
            where.append(t.sessions.c.instructor_id == instructor_id)
        if status is not None:
            where.append(t.sessions.c.status == status.value)
        if start_from is not None:
            where.append(t.sessions.c.starts_at >= start_from)
        if start_before is not None:
            where.append(t.sessions.c.starts_at < start_before)
        if student_id is not None:
            where.append(
                t.sessions.c.session_id.in_(
                    sa.select(t.session_students.c.session_id).where(t.session_students.c.student_id == student_id)
                )
            )
        async with self.read() as c:
            rows, nxt = await _page_by_time(
                c, t.sessions, t.sessions.c.starts_at, t.sessions.c.session_id, where, limit, cursor
            )
            items = await _load_sessions(c, t.sessions.c.session_id.in_([r.session_id for r in rows]))
        order = {r.session_id: i for i, r in enumerate(rows)}
        return Page(tuple(sorted(items, key=lambda s: order[s.session_id])), nxt)

    async def latest_sessions_of_student(
        self, student_id: str, *, status: SessionStatus, limit: int, ending_by: datetime | None = None
    ) -> list[Session]:
        """The student's ``limit`` latest sessions in ``status`` (ending by ``ending_by``), oldest first."""
        cond = sa.and_(
            t.sessions.c.status == status.value,
            t.sessions.c.session_id.in_(
                sa.select(t.session_students.c.session_id).where(t.session_students.c.student_id == student_id)
            ),
        )
        if ending_by is not None:
            cond = sa.and_(cond, t.sessions.c.ends_at <= ending_by)
        async with self.read() as c:
            ids = (
                await c.execute(
                    sa.select(t.sessions.c.session_id)
                    .where(cond)
                    .order_by(t.sessions.c.starts_at.desc(), t.sessions.c.session_id.desc())
                    .limit(limit)
                )
            ).scalars()
            found = await _load_sessions(c, t.sessions.c.session_id.in_(list(ids)))
        return sorted(found, key=lambda s: (s.start, s.session_id))

    async def students_of_sessions_ended(self, since: datetime, until: datetime) -> list[str]:
        """Students booked into a session that ended (status ``ended``) with its end in ``[since, until)``."""
        async with self.read() as c:
            rows = await c.execute(
                sa.select(t.session_students.c.student_id)
                .join(t.sessions, t.sessions.c.session_id == t.session_students.c.session_id)
                .where(
                    t.sessions.c.status == SessionStatus.ENDED.value,
                    t.sessions.c.starts_at >= since - MAX_SESSION,  # on the starts_at index: runs every minute
                    t.sessions.c.ends_at >= since,
                    t.sessions.c.ends_at < until,
                )
                .distinct()
                .order_by(t.session_students.c.student_id)
            )
            return list(rows.scalars())

    async def sessions_in_status(
        self,
        status: SessionStatus,
        *,
        starts_before: datetime | None = None,
        ends_before: datetime | None = None,
        limit: int = 200,
    ) -> list[Session]:
        """Sessions in ``status`` (oldest first), for the provisioning and closing loops."""
        cond = t.sessions.c.status == status.value
        if starts_before is not None:
            cond = sa.and_(cond, t.sessions.c.starts_at <= starts_before)
        if ends_before is not None:
            cond = sa.and_(cond, t.sessions.c.ends_at <= ends_before)
        async with self.read() as c:
            ids = (
                (
                    await c.execute(
                        sa.select(t.sessions.c.session_id).where(cond).order_by(t.sessions.c.starts_at).limit(limit)
                    )
                )
                .scalars()
                .all()
            )
            if not ids:
                return []
            found = await _load_sessions(c, t.sessions.c.session_id.in_(list(ids)))
        return sorted(found, key=lambda s: (s.start, s.session_id))

    async def sessions_between(
        self, start: datetime, end: datetime, *, instructor_ids: Iterable[str] | None = None
    ) -> list[Session]:
        """Non-cancelled sessions overlapping ``[start, end)`` (for the scheduling engine's caps)."""
        cond = sa.and_(
            t.sessions.c.starts_at < end,
            t.sessions.c.ends_at > start,
            t.sessions.c.status != SessionStatus.CANCELLED.value,
        )
        if instructor_ids is not None:
            cond = sa.and_(cond, t.sessions.c.instructor_id.in_(list(instructor_ids)))
        async with self.read() as c:
            return await _load_sessions(c, cond)

    async def update_session(
        self,
        session_id: str,
        *,
        status: SessionStatus | None = None,
        room_id: str | None = None,
        region: str | None = None,
        node_id: str | None = None,
        event_type: str | None = None,
        if_status: SessionStatus | None = None,
        conn: AsyncConnection | None = None,
    ) -> Session:
        """Record placement/status of a session; with ``event_type`` also emits that event atomically.

        With ``if_status`` the update is a compare-and-set: it happens only while the session is still in that
        status, else ``InvalidStateError`` (how several orchestrator replicas do each transition exactly once).
        """
        values: dict[str, Any] = {"updated_at": _now()}
        if status is not None:
            values["status"] = status.value
        for key, val in (("room_id", room_id), ("region", region), ("node_id", node_id)):
            if val is not None:
                values[key] = val
        cond = t.sessions.c.session_id == session_id
        if if_status is not None:
            cond = sa.and_(cond, t.sessions.c.status == if_status.value)
        async with self._tx(conn) as c:
            res = await c.execute(t.sessions.update().where(cond).values(**values))
            if res.rowcount == 0:
                if if_status is not None and await _load_sessions(c, t.sessions.c.session_id == session_id):
                    raise InvalidStateError(f"session {session_id!r} is no longer {if_status.value}")
                raise NotFoundError("session", session_id)
            if status in (SessionStatus.CANCELLED, SessionStatus.ENDED):
                await c.execute(t.occupancy.delete().where(t.occupancy.c.session_id == session_id))
            session = (await _load_sessions(c, t.sessions.c.session_id == session_id))[0]
            if event_type is not None:
                await emit_event(c, event_type, {"session": codec.session_to_dict(session)}, session.booking_id)
        return session

    # ------------------------------------------------------------------ attendance

    async def record_join(self, session_id: str, participant_id: str, role: str, *, at: datetime | None = None) -> None:
        """A participant entered the room; emits ``participant.joined``."""
        at = at or _now()
        async with self.transaction() as c:
            session = await self.get_session(session_id, conn=c)
            await c.execute(
                t.attendance.insert().values(
                    session_id=session_id, participant_id=participant_id, role=role, joined_at=at
                )
            )
            await emit_event(
                c,
                "participant.joined",
                {
                    "session_id": session_id,
                    "participant_id": participant_id,
                    "role": role,
                    "at": codec.iso(at),
                },
                session.booking_id,
            )

    async def record_leave(self, session_id: str, participant_id: str, *, at: datetime | None = None) -> None:
        """A participant left; closes their open attendance row and emits ``participant.left``."""
        at = at or _now()
        async with self.transaction() as c:
            session = await self.get_session(session_id, conn=c)
            await c.execute(
                t.attendance.update()
                .where(
                    t.attendance.c.session_id == session_id,
                    t.attendance.c.participant_id == participant_id,
                    t.attendance.c.left_at.is_(None),
                )
                .values(left_at=at)
            )
            await emit_event(
                c,
                "participant.left",
                {"session_id": session_id, "participant_id": participant_id, "at": codec.iso(at)},
                session.booking_id,
            )

    async def attendance_of(self, session_id: str) -> list[Attendance]:
        return (await self.attendance_for([session_id]))[session_id]

    # ------------------------------------------------------------------ join links

    async def add_join_link(self, link: JoinLink) -> JoinLink:
        async with self.transaction() as c:
            await c.execute(
                t.join_links.insert().values(
                    jti=link.jti,
                    session_id=link.session_id,
                    participant_id=link.participant_id,
                    role=link.role,
                    expires_at=link.expires_at,
                    created_at=link.created_at,
                )
            )
        return link

    async def get_join_link(self, jti: str) -> JoinLink | None:
        async with self.read() as c:
            r = (await c.execute(sa.select(t.join_links).where(t.join_links.c.jti == jti))).first()
        if r is None:
            return None
        return _join_link(r)

    # ------------------------------------------------------------------ API keys

    async def insert_api_key(self, key: ApiKey, secret_hash: str) -> ApiKey:
        async with self.transaction() as c:
            await c.execute(
                t.api_keys.insert().values(
                    key_id=key.key_id,
                    name=key.name,
                    secret_hash=secret_hash,
                    scopes=list(key.scopes),
                    created_at=key.created_at,
                    revoked_at=None,
                )
            )
        return key

    async def get_api_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The key and its stored secret hash, or None."""
        async with self.read() as c:
            r = (await c.execute(sa.select(t.api_keys).where(t.api_keys.c.key_id == key_id))).first()
        if r is None:
            return None
        return _api_key(r), r.secret_hash

    async def revoke_api_key(self, key_id: str) -> bool:
        """Revoke; False when the key does not exist or was already revoked."""
        async with self.transaction() as c:
            res = await c.execute(
                t.api_keys.update()
                .where(t.api_keys.c.key_id == key_id, t.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
        return bool(res.rowcount)

    async def list_api_keys(self) -> list[ApiKey]:
        async with self.read() as c:
            rows = await c.execute(sa.select(t.api_keys).order_by(t.api_keys.c.created_at, t.api_keys.c.key_id))
            return [_api_key(r) for r in rows]

    # ------------------------------------------------------------------ idempotency

    async def idempotency_reserve(
        self, api_key_id: str, key: str, method_path: str, request_hash: str
    ) -> IdempotencyRecord | None:
        """Reserve ``key`` for a new request (returns None) or return the record already there."""
        async with self.transaction() as c:
            existing = await _idempotency_record(c, api_key_id, key)
            if existing is not None:
                return existing
            try:
                async with c.begin_nested():
                    await c.execute(
                        t.idempotency_keys.insert().values(
                            api_key_id=api_key_id,
                            key=key,
                            method_path=method_path,
                            request_hash=request_hash,
                            response_status=None,
                            response_body=None,
                            created_at=_now(),
                        )
                    )
                return None
            except IntegrityError:
                pass  # a concurrent request with the same key reserved it first (PostgreSQL)
        async with self.read() as c:
            return await _idempotency_record(c, api_key_id, key)

    async def idempotency_complete(self, api_key_id: str, key: str, status: int, body: str) -> None:
        async with self.transaction() as c:
            await c.execute(
                t.idempotency_keys.update()
                .where(t.idempotency_keys.c.api_key_id == api_key_id, t.idempotency_keys.c.key == key)
                .values(response_status=status, response_body=body)
            )

    async def idempotency_release(self, api_key_id: str, key: str) -> None:
        """Forget a reservation whose request failed on our side, so the client may retry."""
        async with self.transaction() as c:
            await c.execute(
                t.idempotency_keys.delete().where(
                    t.idempotency_keys.c.api_key_id == api_key_id, t.idempotency_keys.c.key == key
                )
            )

    async def purge_idempotency_keys(self, older_than: timedelta = timedelta(hours=24)) -> int:
        async with self.transaction() as c:
            res = await c.execute(
                t.idempotency_keys.delete().where(t.idempotency_keys.c.created_at < _now() - older_than)
            )
        return int(res.rowcount)

    # ------------------------------------------------------------------ webhook subscriptions

    async def create_subscription(self, url: str, event_types: Sequence[str], secret: str) -> WebhookSubscription:
        now = _now()
        sub = WebhookSubscription(SubscriptionId(new_id("whs")), url, secret, tuple(event_types), True, now, now)
        async with self.transaction() as c:
            await c.execute(
                t.webhook_subscriptions.insert().values(
                    subscription_id=sub.subscription_id,
                    url=url,
                    secret=secret,
                    event_types=list(event_types),
                    active=True,
                    created_at=now,
                    updated_at=now,
                )
            )
        return sub

    async def get_subscription(self, subscription_id: str) -> WebhookSubscription:
        async with self.read() as c:
            r = (
                await c.execute(
                    sa.select(t.webhook_subscriptions).where(
                        t.webhook_subscriptions.c.subscription_id == subscription_id
                    )
                )
            ).first()
        if r is None:
            raise NotFoundError("webhook subscription", subscription_id)
        return _subscription(r)

    async def list_subscriptions(self, *, limit: int = 50, cursor: str | None = None) -> Page[WebhookSubscription]:
        async with self.read() as c:
            rows, nxt = await _page_by_id(
                c, t.webhook_subscriptions, t.webhook_subscriptions.c.subscription_id, limit, cursor
            )
        return Page(tuple(_subscription(r) for r in rows), nxt)

    async def update_subscription(
        self,
        subscription_id: str,
        *,
        url: str | None = None,
        event_types: Sequence[str] | None = None,
        active: bool | None = None,
    ) -> WebhookSubscription:
        values: dict[str, Any] = {"updated_at": _now()}
        if url is not None:
            values["url"] = url
        if event_types is not None:
            values["event_types"] = list(event_types)
        if active is not None:
            values["active"] = active
        async with self.transaction() as c:
            res = await c.execute(
                t.webhook_subscriptions.update()
                .where(t.webhook_subscriptions.c.subscription_id == subscription_id)
                .values(**values)
            )
        if res.rowcount == 0:
            raise NotFoundError("webhook subscription", subscription_id)
        return await self.get_subscription(subscription_id)

    async def delete_subscription(self, subscription_id: str) -> None:
        async with self.transaction() as c:
            res = await c.execute(
                t.webhook_subscriptions.delete().where(t.webhook_subscriptions.c.subscription_id == subscription_id)
            )
        if res.rowcount == 0:
            raise NotFoundError("webhook subscription", subscription_id)

    # ------------------------------------------------------------------ webhook deliveries

    async def claim_due_deliveries(
        self, *, limit: int = 50, lease: timedelta = timedelta(seconds=60), now: datetime | None = None
    ) -> list[WebhookDelivery]:
        """Deliveries that are due and first in line for their (subscription, ordering key).

        Each is leased (its ``next_attempt_at`` pushed ``lease`` ahead) so another replica's dispatcher
        does not pick it up while this one is sending it.
        """
        now = now or _now()
        d = t.webhook_deliveries
        earlier = d.alias("earlier")
        blocked = sa.exists().where(
            earlier.c.subscription_id == d.c.subscription_id,
            earlier.c.ordering_key == d.c.ordering_key,
            earlier.c.status == DeliveryStatus.PENDING.value,
            earlier.c.delivery_id < d.c.delivery_id,
        )
        query = (
            sa.select(d, t.webhook_outbox)
            .join(t.webhook_outbox, t.webhook_outbox.c.event_id == d.c.event_id)
            .where(d.c.status == DeliveryStatus.PENDING.value, d.c.next_attempt_at <= now, ~blocked)
            .order_by(d.c.delivery_id)
            .limit(limit)
        )
        out: list[WebhookDelivery] = []
        async with self.transaction() as c:
            for r in (await c.execute(query)).all():
                res = await c.execute(
                    d.update()
                    .where(d.c.delivery_id == r.delivery_id, d.c.next_attempt_at == r.next_attempt_at)
                    .values(next_attempt_at=now + lease)
                )
                if res.rowcount:
                    out.append(_delivery(r))
        return out

    async def mark_delivered(self, delivery_id: int) -> None:
        async with self.transaction() as c:
            await c.execute(
                t.webhook_deliveries.update()
                .where(t.webhook_deliveries.c.delivery_id == delivery_id)
                .values(
                    status=DeliveryStatus.DELIVERED.value,
                    attempts=t.webhook_deliveries.c.attempts + 1,
                    delivered_at=_now(),
                    last_error=None,
                )
            )

    async def mark_attempt_failed(self, delivery_id: int, error: str, next_attempt_at: datetime | None) -> None:
        """Record a failed attempt; ``next_attempt_at=None`` gives up (status ``failed``)."""
        values: dict[str, Any] = {
            "attempts": t.webhook_deliveries.c.attempts + 1,
            "last_error": error[:2000],
        }
        if next_attempt_at is None:
            values["status"] = DeliveryStatus.FAILED.value
        else:
            values["next_attempt_at"] = next_attempt_at
        async with self.transaction() as c:
            await c.execute(
                t.webhook_deliveries.update().where(t.webhook_deliveries.c.delivery_id == delivery_id).values(**values)
            )

    async def deliveries_of_event(self, event_id: str) -> list[WebhookDelivery]:
        d = t.webhook_deliveries
        async with self.read() as c:
            rows = await c.execute(
                sa.select(d, t.webhook_outbox)
                .join(t.webhook_outbox, t.webhook_outbox.c.event_id == d.c.event_id)
                .where(d.c.event_id == event_id)
                .order_by(d.c.delivery_id)
            )
            return [_delivery(r) for r in rows]

    async def outbox_lag_seconds(self, now: datetime | None = None) -> float:
        """Age of the oldest pending delivery (0 when the outbox is drained)."""
        now = now or _now()
        async with self.read() as c:
            oldest = (
                await c.execute(
                    sa.select(sa.func.min(t.webhook_deliveries.c.created_at)).where(
                        t.webhook_deliveries.c.status == DeliveryStatus.PENDING.value
                    )
                )
            ).scalar()
        if oldest is None:
            return 0.0
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        return max(0.0, (now - oldest).total_seconds())

    # ------------------------------------------------------------------ operational exceptions

    async def raise_exception(
        self,
        dedup_key: str,
        kind: str,
        severity: str,
        *,
        subject_refs: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> OperationalException:
        """Open (or bump) the exception with ``dedup_key``; a resolved one is reopened. Opening and reopening
        emit ``exception.opened`` (a bump of an open one does not)."""
        now = _now()
        async with self.transaction() as c:
            r = (
                await c.execute(sa.select(t.exceptions).where(t.exceptions.c.dedup_key == dedup_key).with_for_update())
            ).first()
            opened = r is None or r.status == ExceptionStatus.RESOLVED.value
            if r is None:
                exc_id = ExceptionId(new_id("exc"))
                await c.execute(
                    t.exceptions.insert().values(
                        exception_id=exc_id,
                        dedup_key=dedup_key,
                        kind=kind,
                        severity=severity,
                        status=ExceptionStatus.OPEN.value,
                        owner=None,
                        subject_refs=subject_refs or {},
                        details=details or {},
                        occurrences=1,
                        created_at=now,
                        updated_at=now,
                    )
                )
            else:
                exc_id = ExceptionId(r.exception_id)
                values: dict[str, Any] = {
                    "occurrences": r.occurrences + 1,
                    "updated_at": now,
                    "severity": severity,
                }
                if details is not None:
                    values["details"] = details
                if subject_refs is not None:
                    values["subject_refs"] = subject_refs
                if r.status == ExceptionStatus.RESOLVED.value:
                    values.update(status=ExceptionStatus.OPEN.value, resolved_at=None)
                await c.execute(t.exceptions.update().where(t.exceptions.c.exception_id == exc_id).values(**values))
            row = (await c.execute(sa.select(t.exceptions).where(t.exceptions.c.exception_id == exc_id))).one()
            if opened:
                await _emit_exception(c, "exception.opened", row, now)
        return _exception(row)

    async def exception_by_key(self, dedup_key: str) -> OperationalException | None:
        async with self.read() as c:
            r = (await c.execute(sa.select(t.exceptions).where(t.exceptions.c.dedup_key == dedup_key))).first()
        return None if r is None else _exception(r)

    async def resolve_exception_key(self, dedup_key: str) -> bool:
        """Resolve the open exception with ``dedup_key`` once its cause is gone; False when there is none open."""
        async with self.transaction() as c:
            return bool(await _resolve_exceptions(c, t.exceptions.c.dedup_key == dedup_key, _now()))

    async def set_exception_status(
        self,
        exception_id: str,
        status: ExceptionStatus,
        *,
        owner: str | None = None,
        snoozed_until: datetime | None = None,
    ) -> OperationalException:
        now = _now()
        values: dict[str, Any] = {"status": status.value, "updated_at": now}
        if owner is not None:
            values["owner"] = owner
        if status is ExceptionStatus.SNOOZED:
            if snoozed_until is None:
                raise InvalidInputError("snoozing needs snoozed_until")
            values["snoozed_until"] = snoozed_until
        else:
            values["snoozed_until"] = None
        async with self.transaction() as c:
            before = (
                await c.execute(
                    sa.select(t.exceptions.c.status)
                    .where(t.exceptions.c.exception_id == exception_id)
                    .with_for_update()
                )
            ).scalar()
            if before is None:
                raise NotFoundError("exception", exception_id)
            was_resolved = before == ExceptionStatus.RESOLVED.value
            if was_resolved != (status is ExceptionStatus.RESOLVED):  # resolved_at moves only with the status
                values["resolved_at"] = None if was_resolved else now
            await c.execute(t.exceptions.update().where(t.exceptions.c.exception_id == exception_id).values(**values))
            row = (await c.execute(sa.select(t.exceptions).where(t.exceptions.c.exception_id == exception_id))).one()
            if was_resolved != (status is ExceptionStatus.RESOLVED):
                await _emit_exception(c, "exception.opened" if was_resolved else "exception.resolved", row, now)
        return _exception(row)

    async def wake_snoozed_exceptions(self, now: datetime | None = None) -> int:
        """Snoozed exceptions whose time has come are open again; returns how many."""
        now = now or _now()
        e = t.exceptions
        async with self.transaction() as c:
            done = await c.execute(
                e.update()
                .where(e.c.status == ExceptionStatus.SNOOZED.value, e.c.snoozed_until <= now)
                .values(status=ExceptionStatus.OPEN.value, snoozed_until=None, updated_at=now)
            )
        return int(done.rowcount or 0)

    async def get_exception(self, exception_id: str) -> OperationalException:
        async with self.read() as c:
            r = (await c.execute(sa.select(t.exceptions).where(t.exceptions.c.exception_id == exception_id))).first()
        if r is None:
            raise NotFoundError("exception", exception_id)
        return _exception(r)

    async def list_exceptions(
        self,
        *,
        statuses: Iterable[ExceptionStatus] | None = None,
        kind: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[OperationalException]:
        where: list[sa.ColumnElement[bool]] = []
        if statuses is not None:
            where.append(t.exceptions.c.status.in_([s.value for s in statuses]))
        if kind is not None:
            where.append(t.exceptions.c.kind == kind)
        async with self.read() as c:
            rows, nxt = await _page_by_id(c, t.exceptions, t.exceptions.c.exception_id, limit, cursor, where)
        return Page(tuple(_exception(r) for r in rows), nxt)

    # ------------------------------------------------------------------ scheduling operations: settings

    async def get_settings(self, *, conn: AsyncConnection | None = None) -> OrganisationSettings:
        """The organisation's scheduling settings (the defaults until someone changes them)."""
        async with self._rx(conn) as c:
            r = (
                await c.execute(
                    sa.select(t.organisation_settings).where(t.organisation_settings.c.settings_id == _SETTINGS_ID)
                )
            ).first()
        if r is None:
            return OrganisationSettings()
        return OrganisationSettings(SubstitutionPolicy(r.substitution_policy), r.substitute_candidates, r.updated_at)

    async def update_settings(
        self, *, substitution_policy: SubstitutionPolicy | None = None, substitute_candidates: int | None = None
    ) -> OrganisationSettings:
        """Change the fields given and keep the others."""
        if substitute_candidates is not None and not 1 <= substitute_candidates <= _MAX_SUBSTITUTE_CANDIDATES:
            raise InvalidInputError(
                "substitute_candidates is out of range",
                [FieldError("/substitute_candidates", f"must be between 1 and {_MAX_SUBSTITUTE_CANDIDATES}")],
            )
        s = t.organisation_settings
        async with self.transaction() as c:
            current = await self.get_settings(conn=c)
            values = {
                "substitution_policy": (substitution_policy or current.substitution_policy).value,
                "substitute_candidates": substitute_candidates or current.substitute_candidates,
                "updated_at": _now(),
            }
            res = await c.execute(s.update().where(s.c.settings_id == _SETTINGS_ID).values(**values))
            if res.rowcount == 0:
                try:
                    async with c.begin_nested():
                        await c.execute(s.insert().values(settings_id=_SETTINGS_ID, **values))
                except IntegrityError:  # a concurrent first PATCH inserted it: ours wins as an update
                    await c.execute(s.update().where(s.c.settings_id == _SETTINGS_ID).values(**values))
            return await self.get_settings(conn=c)

    # ------------------------------------------------------------------ scheduling operations: series

    async def cancel_occurrences(
        self, booking_id: str, session_id: str, *, following: bool = False, reason: str = ""
    ) -> tuple[Booking, list[Session], list[SessionId]]:
        """Cancel one occurrence of a series (a skip) or, with ``following``, it and every later one.

        Returns the booking, all its sessions, and the ids cancelled by this call. Cancelled sessions free their
        slots. Sessions already cancelled stay as they are, so repeating the call changes nothing and emits
        nothing. Skipping a session that has started is an ``InvalidStateError``; ``following`` leaves live and
        ended sessions alone ("later" is by occurrence index). A booking left with no session that is not
        cancelled is cancelled too. Emits ``booking.cancelled`` with ``scope`` ``occurrence`` or ``following``.
        """
        async with self.transaction() as c:
            booking = await _lock_booking(c, booking_id)
            sessions = await _sessions_of(c, [booking_id])
            pivot = _occurrence_of(booking_id, sessions, session_id)
            if not following and pivot.status in (SessionStatus.LIVE, SessionStatus.ENDED):
                raise InvalidStateError(f"session {session_id!r} is {pivot.status}; it can no longer be skipped")
            picked = [s for s in sessions if s.occurrence_index >= pivot.occurrence_index] if following else [pivot]
            doomed = [s.session_id for s in picked if s.status in MUTABLE_SESSION_STATUSES]
            if not doomed:
                return booking, sessions, []
            now = _now()
            await c.execute(t.occupancy.delete().where(t.occupancy.c.session_id.in_(doomed)))
            await c.execute(
                t.sessions.update()
                .where(t.sessions.c.session_id.in_(doomed))
                .values(status=SessionStatus.CANCELLED.value, updated_at=now)
            )
            left = [s for s in sessions if s.session_id not in doomed and s.status is not SessionStatus.CANCELLED]
            values: dict[str, Any] = {"updated_at": now}
            if not left:
                values["status"] = BookingStatus.CANCELLED.value
            await c.execute(t.bookings.update().where(t.bookings.c.booking_id == booking_id).values(**values))
            booking = await _load_booking(c, booking_id)
            sessions = await _sessions_of(c, [booking_id])
            await emit_event(
                c,
                "booking.cancelled",
                {
                    "booking": codec.booking_to_dict(booking),
                    "cancelled_session_ids": doomed,
                    "reason": reason,
                    "scope": "following" if following else "occurrence",
                },
                booking_id,
            )
        return booking, sessions, doomed

    async def move_occurrences(
        self, booking_id: str, moves: Sequence[OccurrenceMove], *, scope: str
    ) -> tuple[Booking, list[Session], list[tuple[Session, Session]]]:
        """Move sessions of one booking to new times, all or nothing; returns (booking, sessions, (old, new) pairs).

        Only ``scheduled`` and ``provisioned`` sessions can move (else ``InvalidStateError``). The moved sessions
        give up their occupancy and claim the new slots in the same transaction, so a clash is a
        ``SlotConflictError`` (409 naming the holder) and nothing changes. The booking's own ``start`` and
        ``rrule`` keep describing the series as booked. Emits ``booking.rescheduled`` with the first move's old
        and new times and every moved occurrence's.
        """
        if not moves:
            raise InvalidInputError("nothing to move")
        for move in moves:
            for moment in (move.start, move.end):
                if moment.tzinfo is None or int(moment.timestamp()) % _SLOT_SECONDS or moment.microsecond:
                    raise InvalidInputError(
                        f"session {move.session_id} would start or end off the {SLOT_MINUTES}-minute grid",
                        [FieldError("/start", f"must be a UTC time on a {SLOT_MINUTES}-minute boundary")],
                    )
            if move.end <= move.start:
                raise InvalidInputError(f"session {move.session_id} would end before it starts")
        for attempt in range(_CONFLICT_RETRIES):
            try:
                async with self.transaction() as c:
                    booking = await _lock_booking(c, booking_id)
                    if booking.status is BookingStatus.CANCELLED:
                        raise InvalidStateError(f"booking {booking_id!r} is cancelled; its occurrences cannot move")
                    sessions = await _sessions_of(c, [booking_id])
                    pairs: list[tuple[Session, Session]] = []
                    for move in moves:
                        old = _occurrence_of(booking_id, sessions, move.session_id)
                        if old.status not in MUTABLE_SESSION_STATUSES:
                            raise InvalidStateError(f"session {old.session_id!r} is {old.status} and cannot be moved")
                        pairs.append((old, replace(old, start=move.start, end=move.end)))
                    now = _now()
                    moved_ids = [old.session_id for old, _ in pairs]
                    await c.execute(t.occupancy.delete().where(t.occupancy.c.session_id.in_(moved_ids)))
                    for _, new in pairs:
                        await c.execute(
                            t.sessions.update()
                            .where(t.sessions.c.session_id == new.session_id)
                            .values(starts_at=new.start, ends_at=new.end, updated_at=now)
                        )
                    await _claim(c, [new for _, new in pairs])
                    await c.execute(
                        t.bookings.update().where(t.bookings.c.booking_id == booking_id).values(updated_at=now)
                    )
                    booking = await _load_booking(c, booking_id)
                    sessions = await _sessions_of(c, [booking_id])
                    first_old, first_new = pairs[0]
                    minutes = int((first_old.end - first_old.start).total_seconds()) // 60
                    await emit_event(
                        c,
                        "booking.rescheduled",
                        {
                            "booking": codec.booking_to_dict(booking),
                            "scope": scope,
                            "old": {"start": codec.iso(first_old.start), "duration_minutes": minutes},
                            "new": {"start": codec.iso(first_new.start), "duration_minutes": minutes},
                            "occurrences": [
                                {
                                    "session_id": old.session_id,
                                    "occurrence_index": old.occurrence_index,
                                    "old": {"start": codec.iso(old.start), "end": codec.iso(old.end)},
                                    "new": {"start": codec.iso(new.start), "end": codec.iso(new.end)},
                                }
                                for old, new in pairs
                            ],
                            "sessions": [codec.session_to_dict(s) for s in sessions],
                        },
                        booking_id,
                    )
                return booking, sessions, pairs
            except _ClaimRace:
                logger.debug("booking=%s attempt=%d occupancy race on a move, retrying", booking_id, attempt)
        raise SlotConflictError(PersonKind.INSTRUCTOR, "?", None)

    async def history_sessions(
        self,
        *,
        student_ids: Iterable[str],
        curriculum_units: Iterable[str],
        start: datetime,
        end: datetime,
    ) -> list[Session]:
        """Sessions that are not cancelled, starting in ``[start, end)``, with any of these students or units.

        The scheduling engine's continuity ranking (who taught this student, this curriculum unit) reads them.
        """
        students = list(set(student_ids))
        units = list(set(curriculum_units))
        who: sa.ColumnElement[bool] = t.sessions.c.session_id.in_(
            sa.select(t.session_students.c.session_id).where(t.session_students.c.student_id.in_(students))
        )
        if units:
            who = sa.or_(who, t.sessions.c.curriculum_unit.in_(units))
        cond = sa.and_(
            who,
            t.sessions.c.starts_at >= start,
            t.sessions.c.starts_at < end,
            t.sessions.c.status != SessionStatus.CANCELLED.value,
        )
        async with self.read() as c:
            return await _load_sessions(c, cond)

    # ------------------------------------------------------------------ scheduling operations: instructors

    async def reassign_sessions(
        self,
        reassignments: Sequence[Reassignment],
        *,
        reason: str,
        context: dict[str, Any] | None = None,
    ) -> tuple[list[InstructorChange], dict[SessionId, OrchestratorError]]:
        """Give sessions to other instructors; returns the committed changes and, per session, why one failed.

        Each session must still be ``scheduled`` or ``provisioned`` and held by ``from_instructor_id`` (a
        compare-and-set: a stale request fails with ``InvalidStateError``). The new instructor claims the
        session's slots in the database, so a clash fails that session with ``SlotConflictError`` naming the
        holder, however many replicas write at once. Sessions that pass are committed together (swaps between
        two instructors work); a failing one is dropped and the rest tried again. The old instructor's join links
        to the session are revoked. Emits ``session.instructor_changed`` per session with ``reason`` and
        ``context`` (e.g. the substitution or optimisation job behind it).
        """
        pending = {r.session_id: r for r in reassignments}
        failures: dict[SessionId, OrchestratorError] = {}
        races = 0
        while True:
            try:
                async with self.transaction() as c:
                    changes = await _reassign_batch(c, list(pending.values()), failures, reason, context or {})
                return changes, failures
            except _Refused as refused:
                failures[refused.session_id] = refused.error
            except _ClaimRace:
                races += 1
                if races > _CONFLICT_RETRIES:
                    raise SlotConflictError(PersonKind.INSTRUCTOR, "?", None) from None
            for session_id in failures:
                pending.pop(session_id, None)

    # ------------------------------------------------------------------ scheduling operations: substitutions

    async def record_substitution(
        self,
        draft: SubstitutionDraft,
        *,
        assign_to: InstructorId | None = None,
        exception_id: str | None = None,
    ) -> tuple[Substitution, InstructorChange | None]:
        """Store what happened to one session that lost its instructor.

        With ``assign_to`` the substitute takes the session in the same transaction (status ``assigned``; a clash
        raises and nothing is stored). Without, the substitution waits as ``proposed``; a session has at most one
        proposal open (another is an ``InvalidStateError``).
        """
        substitution_id = SubstitutionId(new_id("sbs"))
        for attempt in range(_CONFLICT_RETRIES):
            try:
                async with self.transaction() as c:
                    change: InstructorChange | None = None
                    now = _now()
                    if assign_to is not None:
                        failures: dict[SessionId, OrchestratorError] = {}
                        wanted = Reassignment(draft.session_id, draft.previous_instructor_id, assign_to)
                        changes = await _reassign_batch(
                            c, [wanted], failures, draft.trigger, {"substitution_id": substitution_id}
                        )
                        if failures:
                            raise failures[draft.session_id]
                        change = changes[0]
                    row = {
                        "substitution_id": substitution_id,
                        "session_id": draft.session_id,
                        "booking_id": draft.booking_id,
                        "open_session_id": None if change is not None else draft.session_id,
                        "previous_instructor_id": draft.previous_instructor_id,
                        "trigger": draft.trigger,
                        "reason": draft.reason[:500],
                        "policy": draft.policy.value,
                        "status": (SubstitutionStatus.ASSIGNED if change else SubstitutionStatus.PROPOSED).value,
                        "candidates": list(draft.candidates),
                        "alternatives": list(draft.alternatives),
                        "instructor_id": assign_to if change is not None else None,
                        "exception_id": exception_id,
                        "decision_reason": "",
                        "created_at": now,
                        "updated_at": now,
                        "decided_at": now if change is not None else None,
                    }
                    try:
                        async with c.begin_nested():
                            await c.execute(t.substitutions.insert().values(**row))
                    except IntegrityError:
                        raise InvalidStateError(
                            f"session {draft.session_id!r} already has an open substitution proposal"
                        ) from None
                    return await _load_substitution(c, substitution_id), change
            except _Refused as refused:
                raise refused.error from None
            except _ClaimRace:
                logger.debug("session=%s attempt=%d occupancy race, retrying", draft.session_id, attempt)
        raise SlotConflictError(PersonKind.INSTRUCTOR, str(assign_to), None)

    async def get_substitution(self, substitution_id: str) -> Substitution:
        async with self.read() as c:
            return await _load_substitution(c, substitution_id)

    async def list_substitutions(
        self,
        *,
        status: SubstitutionStatus | None = None,
        session_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Substitution]:
        """Substitutions, oldest first."""
        s = t.substitutions
        where: list[sa.ColumnElement[bool]] = []
        if status is not None:
            where.append(s.c.status == status.value)
        if session_id is not None:
            where.append(s.c.session_id == session_id)
        async with self.read() as c:
            rows, nxt = await _page_by_time(c, s, s.c.created_at, s.c.substitution_id, where, limit, cursor)
        return Page(tuple(_substitution(r) for r in rows), nxt)

    async def open_substitutions(self, session_ids: Iterable[str]) -> dict[SessionId, SubstitutionId]:
        """The open (proposed) substitution of each of these sessions that has one."""
        ids = list(set(session_ids))
        if not ids:
            return {}
        s = t.substitutions
        async with self.read() as c:
            rows = await c.execute(
                sa.select(s.c.open_session_id, s.c.substitution_id).where(s.c.open_session_id.in_(ids))
            )
            return {SessionId(r.open_session_id): SubstitutionId(r.substitution_id) for r in rows}

    async def confirm_substitution(
        self, substitution_id: str, instructor_id: InstructorId, *, reason: str = ""
    ) -> tuple[Substitution, InstructorChange]:
        """Give a proposed substitution's session to ``instructor_id``: one confirm wins, the session is re-claimed.

        ``InvalidStateError`` when the proposal is no longer open or the session moved on; ``SlotConflictError``
        when the substitute became busy. Resolves the proposal's ``no_substitute`` exception.
        """
        for attempt in range(_CONFLICT_RETRIES):
            try:
                async with self.transaction() as c:
                    sub = await _lock_substitution(c, substitution_id)
                    if sub.status is not SubstitutionStatus.PROPOSED:
                        raise InvalidStateError(f"substitution {substitution_id!r} is {sub.status}; it cannot change")
                    failures: dict[SessionId, OrchestratorError] = {}
                    wanted = Reassignment(sub.session_id, sub.previous_instructor_id, instructor_id)
                    changes = await _reassign_batch(
                        c, [wanted], failures, sub.trigger, {"substitution_id": sub.substitution_id}
                    )
                    if failures:
                        raise failures[sub.session_id]
                    now = _now()
                    await _decide_substitution(c, sub, SubstitutionStatus.CONFIRMED, instructor_id, reason, now)
                    return await _load_substitution(c, substitution_id), changes[0]
            except _Refused as refused:
                raise refused.error from None
            except _ClaimRace:
                logger.debug("substitution=%s attempt=%d occupancy race on confirm, retrying", substitution_id, attempt)
        raise SlotConflictError(PersonKind.INSTRUCTOR, instructor_id, None)

    async def decline_substitution(self, substitution_id: str, *, reason: str = "") -> Substitution:
        """Close a proposal without a substitute; the session keeps its instructor until someone acts."""
        async with self.transaction() as c:
            sub = await _lock_substitution(c, substitution_id)
            if sub.status is not SubstitutionStatus.PROPOSED:
                raise InvalidStateError(f"substitution {substitution_id!r} is {sub.status}; it cannot change")
            await _decide_substitution(c, sub, SubstitutionStatus.DECLINED, None, reason, _now())
            return await _load_substitution(c, substitution_id)

    # ------------------------------------------------------------------ scheduling operations: optimisation jobs

    async def create_optimization_job(
        self, *, week_start: datetime, time_limit_s: float, reassign: bool, owner: str
    ) -> OptimizationJobRecord:
        job_id = OptimizationJobId(new_id("opt"))
        now = _now()
        async with self.transaction() as c:
            await c.execute(
                t.optimization_jobs.insert().values(
                    job_id=job_id,
                    status=OptimizationStatus.QUEUED.value,
                    week_start=week_start,
                    time_limit_s=time_limit_s,
                    reassign=reassign,
                    owner=owner,
                    heartbeat_at=now,
                    cancel_requested=False,
                    progress={},
                    result=None,
                    error=None,
                    applied_at=None,
                    apply_report=None,
                    created_at=now,
                    updated_at=now,
                    started_at=None,
                    finished_at=None,
                )
            )
            return await _load_optimization_job(c, job_id)

    async def get_optimization_job(self, job_id: str) -> OptimizationJobRecord:
        async with self.read() as c:
            return await _load_optimization_job(c, job_id)

    async def update_optimization_job(
        self,
        job_id: str,
        *,
        owner: str,
        expect: Iterable[OptimizationStatus],
        status: OptimizationStatus | None = None,
        progress: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> OptimizationJobRecord | None:
        """The owner's heartbeat and state changes, as a compare-and-set on (owner, status in ``expect``).

        Returns the row after the change (its ``cancel_requested`` tells the owner to stop), or None when the
        row is no longer the owner's to change (it was failed as stale, or cancelled before it started).
        """
        now = _now()
        values: dict[str, Any] = {"heartbeat_at": now, "updated_at": now}
        if status is not None:
            values["status"] = status.value
            if status is OptimizationStatus.RUNNING:
                values["started_at"] = now
            elif status not in UNFINISHED_OPTIMIZATION_STATUSES:
                values["finished_at"] = now
        if progress is not None:
            values["progress"] = progress
        if result is not None:
            values["result"] = result
        if error is not None:
            values["error"] = error[:4000]
        j = t.optimization_jobs
        async with self.transaction() as c:
            res = await c.execute(
                j.update()
                .where(j.c.job_id == job_id, j.c.owner == owner, j.c.status.in_([s.value for s in expect]))
                .values(**values)
            )
            if res.rowcount == 0:
                return None
            return await _load_optimization_job(c, job_id)

    async def request_optimization_cancel(self, job_id: str) -> OptimizationJobRecord:
        """Ask the owner to stop; a job still queued is cancelled at once. Finished jobs: ``InvalidStateError``."""
        j = t.optimization_jobs
        now = _now()
        async with self.transaction() as c:
            job = await _load_optimization_job(c, job_id)
            if job.status not in UNFINISHED_OPTIMIZATION_STATUSES:
                raise InvalidStateError(f"optimisation {job_id!r} is {job.status}; there is nothing to cancel")
            values: dict[str, Any] = {"cancel_requested": True, "updated_at": now}
            if job.status is OptimizationStatus.QUEUED:
                values.update(status=OptimizationStatus.CANCELLED.value, finished_at=now)
            await c.execute(j.update().where(j.c.job_id == job_id, j.c.status == job.status.value).values(**values))
            return await _load_optimization_job(c, job_id)

    async def fail_stale_optimization_job(
        self, job_id: str, *, heartbeat_before: datetime, error: str
    ) -> OptimizationJobRecord:
        """Mark the job failed if it is unfinished and its owner has not beaten since ``heartbeat_before``."""
        j = t.optimization_jobs
        now = _now()
        async with self.transaction() as c:
            await c.execute(
                j.update()
                .where(
                    j.c.job_id == job_id,
                    j.c.status.in_([s.value for s in UNFINISHED_OPTIMIZATION_STATUSES]),
                    j.c.heartbeat_at < heartbeat_before,
                )
                .values(status=OptimizationStatus.FAILED.value, error=error, finished_at=now, updated_at=now)
            )
            return await _load_optimization_job(c, job_id)

    async def claim_optimization_apply(self, job_id: str) -> OptimizationJobRecord:
        """Take the right to apply a succeeded job's changes, once (``InvalidStateError`` otherwise)."""
        j = t.optimization_jobs
        now = _now()
        async with self.transaction() as c:
            job = await _load_optimization_job(c, job_id)
            if job.status is not OptimizationStatus.SUCCEEDED:
                raise InvalidStateError(f"optimisation {job_id!r} is {job.status}; only a succeeded job can be applied")
            res = await c.execute(
                j.update()
                .where(j.c.job_id == job_id, j.c.applied_at.is_(None))
                .values(applied_at=now, apply_report={"state": "applying"}, updated_at=now)
            )
            if res.rowcount == 0:
                raise InvalidStateError(f"optimisation {job_id!r} was already applied")
            return await _load_optimization_job(c, job_id)

    async def finish_optimization_apply(self, job_id: str, report: dict[str, Any]) -> OptimizationJobRecord:
        j = t.optimization_jobs
        async with self.transaction() as c:
            await c.execute(j.update().where(j.c.job_id == job_id).values(apply_report=report, updated_at=_now()))
            return await _load_optimization_job(c, job_id)


# ====================================================================== helpers


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook below issue BEGIN itself instead of pysqlite's implicit one.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front, so two writers queue on busy_timeout instead of
        # failing with SQLITE_BUSY when a reader tries to upgrade to a writer. Reads (Store.read) do not
        # need it: WAL gives them a snapshot without blocking or being blocked.
        if conn.get_execution_options().get("classmesh_read_only"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


async def _exists(c: AsyncConnection, column: sa.Column[Any], value: str) -> bool:
    return (await c.execute(sa.select(column).where(column == value))).first() is not None


async def _check_subjects(c: AsyncConnection, subject_ids: Iterable[str], pointer: str) -> None:
    wanted = set(subject_ids)
    if not wanted:
        return
    found = set(
        (await c.execute(sa.select(t.subjects.c.subject_id).where(t.subjects.c.subject_id.in_(wanted)))).scalars()
    )
    missing = sorted(wanted - found)
    if missing:
        raise InvalidInputError(
            "unknown subject: " + ", ".join(missing),
            [FieldError(pointer, f"subject {m!r} does not exist") for m in missing],
        )


async def _page_by_id(
    c: AsyncConnection,
    table: sa.Table,
    id_col: sa.Column[Any],
    limit: int,
    cursor: str | None,
    where: Sequence[sa.ColumnElement[bool]] = (),
) -> tuple[list[sa.Row[Any]], str | None]:
    query = sa.select(table).where(*where).order_by(id_col).limit(limit + 1)
    if cursor is not None:
        (after,) = codec.decode_cursor(cursor, 1)
        query = query.where(id_col > after)
    rows = list((await c.execute(query)).all())
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, codec.encode_cursor([getattr(rows[-1], id_col.name)])
    return rows, None


async def _page_by_time(
    c: AsyncConnection,
    table: sa.Table,
    time_col: sa.Column[Any],
    id_col: sa.Column[Any],
    where: Sequence[sa.ColumnElement[bool]],
    limit: int,
    cursor: str | None,
) -> tuple[list[sa.Row[Any]], str | None]:
    query = sa.select(table).where(*where).order_by(time_col, id_col).limit(limit + 1)
    if cursor is not None:
        after_time, after_id = codec.decode_cursor(cursor, 2)
        try:
            moment = datetime.fromisoformat(after_time)
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise InvalidInputError(
                "the cursor is not valid; pass the next_cursor value of a previous page unchanged",
                [FieldError("cursor", "not a cursor returned by this API")],
                status=400,
            )
        query = query.where(sa.or_(time_col > moment, sa.and_(time_col == moment, id_col > after_id)))
    rows = list((await c.execute(query)).all())
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        return rows, codec.encode_cursor([getattr(last, time_col.name).isoformat(), getattr(last, id_col.name)])
    return rows, None


def _instructor_row(i: Instructor) -> dict[str, Any]:
    return {
        "instructor_id": i.instructor_id,
        "name": i.name,
        "email": i.email,
        "time_zone": i.time_zone,
        "buffer_minutes": i.buffer_minutes,
        "max_sessions_per_day": i.max_sessions_per_day,
        "max_sessions_per_week": i.max_sessions_per_week,
        "preferred_student_ids": list(i.preferred_student_ids),
    }


async def _write_instructor_children(c: AsyncConnection, i: Instructor) -> None:
    if i.qualifications:
        await c.execute(
            t.instructor_qualifications.insert(),
            [
                {"instructor_id": i.instructor_id, "subject_id": s, "max_level": lv}
                for s, lv in i.qualifications.items()
            ],
        )
    if i.weekly_availability:
        await c.execute(
            t.instructor_availability.insert(),
            [
                {
                    "instructor_id": i.instructor_id,
                    "weekday": w.weekday,
                    "start_time": w.start,
                    "end_time": w.end,
                }
                for w in i.weekly_availability
            ],
        )
    if i.exceptions:
        await c.execute(
            t.instructor_exceptions.insert(),
            [
                {"instructor_id": i.instructor_id, "starts_at": e.start, "ends_at": e.end, "reason": e.reason}
                for e in i.exceptions
            ],
        )


async def _load_instructors(c: AsyncConnection, ids: list[str]) -> list[Instructor]:
    if not ids:
        return []
    rows = (
        await c.execute(
            sa.select(t.instructors)
            .where(t.instructors.c.instructor_id.in_(ids))
            .order_by(t.instructors.c.instructor_id)
        )
    ).all()
    quals: dict[str, dict[SubjectId, int]] = {}
    for r in await c.execute(
        sa.select(t.instructor_qualifications).where(t.instructor_qualifications.c.instructor_id.in_(ids))
    ):
        quals.setdefault(r.instructor_id, {})[SubjectId(r.subject_id)] = r.max_level
    avail: dict[str, list[WeeklyWindow]] = {}
    for r in await c.execute(
        sa.select(t.instructor_availability)
        .where(t.instructor_availability.c.instructor_id.in_(ids))
        .order_by(t.instructor_availability.c.availability_id)
    ):
        avail.setdefault(r.instructor_id, []).append(WeeklyWindow(r.weekday, r.start_time, r.end_time))
    excs: dict[str, list[AvailabilityException]] = {}
    for r in await c.execute(
        sa.select(t.instructor_exceptions)
        .where(t.instructor_exceptions.c.instructor_id.in_(ids))
        .order_by(t.instructor_exceptions.c.exception_id)
    ):
        excs.setdefault(r.instructor_id, []).append(AvailabilityException(r.starts_at, r.ends_at, r.reason))
    return [
        Instructor(
            instructor_id=InstructorId(r.instructor_id),
            name=r.name,
            email=r.email,
            time_zone=r.time_zone,
            qualifications=quals.get(r.instructor_id, {}),
            weekly_availability=tuple(avail.get(r.instructor_id, [])),
            exceptions=tuple(excs.get(r.instructor_id, [])),
            buffer_minutes=r.buffer_minutes,
            max_sessions_per_day=r.max_sessions_per_day,
            max_sessions_per_week=r.max_sessions_per_week,
            preferred_student_ids=tuple(StudentId(s) for s in r.preferred_student_ids),
        )
        for r in rows
    ]


def _student_row(s: Student) -> dict[str, Any]:
    return {
        "student_id": s.student_id,
        "name": s.name,
        "time_zone": s.time_zone,
        "country": s.country,
        "latitude": s.latitude,
        "longitude": s.longitude,
        "guardian_name": s.guardian_name,
        "guardian_email": s.guardian_email,
        "preferred_instructor_ids": list(s.preferred_instructor_ids),
    }


async def _write_student_levels(c: AsyncConnection, s: Student) -> None:
    if s.levels:
        await c.execute(
            t.student_levels.insert(),
            [{"student_id": s.student_id, "subject_id": k, "level": v} for k, v in s.levels.items()],
        )


async def _load_students(c: AsyncConnection, ids: list[str]) -> list[Student]:
    if not ids:
        return []
    rows = (
        await c.execute(sa.select(t.students).where(t.students.c.student_id.in_(ids)).order_by(t.students.c.student_id))
    ).all()
    levels: dict[str, dict[SubjectId, int]] = {}
    for r in await c.execute(sa.select(t.student_levels).where(t.student_levels.c.student_id.in_(ids))):
        levels.setdefault(r.student_id, {})[SubjectId(r.subject_id)] = r.level
    return [
        Student(
            student_id=StudentId(r.student_id),
            name=r.name,
            time_zone=r.time_zone,
            country=r.country,
            latitude=r.latitude,
            longitude=r.longitude,
            guardian_name=r.guardian_name,
            guardian_email=r.guardian_email,
            levels=levels.get(r.student_id, {}),
            preferred_instructor_ids=tuple(InstructorId(i) for i in r.preferred_instructor_ids),
        )
        for r in rows
    ]


def _check_occurrences(occurrences: Sequence[Occurrence], duration_minutes: int) -> None:
    if not occurrences:
        raise InvalidInputError("the booking has no occurrences")
    if duration_minutes <= 0 or duration_minutes % SLOT_MINUTES:
        raise InvalidInputError(
            f"duration_minutes must be a positive multiple of {SLOT_MINUTES}",
            [FieldError("/duration_minutes", f"must be a positive multiple of {SLOT_MINUTES}")],
        )
    for occ in occurrences:
        for moment in (occ.start, occ.end):
            if moment.tzinfo is None or int(moment.timestamp()) % _SLOT_SECONDS or moment.microsecond:
                raise InvalidInputError(
                    f"occurrence {occ.occurrence_index} starts or ends off the {SLOT_MINUTES}-minute grid",
                    [FieldError("/start", f"must be a UTC time on a {SLOT_MINUTES}-minute boundary")],
                )
        if occ.end <= occ.start:
            raise InvalidInputError(f"occurrence {occ.occurrence_index} ends before it starts")


async def _check_booking_refs(c: AsyncConnection, draft: BookingDraft, occurrences: Sequence[Occurrence]) -> None:
    errors: list[FieldError] = []
    if not await _exists(c, t.subjects.c.subject_id, draft.subject_id):
        errors.append(FieldError("/subject_id", f"subject {draft.subject_id!r} does not exist"))
    wanted_students = set(draft.student_ids)
    found_students = set(
        (
            await c.execute(sa.select(t.students.c.student_id).where(t.students.c.student_id.in_(wanted_students)))
        ).scalars()
    )
    for i, s in enumerate(draft.student_ids):
        if s not in found_students:
            errors.append(FieldError(f"/student_ids/{i}", f"student {s!r} does not exist"))
    wanted_instr = {o.instructor_id for o in occurrences} | ({draft.instructor_id} if draft.instructor_id else set())
    found_instr = set(
        (
            await c.execute(
                sa.select(t.instructors.c.instructor_id).where(t.instructors.c.instructor_id.in_(wanted_instr))
            )
        ).scalars()
    )
    for instr in sorted(wanted_instr - found_instr):
        errors.append(FieldError("/instructor_id", f"instructor {instr!r} does not exist"))
    if errors:
        raise InvalidInputError("the booking refers to records that do not exist", errors)


def _new_session(booking_id: BookingId, draft: BookingDraft, occ: Occurrence) -> Session:
    return Session(
        session_id=SessionId(new_id("ses")),
        booking_id=booking_id,
        occurrence_index=occ.occurrence_index,
        start=occ.start,
        end=occ.end,
        instructor_id=occ.instructor_id,
        student_ids=draft.student_ids,
        subject_id=draft.subject_id,
        status=SessionStatus.SCHEDULED,
        room_id=None,
        region=None,
        node_id=None,
        recording=draft.recording,
        curriculum_unit=draft.curriculum_unit,
    )


async def _insert_sessions(c: AsyncConnection, sessions: Sequence[Session], now: datetime) -> None:
    if not sessions:
        return
    await c.execute(
        t.sessions.insert(),
        [
            {
                "session_id": s.session_id,
                "booking_id": s.booking_id,
                "occurrence_index": s.occurrence_index,
                "starts_at": s.start,
                "ends_at": s.end,
                "instructor_id": s.instructor_id,
                "subject_id": s.subject_id,
                "status": s.status.value,
                "room_id": None,
                "region": None,
                "node_id": None,
                "recording": s.recording,
                "curriculum_unit": s.curriculum_unit,
                "created_at": now,
                "updated_at": now,
            }
            for s in sessions
        ],
    )
    await c.execute(
        t.session_students.insert(),
        [
            {"session_id": s.session_id, "student_id": st, "position": i}
            for s in sessions
            for i, st in enumerate(s.student_ids)
        ],
    )


async def _claim(c: AsyncConnection, sessions: Sequence[Session]) -> None:
    """Insert the occupancy rows of ``sessions``, after looking for a clash we can name.

    Instructors claim ``[start, end + buffer)`` (the buffer after each session), students
    ``[start, end)``. The rows are inserted in one globally sorted batch so concurrent transactions
    take row locks in the same order (no deadlocks on PostgreSQL). A unique violation here means another
    transaction won a race after our check: ``_ClaimRace`` makes the caller retry, and the retry's check
    names the winner.
    """
    if not sessions:
        return
    buffers = dict(
        (
            await c.execute(
                sa.select(t.instructors.c.instructor_id, t.instructors.c.buffer_minutes).where(
                    t.instructors.c.instructor_id.in_({s.instructor_id for s in sessions})
                )
            )
        ).all()
    )
    claims: dict[tuple[str, str, int], str] = {}
    for s in sessions:
        buffered_end = s.end + timedelta(minutes=int(buffers.get(s.instructor_id, 0)))
        people: list[tuple[str, str, datetime]] = [(PersonKind.INSTRUCTOR.value, s.instructor_id, buffered_end)]
        people += [(PersonKind.STUDENT.value, st, s.end) for st in s.student_ids]
        for kind, person, end in people:
            for slot in slot_range(s.start, end):
                key = (kind, person, slot)
                if key in claims and claims[key] != s.session_id:
                    raise SlotConflictError(kind, person, claims[key])
                claims[key] = s.session_id
    # Look for an existing holder first so the error can name the conflicting session.
    ranges: dict[tuple[str, str], tuple[int, int]] = {}
    for kind, person, slot in claims:
        lo, hi = ranges.get((kind, person), (slot, slot))
        ranges[(kind, person)] = (min(lo, slot), max(hi, slot))
    o = t.occupancy
    conds = [
        sa.and_(o.c.person_kind == kind, o.c.person_id == person, o.c.slot >= lo, o.c.slot <= hi)
        for (kind, person), (lo, hi) in ranges.items()
    ]
    for chunk_start in range(0, len(conds), 200):
        rows = await c.execute(
            sa.select(o.c.person_kind, o.c.person_id, o.c.slot, o.c.session_id).where(
                sa.or_(*conds[chunk_start : chunk_start + 200])
            )
        )
        for r in rows:
            if (r.person_kind, r.person_id, r.slot) in claims:
                raise SlotConflictError(r.person_kind, r.person_id, r.session_id)
    batch = [
        {"person_kind": k, "person_id": p, "slot": slot, "session_id": sid}
        for (k, p, slot), sid in sorted(claims.items())
    ]
    try:
        async with c.begin_nested():
            await c.execute(o.insert(), batch)
    except IntegrityError as exc:
        raise _ClaimRace() from exc
    except DBAPIError as exc:  # PostgreSQL deadlock / serialization failure: also just retry
        if getattr(exc.orig, "sqlstate", None) in ("40P01", "40001"):
            raise _ClaimRace() from exc
        raise


async def _lock_booking(c: AsyncConnection, booking_id: str) -> Booking:
    """Load a booking, taking its row lock on PostgreSQL (serialises changes to one booking)."""
    row = (
        await c.execute(
            sa.select(t.bookings.c.booking_id).where(t.bookings.c.booking_id == booking_id).with_for_update()
        )
    ).first()
    if row is None:
        raise NotFoundError("booking", booking_id)
    return await _load_booking(c, booking_id)


async def _load_booking(c: AsyncConnection, booking_id: str) -> Booking:
    r = (await c.execute(sa.select(t.bookings).where(t.bookings.c.booking_id == booking_id))).first()
    if r is None:
        raise NotFoundError("booking", booking_id)
    students = (
        await c.execute(
            sa.select(t.booking_students.c.student_id)
            .where(t.booking_students.c.booking_id == booking_id)
            .order_by(t.booking_students.c.position)
        )
    ).scalars()
    return Booking(
        booking_id=BookingId(r.booking_id),
        subject_id=SubjectId(r.subject_id),
        student_ids=tuple(StudentId(s) for s in students),
        instructor_id=None if r.instructor_id is None else InstructorId(r.instructor_id),
        start=r.starts_at,
        duration_minutes=r.duration_minutes,
        rrule=r.rrule,
        recording=bool(r.recording),
        notes=r.notes,
        status=BookingStatus(r.status),
        curriculum_unit=r.curriculum_unit,
        created_at=r.created_at,
        updated_at=r.updated_at,
    )


async def _sessions_of(c: AsyncConnection, booking_ids: list[str]) -> list[Session]:
    return await _load_sessions(c, t.sessions.c.booking_id.in_(booking_ids))


async def _load_sessions(c: AsyncConnection, cond: sa.ColumnElement[bool]) -> list[Session]:
    rows = (
        await c.execute(
            sa.select(t.sessions).where(cond).order_by(t.sessions.c.starts_at, t.sessions.c.occurrence_index)
        )
    ).all()
    if not rows:
        return []
    ids = [r.session_id for r in rows]
    members: dict[str, list[StudentId]] = {}
    for r in await c.execute(
        sa.select(t.session_students)
        .where(t.session_students.c.session_id.in_(ids))
        .order_by(t.session_students.c.session_id, t.session_students.c.position)
    ):
        members.setdefault(r.session_id, []).append(StudentId(r.student_id))
    return [
        Session(
            session_id=SessionId(r.session_id),
            booking_id=BookingId(r.booking_id),
            occurrence_index=r.occurrence_index,
            start=r.starts_at,
            end=r.ends_at,
            instructor_id=InstructorId(r.instructor_id),
            student_ids=tuple(members.get(r.session_id, [])),
            subject_id=SubjectId(r.subject_id),
            status=SessionStatus(r.status),
            room_id=r.room_id,
            region=r.region,
            node_id=r.node_id,
            recording=bool(r.recording),
            curriculum_unit=r.curriculum_unit,
        )
        for r in rows
    ]


async def _idempotency_record(c: AsyncConnection, api_key_id: str, key: str) -> IdempotencyRecord | None:
    r = (
        await c.execute(
            sa.select(t.idempotency_keys).where(
                t.idempotency_keys.c.api_key_id == api_key_id, t.idempotency_keys.c.key == key
            )
        )
    ).first()
    if r is None:
        return None
    return IdempotencyRecord(
        ApiKeyId(r.api_key_id), r.key, r.method_path, r.request_hash, r.response_status, r.response_body, r.created_at
    )


def _api_key(r: sa.Row[Any]) -> ApiKey:
    return ApiKey(ApiKeyId(r.key_id), r.name, tuple(r.scopes), r.created_at, r.revoked_at)


def _subscription(r: sa.Row[Any]) -> WebhookSubscription:
    return WebhookSubscription(
        SubscriptionId(r.subscription_id),
        r.url,
        r.secret,
        tuple(r.event_types),
        bool(r.active),
        r.created_at,
        r.updated_at,
    )


def _delivery(r: sa.Row[Any]) -> WebhookDelivery:
    return WebhookDelivery(
        delivery_id=r.delivery_id,
        event=OutboxEvent(EventId(r.event_id), r.event_type, r.payload, r.ordering_key, r.created_at),
        subscription_id=SubscriptionId(r.subscription_id),
        attempts=r.attempts,
        next_attempt_at=r.next_attempt_at,
        status=DeliveryStatus(r.status),
        last_error=r.last_error,
        delivered_at=r.delivered_at,
    )


async def _resolve_exceptions(c: AsyncConnection, cond: sa.ColumnElement[bool], now: datetime) -> int:
    """Resolve the unresolved exceptions matching ``cond``, each with its ``exception.resolved``; how many."""
    e = t.exceptions
    unresolved = sa.and_(cond, e.c.status != ExceptionStatus.RESOLVED.value)
    rows = (await c.execute(sa.select(e.c.exception_id).where(unresolved).with_for_update())).scalars().all()
    for exception_id in rows:
        await c.execute(
            e.update()
            .where(e.c.exception_id == exception_id)
            .values(status=ExceptionStatus.RESOLVED.value, resolved_at=now, updated_at=now)
        )
        row = (await c.execute(sa.select(e).where(e.c.exception_id == exception_id))).one()
        await _emit_exception(c, "exception.resolved", row, now)
    return len(rows)


async def _emit_exception(c: AsyncConnection, event_type: str, row: sa.Row[Any], now: datetime) -> None:
    """``exception.opened`` / ``exception.resolved``, in order per exception, for helpdesks and chat-ops."""
    await emit_event(c, event_type, {"exception": codec.exception_to_dict(_exception(row))}, row.exception_id, now=now)


def _exception(r: sa.Row[Any]) -> OperationalException:
    return OperationalException(
        exception_id=ExceptionId(r.exception_id),
        dedup_key=r.dedup_key,
        kind=r.kind,
        severity=r.severity,
        status=ExceptionStatus(r.status),
        owner=r.owner,
        subject_refs=r.subject_refs,
        details=r.details,
        occurrences=r.occurrences,
        snoozed_until=r.snoozed_until,
        created_at=r.created_at,
        updated_at=r.updated_at,
        resolved_at=r.resolved_at,
    )


def hash_secret(secret: str) -> str:
    """sha256 hex of an API key secret (what ``api_keys.secret_hash`` stores)."""
    return hashlib.sha256(secret.encode()).hexdigest()


# ====================================================================== helpers: scheduling operations

_SETTINGS_ID = "default"
_MAX_SUBSTITUTE_CANDIDATES = 20


class _Refused(Exception):
    """One session of a reassignment batch clashed in the database: roll back, drop it, try the rest again."""

    def __init__(self, session_id: SessionId, error: OrchestratorError) -> None:
        super().__init__(str(error))
        self.session_id = session_id
        self.error = error


def _occurrence_of(booking_id: str, sessions: Sequence[Session], session_id: str) -> Session:
    for s in sessions:
        if s.session_id == session_id:
            return s
    raise NotFoundError("occurrence", f"{session_id} of booking {booking_id}")


async def _reassign_batch(
    c: AsyncConnection,
    wanted: Sequence[Reassignment],
    failures: dict[SessionId, OrchestratorError],
    reason: str,
    context: dict[str, Any],
) -> list[InstructorChange]:
    """Reassign inside the caller's transaction; stale requests go to ``failures``, a clash raises ``_Refused``.

    Every session first gives up its occupancy, then each claims its slots with the new instructor, so that
    swaps between two instructors in one batch succeed.
    """
    if not wanted:
        return []
    ids = [r.session_id for r in wanted]
    # row locks (PostgreSQL), in a stable order, so concurrent batches over the same sessions queue up
    await c.execute(
        sa.select(t.sessions.c.session_id)
        .where(t.sessions.c.session_id.in_(ids))
        .order_by(t.sessions.c.session_id)
        .with_for_update()
    )
    current = {s.session_id: s for s in await _load_sessions(c, t.sessions.c.session_id.in_(ids))}
    known = set(
        (
            await c.execute(
                sa.select(t.instructors.c.instructor_id).where(
                    t.instructors.c.instructor_id.in_({r.to_instructor_id for r in wanted})
                )
            )
        ).scalars()
    )
    valid: list[tuple[Session, Session]] = []
    for r in wanted:
        s = current.get(r.session_id)
        if s is None:
            failures[r.session_id] = NotFoundError("session", r.session_id)
        elif r.to_instructor_id not in known:
            failures[r.session_id] = NotFoundError("instructor", r.to_instructor_id)
        elif s.status not in MUTABLE_SESSION_STATUSES:
            failures[r.session_id] = InvalidStateError(
                f"session {s.session_id!r} is {s.status}; its instructor can no longer change"
            )
        elif s.instructor_id != r.from_instructor_id:
            failures[r.session_id] = InvalidStateError(
                f"session {s.session_id!r} is now taught by {s.instructor_id!r}, not {r.from_instructor_id!r}"
            )
        elif r.to_instructor_id == s.instructor_id:
            failures[r.session_id] = InvalidStateError(
                f"session {s.session_id!r} is already taught by {s.instructor_id!r}"
            )
        else:
            valid.append((s, replace(s, instructor_id=r.to_instructor_id)))
    if not valid:
        return []
    now = _now()
    await c.execute(t.occupancy.delete().where(t.occupancy.c.session_id.in_([old.session_id for old, _ in valid])))
    for old, new in valid:
        await c.execute(
            t.sessions.update()
            .where(t.sessions.c.session_id == old.session_id)
            .values(instructor_id=new.instructor_id, updated_at=now)
        )
    for _, new in valid:
        try:
            await _claim(c, [new])
        except SlotConflictError as exc:
            raise _Refused(new.session_id, exc) from None
    changes: list[InstructorChange] = []
    links = t.join_links
    for old, new in valid:
        mine = sa.and_(
            links.c.session_id == old.session_id,
            links.c.participant_id == old.instructor_id,
            links.c.role == "instructor",
            links.c.revoked_at.is_(None),
        )
        revoked = tuple(replace(_join_link(r), revoked_at=now) for r in await c.execute(sa.select(links).where(mine)))
        if revoked:
            await c.execute(links.update().where(mine).values(revoked_at=now))
        await emit_event(
            c,
            "session.instructor_changed",
            {
                "session": codec.session_to_dict(new),
                "previous_instructor_id": old.instructor_id,
                "instructor_id": new.instructor_id,
                "reason": reason,
                **context,
                "revoked_join_links": len(revoked),
            },
            new.booking_id,
        )
        changes.append(InstructorChange(old, new, revoked))
    return changes


def _join_link(r: sa.Row[Any]) -> JoinLink:
    return JoinLink(r.jti, SessionId(r.session_id), r.participant_id, r.role, r.expires_at, r.created_at, r.revoked_at)


async def _lock_substitution(c: AsyncConnection, substitution_id: str) -> Substitution:
    row = (
        await c.execute(
            sa.select(t.substitutions.c.substitution_id)
            .where(t.substitutions.c.substitution_id == substitution_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        raise NotFoundError("substitution", substitution_id)
    return await _load_substitution(c, substitution_id)


async def _load_substitution(c: AsyncConnection, substitution_id: str) -> Substitution:
    r = (
        await c.execute(sa.select(t.substitutions).where(t.substitutions.c.substitution_id == substitution_id))
    ).first()
    if r is None:
        raise NotFoundError("substitution", substitution_id)
    return _substitution(r)


async def _decide_substitution(
    c: AsyncConnection,
    sub: Substitution,
    status: SubstitutionStatus,
    instructor_id: InstructorId | None,
    reason: str,
    now: datetime,
) -> None:
    await c.execute(
        t.substitutions.update()
        .where(t.substitutions.c.substitution_id == sub.substitution_id)
        .values(
            status=status.value,
            open_session_id=None,
            instructor_id=instructor_id,
            decision_reason=reason[:1000],
            decided_at=now,
            updated_at=now,
        )
    )
    if status is SubstitutionStatus.CONFIRMED and sub.exception_id is not None:
        await _resolve_exceptions(c, t.exceptions.c.exception_id == sub.exception_id, now)


def _substitution(r: sa.Row[Any]) -> Substitution:
    return Substitution(
        substitution_id=SubstitutionId(r.substitution_id),
        session_id=SessionId(r.session_id),
        booking_id=BookingId(r.booking_id),
        previous_instructor_id=InstructorId(r.previous_instructor_id),
        trigger=r.trigger,
        reason=r.reason,
        policy=SubstitutionPolicy(r.policy),
        status=SubstitutionStatus(r.status),
        candidates=tuple(r.candidates),
        alternatives=tuple(r.alternatives),
        instructor_id=None if r.instructor_id is None else InstructorId(r.instructor_id),
        exception_id=None if r.exception_id is None else ExceptionId(r.exception_id),
        decision_reason=r.decision_reason,
        created_at=r.created_at,
        updated_at=r.updated_at,
        decided_at=r.decided_at,
    )


async def _load_optimization_job(c: AsyncConnection, job_id: str) -> OptimizationJobRecord:
    r = (await c.execute(sa.select(t.optimization_jobs).where(t.optimization_jobs.c.job_id == job_id))).first()
    if r is None:
        raise NotFoundError("optimization", job_id)
    return OptimizationJobRecord(
        job_id=OptimizationJobId(r.job_id),
        status=OptimizationStatus(r.status),
        week_start=r.week_start,
        time_limit_s=float(r.time_limit_s),
        reassign=bool(r.reassign),
        owner=r.owner,
        heartbeat_at=r.heartbeat_at,
        cancel_requested=bool(r.cancel_requested),
        progress=dict(r.progress or {}),
        result=r.result,
        error=r.error,
        applied_at=r.applied_at,
        apply_report=r.apply_report,
        created_at=r.created_at,
        updated_at=r.updated_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
    )
