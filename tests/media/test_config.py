"""A node's configuration and how a front splits it between its forwarding workers."""

from __future__ import annotations

import pytest

from media.config import (
    MediaNodeConfig,
    TurnConfig,
    WorkerLaunch,
    port_slices,
    worker_capacity,
    worker_launch,
    worker_rpc_id,
)


def test_port_slices_are_disjoint_and_inside_the_range() -> None:
    slices = port_slices((40000, 40999), 3)
    assert slices == [(40000, 40332), (40333, 40665), (40666, 40998)]
    ports = [p for low, high in filter(None, slices) for p in range(low, high + 1)]
    assert len(ports) == len(set(ports)) and min(ports) >= 40000 and max(ports) <= 40999


def test_no_port_range_means_any_port_for_every_worker() -> None:
    assert port_slices(None, 4) == [None, None, None, None]


@pytest.mark.parametrize(("ports", "workers"), [((40000, 40000), 2), ((40000, 40002), 4)])
def test_port_slices_refuse_a_range_smaller_than_the_workers(ports: tuple[int, int], workers: int) -> None:
    with pytest.raises(ValueError, match=f"too few for {workers} workers"):
        port_slices(ports, workers)


def test_capacity_is_shared_without_losing_streams() -> None:
    assert worker_capacity(400, 2) == 200
    assert worker_capacity(401, 2) == 201
    assert worker_capacity(1, 4) == 1


def test_a_worker_answers_its_own_channel_and_keeps_the_node_id() -> None:
    node = MediaNodeConfig(node_id="eu-1", region="eu-central", public_url="http://n", capacity_streams=300)
    assert node.rpc_id == "eu-1"
    launch = worker_launch(node, 1, 2, bus_url="redis://127.0.0.1:6379/0")
    assert launch.node.node_id == "eu-1"
    assert launch.node.rpc_id == worker_rpc_id("eu-1", 1) == "eu-1.w1"
    assert launch.node.capacity_streams == 150
    assert launch.node.udp_ports is None


def test_worker_launch_round_trips_through_one_json_line() -> None:
    node = MediaNodeConfig(
        node_id="eu-1",
        region="eu-central",
        public_url="http://n",
        ice_addresses=("203.0.113.7",),
        udp_ports=(40000, 40999),
        stun=("stun:stun.example.org:3478",),
        turn=(TurnConfig(("turn:turn.example.org:3478",), "s3cret"), TurnConfig(("turns:t2:5349",), None)),
    )
    launch = worker_launch(node, 0, 2, bus_url="redis://r:6379/0", log_format="json", log_level="debug")
    text = launch.to_json()
    assert "\n" not in text
    again = WorkerLaunch.from_json(text)
    assert again == launch
    assert again.node.udp_ports == (40000, 40499) and again.node.worker == 0
    assert again.node.turn[0].secret == "s3cret"
