"""Placement: where a room goes. "Where is the room" is kept apart from "what happens in the room".

Two small, swappable policies, as LiveKit's selectors are:

- a **region selector** picks the region that minimises the worst expected round trip of the session's
  participants. Without measurements the round trip is modelled from great-circle distance: light in fibre covers
  about 200 km per millisecond, real routes are about 1.5x longer than the great circle, and every path pays
  a fixed ~10 ms of access-network latency, so ``rtt_ms = 10 + 2 * 1.5 * km / 200``. Round trips that browsers
  measured to each region's probe endpoint replace the model where they exist. Ties go to the lower mean.
- a **node selector** picks the node inside the region: only SERVING nodes, never a node of another version when
  the room already has one (versions are never mixed in a room), and load-aware: the node with the most free
  forwarded-stream capacity after counting what it forwards now *and* what is reserved for rooms about to start
  (a room's demand is estimated from its roster: n participants forward about 2n(n-1) streams). Nodes above
  ``hot_threshold`` of capacity are only used when every node is.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from core.regions import Region, Regions, haversine_km
from orchestrator.registry import NodeInfo

ACCESS_RTT_MS = 10.0
FIBRE_KM_PER_MS = 200.0
ROUTE_INFLATION = 1.5


class PlacementError(Exception):
    code = "placement_error"


class NoCapacityError(PlacementError):
    code = "no_capacity"


class UnknownRegionError(PlacementError):
    code = "unknown_region"


@dataclass(frozen=True, slots=True)
class Location:
    lat: float
    lon: float


def modelled_rtt_ms(region: Region, where: Location) -> float:
    km = haversine_km(region.lat, region.lon, where.lat, where.lon)
    return ACCESS_RTT_MS + 2 * ROUTE_INFLATION * km / FIBRE_KM_PER_MS


def room_demand_streams(participants: int, *, video: bool = True) -> int:
    """Forwarded streams a room of ``participants`` needs when everyone sees and hears everyone."""
    per_pair = 2 if video else 1
    return max(0, per_pair * participants * (participants - 1))


class RegionSelector(Protocol):
    def choose(
        self,
        regions: Regions,
        locations: Sequence[Location],
        measured_rtts: Sequence[Mapping[str, float]] = (),
        *,
        candidates: Iterable[str] | None = None,
    ) -> Region: ...


class WorstCaseRttRegionSelector:
    """Minimise the worst participant's round trip (modelled or measured); break ties on the mean."""

    def estimate(
        self, region: Region, locations: Sequence[Location], measured: Sequence[Mapping[str, float]]
    ) -> tuple[float, float]:
        rtts = [modelled_rtt_ms(region, loc) for loc in locations]
        rtts += [m[region.name] for m in measured if region.name in m]
        if not rtts:
            return 0.0, 0.0
        return max(rtts), sum(rtts) / len(rtts)

    def choose(
        self,
        regions: Regions,
        locations: Sequence[Location],
        measured_rtts: Sequence[Mapping[str, float]] = (),
        *,
        candidates: Iterable[str] | None = None,
    ) -> Region:
        pool = [regions.get(name) for name in candidates] if candidates is not None else list(regions)
        if not pool:
            raise NoCapacityError("no region has a node that can take the room")
        return min(pool, key=lambda r: (*self.estimate(r, locations, measured_rtts), r.name))


class NodeSelector(Protocol):
    def choose(
        self, nodes: Sequence[NodeInfo], demand: int, *, reserved: Mapping[str, int], version: str | None = None
    ) -> NodeInfo: ...


@dataclass
class LeastLoadedNodeSelector:
    hot_threshold: float = 0.8

    def choose(
        self,
        nodes: Sequence[NodeInfo],
        demand: int,
        *,
        reserved: Mapping[str, int],
        version: str | None = None,
    ) -> NodeInfo:
        pool = [n for n in nodes if n.serving and (version is None or n.heartbeat.version == version)]
        if not pool:
            raise NoCapacityError("no serving node" + (f" of version {version}" if version else ""))

        def load(n: NodeInfo) -> float:
            cap = max(1, n.heartbeat.capacity_streams)
            return (n.heartbeat.streams + reserved.get(n.node_id, 0)) / cap

        fits = [n for n in pool if load(n) + demand / max(1, n.heartbeat.capacity_streams) <= 1.0]
        if not fits:
            raise NoCapacityError(f"no node has room for {demand} more streams")
        cool = [n for n in fits if load(n) < self.hot_threshold] or fits
        return min(cool, key=lambda n: (load(n), n.heartbeat.cpu, n.node_id))


@dataclass
class Reservations:
    """Capacity held for rooms that are placed but not yet at full size (expires when the room is live)."""

    _by_room: dict[str, tuple[str, int, float]] = field(default_factory=dict)

    def hold(self, room_id: str, node_id: str, streams: int, ttl_s: float) -> None:
        self._by_room[room_id] = (node_id, streams, time.monotonic() + ttl_s)

    def release(self, room_id: str) -> None:
        self._by_room.pop(room_id, None)

    def per_node(self) -> dict[str, int]:
        now = time.monotonic()
        out: dict[str, int] = {}
        for room_id, (node_id, streams, until) in list(self._by_room.items()):
            if until < now:
                del self._by_room[room_id]
                continue
            out[node_id] = out.get(node_id, 0) + streams
        return out
