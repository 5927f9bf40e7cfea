"""The weekly report endpoint (``orchestrator/reports.py`` computes it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web

from orchestrator.api.handlers import ok
from orchestrator.api.operations import Call, Operation, QueryParam
from orchestrator.api.schemas import COMPONENTS, DATETIME, obj
from orchestrator.errors import FieldError, InvalidInputError
from orchestrator.reports import week_report


async def get_week_report(call: Call) -> web.Response:
    now = datetime.now(UTC)
    start = call.query.get("start")
    if start is None:  # this week, from Monday 00:00 UTC
        start = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    days = call.query.get("days", 7)
    if start.year > 9000:  # the window's end must still be a date
        raise InvalidInputError(
            "start is too far ahead", [FieldError("start", "must be before the year 9000")], status=400
        )
    return ok(await week_report(call.store, start, start + timedelta(days=days), now))


_RATE = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
_COUNT = {"type": "integer", "minimum": 0}
COMPONENTS.update(
    {
        "WeekReport": obj(
            {
                "start": DATETIME,
                "end": DATETIME,
                "sessions": {**_COUNT, "description": "sessions that ended in the window and took place"},
                "sessions_not_held": {
                    **_COUNT,
                    "description": "ended in the window, but no instructor came: left out of every other figure",
                },
                "attendance_rate": {
                    **_RATE,
                    "description": "booked student places filled (present for half the time the class ran)",
                },
                "recording_issues": {
                    "type": "array",
                    "items": obj(
                        {
                            "session_id": {"type": "string"},
                            "recording_id": {"type": "string"},
                            "status": {"type": "string"},
                            "coverage": {"type": "number"},
                        },
                        ["session_id", "recording_id", "status", "coverage"],
                    ),
                },
                "documents": obj({"completed": _COUNT, "pending": _COUNT}, ["completed", "pending"]),
                "students_under_half": {
                    "type": "array",
                    "items": obj(
                        {"student_id": {"type": "string"}, "sessions": _COUNT, "attended": _COUNT},
                        ["student_id", "sessions", "attended"],
                    ),
                },
                "instructors": {
                    "type": "array",
                    "items": obj(
                        {
                            "instructor_id": {"type": "string"},
                            "sessions": _COUNT,
                            "attendance_rate": _RATE,
                            "participation_per_student": {"type": ["number", "null"]},
                            "documents_completed": _COUNT,
                            "documents_pending": _COUNT,
                            "below_peers": {
                                "type": "array",
                                "items": {"type": "string", "enum": ["attendance_rate", "participation_per_student"]},
                                "description": "figures under half the median of the instructors' peers",
                            },
                        },
                        [
                            "instructor_id",
                            "sessions",
                            "attendance_rate",
                            "participation_per_student",
                            "documents_completed",
                            "documents_pending",
                            "below_peers",
                        ],
                    ),
                },
            },
            [
                "start",
                "end",
                "sessions",
                "sessions_not_held",
                "attendance_rate",
                "recording_issues",
                "documents",
                "students_under_half",
                "instructors",
            ],
        ),
    }
)

REPORT_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/reports/week",
        "getWeekReport",
        "The week at a glance: attendance, recording issues, documentation, students and instructors to look at",
        "engagement",
        "sessions:read",
        get_week_report,
        "WeekReport",
        query=(
            QueryParam("start", DATETIME, "the window's start (default: this Monday 00:00 UTC)"),
            QueryParam("days", {"type": "integer", "minimum": 1, "maximum": 31, "default": 7}, "the window's length"),
        ),
        description="Counts the sessions that ended in the window. See docs/api.md for each figure.",
    ),
)
