"""Builders: config in, ready-to-run services out. Used by the single-service commands and by ``dev``."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.bus import Bus, open_bus
from core.config import CommonConfig
from core.regions import Region, Regions, load_regions
from core.service import ServiceHost, run_hosts
from core.tokens import TokenIssuer, TokenVerifier, load_or_create_dev_keys

if TYPE_CHECKING:
    from media.config import TurnConfig
    from orchestrator.notifications import NotificationConfig

logger = logging.getLogger(__name__)

# Each builder imports its own service: a signaling process should not pay for loading the media stack or the
# scheduling solver (start-up CPU competes with live media on the same machine).


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}"


def turn_configs(region: Region, environ: dict[str, str] | None = None) -> tuple[TurnConfig, ...]:
    """TURN servers of a region with their shared secrets resolved from the environment (here, at the edge)."""
    from media.config import TurnConfig

    env = os.environ if environ is None else environ
    return tuple(TurnConfig(t.urls, env.get(t.secret_env) if t.secret_env else None) for t in region.turn)


def build_media(
    *,
    bus: Bus,
    region: Region,
    node_id: str,
    host: str,
    port: int,
    version: str,
    public_url: str = "",
    ice_addresses: tuple[str, ...] = (),
    udp_ports: tuple[int, int] | None = None,
    capacity: int = 0,
    workers: int = 1,
    bus_url: str = "",
    log_format: str = "text",
    log_level: str = "info",
    drain_timeout: float = 30.0,
) -> ServiceHost:
    """One media node: a single process with ``workers=1``, else a front and ``workers`` forwarding processes on
    the Redis bus at ``bus_url`` (the front imports neither aiortc nor the data plane; its workers do)."""
    from media.config import MediaNodeConfig

    config = MediaNodeConfig(
        node_id=node_id,
        region=region.name,
        public_url=public_url or _url(host, port),
        version=version,
        ice_addresses=ice_addresses,
        udp_ports=udp_ports,
        capacity_streams=capacity or region.streams_per_node,
        stun=region.stun,
        turn=turn_configs(region),
    )
    if workers > 1:
        from media.front import FrontConfig, MediaFront

        front = FrontConfig(
            workers=workers,
            bus_url=bus_url,
            log_format=log_format,
            log_level=log_level,
            drain_timeout=drain_timeout,
        )
        return ServiceHost(MediaFront(config, bus, front), host, port)
    from media.node import MediaNode

    return ServiceHost(MediaNode(config, bus), host, port)


def media_workers(requested: int, bus_url: str, cpus: int | None = None) -> int:
    """How many forwarding processes ``classmesh media --workers`` means: 0 is one per core; the in-process bus
    keeps a node in one process (its workers could not share it)."""
    if requested < 0:
        raise ValueError("--workers must be 0 (one per core) or a positive number")
    workers = requested or cpus or os.cpu_count() or 1
    if workers > 1 and not bus_url.startswith(("redis://", "rediss://", "unix://")):
        logger.info("workers=%d requested but the bus is %s: the node runs as one process", workers, bus_url)
        return 1
    return workers


def build_signaling(
    *, bus: Bus, verifier: TokenVerifier, region: str, host: str, port: int, public_url: str = ""
) -> ServiceHost:
    from signaling.app import SignalingService

    service = SignalingService(bus, verifier, region=region, public_url=public_url or _url(host, port))
    return ServiceHost(service, host, port)


def build_recorder(
    *,
    bus: Bus,
    worker_id: str,
    storage: str | Path,
    host: str,
    port: int,
    version: str,
    region: str = "any",
    public_url: str = "",
    ice_addresses: tuple[str, ...] = (),
    transport: str = "plain",
    rtp_address: str = "",
    spool: Path | None = None,
) -> ServiceHost:
    """``storage`` is a directory or a storage URL (``recorder.storage.storage_from_url``). With a directory, segments
    are written straight into it; otherwise into ``spool`` and uploaded from there."""
    from recorder.storage import LocalStorage, storage_from_url
    from recorder.worker import RecorderConfig, RecorderWorker

    target = storage_from_url(str(storage))
    upload = None
    if isinstance(target, LocalStorage):
        spool = target.root
    elif spool is None:
        raise ValueError("a recorder with a storage URL needs --spool, a local directory to write segments into")
    else:
        upload = target
    config = RecorderConfig(
        worker_id=worker_id,
        spool=spool,
        upload=upload,
        public_url=public_url or _url(host, port),
        region=region,
        version=version,
        ice_addresses=ice_addresses,
        transport=transport,
        rtp_address=rtp_address or (ice_addresses[0] if ice_addresses else _own_address()),
    )
    return ServiceHost(RecorderWorker(config, bus), host, port)


def _own_address() -> str:
    """This host's address as its name resolves (a container's address on its network), else loopback."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def build_orchestrator(
    *,
    bus: Bus,
    regions: Regions,
    issuer: TokenIssuer,
    host: str,
    port: int,
    version: str,
    database_url: str,
    signaling_url: str,
    recordings: str | Path,
    public_url: str = "",
    notifications: NotificationConfig | None = None,
) -> ServiceHost:
    from orchestrator.app import OrchestratorConfig, OrchestratorService
    from orchestrator.notifications import NotificationConfig
    from recorder.storage import storage_from_url

    config = OrchestratorConfig(
        public_url=public_url or _url(host, port),
        signaling_url=signaling_url,
        database_url=database_url,
        version=version,
        recordings=storage_from_url(str(recordings)),
        notifications=notifications or NotificationConfig(),
    )
    return ServiceHost(OrchestratorService(config, bus, regions, issuer), host, port)


