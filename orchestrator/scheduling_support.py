"""What the scheduling operations (series edits, substitutions, optimisation jobs) share.

- ``with_history``: a gate snapshot plus the students' and curriculum units' past sessions, so the engine's
  continuity ranking ("who taught this student / this unit") sees more than the days around the change;
- ``rule_violation``: the engine's violations as the API's ``RuleViolation`` (409 for clashes, 422 otherwise);
- ``announce``: after instructors changed, tell provisioning (``Notify``) and the join-link revoker.

Nothing here imports ``orchestrator.api``: the API builds these services, and hands them a ``Notify`` that turns
a change into its ``BookingChange`` for ``ApiHooks.on_booking_changed``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from orchestrator import scheduling as eng
from orchestrator.errors import RuleViolation
from orchestrator.scheduling_gate import CONFLICT_CODES, engine_session
from orchestrator.store import Store
from orchestrator.store.models import Booking, InstructorChange, JoinLink, Session

logger = logging.getLogger(__name__)

ChangeKind = Literal["created", "rescheduled", "cancelled", "updated"]


class Notify(Protocol):
    """Called after a committed booking change (the API wraps ``on_booking_changed`` and ``events_emitted``)."""

    async def __call__(
        self, kind: ChangeKind, booking: Booking, sessions: Sequence[Session], previous: Booking | None = None
    ) -> None: ...


LinksRevoked = Callable[[Sequence[JoinLink]], Awaitable[None]]
"""Called with the join links a change revoked (so the classroom can refuse them at once)."""

HISTORY = timedelta(days=180)


async def with_history(
    store: Store,
    org: eng.Organisation,
    *,
    student_ids: Iterable[str],
    curriculum_units: Iterable[str],
    before: datetime,
    history: timedelta = HISTORY,
) -> eng.Organisation:
    """``org`` plus the past sessions of these students and units (``history`` back from ``before``)."""
    past = await store.history_sessions(
        student_ids=student_ids, curriculum_units=curriculum_units, start=before - history, end=before
    )
    known = {s.session_id for s in org.sessions}
    extra = tuple(engine_session(s) for s in past if s.session_id not in known)
    if not extra:
        return org
    subjects = {s.subject_id for s in org.subjects}
    more = tuple(eng.Subject(s.subject_id, s.subject_id) for s in extra if s.subject_id not in subjects)
    return replace(org, sessions=org.sessions + extra, subjects=org.subjects + tuple(dict.fromkeys(more)))


def violation_dict(v: eng.Violation) -> dict[str, Any]:
    return {"rule": str(v.rule), "message": v.message, "conflicting_session_id": v.conflicting_session_id}


def rule_violation(violations: Sequence[eng.Violation], *, what: str) -> RuleViolation:
    """A refusal naming the first rule broken (409 for a clash, 422 otherwise) and listing all of them."""
    first = violations[0]
    return RuleViolation(
        code=str(first.rule),
        detail=f"{what}: {first.message}",
        status=409 if first.rule in CONFLICT_CODES else 422,
        conflicting_session_id=first.conflicting_session_id,
        extra={"violations": [violation_dict(v) for v in violations]},
    )


def candidate_dict(c: eng.RankedCandidate) -> dict[str, Any]:
    """A ranked substitute as stored in a proposal and shown by the API."""
    return {
        "instructor_id": c.instructor_id,
        "rank": c.rank,
        "tier": c.tier,
        "score": round(c.score, 4),
        "reasons": [
            {"factor": r.factor, "score": round(r.score, 4), "weight": r.weight, "detail": r.detail} for r in c.reasons
        ],
    }


async def announce(
    store: Store, changes: Sequence[InstructorChange], notify: Notify, links_revoked: LinksRevoked
) -> None:
    """Cascade committed instructor changes: one ``updated`` change per booking, then the revoked links."""
    if not changes:
        return
    for booking_id in dict.fromkeys(c.after.booking_id for c in changes):
        booking = await store.get_booking(booking_id)
        sessions = await store.sessions_of_booking(booking_id)
        await notify("updated", booking, sessions, previous=booking)
    revoked = [link for c in changes for link in c.revoked_links]
    if revoked:
        try:
            await links_revoked(revoked)
        except Exception:  # the revocation is committed in the store; the classroom check is best effort
            logger.exception("join links revoked in the store but not announced count=%d", len(revoked))
