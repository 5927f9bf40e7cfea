"""``classmesh dev``: the whole system in one process on loopback.

The orchestrator, one signaling server, one media node per region (ports from regions.yaml) and two recorders
share one event loop and one bus (in-process, or Redis with ``--redis``). State lives under ``--data-dir``: the
SQLite database, the dev token keys and recordings. Prints every URL once all services are ready.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from classmesh.cli import default_database_url
from classmesh.services import build_media, build_orchestrator, build_recorder, build_signaling
from core.bus import Bus, open_bus
from core.regions import Regions, load_regions
from core.service import ServiceHost, run_hosts
from core.tokens import TokenIssuer, TokenVerifier, load_or_create_dev_keys
from orchestrator.api.keys import create_api_key
from orchestrator.app import OrchestratorService
from orchestrator.errors import AlreadyExistsError
from orchestrator.notifications import NotificationConfig
from orchestrator.store.models import (
    BookingDraft,
    Instructor,
    Occurrence,
    Session,
    SessionStatus,
    Student,
    Subject,
    WeeklyWindow,
)

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
            notifications=NotificationConfig(channel="log"),  # nothing would receive notification.due webhooks
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


DEMO_INSTRUCTOR = "demo-instructor"
DEMO_STUDENTS = ("demo-student-1", "demo-student-2")
DEMO_MINUTES = 30


async def demo_class(orchestrator: OrchestratorService) -> tuple[Session, list[tuple[str, str]]]:
    """A booked class to try what needs one (engagement, polls, the session document, the week's report): the
    one running or coming up, or a new one from the next 5-minute mark. Its join links, instructor first."""
    store = orchestrator.store
    with contextlib.suppress(AlreadyExistsError):
        await store.create_subject(Subject("demo-subject", "Demo subject"))
    everyday = tuple(WeeklyWindow(day, "00:00", "24:00") for day in range(7))
    with contextlib.suppress(AlreadyExistsError):
        await store.create_instructor(
            Instructor(
                DEMO_INSTRUCTOR, "Demo Instructor", "instructor@example.org", "UTC", {"demo-subject": 5}, everyday
            )  # type: ignore[arg-type]
        )
    for n, student in enumerate(DEMO_STUDENTS, 1):
        with contextlib.suppress(AlreadyExistsError):
            await store.create_student(Student(student, f"Demo Student {n}", "UTC", levels={"demo-subject": 1}))  # type: ignore[arg-type]
    now = datetime.now(UTC)
    upcoming = await store.list_sessions(instructor_id=DEMO_INSTRUCTOR, start_from=now - timedelta(hours=1))
    session = next(
        (s for s in upcoming.items if s.end > now and s.status not in (SessionStatus.CANCELLED, SessionStatus.ENDED)),
        None,
    )
    if session is None:
        start = (now + timedelta(minutes=5 - now.minute % 5)).replace(second=0, microsecond=0)
        draft = BookingDraft(
            subject_id="demo-subject",  # type: ignore[arg-type]
            student_ids=DEMO_STUDENTS,  # type: ignore[arg-type]
            instructor_id=DEMO_INSTRUCTOR,  # type: ignore[arg-type]
            start=start,
            duration_minutes=DEMO_MINUTES,
            curriculum_unit="demo-unit-1",
        )
        end = start + timedelta(minutes=DEMO_MINUTES)
        _, (session,) = await store.create_booking(draft, [Occurrence(0, start, end, DEMO_INSTRUCTOR)])  # type: ignore[arg-type]
    links = [(DEMO_INSTRUCTOR, "instructor"), *((s, "student") for s in DEMO_STUDENTS)]
    return session, [(pid, (await orchestrator._mint_join_link(session, pid, role))[0]) for pid, role in links]


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
        orchestrator: OrchestratorService = started[0].service  # type: ignore[assignment]
        api_key = await dev_api_key(orchestrator, data_dir)
        booked, booked_links = await demo_class(orchestrator)
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
            f"  a booked demo class, {booked.start:%H:%M}-{booked.end:%H:%M} UTC (engagement, polls, its document, "
            "the week's report):",
            *(f"    {pid + ':':<34}{url}" for pid, url in booked_links),
            "    (its reminders and alerts are written to this log: classmesh dev's notification channel)",
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
