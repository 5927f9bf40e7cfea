"""The occupancy rule shared with the store's ``occupancy`` table.

A session claims, in 5-minute buckets (``minutes since epoch // 5``):

* for its instructor every bucket of ``[start, end + buffer)``: the buffer *after* each session, so
  two sessions A then B of one instructor collide exactly when ``B.start < A.end + buffer``;
* for each student every bucket of ``[start, end)``.

The store inserts one row per claim with ``UNIQUE (person_kind, person_id, slot)``; a unique violation
is a double booking or a buffer violation.
"""

from __future__ import annotations

from datetime import UTC, datetime

from .errors import InvalidInputError
from .model import SLOT_MINUTES, Session

INSTRUCTOR = "instructor"
STUDENT = "student"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_minutes(moment: datetime) -> int:
    """Whole minutes since the Unix epoch of an aware datetime (seconds must be zero)."""
    if moment.tzinfo is None:
        raise InvalidInputError(f"naive datetime {moment.isoformat()} (times must be timezone-aware)")
    delta = moment - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    if seconds % 60 or delta.microseconds:
        raise InvalidInputError(f"{moment.isoformat()} is not on a whole minute")
    return seconds // 60


def occupancy_slots(session: Session, instructor_buffer_minutes: int) -> list[tuple[str, str, int]]:
    """Rows ``(person_kind, person_id, slot)`` the session claims; see the module docstring."""
    start = epoch_minutes(session.start)
    end = epoch_minutes(session.end)
    if start % SLOT_MINUTES or end % SLOT_MINUTES or end <= start:
        raise InvalidInputError(
            f"session {session.session_id}: start and end must be on {SLOT_MINUTES}-minute "
            "boundaries with end after start"
        )
    if instructor_buffer_minutes < 0:
        raise InvalidInputError("buffer minutes must not be negative")
    first = start // SLOT_MINUTES
    last_student = end // SLOT_MINUTES
    # A buffer that is not a multiple of 5 still blocks the bucket it reaches into.
    last_instructor = -(-(end + instructor_buffer_minutes) // SLOT_MINUTES)
    rows: list[tuple[str, str, int]] = []
    if session.instructor_id is not None:
        rows.extend((INSTRUCTOR, session.instructor_id, s) for s in range(first, last_instructor))
    for student_id in session.student_ids:
        rows.extend((STUDENT, student_id, s) for s in range(first, last_student))
    return rows
