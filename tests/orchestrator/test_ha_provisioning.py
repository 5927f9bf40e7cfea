"""Two orchestrator processes on one PostgreSQL and one Redis provision 200 sessions: none twice, none missed,
even when the leader is killed half-way."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from orchestrator.store import Store
from orchestrator.store import schema as t
from orchestrator.store.models import (
    BookingDraft,
    Instructor,
    Occurrence,
    SessionStatus,
    Student,
    Subject,
    WeeklyWindow,
)
from tests.multiproc import Fleet, http_json

pytestmark = [pytest.mark.multiprocess, pytest.mark.postgres]

SESSIONS = 200


async def seed(url: str) -> None:
    store = await Store.open(url)
    try:
        await store.create_subject(Subject("math", "Maths"))  # type: ignore[arg-type]
        start = (datetime.now(UTC) + timedelta(minutes=1)).replace(second=0, microsecond=0)
        start += timedelta(minutes=(5 - start.minute % 5) % 5)
        always = tuple(WeeklyWindow(d, "00:00", "24:00") for d in range(7))
        for i in range(SESSIONS):
            await store.create_instructor(
                Instructor(f"i{i}", f"I{i}", f"i{i}@example.org", "UTC", {"math": 5}, always)  # type: ignore[arg-type]
            )
            await store.create_student(Student(f"s{i}", f"S{i}", "UTC", country="DE", levels={"math": 1}))  # type: ignore[arg-type]
            draft = BookingDraft(
                subject_id="math",
                student_ids=(f"s{i}",),
                instructor_id=f"i{i}",
                start=start,  # type: ignore[arg-type]
                duration_minutes=30,
            )
            await store.create_booking(draft, [Occurrence(0, start, start + timedelta(minutes=30), f"i{i}")])  # type: ignore[arg-type]
    finally:
        await store.close()


async def provisioned(url: str) -> tuple[int, Counter[str]]:
    store = await Store.open(url, migrate=False)
    try:
        async with store.read() as c:
            done = (
                await c.execute(
                    sa.select(sa.func.count())
                    .select_from(t.sessions)
                    .where(t.sessions.c.status == SessionStatus.PROVISIONED.value)
                )
            ).scalar_one()
            rows = (
                (
                    await c.execute(
                        sa.select(t.webhook_outbox.c.payload).where(
                            t.webhook_outbox.c.event_type == "session.provisioned"
                        )
                    )
                )
                .scalars()
                .all()
            )
        return int(done), Counter(r["session"]["session_id"] for r in rows)
    finally:
        await store.close()


async def test_two_orchestrators_provision_every_session_exactly_once(
    tmp_path: Path, redis_server: Any, pg_url: str
) -> None:
    await seed(pg_url)
    fleet = Fleet(tmp_path, redis_server.url, {"eu-central": ["eu-1", "eu-2"]})
    try:
        first = fleet.start_orchestrator("orch-a", database=pg_url)
        second = fleet.start_orchestrator("orch-b", database=pg_url)
        for node_id in ("eu-1", "eu-2"):
            fleet.start_media(node_id, "--capacity", "5000")
        for proc in fleet.procs.values():
            proc.wait_ready()
        # kill whichever replica leads once provisioning is under way
        deadline = time.monotonic() + 60
        killed = None
        while time.monotonic() < deadline:
            done, _ = await provisioned(pg_url)
            if killed is None and done >= 20:
                leader = next(p for p in (first, second) if (http_json(f"{p.url}/healthz")[1] or {}).get("leader"))
                leader.kill()
                killed = leader.name
            if done == SESSIONS:
                break
            await asyncio.sleep(0.2)
        done, events = await provisioned(pg_url)
        assert killed is not None
        assert done == SESSIONS, f"{done} of {SESSIONS} provisioned"
        assert len(events) == SESSIONS and set(events.values()) == {1}, "a session.provisioned event twice"
        r = redis.Redis.from_url(redis_server.url, decode_responses=True)
        # every session's room is on exactly one of this test's nodes (other tests share this redis-server)
        rooms = {sid: r.get(f"room:{sid}:node") for sid in events}
        assert all(node in ("eu-1", "eu-2") for node in rooms.values()), rooms
        hosted = sum(int(http_json(f"{fleet.procs[n].url}/v1/node")[1]["rooms"]) for n in ("eu-1", "eu-2"))
        assert hosted == SESSIONS  # every room exists once, on one node
    finally:
        fleet.stop_all()
