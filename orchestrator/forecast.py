"""The calendar forecast: expected load per region for the coming hours, from every scheduled session.

No anchor system does this: because the orchestrator knows every upcoming session, it can say how many media
nodes each region will need *before* the peak. For each 30-minute slot and region it sums the sessions that
overlap the slot, their participants and the forwarded streams they will need (n participants forward about
2n(n-1) streams), and divides by a node's usable capacity (``streams_per_node`` x the placement's hot
threshold). Sessions not yet provisioned are counted in the region placement would choose for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Gauge

from core.regions import Regions
from orchestrator.placement import room_demand_streams
from orchestrator.store.models import Session

SLOT = timedelta(minutes=30)

NODES_NEEDED = Gauge(
    "classmesh_orchestrator_forecast_nodes_needed",
    "Media nodes each region needs at the peak of the forecast horizon",
    ["region"],
)
STREAMS_FORECAST = Gauge(
    "classmesh_orchestrator_forecast_peak_streams",
    "Forwarded streams expected at the peak of the forecast horizon",
    ["region"],
)


@dataclass(frozen=True, slots=True)
class SlotLoad:
    start: datetime
    sessions: int
    participants: int
    streams: int
    nodes_needed: int


def forecast(
    sessions: Sequence[Session],
    region_of: Callable[[Session], str],
    regions: Regions,
    *,
    now: datetime,
    hours: int,
    usable_fraction: float = 0.8,
    nodes_serving: dict[str, int] | None = None,
) -> dict[str, Any]:
    start = now.replace(minute=(now.minute // 30) * 30, second=0, microsecond=0)
    slots = [start + i * SLOT for i in range(hours * 2)]
    out: list[dict[str, Any]] = []
    per_region: dict[str, list[SlotLoad]] = {}
    for region in regions:
        usable = max(1, int(region.streams_per_node * usable_fraction))
        rows = []
        for slot in slots:
            active = [s for s in sessions if s.start < slot + SLOT and s.end > slot and region_of(s) == region.name]
            people = sum(1 + len(s.student_ids) for s in active)
            streams = sum(room_demand_streams(1 + len(s.student_ids)) for s in active)
            needed = max(region.nodes_min, math.ceil(streams / usable)) if active else region.nodes_min
            rows.append(SlotLoad(slot, len(active), people, streams, needed))
        per_region[region.name] = rows
        peak = max((r.nodes_needed for r in rows), default=region.nodes_min)
        NODES_NEEDED.labels(region.name).set(peak)
        STREAMS_FORECAST.labels(region.name).set(max((r.streams for r in rows), default=0))
        out.append(
            {
                "region": region.name,
                "slots": [
                    {
                        "start": r.start.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                        "sessions": r.sessions,
                        "participants": r.participants,
                        "streams": r.streams,
                        "nodes_needed": r.nodes_needed,
                    }
                    for r in rows
                ],
                "peak_nodes_needed": peak,
                "nodes_serving": (nodes_serving or {}).get(region.name, 0),
            }
        )
    return {
        "generated_at": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "hours": hours,
        "regions": out,
    }
