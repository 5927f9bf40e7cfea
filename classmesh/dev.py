"""``classmesh dev``: the whole system in one process on loopback.

The orchestrator, one signaling server, one media node per region (ports from regions.yaml) and two recorders
share one event loop and one bus (in-process, or Redis with ``--redis``). State lives under ``--data-dir``: the
SQLite database, the dev token keys and recordings. Prints every URL once all services are ready.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from classmesh.cli import default_database_url
from classmesh.services import build_media, build_orchestrator, build_recorder, build_signaling
from core.bus import Bus, open_bus
from core.regions import Regions, load_regions
from core.service import ServiceHost, run_hosts
from core.tokens import TokenIssuer, TokenVerifier, load_or_create_dev_keys
from orchestrator.api.keys import create_api_key
from orchestrator.app import OrchestratorService

DEMO_ROOM = "demo"


@dataclass
class Stack:
    """Everything ``classmesh dev`` runs, built but not started."""

    hosts: list[ServiceHost]
    bus: Bus
    issuer: TokenIssuer
    signaling_url: str
    first_region: str

    def media_hosts(self) -> list[ServiceHost]:
        return [h for h in self.hosts if h.service.name == "media"]


def build_stack(
    regions: Regions, *, data_dir: Path, host: str, base_port: int, version: str, bus: Bus, recorders: int = 2
) -> Stack:
    data_dir.mkdir(parents=True, exist_ok=True)
    private_key, public_key = load_or_create_dev_keys(data_dir / "keys")
    issuer = TokenIssuer.from_file(private_key)
    verifier = TokenVerifier.from_file(public_key)
    signaling_url = f"http://{host}:{base_port + 1}"
    hosts: list[ServiceHost] = [
        build_orchestrator(
            bus=bus,
            regions=regions,
            issuer=issuer,
            host=host,
            port=base_port,
            version=version,
            database_url=default_database_url(data_dir),
            signaling_url=signaling_url,
            recordings=data_dir / "recordings",
        )
    ]
    first_region = next(iter(regions)).name
    hosts.append(build_signaling(bus=bus, verifier=verifier, region=first_region, host=host, port=base_port + 1))
    for region in regions:
        for node in region.nodes:
            if node.port is None:
                continue
            hosts.append(
                build_media(
                    bus=bus,
                    region=region,
                    node_id=node.node_id,
                    host=host,
                    port=node.port,
                    version=version,
                    ice_addresses=(host,),
                )
            )
    for i in range(recorders):
        hosts.append(
            build_recorder(
                bus=bus,
                worker_id=f"recorder-{i + 1}",
                storage=data_dir / "recordings",  # one shared root: copies have their own directories in it
                host=host,
                port=base_port + 20 + i,
                version=version,
                ice_addresses=(host,),
            )
        )
    return Stack(hosts, bus, issuer, signaling_url, first_region)


async def dev_api_key(orchestrator: OrchestratorService, data_dir: Path) -> str:
    """The dev admin API key: created on first start, kept in ``<data-dir>/dev-api-key`` (mode 0600)."""
    path = data_dir / "dev-api-key"
    if path.exists():
        return path.read_text().strip()
    _, secret = await create_api_key(orchestrator.store, "classmesh dev", ["admin"])
    path.touch(mode=0o600)
    path.write_text(secret + "\n")
    return secret


async def run_dev(args: argparse.Namespace, version: str) -> int:
    regions = load_regions(args.regions_file)
    if args.regions:
        try:
            regions = regions.subset([r.strip() for r in args.regions.split(",") if r.strip()])
        except KeyError as exc:
            print(f"classmesh dev: --regions: {exc.args[0]}", file=sys.stderr)
            return 2
    data_dir = args.data_dir
    stack = build_stack(
        regions,
        data_dir=data_dir,
        host=args.host,
        base_port=args.base_port,
        version=version,
        bus=open_bus(args.redis or "memory://"),
    )
    issuer, signaling_url, first_region = stack.issuer, stack.signaling_url, stack.first_region

    async def announce(started: Sequence[ServiceHost]) -> None:
        api_key = await dev_api_key(started[0].service, data_dir)  # type: ignore[arg-type]
        link = issuer.mint(
            room=DEMO_ROOM, identity="demo-instructor", name="Demo Instructor", role="instructor", region=first_region
        )
        lines = [
            "",
            f"classmesh {version} is running ({'redis ' + args.redis if args.redis else 'in-process bus'}, "
            f"data in {data_dir}/)",
            "",
            f"  classroom (demo room, instructor):  {signaling_url}/room/{DEMO_ROOM}?token={link}",
            "  more join links:                    classmesh join-link --room demo --name Alice --role student",
            f"  ops dashboard:                      {started[0].url}/dashboard",
            f"  API docs:                           {started[0].url}/v1/docs",
            f"  admin API key (dev only):           {api_key}   (also in {data_dir}/dev-api-key)",
            "",
        ]
        width = max(len(f"{h.url}/healthz") for h in started)
        lines.append(f"  {'service':<26} {'health':<{width}}   metrics")
        for h in started:
            label = h.service.name
            node_id = h.service.health().get("node_id") or h.service.health().get("worker_id")
            if node_id:
                label = f"{label}:{node_id}"
            lines.append(f"  {label:<26} {h.url + '/healthz':<{width}}   {h.url}/metrics")
        lines += ["", "Press Ctrl-C to stop.", ""]
        print("\n".join(lines), flush=True)

    return await run_hosts(
        stack.hosts,
        drain_timeout=args.drain_timeout,
        version=version,
        on_started=announce,
        cleanup=[stack.bus.close],
        freeze_heap=True,
    )
