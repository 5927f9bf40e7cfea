"""Operational endpoints: the live node table (with imbalance) and the per-region load forecast."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.handlers import draft_from_body, ok
from orchestrator.api.hooks import OpsView
from orchestrator.api.operations import Call, Operation, QueryParam
from orchestrator.errors import NotFoundError


def _ops(call: Call) -> OpsView:
    assert call.hooks.ops is not None  # the routes are mounted only with an ops view
    return call.hooks.ops


async def list_nodes(call: Call) -> web.Response:
    return ok(_ops(call).nodes())


async def get_forecast(call: Call) -> web.Response:
    return ok(await _ops(call).forecast(int(call.query.get("hours", 6))))


async def match_booking(call: Call) -> web.Response:
    assert call.hooks.match is not None  # mounted only with the scheduling engine
    return ok(await call.hooks.match(draft_from_body(call.body)))


MATCH_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/matches",
        "matchInstructors",
        "Rank the instructors who can take a booking request, with the reasons for each rank",
        "bookings",
        "bookings:read",
        match_booking,
        "MatchResult",
        request="BookingCreate",
        description="Nothing is booked. Without a feasible instructor, failure_counts says which rules excluded "
        "how many instructors and alternatives lists the nearest feasible times. POST /bookings without "
        "instructor_id books the best candidate.",
    ),
)


async def start_rollout(call: Call) -> web.Response:
    body = call.body
    view = await _ops(call).start_rollout(body["to_version"], body.get("regions"), body.get("max_unavailable", 1))
    return ok(view, 202)


async def get_rollout(call: Call) -> web.Response:
    view = await _ops(call).rollout()
    if view is None:
        raise NotFoundError("rollout", "current")
    return ok(view)


async def cancel_rollout(call: Call) -> web.Response:
    view = await _ops(call).cancel_rollout()
    if view is None:
        raise NotFoundError("rollout", "current")
    return ok(view)


OPS_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/rollouts",
        "startRollout",
        "Start a rolling upgrade of the media fleet to a version, one node at a time",
        "operations",
        "admin",
        start_rollout,
        "Rollout",
        202,
        request="RolloutCreate",
        errors=(409, 422),
        description="Each node is drained (its classes move to other nodes without a reload), replaced by the "
        "deployment at the new version, and waited for before the next. 409 while another rollout runs.",
    ),
    Operation(
        "GET",
        "/rollouts/current",
        "getRollout",
        "The current (or last) rollout and its progress",
        "operations",
        "ops:read",
        get_rollout,
        "Rollout",
        errors=(404,),
    ),
    Operation(
        "POST",
        "/rollouts/current/cancel",
        "cancelRollout",
        "Stop the running rollout after the node in progress",
        "operations",
        "admin",
        cancel_rollout,
        "Rollout",
        errors=(404,),
    ),
    Operation(
        "GET",
        "/nodes",
        "listNodes",
        "Live media nodes, recorders and signaling servers, with load and per-region imbalance",
        "operations",
        "ops:read",
        list_nodes,
        "NodeList",
        description="From heartbeats (every second). A node silent for 3 s is dead and is no longer listed.",
    ),
    Operation(
        "GET",
        "/forecast",
        "getForecast",
        "Expected load per region for the coming hours, and the media nodes each region needs",
        "operations",
        "ops:read",
        get_forecast,
        "Forecast",
        query=(QueryParam("hours", {"type": "integer", "minimum": 1, "maximum": 48, "default": 6}, "horizon"),),
        description="Built from every scheduled session: an operator or autoscaler adds capacity before the peak.",
    ),
)
