"""JSON shapes of store values, shared by the REST API responses and webhook event payloads."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from orchestrator.errors import FieldError, InvalidInputError
from orchestrator.store.models import (
    Attendance,
    Booking,
    Instructor,
    OperationalException,
    Recording,
    Session,
    Student,
    Subject,
    WebhookSubscription,
)


def iso(value: datetime) -> str:
    """RFC 3339 UTC with a ``Z`` suffix and no sub-second noise unless present."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else iso(value)


def subject_to_dict(s: Subject) -> dict[str, Any]:
    return {"subject_id": s.subject_id, "name": s.name}


def instructor_to_dict(i: Instructor) -> dict[str, Any]:
    return {
        "instructor_id": i.instructor_id,
        "name": i.name,
        "email": i.email,
        "time_zone": i.time_zone,
        "qualifications": [{"subject_id": k, "max_level": v} for k, v in sorted(i.qualifications.items())],
        "weekly_availability": [{"weekday": w.weekday, "start": w.start, "end": w.end} for w in i.weekly_availability],
        "exceptions": [{"start": iso(e.start), "end": iso(e.end), "reason": e.reason} for e in i.exceptions],
        "buffer_minutes": i.buffer_minutes,
        "max_sessions_per_day": i.max_sessions_per_day,
        "max_sessions_per_week": i.max_sessions_per_week,
        "preferred_student_ids": list(i.preferred_student_ids),
    }


def student_to_dict(s: Student) -> dict[str, Any]:
    return {
        "student_id": s.student_id,
        "name": s.name,
        "time_zone": s.time_zone,
        "country": s.country,
        "latitude": s.latitude,
        "longitude": s.longitude,
        "guardian_name": s.guardian_name,
        "guardian_email": s.guardian_email,
        "levels": [{"subject_id": k, "level": v} for k, v in sorted(s.levels.items())],
        "preferred_instructor_ids": list(s.preferred_instructor_ids),
    }


def booking_to_dict(b: Booking) -> dict[str, Any]:
    return {
        "booking_id": b.booking_id,
        "subject_id": b.subject_id,
        "student_ids": list(b.student_ids),
        "instructor_id": b.instructor_id,
        "start": iso(b.start),
        "duration_minutes": b.duration_minutes,
        "rrule": b.rrule,
        "recording": b.recording,
        "notes": b.notes,
        "status": str(b.status),
        "curriculum_unit": b.curriculum_unit,
        "created_at": iso(b.created_at),
        "updated_at": iso(b.updated_at),
    }


def session_to_dict(s: Session) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "booking_id": s.booking_id,
        "occurrence_index": s.occurrence_index,
        "start": iso(s.start),
        "end": iso(s.end),
        "instructor_id": s.instructor_id,
        "student_ids": list(s.student_ids),
        "subject_id": s.subject_id,
        "status": str(s.status),
        "room_id": s.room_id,
        "region": s.region,
        "node_id": s.node_id,
        "recording": s.recording,
        "curriculum_unit": s.curriculum_unit,
    }


def attendance_to_dict(a: Attendance) -> dict[str, Any]:
    return {
        "participant_id": a.participant_id,
        "role": a.role,
        "joined_at": iso(a.joined_at),
        "left_at": iso_or_none(a.left_at),
    }


def recording_to_dict(r: Recording) -> dict[str, Any]:
    return {
        "recording_id": r.recording_id,
        "session_id": r.session_id,
        "status": r.status,
        "coverage": r.coverage,
        "gaps": [[a, b] for a, b in r.gaps],
        "files": list(r.files),
        "media_start": r.media_start,
        "media_end": r.media_end,
        "duration": r.duration,
        "size_bytes": r.size_bytes,
        "failovers": r.failovers,
        "details": r.details,
        "created_at": iso(r.created_at),
        "updated_at": iso(r.updated_at),
    }


def subscription_to_dict(s: WebhookSubscription, *, include_secret: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "subscription_id": s.subscription_id,
        "url": s.url,
        "event_types": list(s.event_types),
        "active": s.active,
        "created_at": iso(s.created_at),
        "updated_at": iso(s.updated_at),
    }
    if include_secret:
        out["secret"] = s.secret
    return out


def encode_cursor(values: list[str]) -> str:
    raw = json.dumps(values, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[str]:
    """Decode an opaque cursor made by :func:`encode_cursor`; anything else is a 400."""
    bad = InvalidInputError(
        "the cursor is not valid; pass the next_cursor value of a previous page unchanged",
        [FieldError("cursor", "not a cursor returned by this API")],
        status=400,
    )
    if len(cursor) > 1000:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(values, list) or len(values) != arity or not all(isinstance(v, str) for v in values):
        raise bad
    return values


def exception_to_dict(e: OperationalException) -> dict[str, Any]:
    return {
        "exception_id": e.exception_id,
        "kind": e.kind,
        "severity": e.severity,
        "status": e.status.value,
        "owner": e.owner,
        "subject_refs": e.subject_refs,
        "details": e.details,
        "occurrences": e.occurrences,
        "snoozed_until": iso_or_none(e.snoozed_until),
        "created_at": iso(e.created_at),
        "updated_at": iso(e.updated_at),
        "resolved_at": iso_or_none(e.resolved_at),
    }
