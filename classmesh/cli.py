"""``classmesh``: one command, one subcommand per service.

    classmesh dev            the whole system on this machine (SQLite, in-process bus, loopback)
    classmesh orchestrator   the control plane: booking API, placement, provisioning (+ api-key, rollout)
    classmesh signaling      browsers' WebSocket signaling and the classroom page
    classmesh media          one SFU node of one region
    classmesh recorder       a recording worker
    classmesh join-link      mint a join token and print the classroom URL

Every flag has an environment variable (shown in --help). Config is read here, once, into frozen dataclasses.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from classmesh import __version__
from core.config import (
    add_common_options,
    add_option,
    common_from_args,
    duration_list,
    port_range,
    positive_float,
)
from core.logs import configure_logging

DEFAULT_DATA_DIR = Path("var")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="classmesh",
        description="classmesh: regional WebRTC SFU nodes, redundant recorders and a booking-driven orchestrator.",
    )
    parser.add_argument("--version", action="version", version=f"classmesh {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev", help="run the whole system on this machine", description=_doc("dev"))
    add_option(dev, "--regions", default="", help="comma-separated regions to start nodes for (default: all)")
    add_option(
        dev, "--redis", env="CLASSMESH_REDIS", default="", help="use this Redis URL instead of the in-process bus"
    )
    add_option(dev, "--host", default="127.0.0.1", help="address every service listens on")
    add_option(
        dev,
        "--base-port",
        type=int,
        default=8700,
        help="orchestrator port; signaling uses base+1, recorders base+20.. (media: the regions file's ports)",
    )
    add_option(
        dev, "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="SQLite file, keys and recordings live here"
    )
    add_option(dev, "--regions-file", type=Path, default=None, help="regions.yaml to load")
    add_option(dev, "--log-format", default="text", choices=["text", "json"], help="log line format")
    add_option(dev, "--log-level", default="info", help="log level")
    add_option(dev, "--drain-timeout", type=positive_float, default=5.0, help="seconds a drain may take on Ctrl-C")

    orch = sub.add_parser("orchestrator", help="the control plane", description=_doc("orchestrator"))
    add_common_options(orch, default_port=8700)
    _orchestrator_options(orch)
    orch_sub = orch.add_subparsers(dest="orchestrator_command", metavar="ACTION")
    orch_sub.add_parser("serve", help="run the orchestrator service (the default)")
    key = orch_sub.add_parser("api-key", help="manage API keys for booking systems")
    key_sub = key.add_subparsers(dest="api_key_command", required=True, metavar="ACTION")
    create = key_sub.add_parser("create", help="create a key and print its secret once")
    create.add_argument("--name", required=True, help="who the key is for")
    create.add_argument(
        "--scope", action="append", dest="scopes", default=None, help="a scope to grant (repeatable; default: admin)"
    )
    revoke = key_sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id", help="the key's id (cmk_...)")
    key_sub.add_parser("list", help="list keys (never their secrets)")
    roll = orch_sub.add_parser("rollout", help="rolling upgrade of the media fleet (through the running orchestrator)")
    roll.add_argument("--to", required=True, dest="to_version", help="the version to roll out")
    roll.add_argument("--region", action="append", dest="regions", default=None, help="region to walk (repeatable)")
    roll.add_argument("--max-unavailable", type=int, default=1, help="nodes away at once (default 1)")
    roll.add_argument("--url", default="http://127.0.0.1:8700", help="the orchestrator's URL")
    add_option(roll, "--api-key", env="CLASSMESH_API_KEY", default="", help="an API key with the admin scope")
    roll.add_argument("--no-wait", action="store_true", help="start it and return instead of following progress")

    sig = sub.add_parser("signaling", help="browser signaling and the classroom page", description=_doc("signaling"))
    add_common_options(sig, default_port=8701)
    add_option(sig, "--region", default="", help="the region this signaling server serves")
    add_option(
        sig,
        "--public-key",
        env="CLASSMESH_TOKEN_PUBLIC_KEY",
        type=Path,
        default=None,
        help="PEM file of the orchestrator's token public key",
    )
    add_option(sig, "--public-url", default="", help="URL browsers use to reach this server")

    media = sub.add_parser("media", help="one SFU node", description=_doc("media"))
    add_common_options(media, default_port=8710)
    add_option(media, "--region", required=False, default="", help="the region this node belongs to")
    add_option(media, "--node-id", default="", help="this node's id (unique in the fleet)")
    add_option(media, "--public-url", default="", help="URL of this node's HTTP endpoint")
    add_option(
        media,
        "--ice-address",
        env="CLASSMESH_ICE_ADDRESSES",
        action="append",
        default=[],
        help="address to announce in ICE candidates (repeatable; e.g. the public IP behind NAT)",
    )
    add_option(media, "--udp-ports", type=port_range, default=None, help="UDP port range for media, e.g. 40000-40999")
    add_option(
        media,
        "--workers",
        type=int,
        default=0,
        help="forwarding worker processes (0 = one per core; 1 = a single process; several need a Redis --bus)",
    )
    add_option(
        media, "--capacity", type=int, default=0, help="forwarded streams this node takes (0 = from regions.yaml)"
    )
    add_option(
        media,
        "--public-key",
        env="CLASSMESH_TOKEN_PUBLIC_KEY",
        type=Path,
        default=None,
        help="PEM file of the orchestrator's token public key",
    )

    rec = sub.add_parser("recorder", help="a recording worker", description=_doc("recorder"))
    add_common_options(rec, default_port=8720)
    add_option(rec, "--worker-id", default="", help="this worker's id (unique in the fleet)")
    add_option(
        rec,
        "--storage",
        default=str(DEFAULT_DATA_DIR / "recordings"),
        help="where segments go: a directory shared by every recorder and the orchestrator, or"
        " s3://bucket/prefix?endpoint=URL (credentials in CLASSMESH_S3_ACCESS_KEY_ID/_SECRET_ACCESS_KEY)",
    )
    add_option(
        rec,
        "--spool",
        type=Path,
        default=None,
        help="with S3 storage: the local directory segments are written to before upload (keep it across restarts)",
    )
    add_option(rec, "--region", default="any", help="region this worker prefers")
    add_option(rec, "--public-url", default="", help="URL of this worker's HTTP endpoint")
    add_option(
        rec,
        "--ice-address",
        env="CLASSMESH_ICE_ADDRESSES",
        action="append",
        default=[],
        help="address to announce in ICE candidates (repeatable)",
    )
    add_option(
        rec,
        "--transport",
        env="CLASSMESH_RECORDER_TRANSPORT",
        choices=("plain", "webrtc"),
        default="plain",
        help="how media reaches the recorder: plain RTP on the private network (cheap) or a WebRTC connection",
    )
    add_option(
        rec,
        "--rtp-address",
        env="CLASSMESH_RTP_ADDRESS",
        default="",
        help="this host's address on the media nodes' network, for plain RTP (default: the first --ice-address, "
        "else the address this host's name resolves to)",
    )

    link = sub.add_parser(
        "join-link", help="mint a join token and print the classroom URL", description=_doc("join-link")
    )
    add_option(link, "--room", required=True, help="room id")
    add_option(link, "--name", required=True, help="display name")
    add_option(
        link, "--role", default="student", choices=["instructor", "student", "observer", "recorder"], help="role"
    )
    add_option(link, "--identity", default="", help="stable identity (default: derived from the name)")
    add_option(link, "--region", default="", help="region to place the room in when it is new")
    add_option(link, "--ttl", default="2h", help="how long the link stays valid (90s, 15m, 2h, 1d)")
    add_option(link, "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where the dev signing key lives")
    add_option(
        link,
        "--private-key",
        env="CLASSMESH_TOKEN_PRIVATE_KEY",
        type=Path,
        default=None,
        help="PEM signing key (default: the dev key under --data-dir)",
    )
    add_option(link, "--signaling-url", default="http://127.0.0.1:8701", help="the signaling server's public URL")
    return parser


def _orchestrator_options(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--database", default="", help="database URL (default: SQLite under --data-dir)")
    add_option(parser, "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where dev keys and SQLite live")
    add_option(
        parser,
        "--private-key",
        env="CLASSMESH_TOKEN_PRIVATE_KEY",
        type=Path,
        default=None,
        help="PEM file of the token signing key (default: the dev key under --data-dir)",
    )
    add_option(parser, "--public-url", default="", help="URL of the orchestrator's API")
    add_option(parser, "--signaling-url", default="http://127.0.0.1:8701", help="signaling URL used in join links")
    add_option(
        parser,
        "--recordings",
        default=None,
        help="the recorders' storage, a shared directory or s3://bucket/prefix?endpoint=URL (the recorders'"
        " --storage); final recordings go there too (default <data-dir>/recordings)",
    )
    _notification_options(parser)


def _notification_options(parser: argparse.ArgumentParser) -> None:
    add_option(
        parser,
        "--notify-channel",
        default="webhook",
        choices=["webhook", "smtp", "log"],
        help="how reminders, change notices, post-session messages and absence alerts go out: webhook (a "
        "notification.due event; your booking system sends them), smtp (classmesh emails them) or log (written to "
        "the log with their join links: for development)",
    )
    add_option(
        parser,
        "--reminder-offsets",
        type=duration_list,
        default="24h,15m",
        help="reminders before a session, e.g. 24h,15m",
    )
    add_option(
        parser,
        "--absence-minutes",
        type=int,
        default=5,
        help="alert a guardian when a student has not joined this long after the start",
    )
    add_option(parser, "--smtp-host", default="127.0.0.1", help="SMTP server (with --notify-channel smtp)")
    add_option(parser, "--smtp-port", type=int, default=25, help="SMTP port")
    add_option(parser, "--smtp-from", default="classmesh <noreply@localhost>", help="From: of notification emails")
    add_option(
        parser,
        "--smtp-security",
        default="auto",
        choices=["auto", "starttls", "tls", "none"],
        help="auto: STARTTLS when the server offers it",
    )
    add_option(parser, "--smtp-username", default="", help="SMTP login (none when empty)")
    add_option(parser, "--smtp-password", default="", help="SMTP password (prefer the environment variable)")


def _doc(command: str) -> str:
    docs = {
        "dev": "Start the orchestrator, signaling, one media node per region and two recorders in one process "
        "on loopback, with SQLite and the in-process bus (or Redis with --redis). Prints every URL.",
        "orchestrator": "The control plane: booking API under /v1, placement, provisioning, the ops dashboard.",
        "signaling": "The browsers' WebSocket (/ws) and the classroom page (/room/<room>?token=...).",
        "media": "One SFU node: forwards RTP between participants of its rooms without decoding.",
        "recorder": "A worker that records rooms as a hidden participant into segmented files.",
        "join-link": "Mint a join token signed with the orchestrator's key and print the browser URL.",
    }
    return docs[command]


def default_database_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{(data_dir / 'classmesh.db').resolve()}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # the version a node announces (placement never mixes versions in a room; rollouts wait for it):
    # the package's, unless the deployment labels its build with CLASSMESH_VERSION
    version = os.environ.get("CLASSMESH_VERSION") or __version__
    if args.command == "join-link":
        return _join_link(args)
    configure_logging(args.log_format, args.log_level)
    from core.service import run

    if args.command == "dev":
        from classmesh.dev import run_dev

        return run(lambda: run_dev(args, version))
    if args.command == "orchestrator" and args.orchestrator_command == "rollout":
        from classmesh.services import rollout_command

        return asyncio.run(rollout_command(args))
    if args.command == "orchestrator" and args.orchestrator_command == "api-key":
        from classmesh.services import api_key_command

        return asyncio.run(api_key_command(args))
    from classmesh import services

    common = common_from_args(args, version)
    builders = {
        "orchestrator": services.run_orchestrator,
        "signaling": services.run_signaling,
        "media": services.run_media,
        "recorder": services.run_recorder,
    }
    return run(lambda: builders[args.command](args, common))


def _join_link(args: argparse.Namespace) -> int:
    from core.ids import is_valid_id
    from core.tokens import TokenIssuer, load_or_create_dev_keys, parse_duration

    if not is_valid_id(args.room):
        print(f"classmesh join-link: invalid --room {args.room!r} (letters, digits, '-', '_', '.')", file=sys.stderr)
        return 2
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        print(f"classmesh join-link: --ttl: {exc}", file=sys.stderr)
        return 2
    key_path = args.private_key or load_or_create_dev_keys(args.data_dir / "keys")[0]
    issuer = TokenIssuer.from_file(key_path)
    identity = args.identity or "".join(c if c.isalnum() else "-" for c in args.name.lower()).strip("-") or "user"
    token = issuer.mint(
        room=args.room, identity=identity, name=args.name, role=args.role, ttl_s=ttl, region=args.region or None
    )
    print(f"{args.signaling_url.rstrip('/')}/room/{args.room}?token={token}")
    return 0
