"""The operational exception queue: what needs a person (a recording with gaps, no substitute found, a student
at risk, a notification that may not have gone out, a recorder's full disk), listed and worked through.

The system raises and resolves exceptions itself (one per cause, under a de-duplication key; a cause that comes
back bumps ``occurrences`` and reopens it). People take one (``owner``), acknowledge it, snooze it until a time,
or resolve it.
"""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.handlers import ok, page
from orchestrator.api.operations import PAGING, Call, Operation, QueryParam
from orchestrator.api.schemas import COMPONENTS, DATETIME, ID, nullable, obj, page_of
from orchestrator.api.validation import parse_datetime
from orchestrator.errors import FieldError, InvalidInputError
from orchestrator.store import codec
from orchestrator.store.models import ExceptionStatus

_STATUSES = [s.value for s in ExceptionStatus]


async def list_exceptions(call: Call) -> web.Response:
    q = call.query
    statuses = [ExceptionStatus(s) for s in q["status"].split(",")] if "status" in q else None
    p = await call.store.list_exceptions(
        statuses=statuses, kind=q.get("kind"), limit=q["limit"], cursor=q.get("cursor")
    )
    return page([codec.exception_to_dict(e) for e in p.items], p.next_cursor)


async def get_exception(call: Call) -> web.Response:
    return ok(codec.exception_to_dict(await call.store.get_exception(call.path["exception_id"])))


async def update_exception(call: Call) -> web.Response:
    body = call.body
    current = await call.store.get_exception(call.path["exception_id"])
    status = ExceptionStatus(body["status"]) if "status" in body else current.status
    if "snoozed_until" in body and status is not ExceptionStatus.SNOOZED:
        raise InvalidInputError(
            "snoozed_until goes with status snoozed", [FieldError("/snoozed_until", "only with status snoozed")]
        )
    until = parse_datetime(body["snoozed_until"]) if "snoozed_until" in body else None
    if status is ExceptionStatus.SNOOZED and until is None:
        if current.status is not ExceptionStatus.SNOOZED:  # an owner change keeps a snooze as it is
            raise InvalidInputError(
                "snoozing needs snoozed_until", [FieldError("/snoozed_until", "required to snooze")]
            )
        until = current.snoozed_until
    updated = await call.store.set_exception_status(
        current.exception_id, status, owner=body.get("owner"), snoozed_until=until
    )
    return ok(codec.exception_to_dict(updated))


COMPONENTS.update(
    {
        "OperationalException": obj(
            {
                "exception_id": ID,
                "kind": {
                    "type": "string",
                    "description": "what happened, e.g. recording_incomplete, no_substitute, student_at_risk, "
                    "notification_uncertain, recorder_storage_full",
                },
                "severity": {"type": "string"},
                "status": {"type": "string", "enum": _STATUSES},
                "owner": {"type": ["string", "null"]},
                "subject_refs": {"type": "object", "description": "ids of what it is about (session_id, ...)"},
                "details": {"type": "object"},
                "occurrences": {"type": "integer", "minimum": 1, "description": "times its cause was seen"},
                "snoozed_until": nullable(DATETIME),
                "created_at": DATETIME,
                "updated_at": DATETIME,
                "resolved_at": nullable(DATETIME),
            },
            [
                "exception_id",
                "kind",
                "severity",
                "status",
                "owner",
                "subject_refs",
                "details",
                "occurrences",
                "snoozed_until",
                "created_at",
                "updated_at",
                "resolved_at",
            ],
        ),
        "OperationalExceptionPage": page_of("OperationalException"),
        "OperationalExceptionPatch": obj(
            {
                "status": {"type": "string", "enum": _STATUSES},
                "owner": {"type": "string", "minLength": 1, "maxLength": 200},
                "snoozed_until": DATETIME | {"description": "with status snoozed"},
            },
            [],
            minProperties=1,
        ),
    }
)

EXCEPTION_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/exceptions",
        "listExceptions",
        "The operational exception queue",
        "exceptions",
        "ops:read",
        list_exceptions,
        "OperationalExceptionPage",
        query=(
            *PAGING,
            QueryParam(
                "status",
                {"type": "string", "pattern": rf"^({'|'.join(_STATUSES)})(,({'|'.join(_STATUSES)}))*$"},
                "comma-separated statuses, e.g. open,acked (default: all)",
            ),
            QueryParam("kind", {"type": "string", "minLength": 1, "maxLength": 64}, "only this kind"),
        ),
    ),
    Operation(
        "GET",
        "/exceptions/{exception_id}",
        "getException",
        "One exception",
        "exceptions",
        "ops:read",
        get_exception,
        "OperationalException",
    ),
    Operation(
        "PATCH",
        "/exceptions/{exception_id}",
        "updateException",
        "Take, acknowledge, snooze or resolve an exception",
        "exceptions",
        "exceptions:write",
        update_exception,
        "OperationalException",
        request="OperationalExceptionPatch",
        description="`owner` assigns it; `status` acked, snoozed (with `snoozed_until`; it opens again then), "
        "resolved, or open again. "
        "The system may reopen a resolved exception when its cause comes back.",
    ),
)
