"""Handlers of the booking REST API and the ``OPERATIONS`` table that declares them."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import available_timezones

from aiohttp import web

from orchestrator.api.hooks import BookingChange, issue_join_link
from orchestrator.api.operations import PAGING, Call, Operation, QueryParam
from orchestrator.api.scheduling_services import SCHEDULING
from orchestrator.api.schemas import DATETIME, ID
from orchestrator.api.validation import parse_datetime
from orchestrator.errors import FieldError, InvalidInputError, InvalidStateError
from orchestrator.store import codec
from orchestrator.store.models import (
    SLOT_MINUTES,
    AvailabilityException,
    Booking,
    BookingDraft,
    BookingId,
    BookingStatus,
    Instructor,
    InstructorId,
    Session,
    SessionStatus,
    Student,
    StudentId,
    Subject,
    SubjectId,
    WeeklyWindow,
    new_id,
)
from orchestrator.webhooks import new_secret

logger = logging.getLogger(__name__)


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body, separators=(",", ":")),
        content_type="application/json",
        headers=headers,
    )


def page(items: list[dict[str, Any]], next_cursor: str | None) -> web.Response:
    return ok({"items": items, "next_cursor": next_cursor})


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _check_time_zone(tz: str, pointer: str, errors: list[FieldError]) -> None:
    if tz not in _zones():
        errors.append(FieldError(pointer, f"{tz!r} is not an IANA time zone name (e.g. Europe/Berlin)"))


def _raise_if(errors: list[FieldError], what: str) -> None:
    if errors:
        raise InvalidInputError(f"the {what} is invalid", errors)


def _on_grid(moment: datetime, pointer: str, errors: list[FieldError]) -> None:
    if moment.second or moment.microsecond or moment.minute % SLOT_MINUTES:
        errors.append(FieldError(pointer, f"must be on a {SLOT_MINUTES}-minute boundary with zero seconds"))


def _when(value: str) -> datetime:
    parsed = parse_datetime(value)
    assert parsed is not None, "validated by the schema"
    return parsed


def _minutes(value: str) -> int:
    hours, minutes = value.split(":")
    return int(hours) * 60 + int(minutes)


# ---------------------------------------------------------------------- subjects


async def create_subject(call: Call) -> web.Response:
    subject = Subject(SubjectId(call.body.get("subject_id") or new_id("sub")), call.body["name"])
    await call.store.create_subject(subject)
    return ok(codec.subject_to_dict(subject), 201, {"Location": f"subjects/{subject.subject_id}"})


async def list_subjects(call: Call) -> web.Response:
    p = await call.store.list_subjects(limit=call.query["limit"], cursor=call.query.get("cursor"))
    return page([codec.subject_to_dict(s) for s in p.items], p.next_cursor)


async def get_subject(call: Call) -> web.Response:
    return ok(codec.subject_to_dict(await call.store.get_subject(call.path["subject_id"])))


async def patch_subject(call: Call) -> web.Response:
    subject = Subject(SubjectId(call.path["subject_id"]), call.body["name"])
    await call.store.update_subject(subject)
    return ok(codec.subject_to_dict(subject))


# ---------------------------------------------------------------------- instructors


def _instructor_from(body: dict[str, Any], base: Instructor) -> Instructor:
    errors: list[FieldError] = []
    inst = base
    for key in (
        "name",
        "email",
        "time_zone",
        "buffer_minutes",
        "max_sessions_per_day",
        "max_sessions_per_week",
    ):
        if key in body:
            inst = replace(inst, **{key: body[key]})
    if "time_zone" in body:
        _check_time_zone(body["time_zone"], "/time_zone", errors)
    if "buffer_minutes" in body and body["buffer_minutes"] % SLOT_MINUTES:
        errors.append(FieldError("/buffer_minutes", f"must be a multiple of {SLOT_MINUTES}"))
    if "qualifications" in body:
        quals: dict[SubjectId, int] = {}
        for i, q in enumerate(body["qualifications"]):
            if q["subject_id"] in quals:
                errors.append(FieldError(f"/qualifications/{i}/subject_id", "subject listed twice"))
            quals[SubjectId(q["subject_id"])] = q["max_level"]
        inst = replace(inst, qualifications=quals)
    if "weekly_availability" in body:
        windows = []
        for i, w in enumerate(body["weekly_availability"]):
            if w["start"] == "24:00" or _minutes(w["start"]) >= _minutes(w["end"]):
                errors.append(FieldError(f"/weekly_availability/{i}", "start must be before end"))
            windows.append(WeeklyWindow(w["weekday"], w["start"], w["end"]))
        inst = replace(inst, weekly_availability=tuple(windows))
    if "exceptions" in body:
        excs = []
        for i, x in enumerate(body["exceptions"]):
            start, end = _when(x["start"]), _when(x["end"])
            if end <= start:
                errors.append(FieldError(f"/exceptions/{i}", "end must be after start"))
            excs.append(AvailabilityException(start, end, x.get("reason", "")))
        inst = replace(inst, exceptions=tuple(excs))
    if "preferred_student_ids" in body:
        inst = replace(inst, preferred_student_ids=tuple(StudentId(s) for s in body["preferred_student_ids"]))
    _raise_if(errors, "instructor")
    return inst


async def create_instructor(call: Call) -> web.Response:
    body = call.body
    base = Instructor(
        InstructorId(body.get("instructor_id") or new_id("ins")),
        body["name"],
        body["email"],
        body["time_zone"],
    )
    inst = await call.store.create_instructor(_instructor_from(body, base))
    return ok(codec.instructor_to_dict(inst), 201, {"Location": f"instructors/{inst.instructor_id}"})


async def list_instructors(call: Call) -> web.Response:
    p = await call.store.list_instructors(limit=call.query["limit"], cursor=call.query.get("cursor"))
    return page([codec.instructor_to_dict(i) for i in p.items], p.next_cursor)


async def get_instructor(call: Call) -> web.Response:
    return ok(codec.instructor_to_dict(await call.store.get_instructor(call.path["instructor_id"])))


async def patch_instructor(call: Call) -> web.Response:
    current = await call.store.get_instructor(call.path["instructor_id"])
    inst = await call.store.replace_instructor(_instructor_from(call.body, current))
    if "exceptions" in call.body:  # a new leave over booked sessions: they get substitutes (per the policy)
        await call.request.app[SCHEDULING].leave_recorded(current, inst)
    return ok(codec.instructor_to_dict(inst))


# ---------------------------------------------------------------------- students


def _student_from(body: dict[str, Any], base: Student) -> Student:
    errors: list[FieldError] = []
    st = base
    for key in ("name", "time_zone", "country", "latitude", "longitude", "guardian_name", "guardian_email"):
        if key in body:
            st = replace(st, **{key: body[key]})
    if "time_zone" in body:
        _check_time_zone(body["time_zone"], "/time_zone", errors)
    if "levels" in body:
        levels: dict[SubjectId, int] = {}
        for i, lv in enumerate(body["levels"]):
            if lv["subject_id"] in levels:
                errors.append(FieldError(f"/levels/{i}/subject_id", "subject listed twice"))
            levels[SubjectId(lv["subject_id"])] = lv["level"]
        st = replace(st, levels=levels)
    if "preferred_instructor_ids" in body:
        st = replace(st, preferred_instructor_ids=tuple(InstructorId(i) for i in body["preferred_instructor_ids"]))
    if (st.latitude is None) != (st.longitude is None):
        errors.append(FieldError("/latitude", "latitude and longitude go together"))
    if st.country is None and st.latitude is None:
        errors.append(FieldError("/country", "give a country or latitude and longitude (used for placement)"))
    _raise_if(errors, "student")
    return st


async def create_student(call: Call) -> web.Response:
    body = call.body
    base = Student(StudentId(body.get("student_id") or new_id("stu")), body["name"], body["time_zone"])
    st = await call.store.create_student(_student_from(body, base))
    return ok(codec.student_to_dict(st), 201, {"Location": f"students/{st.student_id}"})


async def list_students(call: Call) -> web.Response:
    p = await call.store.list_students(limit=call.query["limit"], cursor=call.query.get("cursor"))
    return page([codec.student_to_dict(s) for s in p.items], p.next_cursor)


async def get_student(call: Call) -> web.Response:
    return ok(codec.student_to_dict(await call.store.get_student(call.path["student_id"])))


async def patch_student(call: Call) -> web.Response:
    current = await call.store.get_student(call.path["student_id"])
    st = await call.store.replace_student(_student_from(call.body, current))
    return ok(codec.student_to_dict(st))


# ---------------------------------------------------------------------- bookings


def _booking_detail(booking: Booking, sessions: list[Session]) -> dict[str, Any]:
    return {**codec.booking_to_dict(booking), "sessions": [codec.session_to_dict(s) for s in sessions]}


def _check_times(start: datetime, duration: int) -> None:
    errors: list[FieldError] = []
    _on_grid(start, "/start", errors)
    if duration % SLOT_MINUTES:
        errors.append(FieldError("/duration_minutes", f"must be a multiple of {SLOT_MINUTES}"))
    _raise_if(errors, "booking")


async def _notify(call: Call, change: BookingChange) -> None:
    call.hooks.events_emitted()
    try:
        await call.hooks.on_booking_changed(change)
    except Exception:  # the change is committed; provisioning catches up from the store
        logger.exception("booking=%s on_booking_changed hook failed kind=%s", change.booking.booking_id, change.kind)


def draft_from_body(body: dict[str, Any], booking_id: BookingId | None = None) -> BookingDraft:
    """A validated ``BookingCreate`` body as a draft (for booking it, or for asking who could take it)."""
    start = _when(body["start"])
    _check_times(start, body["duration_minutes"])
    return BookingDraft(
        subject_id=SubjectId(body["subject_id"]),
        student_ids=tuple(StudentId(s) for s in body["student_ids"]),
        start=start,
        duration_minutes=body["duration_minutes"],
        instructor_id=InstructorId(body["instructor_id"]) if body.get("instructor_id") else None,
        rrule=body.get("rrule") or None,
        recording=body.get("recording", False),
        notes=body.get("notes", ""),
        curriculum_unit=body.get("curriculum_unit"),
        booking_id=booking_id,
    )


async def create_booking(call: Call) -> web.Response:
    draft = draft_from_body(call.body, BookingId(new_id("bkg")))
    occurrences = await call.hooks.validate_and_assign(draft)
    booking, sessions = await call.store.create_booking(draft, occurrences)
    await _notify(call, BookingChange("created", booking, tuple(sessions)))
    return ok(_booking_detail(booking, sessions), 201, {"Location": f"bookings/{booking.booking_id}"})


async def list_bookings(call: Call) -> web.Response:
    q = call.query
    p = await call.store.list_bookings(
        limit=q["limit"],
        cursor=q.get("cursor"),
        status=BookingStatus(q["status"]) if "status" in q else None,
        student_id=q.get("student_id"),
        instructor_id=q.get("instructor_id"),
    )
    return page([codec.booking_to_dict(b) for b in p.items], p.next_cursor)


async def get_booking(call: Call) -> web.Response:
    booking = await call.store.get_booking(call.path["booking_id"])
    return ok(_booking_detail(booking, await call.store.sessions_of_booking(booking.booking_id)))


async def patch_booking(call: Call) -> web.Response:
    body = call.body
    booking_id = call.path["booking_id"]
    booking = await call.store.get_booking(booking_id)
    if booking.status is BookingStatus.CANCELLED:
        raise InvalidStateError(f"booking {booking_id!r} is cancelled and cannot be changed")
    moves = {"start", "duration_minutes", "instructor_id"} & body.keys()
    if moves:
        start = _when(body["start"]) if "start" in body else booking.start
        duration = body.get("duration_minutes", booking.duration_minutes)
        _check_times(start, duration)
        instructor = body["instructor_id"] if "instructor_id" in body else booking.instructor_id
        draft = BookingDraft(
            subject_id=booking.subject_id,
            student_ids=booking.student_ids,
            start=start,
            duration_minutes=duration,
            instructor_id=InstructorId(instructor) if instructor else None,
            rrule=booking.rrule,
            recording=booking.recording,
            notes=booking.notes,
            curriculum_unit=booking.curriculum_unit,
            booking_id=booking.booking_id,
        )
        occurrences = await call.hooks.validate_and_assign(draft)
        old, booking, sessions = await call.store.reschedule_booking(booking_id, draft, occurrences)
        await _notify(call, BookingChange("rescheduled", booking, tuple(sessions), previous=old))
    details = {k: body[k] for k in ("notes", "recording", "curriculum_unit") if k in body}
    if details:
        before = booking
        booking = await call.store.update_booking_details(booking_id, **details)
        if not moves:
            sessions = await call.store.sessions_of_booking(booking_id)
            await _notify(call, BookingChange("updated", booking, tuple(sessions), previous=before))
    return ok(_booking_detail(booking, await call.store.sessions_of_booking(booking_id)))


async def cancel_booking(call: Call) -> web.Response:
    if call.body.get("from_session_id"):  # this occurrence and the later ones only
        booking, sessions = await call.request.app[SCHEDULING].series.cancel_from(
            call.path["booking_id"], call.body["from_session_id"], reason=call.body.get("reason", "")
        )
        return ok(_booking_detail(booking, sessions))
    booking, changed = await call.store.cancel_booking(call.path["booking_id"], reason=call.body.get("reason", ""))
    sessions = await call.store.sessions_of_booking(booking.booking_id)
    if changed:
        await _notify(call, BookingChange("cancelled", booking, tuple(sessions)))
    return ok(_booking_detail(booking, sessions))


# ---------------------------------------------------------------------- sessions


async def list_sessions(call: Call) -> web.Response:
    q = call.query
    p = await call.store.list_sessions(
        limit=q["limit"],
        cursor=q.get("cursor"),
        booking_id=q.get("booking_id"),
        instructor_id=q.get("instructor_id"),
        student_id=q.get("student_id"),
        status=SessionStatus(q["status"]) if "status" in q else None,
        start_from=q.get("start_from"),
        start_before=q.get("start_before"),
    )
    return page([codec.session_to_dict(s) for s in p.items], p.next_cursor)


async def get_session(call: Call) -> web.Response:
    session = await call.store.get_session(call.path["session_id"])
    attendance = await call.store.attendance_of(session.session_id)
    recording = await call.store.recording_of(session.session_id)
    return ok(
        {
            **codec.session_to_dict(session),
            "attendance": [codec.attendance_to_dict(a) for a in attendance],
            "recording_info": None if recording is None else codec.recording_to_dict(recording),
        }
    )


async def create_join_link(call: Call) -> web.Response:
    session = await call.store.get_session(call.path["session_id"])
    participant, role = call.body["participant_id"], call.body["role"]
    if session.status in (SessionStatus.CANCELLED, SessionStatus.ENDED):
        raise InvalidStateError(f"session {session.session_id!r} is {session.status}; no one can join it")
    if role == "instructor" and participant != session.instructor_id:
        raise InvalidInputError(
            "only the session's instructor can join as instructor",
            [FieldError("/participant_id", f"the instructor of this session is {session.instructor_id!r}")],
        )
    if role == "student" and participant not in session.student_ids:
        raise InvalidInputError(
            "this student is not in the session",
            [FieldError("/participant_id", f"{participant!r} is not one of the session's students")],
        )
    link = await issue_join_link(call.store, call.hooks.mint_join_link, session, participant, role)
    return ok({"url": link.url, "token": link.token, "expires_at": codec.iso(link.expires_at)}, 201)


# ---------------------------------------------------------------------- webhook subscriptions


async def create_webhook(call: Call) -> web.Response:
    sub = await call.store.create_subscription(call.body["url"], call.body.get("event_types", []), new_secret())
    return ok(
        codec.subscription_to_dict(sub, include_secret=True),
        201,
        {"Location": f"webhooks/{sub.subscription_id}"},
    )


async def list_webhooks(call: Call) -> web.Response:
    p = await call.store.list_subscriptions(limit=call.query["limit"], cursor=call.query.get("cursor"))
    return page([codec.subscription_to_dict(s, include_secret=False) for s in p.items], p.next_cursor)


async def get_webhook(call: Call) -> web.Response:
    sub = await call.store.get_subscription(call.path["subscription_id"])
    return ok(codec.subscription_to_dict(sub, include_secret=False))


async def patch_webhook(call: Call) -> web.Response:
    sub = await call.store.update_subscription(
        call.path["subscription_id"],
        url=call.body.get("url"),
        event_types=call.body.get("event_types"),
        active=call.body.get("active"),
    )
    return ok(codec.subscription_to_dict(sub, include_secret=False))


async def delete_webhook(call: Call) -> web.Response:
    await call.store.delete_subscription(call.path["subscription_id"])
    return web.Response(status=204)


# ---------------------------------------------------------------------- the table

_STATUS_B = QueryParam("status", {"type": "string", "enum": ["active", "cancelled"]})
_STATUS_S = QueryParam("status", {"type": "string", "enum": ["scheduled", "provisioned", "live", "ended", "cancelled"]})


def _q(name: str) -> QueryParam:
    return QueryParam(name, ID, f"only items with this {name}")


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/subjects",
        "createSubject",
        "Create a subject",
        "directory",
        "directory:write",
        create_subject,
        "Subject",
        201,
        "SubjectCreate",
        errors=(409,),
    ),
    Operation(
        "GET",
        "/subjects",
        "listSubjects",
        "List subjects",
        "directory",
        "directory:read",
        list_subjects,
        "SubjectPage",
        query=PAGING,
    ),
    Operation(
        "GET",
        "/subjects/{subject_id}",
        "getSubject",
        "Get a subject",
        "directory",
        "directory:read",
        get_subject,
        "Subject",
    ),
    Operation(
        "PATCH",
        "/subjects/{subject_id}",
        "updateSubject",
        "Rename a subject",
        "directory",
        "directory:write",
        patch_subject,
        "Subject",
        request="SubjectPatch",
    ),
    Operation(
        "POST",
        "/instructors",
        "createInstructor",
        "Create an instructor",
        "directory",
        "directory:write",
        create_instructor,
        "Instructor",
        201,
        "InstructorCreate",
        errors=(409,),
        description="Availability windows are in the instructor's own time zone; exceptions are UTC.",
    ),
    Operation(
        "GET",
        "/instructors",
        "listInstructors",
        "List instructors",
        "directory",
        "directory:read",
        list_instructors,
        "InstructorPage",
        query=PAGING,
    ),
    Operation(
        "GET",
        "/instructors/{instructor_id}",
        "getInstructor",
        "Get an instructor",
        "directory",
        "directory:read",
        get_instructor,
        "Instructor",
    ),
    Operation(
        "PATCH",
        "/instructors/{instructor_id}",
        "updateInstructor",
        "Change an instructor",
        "directory",
        "directory:write",
        patch_instructor,
        "Instructor",
        request="InstructorPatch",
        description="Fields given replace the stored ones (lists are replaced whole). A new exception (leave) "
        "over booked sessions gives each of them substitutes per the organisation's substitution_policy "
        "(see GET /substitutions).",
    ),
    Operation(
        "POST",
        "/students",
        "createStudent",
        "Create a student",
        "directory",
        "directory:write",
        create_student,
        "Student",
        201,
        "StudentCreate",
        errors=(409,),
    ),
    Operation(
        "GET",
        "/students",
        "listStudents",
        "List students",
        "directory",
        "directory:read",
        list_students,
        "StudentPage",
        query=PAGING,
    ),
    Operation(
        "GET",
        "/students/{student_id}",
        "getStudent",
        "Get a student",
        "directory",
        "directory:read",
        get_student,
        "Student",
    ),
    Operation(
        "PATCH",
        "/students/{student_id}",
        "updateStudent",
        "Change a student",
        "directory",
        "directory:write",
        patch_student,
        "Student",
        request="StudentPatch",
    ),
    Operation(
        "POST",
        "/bookings",
        "createBooking",
        "Book a class",
        "bookings",
        "bookings:write",
        create_booking,
        "BookingDetail",
        201,
        "BookingCreate",
        errors=(409,),
        description="Creates the booking and one session per occurrence. A clash is a 409 naming "
        "the conflicting session; emits booking.created.",
    ),
    Operation(
        "GET",
        "/bookings",
        "listBookings",
        "List bookings (by start time)",
        "bookings",
        "bookings:read",
        list_bookings,
        "BookingPage",
        query=(*PAGING, _STATUS_B, _q("student_id"), _q("instructor_id")),
    ),
    Operation(
        "GET",
        "/bookings/{booking_id}",
        "getBooking",
        "Get a booking and its sessions",
        "bookings",
        "bookings:read",
        get_booking,
        "BookingDetail",
    ),
    Operation(
        "PATCH",
        "/bookings/{booking_id}",
        "updateBooking",
        "Reschedule or edit a booking",
        "bookings",
        "bookings:write",
        patch_booking,
        "BookingDetail",
        request="BookingPatch",
        errors=(409,),
        description="Changing start, duration_minutes or instructor_id reschedules the sessions that "
        "have not started and emits booking.rescheduled with the old and new times.",
    ),
    Operation(
        "POST",
        "/bookings/{booking_id}/cancel",
        "cancelBooking",
        "Cancel a booking",
        "bookings",
        "bookings:write",
        cancel_booking,
        "BookingDetail",
        200,
        "BookingCancel",
        request_required=False,
        description="Cancels sessions that have not started and frees their slots; emits "
        "booking.cancelled. Cancelling twice is harmless. With from_session_id only that occurrence and the "
        "later ones are cancelled (the booking stays active while any session is left).",
    ),
    Operation(
        "GET",
        "/sessions",
        "listSessions",
        "List sessions (by start time)",
        "sessions",
        "sessions:read",
        list_sessions,
        "SessionPage",
        query=(
            *PAGING,
            _q("booking_id"),
            _q("instructor_id"),
            _q("student_id"),
            _STATUS_S,
            QueryParam("start_from", DATETIME, "sessions starting at or after"),
            QueryParam("start_before", DATETIME, "sessions starting before"),
        ),
    ),
    Operation(
        "GET",
        "/sessions/{session_id}",
        "getSession",
        "Get a session with attendance and recording",
        "sessions",
        "sessions:read",
        get_session,
        "SessionDetail",
    ),
    Operation(
        "POST",
        "/sessions/{session_id}/join-links",
        "createJoinLink",
        "Mint a join link",
        "sessions",
        "sessions:write",
        create_join_link,
        "JoinLink",
        201,
        "JoinLinkCreate",
        errors=(409,),
    ),
    Operation(
        "POST",
        "/webhooks",
        "createWebhook",
        "Subscribe to events",
        "webhooks",
        "webhooks:manage",
        create_webhook,
        "WebhookSubscriptionCreated",
        201,
        "WebhookSubscriptionCreate",
        description="The response carries the signing secret (whsec_...); it is not shown again.",
    ),
    Operation(
        "GET",
        "/webhooks",
        "listWebhooks",
        "List subscriptions",
        "webhooks",
        "webhooks:manage",
        list_webhooks,
        "WebhookSubscriptionPage",
        query=PAGING,
    ),
    Operation(
        "GET",
        "/webhooks/{subscription_id}",
        "getWebhook",
        "Get a subscription",
        "webhooks",
        "webhooks:manage",
        get_webhook,
        "WebhookSubscription",
    ),
    Operation(
        "PATCH",
        "/webhooks/{subscription_id}",
        "updateWebhook",
        "Change a subscription",
        "webhooks",
        "webhooks:manage",
        patch_webhook,
        "WebhookSubscription",
        request="WebhookSubscriptionPatch",
    ),
    Operation(
        "DELETE",
        "/webhooks/{subscription_id}",
        "deleteWebhook",
        "Delete a subscription",
        "webhooks",
        "webhooks:manage",
        delete_webhook,
        None,
        204,
    ),
)
