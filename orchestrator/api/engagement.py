"""Engagement endpoints: what each person did in a session, a student's sessions one after another, and each
session's document (drafted by the system when it ends, completed by its instructor).

The figures come from the media nodes' events, captured in every session without any set-up
(``orchestrator/store/engagement.py``): attendance inside the scheduled time, talk time, chat messages,
raised hands, reactions, poll and comprehension-check answers.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from orchestrator.api.handlers import ok, page
from orchestrator.api.operations import PAGING, Call, Operation, QueryParam
from orchestrator.api.schemas import COMPONENTS, DATETIME, nullable, obj, page_of, ref
from orchestrator.store import codec
from orchestrator.store.documents import SessionDocument
from orchestrator.store.engagement import ParticipantEngagement


def engagement_to_dict(e: ParticipantEngagement) -> dict[str, Any]:
    out = asdict(e)
    out["first_joined_at"] = codec.iso_or_none(e.first_joined_at)
    return out


async def session_engagement(call: Call) -> web.Response:
    session = await call.store.get_session(call.path["session_id"])
    rows = (await call.store.engagement_of([session]))[session.session_id]
    return ok({**codec.session_to_dict(session), "participants": [engagement_to_dict(r) for r in rows]})


def document_to_dict(d: SessionDocument) -> dict[str, Any]:
    return {
        "session_id": d.session_id,
        "status": d.status,
        "draft": d.draft,
        "notes": d.notes,
        "curriculum_covered": d.curriculum_covered,
        "completed_by": d.completed_by,
        "completed_at": codec.iso_or_none(d.completed_at),
        "created_at": codec.iso(d.created_at),
        "updated_at": codec.iso(d.updated_at),
    }


async def get_document(call: Call) -> web.Response:
    session = await call.store.get_session(call.path["session_id"])  # 404 for an unknown session first
    return ok(document_to_dict(await call.store.get_document(session.session_id)))


async def complete_document(call: Call) -> web.Response:
    session = await call.store.get_session(call.path["session_id"])
    body = call.body
    document = await call.store.complete_document(
        session.session_id,
        notes=body["notes"],
        curriculum_covered=body.get("curriculum_covered", session.curriculum_unit),
        completed_by=body.get("completed_by") or session.instructor_id,
    )
    await call.store.resolve_exception_key(f"documentation_missing:{session.session_id}")
    return ok(document_to_dict(document))


async def student_engagement(call: Call) -> web.Response:
    student = await call.store.get_student(call.path["student_id"])  # 404 for a student that does not exist
    q = call.query
    sessions = await call.store.list_sessions(
        limit=q["limit"],
        cursor=q.get("cursor"),
        student_id=student.student_id,
        start_from=q.get("start_from"),
        start_before=q.get("start_before"),
    )
    summaries = await call.store.engagement_of(sessions.items)
    items = []
    for s in sessions.items:
        mine = next(r for r in summaries[s.session_id] if r.participant_id == student.student_id)
        items.append({**codec.session_to_dict(s), "engagement": engagement_to_dict(mine)})
    return page(items, sessions.next_cursor)


_COUNT = {"type": "integer", "minimum": 0}
COMPONENTS.update(
    {
        "ParticipantEngagement": obj(
            {
                "participant_id": {"type": "string", "description": "the student's or instructor's id"},
                "role": {"type": "string"},
                "expected": {"type": "boolean", "description": "booked into the session (instructor or student)"},
                "attended_s": {
                    "type": "number",
                    "description": "seconds connected inside the scheduled time (overlapping connections once)",
                },
                "attendance_fraction": {"type": "number", "minimum": 0, "maximum": 1},
                "first_joined_at": nullable(DATETIME),
                "talk_s": {"type": "number", "description": "seconds of speech (from the audio level)"},
                "talk_share": {"type": "number", "description": "of all speech in the session (0..1)"},
                "chat_messages": _COUNT,
                "hands_raised": _COUNT,
                "reactions": _COUNT,
                "answers": {**_COUNT, "description": "polls and comprehension checks answered (once each)"},
                "checks_answered": _COUNT,
                "checks_correct": {**_COUNT, "description": "checks whose latest answer was the right option"},
                "questions_asked": {**_COUNT, "description": "polls and checks this person put to the room"},
            },
            [
                "participant_id",
                "role",
                "expected",
                "attended_s",
                "attendance_fraction",
                "first_joined_at",
                "talk_s",
                "talk_share",
                "chat_messages",
                "hands_raised",
                "reactions",
                "answers",
                "checks_answered",
                "checks_correct",
                "questions_asked",
            ],
        ),
    }
)
_session = COMPONENTS["Session"]
COMPONENTS.update(
    {
        "SessionEngagement": obj(
            {**_session["properties"], "participants": {"type": "array", "items": ref("ParticipantEngagement")}},
            [*_session["required"], "participants"],
        ),
        "StudentSessionEngagement": obj(
            {**_session["properties"], "engagement": ref("ParticipantEngagement")},
            [*_session["required"], "engagement"],
        ),
        "StudentSessionEngagementPage": page_of("StudentSessionEngagement"),
        "SessionDocument": obj(
            {
                "session_id": {"type": "string"},
                "status": {"type": "string", "enum": ["draft", "completed"]},
                "draft": {
                    "type": "object",
                    "description": "written when the session ended: attendance, participation, talk, questions and "
                    "checks with their answers, curriculum_unit, recording, follow_up (see docs/api.md)",
                },
                "notes": {"type": ["string", "null"]},
                "curriculum_covered": {"type": ["string", "null"]},
                "completed_by": {"type": ["string", "null"]},
                "completed_at": nullable(DATETIME),
                "created_at": DATETIME,
                "updated_at": DATETIME,
            },
            [
                "session_id",
                "status",
                "draft",
                "notes",
                "curriculum_covered",
                "completed_by",
                "completed_at",
                "created_at",
                "updated_at",
            ],
        ),
        "SessionDocumentCompletion": obj(
            {
                "notes": {"type": "string", "minLength": 1, "maxLength": 20000},
                "curriculum_covered": {
                    "type": ["string", "null"],
                    "maxLength": 200,
                    "description": "what was covered (default: the session's curriculum_unit)",
                },
                "completed_by": {"type": "string", "minLength": 1, "maxLength": 200},
            },
            ["notes"],
        ),
    }
)

ENGAGEMENT_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/sessions/{session_id}/document",
        "getSessionDocument",
        "A session's document: the system's draft and the instructor's notes",
        "engagement",
        "sessions:read",
        get_document,
        "SessionDocument",
        description="404 until the session has ended and its draft is written (about two minutes after its "
        "scheduled end; up to 15 minutes later while its recording is being built).",
    ),
    Operation(
        "PUT",
        "/sessions/{session_id}/document/completion",
        "completeSessionDocument",
        "Complete a session's document with the instructor's notes",
        "engagement",
        "sessions:write",
        complete_document,
        "SessionDocument",
        request="SessionDocumentCompletion",
        description="Sets status completed; doing it again replaces the notes. Resolves the session's "
        "documentation_missing exception.",
    ),
    Operation(
        "GET",
        "/sessions/{session_id}/engagement",
        "getSessionEngagement",
        "What each person did in a session",
        "engagement",
        "sessions:read",
        session_engagement,
        "SessionEngagement",
        description="One row per person: the instructor, the booked students (also those who never joined: "
        "`attended_s` 0), then anyone else who joined. Captured in every session from the media nodes' events; "
        "a live session's figures grow as it runs.",
    ),
    Operation(
        "GET",
        "/students/{student_id}/engagement",
        "listStudentEngagement",
        "A student's sessions with their engagement, by start time",
        "engagement",
        "sessions:read",
        student_engagement,
        "StudentSessionEngagementPage",
        query=(
            *PAGING,
            QueryParam("start_from", DATETIME, "sessions starting at or after"),
            QueryParam("start_before", DATETIME, "sessions starting before"),
        ),
        description="Every session the student is booked into, cancelled ones included (see `status`), "
        "with the student's own row of the session's engagement.",
    ),
)
