"""SeriesEditor: changes to single occurrences of a recurring booking, through the scheduling engine.

Operations: skip one occurrence, move one occurrence (``scope="this"``), move an occurrence and every later one
by the same wall-clock step in the series' anchor time zone (``scope="following"``), and cancel from an
occurrence on. Cancelling is always allowed; every moved occurrence is checked by the engine against the hard
rules (a scoped snapshot from ``SchedulingGate``, as for every booking write), conflicts are reported per
occurrence, and then nothing changes. The store commits a move together with its occupancy claims, so a
concurrent writer that takes a slot in between still gets refused by the database.

Each committed change emits its webhook in the same transaction (``booking.rescheduled`` with old and new times,
``booking.cancelled`` with the cancelled session ids) and is then announced to ``notify`` as a
booking change (``ApiHooks.on_booking_changed``) so provisioning (rooms), recordings and notifications follow.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Literal

from orchestrator import metrics
from orchestrator import scheduling as eng
from orchestrator.errors import FieldError, InvalidInputError, InvalidStateError, NotFoundError, RuleViolation
from orchestrator.scheduling_gate import CONFLICT_CODES, SchedulingGate
from orchestrator.scheduling_support import Notify, violation_dict
from orchestrator.store import Store
from orchestrator.store.models import (
    MUTABLE_SESSION_STATUSES,
    SLOT_MINUTES,
    Booking,
    BookingStatus,
    OccurrenceMove,
    Session,
    SessionId,
    SessionStatus,
)

logger = logging.getLogger(__name__)

Scope = Literal["this", "following"]


class SeriesEditor:
    def __init__(self, store: Store, gate: SchedulingGate, notify: Notify) -> None:
        self._store = store
        self._gate = gate
        self._notify = notify

    async def skip(self, booking_id: str, session_id: str, *, reason: str = "") -> tuple[Booking, list[Session]]:
        """Cancel one occurrence; a skipped occurrence is a cancelled session (repeating it changes nothing)."""
        return await self._cancel(booking_id, session_id, following=False, reason=reason)

    async def cancel_from(self, booking_id: str, session_id: str, *, reason: str = "") -> tuple[Booking, list[Session]]:
        """Cancel an occurrence and every later one (by occurrence index) that has not started."""
        return await self._cancel(booking_id, session_id, following=True, reason=reason)

    async def _cancel(
        self, booking_id: str, session_id: str, *, following: bool, reason: str
    ) -> tuple[Booking, list[Session]]:
        operation = "cancel_following" if following else "skip"
        booking, sessions, cancelled = await self._store.cancel_occurrences(
            booking_id, session_id, following=following, reason=reason
        )
        metrics.SERIES_CHANGES.labels(operation, "changed" if cancelled else "unchanged").inc()
        if cancelled:
            logger.info("booking=%s session=%s %s cancelled=%d", booking_id, session_id, operation, len(cancelled))
            whole = booking.status is BookingStatus.CANCELLED
            kind: Literal["cancelled", "updated"] = "cancelled" if whole else "updated"
            await self._notify(kind, booking, sessions)
        return booking, sessions

    async def move(
        self, booking_id: str, session_id: str, start: datetime, *, scope: Scope = "this"
    ) -> tuple[Booking, list[Session]]:
        """Move one occurrence, or it and every later one, to ``start`` (the later ones by the same local step)."""
        operation = f"move_{scope}"
        if start.second or start.microsecond or start.minute % SLOT_MINUTES:
            raise InvalidInputError(
                "the new start is off the grid",
                [FieldError("/start", f"must be on a {SLOT_MINUTES}-minute boundary with zero seconds")],
            )
        booking = await self._store.get_booking(booking_id)
        sessions = await self._store.sessions_of_booking(booking_id)
        pivot = next((s for s in sessions if s.session_id == session_id), None)
        if pivot is None:
            raise NotFoundError("occurrence", f"{session_id} of booking {booking_id}")
        if booking.status is BookingStatus.CANCELLED:
            raise InvalidStateError(f"booking {booking_id!r} is cancelled; its occurrences cannot move")
        if scope == "this":
            moving = [pivot]
        else:
            moving = [
                s
                for s in sessions
                if s.occurrence_index >= pivot.occurrence_index and s.status is not SessionStatus.CANCELLED
            ]
        for s in moving:
            if s.status not in MUTABLE_SESSION_STATUSES:
                raise InvalidStateError(f"session {s.session_id!r} is {s.status} and cannot be moved")
        if start == pivot.start:
            metrics.SERIES_CHANGES.labels(operation, "unchanged").inc()
            return booking, sessions
        shift = abs(start - pivot.start)
        org = await self._gate.snapshot(
            instructor_ids={s.instructor_id for s in moving},
            student_ids=booking.student_ids,
            start=min(min(s.start for s in moving), start) - timedelta(days=1),
            end=max(s.end for s in moving) + shift + timedelta(days=1),
        )
        plan = await asyncio.to_thread(_plan_move, org, booking_id, pivot.occurrence_index, start, scope)
        if plan.conflicts:
            metrics.SERIES_CHANGES.labels(operation, "refused").inc()
            raise _conflicts(plan)
        moves = [
            OccurrenceMove(SessionId(o.session.session_id), o.session.start, o.session.end) for o in plan.occurrences
        ]
        before = booking
        booking, sessions, pairs = await self._store.move_occurrences(booking_id, moves, scope=scope)
        metrics.SERIES_CHANGES.labels(operation, "changed").inc()
        logger.info("booking=%s session=%s %s moved=%d", booking_id, session_id, operation, len(pairs))
        await self._notify("rescheduled", booking, sessions, previous=before)
        return booking, sessions


def _plan_move(org: eng.Organisation, booking_id: str, index: int, start: datetime, scope: Scope) -> eng.SeriesPlan:
    """The engine's check of the move (on a worker thread: building the index is CPU work)."""
    engine = eng.Scheduler(org)
    try:
        if scope == "this":
            return engine.move_occurrence(eng.BookingId(booking_id), index, start)
        return engine.move_following(eng.BookingId(booking_id), index, start)
    except eng.UnknownEntityError as exc:
        raise InvalidInputError(f"the series cannot be checked: {exc}") from None
    except eng.InvalidInputError as exc:
        raise RuleViolation(code="invalid_time", detail=str(exc), status=422) from None


def _conflicts(plan: eng.SeriesPlan) -> RuleViolation:
    """Per occurrence: the rules it breaks and the session it clashes with; the first one names the problem."""
    by_index = {o.occurrence.index: o for o in plan.occurrences}
    conflicts = plan.conflicts
    first_index = min(conflicts)
    first = conflicts[first_index][0]
    per_occurrence = {
        str(i): [{**violation_dict(v), "session_id": by_index[i].session.session_id} for v in vs]
        for i, vs in sorted(conflicts.items())
    }
    more = f" ({len(conflicts)} occurrences conflict)" if len(conflicts) > 1 else ""
    return RuleViolation(
        code=str(first.rule),
        detail=f"occurrence {first_index} (session {by_index[first_index].session.session_id}): {first.message}{more}",
        status=409 if first.rule in CONFLICT_CODES else 422,
        conflicting_session_id=first.conflicting_session_id,
        extra={"occurrences": per_occurrence},
    )
