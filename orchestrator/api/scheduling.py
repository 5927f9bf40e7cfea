"""Scheduling operations in the API: occurrences of a series, organisation settings, substitutions, optimisations.

The handlers only translate between HTTP and the services in ``SCHEDULING`` (see ``scheduling_services.py``);
``SCHEDULING_OPERATIONS`` declares them (routes and OpenAPI in one).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from aiohttp import web

from orchestrator.api.handlers import ok, page
from orchestrator.api.operations import PAGING, Call, Operation, QueryParam
from orchestrator.api.scheduling_services import SCHEDULING, SchedulingServices
from orchestrator.api.schemas import ID
from orchestrator.api.validation import parse_datetime
from orchestrator.errors import FieldError, InvalidInputError
from orchestrator.store import codec
from orchestrator.store.models import (
    Booking,
    OptimizationJobRecord,
    OrganisationSettings,
    Session,
    Substitution,
    SubstitutionPolicy,
    SubstitutionStatus,
)


def _services(call: Call) -> SchedulingServices:
    return call.request.app[SCHEDULING]


def booking_detail(booking: Booking, sessions: list[Session]) -> dict[str, Any]:
    return {**codec.booking_to_dict(booking), "sessions": [codec.session_to_dict(s) for s in sessions]}


# ---------------------------------------------------------------------- occurrences of a series


async def skip_occurrence(call: Call) -> web.Response:
    booking, sessions = await _services(call).series.skip(
        call.path["booking_id"], call.path["session_id"], reason=call.body.get("reason", "")
    )
    return ok(booking_detail(booking, sessions))


async def move_occurrence(call: Call) -> web.Response:
    start = parse_datetime(call.body["start"])
    assert start is not None, "validated by the schema"
    booking, sessions = await _services(call).series.move(
        call.path["booking_id"], call.path["session_id"], start, scope=call.body.get("scope", "this")
    )
    return ok(booking_detail(booking, sessions))


# ---------------------------------------------------------------------- settings


def settings_to_dict(s: OrganisationSettings) -> dict[str, Any]:
    return {
        "substitution_policy": s.substitution_policy.value,
        "substitute_candidates": s.substitute_candidates,
        "updated_at": codec.iso_or_none(s.updated_at),
    }


async def get_settings(call: Call) -> web.Response:
    return ok(settings_to_dict(await call.store.get_settings()))


async def patch_settings(call: Call) -> web.Response:
    policy = call.body.get("substitution_policy")
    settings = await call.store.update_settings(
        substitution_policy=SubstitutionPolicy(policy) if policy else None,
        substitute_candidates=call.body.get("substitute_candidates"),
    )
    return ok(settings_to_dict(settings))


# ---------------------------------------------------------------------- substitutions


def substitution_to_dict(s: Substitution) -> dict[str, Any]:
    return {
        "substitution_id": s.substitution_id,
        "session_id": s.session_id,
        "booking_id": s.booking_id,
        "previous_instructor_id": s.previous_instructor_id,
        "trigger": s.trigger,
        "reason": s.reason,
        "policy": s.policy.value,
        "status": s.status.value,
        "candidates": list(s.candidates),
        "alternatives": list(s.alternatives),
        "instructor_id": s.instructor_id,
        "exception_id": s.exception_id,
        "decision_reason": s.decision_reason,
        "created_at": codec.iso(s.created_at),
        "updated_at": codec.iso(s.updated_at),
        "decided_at": codec.iso_or_none(s.decided_at),
    }


async def instructor_cancel(call: Call) -> web.Response:
    sub = await _services(call).substitutions.instructor_cancels(
        call.path["session_id"], reason=call.body.get("reason", "")
    )
    return ok(substitution_to_dict(sub), 201, {"Location": f"../../substitutions/{sub.substitution_id}"})


async def list_substitutions(call: Call) -> web.Response:
    q = call.query
    p = await call.store.list_substitutions(
        status=SubstitutionStatus(q["status"]) if "status" in q else None,
        session_id=q.get("session_id"),
        limit=q["limit"],
        cursor=q.get("cursor"),
    )
    return page([substitution_to_dict(s) for s in p.items], p.next_cursor)


async def get_substitution(call: Call) -> web.Response:
    return ok(substitution_to_dict(await call.store.get_substitution(call.path["substitution_id"])))


async def confirm_substitution(call: Call) -> web.Response:
    sub = await _services(call).substitutions.confirm(
        call.path["substitution_id"],
        instructor_id=call.body.get("instructor_id"),
        reason=call.body.get("reason", ""),
    )
    return ok(substitution_to_dict(sub))


async def decline_substitution(call: Call) -> web.Response:
    sub = await _services(call).substitutions.decline(call.path["substitution_id"], reason=call.body.get("reason", ""))
    return ok(substitution_to_dict(sub))


# ---------------------------------------------------------------------- optimisations

_NO_PROGRESS = {
    "phase": "queued",
    "elapsed_s": 0.0,
    "fraction": 0.0,
    "solutions": 0,
    "best_objective": None,
    "best_bound": None,
    "gap": None,
}


def optimization_to_dict(j: OptimizationJobRecord) -> dict[str, Any]:
    return {
        "optimization_id": j.job_id,
        "status": j.status.value,
        "week_start": j.week_start.date().isoformat(),
        "time_limit_s": j.time_limit_s,
        "reassign": j.reassign,
        "owner": j.owner,
        "heartbeat_at": codec.iso(j.heartbeat_at),
        "cancel_requested": j.cancel_requested,
        "progress": {**_NO_PROGRESS, **{k: v for k, v in j.progress.items() if k in _NO_PROGRESS}},
        "result": j.result,
        "error": j.error,
        "applied_at": codec.iso_or_none(j.applied_at),
        "apply_report": j.apply_report,
        "created_at": codec.iso(j.created_at),
        "updated_at": codec.iso(j.updated_at),
        "started_at": codec.iso_or_none(j.started_at),
        "finished_at": codec.iso_or_none(j.finished_at),
    }


async def create_optimization(call: Call) -> web.Response:
    try:
        day = date.fromisoformat(call.body["week_start"])
    except ValueError:
        raise InvalidInputError(
            "week_start is not a calendar date", [FieldError("/week_start", "must be a date such as 2030-03-04")]
        ) from None
    week_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    job = await _services(call).optimizations.submit(
        week_start, time_limit_s=float(call.body.get("time_limit_s", 10)), reassign=call.body.get("reassign", False)
    )
    return ok(optimization_to_dict(job), 202, {"Location": f"optimizations/{job.job_id}"})


async def get_optimization(call: Call) -> web.Response:
    return ok(optimization_to_dict(await _services(call).optimizations.get(call.path["optimization_id"])))


async def cancel_optimization(call: Call) -> web.Response:
    return ok(optimization_to_dict(await _services(call).optimizations.cancel(call.path["optimization_id"])))


async def apply_optimization(call: Call) -> web.Response:
    return ok(optimization_to_dict(await _services(call).optimizations.apply(call.path["optimization_id"])))


# ---------------------------------------------------------------------- the table

_SUB_STATUS = QueryParam("status", {"type": "string", "enum": [s.value for s in SubstitutionStatus]})

SCHEDULING_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/bookings/{booking_id}/occurrences/{session_id}/skip",
        "skipOccurrence",
        "Skip one occurrence of a series",
        "bookings",
        "bookings:write",
        skip_occurrence,
        "BookingDetail",
        request="OccurrenceSkip",
        request_required=False,
        errors=(409,),
        description="The occurrence's session is cancelled and its slots freed; emits booking.cancelled with "
        "scope occurrence. Skipping it again changes nothing; a session that has started cannot be skipped (409).",
    ),
    Operation(
        "POST",
        "/bookings/{booking_id}/occurrences/{session_id}/move",
        "moveOccurrence",
        "Move one occurrence, or it and every later one",
        "bookings",
        "bookings:write",
        move_occurrence,
        "BookingDetail",
        request="OccurrenceMove",
        errors=(409, 422),
        description="scope this moves one occurrence to start; scope following moves it and every later "
        "occurrence by the same wall-clock step in the series' time zone. Every moved occurrence is checked "
        "against the scheduling rules: a violation is a 409/422 whose occurrences field lists, per occurrence, "
        "the rules broken and the conflicting session, and nothing changes. Emits booking.rescheduled with the "
        "old and new times of each occurrence.",
    ),
    Operation(
        "GET",
        "/settings",
        "getSettings",
        "The organisation's scheduling settings",
        "scheduling",
        "scheduling:read",
        get_settings,
        "Settings",
        description="One organisation per deployment.",
    ),
    Operation(
        "PATCH",
        "/settings",
        "updateSettings",
        "Change the organisation's scheduling settings",
        "scheduling",
        "admin",
        patch_settings,
        "Settings",
        request="SettingsPatch",
    ),
    Operation(
        "POST",
        "/sessions/{session_id}/instructor-cancel",
        "instructorCancel",
        "The session's instructor cannot teach it: find a substitute",
        "scheduling",
        "scheduling:write",
        instructor_cancel,
        "Substitution",
        201,
        "InstructorCancel",
        request_required=False,
        errors=(409,),
        description="Ranks substitutes (who taught these students or this curriculum unit first, with reasons). "
        "auto_assign gives the session to the best feasible one (emits session.instructor_changed and revokes "
        "the old instructor's join links); propose stores a proposal to confirm or decline. Nobody feasible: "
        "an operational exception no_substitute and the nearest alternatives in the proposal.",
    ),
    Operation(
        "GET",
        "/substitutions",
        "listSubstitutions",
        "List substitutions (oldest first)",
        "scheduling",
        "scheduling:read",
        list_substitutions,
        "SubstitutionPage",
        query=(*PAGING, _SUB_STATUS, QueryParam("session_id", ID, "only this session's substitutions")),
    ),
    Operation(
        "GET",
        "/substitutions/{substitution_id}",
        "getSubstitution",
        "Get a substitution",
        "scheduling",
        "scheduling:read",
        get_substitution,
        "Substitution",
    ),
    Operation(
        "POST",
        "/substitutions/{substitution_id}/confirm",
        "confirmSubstitution",
        "Confirm a proposed substitute",
        "scheduling",
        "scheduling:write",
        confirm_substitution,
        "Substitution",
        request="SubstitutionConfirm",
        request_required=False,
        errors=(409, 422),
        description="Gives the session to instructor_id (default: the first candidate) after checking every "
        "rule again now: a substitute who became busy is a 409/422 with the rule. Of two confirms competing for "
        "one slot, one wins. Emits session.instructor_changed.",
    ),
    Operation(
        "POST",
        "/substitutions/{substitution_id}/decline",
        "declineSubstitution",
        "Decline a proposed substitution",
        "scheduling",
        "scheduling:write",
        decline_substitution,
        "Substitution",
        request="SubstitutionDecline",
        request_required=False,
        errors=(409,),
    ),
    Operation(
        "POST",
        "/optimizations",
        "createOptimization",
        "Start re-optimising a week's instructor assignments (CP-SAT, in the background)",
        "scheduling",
        "scheduling:write",
        create_optimization,
        "Optimization",
        202,
        "OptimizationCreate",
        description="Answers 202 at once; poll GET /optimizations/{optimization_id} on any replica for the "
        "status, progress and proposed changes. Nothing changes until you apply it.",
    ),
    Operation(
        "GET",
        "/optimizations/{optimization_id}",
        "getOptimization",
        "An optimisation job: status, progress, proposed changes",
        "scheduling",
        "scheduling:read",
        get_optimization,
        "Optimization",
        description="A job whose runner stopped heartbeating (its process died) is reported failed.",
    ),
    Operation(
        "POST",
        "/optimizations/{optimization_id}/cancel",
        "cancelOptimization",
        "Stop an optimisation job",
        "scheduling",
        "scheduling:write",
        cancel_optimization,
        "Optimization",
        errors=(409,),
        description="The solver stops within about a second (status cancelled); a finished job is a 409.",
    ),
    Operation(
        "POST",
        "/optimizations/{optimization_id}/apply",
        "applyOptimization",
        "Apply a succeeded optimisation's changes",
        "scheduling",
        "scheduling:write",
        apply_optimization,
        "Optimization",
        errors=(409,),
        description="Each change is checked against the rules again and committed on its own; apply_report lists "
        "what was applied and, per session, what failed and why. A job is applied at most once.",
    ),
)
