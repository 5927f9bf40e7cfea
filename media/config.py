"""Configuration of a media node and of its forwarding workers: frozen values, read once at start-up.

Kept apart from ``media.node`` so that a node's *front* (``media.front``), which only routes requests to its
worker processes, can be configured without importing aiortc and the data plane.

A node runs either as one process (``MediaNodeConfig.worker is None``: it serves ``media.<node_id>`` and
heartbeats) or as a front plus N forwarding workers; worker ``k`` runs the same ``MediaNode`` with
``worker=k``: it serves ``media.<node_id>.w<k>``, does not heartbeat (the front announces the node), and
still tags everything it sends with the node's id.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class TurnConfig:
    urls: tuple[str, ...]
    secret: str | None  # coturn static-auth-secret; None = offer no TURN


@dataclass(frozen=True, slots=True)
class MediaNodeConfig:
    node_id: str
    region: str
    public_url: str
    version: str = "dev"
    ice_addresses: tuple[str, ...] = ()
    udp_ports: tuple[int, int] | None = None
    capacity_streams: int = 400
    max_participants_per_room: int = 50
    heartbeat_interval: float = 1.0
    stun: tuple[str, ...] = ()
    turn: tuple[TurnConfig, ...] = ()
    turn_ttl_s: int = 6 * 3600
    worker: int | None = None  # index of this forwarding worker behind a front; None = a whole node

    @property
    def rpc_id(self) -> str:
        """The id whose request channel (``node_rpc(rpc_id)``) this process answers."""
        return self.node_id if self.worker is None else worker_rpc_id(self.node_id, self.worker)


def worker_rpc_id(node_id: str, index: int) -> str:
    """Internal id of a node's forwarding worker ``index``: its requests arrive on ``media.<node_id>.w<index>``."""
    return f"{node_id}.w{index}"


def port_slices(ports: tuple[int, int] | None, workers: int) -> list[tuple[int, int] | None]:
    """Split an inclusive UDP port range into ``workers`` disjoint contiguous slices (the remainder goes unused).

    ``None`` (any port) stays ``None`` for every worker. A range with fewer ports than workers is refused.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if ports is None:
        return [None] * workers
    low, high = ports
    size = (high - low + 1) // workers
    if size < 1:
        raise ValueError(
            f"the UDP port range {low}-{high} has {high - low + 1} ports: too few for {workers} workers "
            "(each worker needs its own slice)"
        )
    return [(low + k * size, low + (k + 1) * size - 1) for k in range(workers)]


def worker_capacity(capacity_streams: int, workers: int) -> int:
    """Each worker's share of the node's forwarded-stream capacity (rounded up, so the node keeps its total)."""
    return max(1, math.ceil(capacity_streams / workers))


@dataclass(frozen=True, slots=True)
class WorkerLaunch:
    """What a front hands one worker process (one JSON line on the worker's stdin, so no secret is on argv)."""

    node: MediaNodeConfig
    bus_url: str
    log_format: str = "text"
    log_level: str = "info"
    drain_timeout: float = 30.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerLaunch:
        data: dict[str, Any] = json.loads(text)
        node: dict[str, Any] = dict(data.pop("node"))
        ports = node.get("udp_ports")
        node["udp_ports"] = (int(ports[0]), int(ports[1])) if ports else None
        node["ice_addresses"] = tuple(node.get("ice_addresses", ()))
        node["stun"] = tuple(node.get("stun", ()))
        node["turn"] = tuple(TurnConfig(tuple(t["urls"]), t.get("secret")) for t in node.get("turn", ()))
        return cls(node=MediaNodeConfig(**node), **data)


def worker_launch(
    node: MediaNodeConfig,
    index: int,
    workers: int,
    *,
    bus_url: str,
    log_format: str = "text",
    log_level: str = "info",
    drain_timeout: float = 30.0,
) -> WorkerLaunch:
    """The launch description of worker ``index`` of ``workers``: its port slice and capacity share."""
    config = replace(
        node,
        worker=index,
        udp_ports=port_slices(node.udp_ports, workers)[index],
        capacity_streams=worker_capacity(node.capacity_streams, workers),
    )
    return WorkerLaunch(config, bus_url, log_format, log_level, drain_timeout)