def notification_config(args: argparse.Namespace) -> NotificationConfig:
    """The orchestrator's ``--notify-*``, ``--reminder-offsets``, ``--absence-minutes`` and ``--smtp-*`` flags."""
    from datetime import timedelta

    from orchestrator.notifications import NotificationConfig, SmtpConfig

    if args.absence_minutes < 0:
        raise SystemExit("classmesh orchestrator: --absence-minutes must not be negative")
    return NotificationConfig(
        channel=args.notify_channel,
        reminder_offsets=tuple(timedelta(seconds=s) for s in args.reminder_offsets),
        absence_after=timedelta(minutes=args.absence_minutes),
        smtp=SmtpConfig(
            host=args.smtp_host,
            port=args.smtp_port,
            sender=args.smtp_from,
            security=args.smtp_security,
            username=args.smtp_username,
            password=args.smtp_password,
        ),
    )


def _keys(args: argparse.Namespace) -> tuple[Path, Path]:
    return load_or_create_dev_keys(Path(getattr(args, "data_dir", "var")) / "keys")


async def _run_one(host: ServiceHost, bus: Bus, common: CommonConfig) -> int:
    return await run_hosts(
        [host], drain_timeout=common.drain_timeout, version=common.version, cleanup=[bus.close], freeze_heap=True
    )


async def run_orchestrator(args: argparse.Namespace, common: CommonConfig) -> int:
    from classmesh.cli import default_database_url

    if not args.database:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    bus = open_bus(common.bus_url)
    key = args.private_key or _keys(args)[0]
    try:
        host = build_orchestrator(
            bus=bus,
            regions=load_regions(common.regions_file),
            issuer=TokenIssuer.from_file(key),
            host=common.host,
            port=common.port,
            version=common.version,
            database_url=args.database or default_database_url(args.data_dir),
            signaling_url=args.signaling_url,
            recordings=args.recordings or args.data_dir / "recordings",
            public_url=args.public_url,
            notifications=notification_config(args),
        )
    except ValueError as exc:
        await bus.close()
        raise SystemExit(f"classmesh orchestrator: {exc}") from None
    return await _run_one(host, bus, common)


async def run_signaling(args: argparse.Namespace, common: CommonConfig) -> int:
    bus = open_bus(common.bus_url)
    public_key = args.public_key or _keys(args)[1]
    host = build_signaling(
        bus=bus,
        verifier=TokenVerifier.from_file(public_key),
        region=args.region,
        host=common.host,
        port=common.port,
        public_url=args.public_url,
    )
    return await _run_one(host, bus, common)


