"""regions.yaml: the regions classmesh serves, their coordinates, nodes, capacity hints and ICE servers.

``load_regions(path)`` validates the whole file and raises ``RegionsError`` naming the file, the region and the
field of the first mistake, so an operator can fix it without reading code.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.ids import NodeId, RegionName, is_valid_id

DEFAULT_REGIONS_FILE = Path(__file__).resolve().parent.parent / "regions.yaml"
EARTH_RADIUS_KM = 6371.0


class RegionsError(ValueError):
    """A mistake in a regions file; the message names file, region and field."""

    def __init__(self, path: str | Path, region: str | None, field_name: str, problem: str) -> None:
        where = f"{path}: region {region!r}" if region else str(path)
        super().__init__(f"{where}: field {field_name!r}: {problem}")
        self.path = str(path)
        self.region = region
        self.field = field_name


@dataclass(frozen=True, slots=True)
class TurnServer:
    urls: tuple[str, ...]
    secret_env: str | None = None  # environment variable holding coturn's static-auth-secret


@dataclass(frozen=True, slots=True)
class NodeSpec:
    node_id: NodeId
    url: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Region:
    name: RegionName
    display_name: str
    lat: float
    lon: float
    streams_per_node: int = 400
    nodes_min: int = 1
    stun: tuple[str, ...] = ()
    turn: tuple[TurnServer, ...] = ()
    nodes: tuple[NodeSpec, ...] = ()

    def distance_km(self, lat: float, lon: float) -> float:
        return haversine_km(self.lat, self.lon, lat, lon)


@dataclass(frozen=True, slots=True)
class Regions:
    path: str
    regions: Mapping[str, Region] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Region]:
        return iter(self.regions.values())

    def __len__(self) -> int:
        return len(self.regions)

    def __contains__(self, name: object) -> bool:
        return name in self.regions

    def get(self, name: str) -> Region:
        try:
            return self.regions[name]
        except KeyError:
            raise KeyError(f"unknown region {name!r}; known: {', '.join(self.regions)}") from None

    def node(self, node_id: str) -> tuple[Region, NodeSpec]:
        for region in self.regions.values():
            for node in region.nodes:
                if node.node_id == node_id:
                    return region, node
        raise KeyError(f"unknown node {node_id!r}")

    def subset(self, names: list[str]) -> Regions:
        missing = [n for n in names if n not in self.regions]
        if missing:
            raise KeyError(f"unknown region(s) {', '.join(missing)}; known: {', '.join(self.regions)}")
        return Regions(self.path, {n: self.regions[n] for n in names})


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance between two points in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


def load_regions(path: str | Path | None = None) -> Regions:
    path = Path(path) if path else DEFAULT_REGIONS_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RegionsError(path, None, "-", "file not found") from None
    except yaml.YAMLError as exc:
        raise RegionsError(path, None, "-", f"not valid YAML: {exc}") from None
    return parse_regions(raw, path)


def parse_regions(raw: Any, path: str | Path = "<regions>") -> Regions:
    if not isinstance(raw, dict) or not isinstance(raw.get("regions"), dict) or not raw["regions"]:
        raise RegionsError(path, None, "regions", "must be a non-empty mapping of region name to settings")
    regions: dict[str, Region] = {}
    seen_nodes: dict[str, str] = {}
    seen_ports: dict[int, str] = {}
    for name, body in raw["regions"].items():
        v = _Validator(path, str(name))
        if not is_valid_id(name):
            raise RegionsError(path, str(name), "name", "must be 1-128 characters of letters, digits, '-', '_'")
        if not isinstance(body, dict):
            raise RegionsError(path, name, "-", "must be a mapping")
        known = {"display_name", "lat", "lon", "capacity", "stun", "turn", "nodes"}
        for key in body:
            if key not in known:
                raise RegionsError(path, name, str(key), f"unknown field; expected one of {sorted(known)}")
        lat = v.number(body, "lat", -90, 90)
        lon = v.number(body, "lon", -180, 180)
        capacity = body.get("capacity", {}) or {}
        if not isinstance(capacity, dict):
            raise RegionsError(path, name, "capacity", "must be a mapping")
        streams = v.integer(capacity, "capacity.streams_per_node", 1, 1_000_000, default=400)
        nodes_min = v.integer(capacity, "capacity.nodes_min", 0, 10_000, default=1)
        stun = tuple(v.str_list(body, "stun"))
        turn = tuple(v.turn_servers(body))
        nodes = tuple(v.nodes(body))
        for node in nodes:
            if node.node_id in seen_nodes:
                raise RegionsError(
                    path, name, "nodes.id", f"node {node.node_id!r} is also listed in {seen_nodes[node.node_id]!r}"
                )
            seen_nodes[node.node_id] = name
            if node.port is not None:
                if node.port in seen_ports:
                    raise RegionsError(
                        path, name, "nodes.port", f"port {node.port} is also used by {seen_ports[node.port]!r}"
                    )
                seen_ports[node.port] = node.node_id
        display = body.get("display_name", name)
        if not isinstance(display, str) or not display:
            raise RegionsError(path, name, "display_name", "must be a non-empty string")
        regions[name] = Region(
            name=RegionName(name),
            display_name=display,
            lat=lat,
            lon=lon,
            streams_per_node=streams,
            nodes_min=nodes_min,
            stun=stun,
            turn=turn,
            nodes=nodes,
        )
    return Regions(str(path), regions)


class _Validator:
    def __init__(self, path: str | Path, region: str) -> None:
        self.path, self.region = path, region

    def fail(self, field_name: str, problem: str) -> RegionsError:
        return RegionsError(self.path, self.region, field_name, problem)

    def number(self, body: dict[str, Any], key: str, lo: float, hi: float) -> float:
        if key not in body:
            raise self.fail(key, "is required")
        value = body[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise self.fail(key, f"must be a number between {lo} and {hi}, got {value!r}")
        return float(value)

    def integer(self, body: dict[str, Any], dotted: str, lo: int, hi: int, *, default: int) -> int:
        key = dotted.rsplit(".", 1)[-1]
        value = body.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(dotted, f"must be an integer between {lo} and {hi}, got {value!r}")
        return value

    def str_list(self, body: dict[str, Any], key: str) -> list[str]:
        value = body.get(key, []) or []
        if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
            raise self.fail(key, "must be a list of non-empty strings")
        return value

    def turn_servers(self, body: dict[str, Any]) -> list[TurnServer]:
        value = body.get("turn", []) or []
        if not isinstance(value, list):
            raise self.fail("turn", "must be a list")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail(f"turn[{i}]", "must be a mapping with 'urls'")
            urls = item.get("urls")
            if isinstance(urls, str):
                urls = [urls]
            if (
                not isinstance(urls, list)
                or not urls
                or not all(isinstance(u, str) and u.startswith(("turn:", "turns:")) for u in urls)
            ):
                raise self.fail(f"turn[{i}].urls", "must be a non-empty list of turn: or turns: URLs")
            secret_env = item.get("secret_env")
            if secret_env is not None and not isinstance(secret_env, str):
                raise self.fail(f"turn[{i}].secret_env", "must be an environment variable name")
            out.append(TurnServer(tuple(urls), secret_env))
        return out

    def nodes(self, body: dict[str, Any]) -> list[NodeSpec]:
        value = body.get("nodes", []) or []
        if not isinstance(value, list):
            raise self.fail("nodes", "must be a list")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail(f"nodes[{i}]", "must be a mapping with 'id' and 'url' or 'port'")
            node_id = item.get("id")
            if not is_valid_id(node_id):
                raise self.fail(f"nodes[{i}].id", f"must be a valid id, got {node_id!r}")
            url, port = item.get("url"), item.get("port")
            if url is None and port is None:
                raise self.fail(f"nodes[{i}]", "needs 'url' (production) or 'port' (dev)")
            if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
                raise self.fail(f"nodes[{i}].url", f"must be an http(s) URL, got {url!r}")
            if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
                raise self.fail(f"nodes[{i}].port", f"must be a TCP port 1-65535, got {port!r}")
            out.append(NodeSpec(NodeId(str(node_id)), url, port))
        return out
