"""Placement policies and the node registry, with heartbeats over a real bus."""

from __future__ import annotations

import asyncio
import time

import pytest

from core.bus import Bus
from core.messages import NODE_HEARTBEATS, NodeHeartbeat, encode
from core.regions import load_regions
from orchestrator.placement import (
    LeastLoadedNodeSelector,
    Location,
    NoCapacityError,
    Reservations,
    WorstCaseRttRegionSelector,
    modelled_rtt_ms,
    room_demand_streams,
)
from orchestrator.registry import NodeInfo, NodeRegistry

BERLIN = Location(52.52, 13.40)
LISBON = Location(38.72, -9.14)
NEW_YORK = Location(40.71, -74.0)
SAO_PAULO = Location(-23.55, -46.63)
SYDNEY = Location(-33.87, 151.21)


def beat(
    node_id: str,
    region: str = "eu-central",
    *,
    streams: int = 0,
    capacity: int = 400,
    state: str = "serving",
    version: str = "1",
    cpu: float = 0.1,
) -> NodeInfo:
    hb = NodeHeartbeat(
        node_id=node_id,
        kind="media",
        region=region,
        version=version,
        state=state,
        url="http://x",
        capacity_streams=capacity,
        streams=streams,
        cpu=cpu,
    )
    return NodeInfo(hb, time.monotonic())


def test_region_minimises_the_worst_round_trip() -> None:
    regions = load_regions()
    selector = WorstCaseRttRegionSelector()
    assert selector.choose(regions, [BERLIN, LISBON]).name == "eu-central"
    assert selector.choose(regions, [NEW_YORK]).name == "us-east"
    assert selector.choose(regions, [SYDNEY]).name == "ap-southeast"
    # a class split between New York and Sao Paulo: us-east's worst case (to Sao Paulo) beats sa-east's
    worst = {r.name: max(modelled_rtt_ms(r, NEW_YORK), modelled_rtt_ms(r, SAO_PAULO)) for r in regions}
    chosen = selector.choose(regions, [NEW_YORK, SAO_PAULO]).name
    assert worst[chosen] == min(worst.values())


def test_measured_round_trips_override_the_model() -> None:
    regions = load_regions()
    measured = [{"eu-central": 250.0, "us-east": 40.0, "ap-southeast": 300, "sa-east": 300}]
    assert WorstCaseRttRegionSelector().choose(regions, [BERLIN], measured).name == "us-east"


def test_node_selector_is_load_aware_and_skips_draining_nodes() -> None:
    sel = LeastLoadedNodeSelector()
    nodes = [beat("a", streams=200), beat("b", streams=20), beat("c", streams=0, state="draining")]
    assert sel.choose(nodes, 12, reserved={}).node_id == "b"
    # capacity reserved for rooms about to start counts as load
    assert sel.choose(nodes, 12, reserved={"b": 300}).node_id == "a"


def test_node_selector_never_mixes_versions_and_reports_no_capacity() -> None:
    sel = LeastLoadedNodeSelector()
    nodes = [beat("old", version="1"), beat("new", version="2", streams=100)]
    assert sel.choose(nodes, 4, reserved={}, version="2").node_id == "new"
    with pytest.raises(NoCapacityError):
        sel.choose(nodes, 4, reserved={}, version="3")
    with pytest.raises(NoCapacityError):
        sel.choose([beat("full", streams=390)], 60, reserved={})


def test_hot_nodes_are_used_only_when_all_are_hot() -> None:
    sel = LeastLoadedNodeSelector(hot_threshold=0.8)
    assert (
        sel.choose([beat("hot", streams=330, cpu=0.0), beat("cool", streams=300, cpu=0.9)], 2, reserved={}).node_id
        == "cool"
    )


def test_room_demand_and_reservations_expire() -> None:
    assert room_demand_streams(1) == 0 and room_demand_streams(3) == 12 and room_demand_streams(10) == 180
    res = Reservations()
    res.hold("r1", "a", 12, ttl_s=60)
    res.hold("r2", "a", 6, ttl_s=0.01)
    time.sleep(0.02)
    assert res.per_node() == {"a": 12}
    res.release("r1")
    assert res.per_node() == {}


async def test_registry_tracks_heartbeats_and_declares_silent_nodes_dead(bus: Bus) -> None:
    dead: list[str] = []

    async def on_dead(info: NodeInfo) -> None:
        dead.append(info.node_id)

    registry = NodeRegistry(bus, dead_after=0.6, on_dead=on_dead)
    await registry.start()
    try:
        for node_id in ("n1", "n2"):
            hb = NodeHeartbeat(
                node_id=node_id, kind="media", region="eu-central", version="1", state="serving", url="http://x"
            )
            await bus.publish(NODE_HEARTBEATS, encode(hb))
        assert await registry.wait_for(lambda r: len(r.nodes("media")) == 2, 3)
        # n2 keeps beating, n1 goes silent
        for _ in range(8):
            hb = NodeHeartbeat(
                node_id="n2", kind="media", region="eu-central", version="1", state="serving", url="http://x"
            )
            await bus.publish(NODE_HEARTBEATS, encode(hb))
            await asyncio.sleep(0.15)
        assert dead == ["n1"]
        assert [n.node_id for n in registry.nodes()] == ["n2"]
        # a clean stop is not a death
        stopped = NodeHeartbeat(
            node_id="n2", kind="media", region="eu-central", version="1", state="stopped", url="http://x"
        )
        await bus.publish(NODE_HEARTBEATS, encode(stopped))
        assert await registry.wait_for(lambda r: not r.nodes(), 3)
        await asyncio.sleep(0.8)
        assert dead == ["n1"]
        # garbage on the channel is dropped, not fatal
        await bus.publish(NODE_HEARTBEATS, {"type": "node.heartbeat", "bogus": 1})
        await bus.publish(NODE_HEARTBEATS, {"type": "unknown"})
        hb = NodeHeartbeat(
            node_id="n3", kind="media", region="eu-central", version="1", state="serving", url="http://x"
        )
        await bus.publish(NODE_HEARTBEATS, encode(hb))
        assert await registry.wait_for(lambda r: r.get("n3") is not None, 3)
    finally:
        await registry.close()
