"""Operational endpoints: the live node table (with imbalance) and the per-region load forecast."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.handlers import ok
from orchestrator.api.hooks import OpsView
from orchestrator.api.operations import Call, Operation, QueryParam


def _ops(call: Call) -> OpsView:
    assert call.hooks.ops is not None  # the routes are mounted only with an ops view
    return call.hooks.ops


async def list_nodes(call: Call) -> web.Response:
    return ok(_ops(call).nodes())


async def get_forecast(call: Call) -> web.Response:
    return ok(await _ops(call).forecast(int(call.query.get("hours", 6))))


OPS_OPERATIONS: tuple[Operation, ...] = (
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