async def run_media(args: argparse.Namespace, common: CommonConfig) -> int:
    regions = load_regions(common.regions_file)
    if not args.region:
        raise SystemExit("classmesh media: --region is required (or CLASSMESH_REGION)")
    try:
        region = regions.get(args.region)
    except KeyError as exc:
        raise SystemExit(f"classmesh media: {exc.args[0]}") from None
    try:
        workers = media_workers(args.workers, common.bus_url)
    except ValueError as exc:
        raise SystemExit(f"classmesh media: {exc}") from None
    bus = open_bus(common.bus_url)
    try:
        host = build_media(
            bus=bus,
            region=region,
            node_id=args.node_id or f"{region.name}-{socket.gethostname()}",
            host=common.host,
            port=common.port,
            version=common.version,
            public_url=args.public_url,
            ice_addresses=tuple(args.ice_address),
            udp_ports=args.udp_ports,
            capacity=args.capacity,
            workers=workers,
            bus_url=common.bus_url,
            log_format=common.log_format,
            log_level=common.log_level,
            drain_timeout=common.drain_timeout,
        )
    except ValueError as exc:
        await bus.close()
        raise SystemExit(f"classmesh media: {exc}") from None
    return await _run_one(host, bus, common)


async def run_recorder(args: argparse.Namespace, common: CommonConfig) -> int:
    bus = open_bus(common.bus_url)
    try:
        host = build_recorder(
            bus=bus,
            worker_id=args.worker_id or f"recorder-{socket.gethostname()}",
            storage=args.storage,
            spool=args.spool,
            host=common.host,
            port=common.port,
            version=common.version,
            region=args.region,
            public_url=args.public_url,
            ice_addresses=tuple(args.ice_address),
            transport=args.transport,
            rtp_address=args.rtp_address,
        )
    except ValueError as exc:
        await bus.close()
        raise SystemExit(f"classmesh recorder: {exc}") from None
    return await _run_one(host, bus, common)


async def api_key_command(args: argparse.Namespace) -> int:
    """``classmesh orchestrator api-key create|revoke|list`` against the orchestrator's database."""
    from classmesh.cli import default_database_url
    from orchestrator.api.keys import create_api_key, list_api_keys, revoke_api_key
    from orchestrator.errors import InvalidInputError
    from orchestrator.store import Store

    url = args.database or default_database_url(args.data_dir)
    if url.startswith("sqlite"):
        args.data_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(url)
    try:
        if args.api_key_command == "create":
            try:
                key_id, secret = await create_api_key(store, args.name, args.scopes or ["admin"])
            except InvalidInputError as exc:
                print(f"classmesh orchestrator api-key create: {exc.detail}", file=sys.stderr)
                return 2
            print(f"key_id: {key_id}\nsecret: {secret}")
            print("(the secret is shown once; send it as 'Authorization: Bearer <secret>')")
            return 0
        if args.api_key_command == "revoke":
            if not await revoke_api_key(store, args.key_id):
                print(f"classmesh orchestrator api-key revoke: no active key {args.key_id!r}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
            return 0
        for key in await list_api_keys(store):
            state = f"revoked {key.revoked_at.isoformat()}" if key.revoked_at else "active"
            print(f"{key.key_id}\t{key.name}\t{','.join(key.scopes)}\t{key.created_at.isoformat()}\t{state}")
        return 0
    finally:
        await store.close()


async def rollout_command(args: argparse.Namespace) -> int:
    """``classmesh orchestrator rollout``: start a rollout through the API and follow it until it ends."""
    import asyncio

    import aiohttp

    url = args.url.rstrip("/") + "/v1/rollouts"
    headers = {"Authorization": f"Bearer {args.api_key}"}
    body: dict[str, object] = {"to_version": args.to_version, "max_unavailable": args.max_unavailable}
    if args.regions:
        body["regions"] = args.regions
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(url, json=body) as resp:
            reply = await resp.json()
            if resp.status != 202:
                print(f"classmesh orchestrator rollout: {resp.status} {reply.get('detail', reply)}", file=sys.stderr)
                return 1
        print(f"rollout {reply['rollout_id']} to {reply['to_version']}: pending {', '.join(reply['pending']) or '-'}")
        if args.no_wait:
            return 0
        last = ""
        while True:
            await asyncio.sleep(1.0)
            async with http.get(url + "/current") as resp:
                state = await resp.json()
            line = (
                f"{state['state']}: done {len(state['done'])}, in progress {', '.join(state['current']) or '-'}, "
                f"pending {len(state['pending'])}"
            )
            if line != last:
                print(line, flush=True)
                last = line
            if state["state"] != "running":
                if state.get("error"):
                    print(f"error: {state['error']}", file=sys.stderr)
                return 0 if state["state"] == "done" else 1
