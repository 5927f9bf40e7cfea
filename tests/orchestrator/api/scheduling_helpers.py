"""Shared set-up of the scheduling-operations API tests: an organisation, the gated API, and what it recorded.

Everything runs against the real API (aiohttp test client), the real store (SQLite and PostgreSQL through the
``store`` fixture) and the real scheduling engine; the hooks only record what they were told.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from orchestrator.api import ApiHooks, BookingChange, create_api_key
from orchestrator.scheduling_gate import SchedulingGate, engine_instructor, engine_student
from orchestrator.store import Store
from orchestrator.store import schema as t
from orchestrator.store.models import JoinLink, Session
from tests.orchestrator.api.conftest import Api, ApiFactory
from tests.orchestrator.scheduling.checker import Finding, check_schedule

WEEKDAYS = [{"weekday": d, "start": "08:00", "end": "20:00"} for d in range(5)]


@dataclass
class Recorded:
    """What the API told its hooks."""

    changes: list[BookingChange] = field(default_factory=list)
    revoked: list[JoinLink] = field(default_factory=list)

    async def on_booking_changed(self, change: BookingChange) -> None:
        self.changes.append(change)

    async def join_links_revoked(self, links: Sequence[JoinLink]) -> None:
        self.revoked.extend(links)


@dataclass
class Org:
    api: Api
    recorded: Recorded

    @property
    def store(self) -> Store:
        return self.api.store

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": self.api.auth(token)}
        if body is not None:
            kwargs["json"] = body
        resp = await self.api.client.request(method, f"/v1{path}", **kwargs)
        return resp.status, await resp.json()

    async def post(self, path: str, body: dict[str, Any] | None = None, *, token: str | None = None) -> tuple[int, Any]:
        return await self.call("POST", path, body, token=token)

    async def get(self, path: str, *, token: str | None = None) -> tuple[int, Any]:
        return await self.call("GET", path, token=token)

    async def key(self, *scopes: str) -> str:
        _, token = await create_api_key(self.store, "limited", scopes)
        return token

    async def book(
        self,
        start: str,
        *,
        instructor: str = "ana",
        students: Sequence[str] = ("s1",),
        minutes: int = 60,
        rrule: str | None = None,
        unit: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "subject_id": "math",
            "student_ids": list(students),
            "instructor_id": instructor,
            "start": start,
            "duration_minutes": minutes,
        }
        if rrule:
            body["rrule"] = rrule
        if unit:
            body["curriculum_unit"] = unit
        status, booking = await self.post("/bookings", body)
        assert status == 201, booking
        return booking

    async def events(self, event_type: str) -> list[dict[str, Any]]:
        """Payloads of the outbox events of one type, oldest first."""
        o = t.webhook_outbox
        async with self.store.read() as c:
            rows = await c.execute(
                sa.select(o.c.payload).where(o.c.event_type == event_type).order_by(o.c.created_at, o.c.event_id)
            )
            return [r.payload for r in rows]

    async def occupancy_of(self, session_id: str) -> set[tuple[str, str, int]]:
        o = t.occupancy
        async with self.store.read() as c:
            rows = await c.execute(
                sa.select(o.c.person_kind, o.c.person_id, o.c.slot).where(o.c.session_id == session_id)
            )
            return {(r.person_kind, r.person_id, r.slot) for r in rows}

    async def findings(self, sessions: Sequence[Session] | None = None) -> list[Finding]:
        """The independent checker's findings over every stored session (or ``sessions``)."""
        instructors = (await self.store.list_instructors(limit=200)).items
        students = (await self.store.list_students(limit=200)).items
        if sessions is None:
            sessions = list((await self.store.list_sessions(limit=200)).items)
        return check_schedule(
            [engine_instructor(i) for i in instructors], [engine_student(s) for s in students], sessions
        )


async def make_org(make_api: ApiFactory, store: Store, *, instructors: Sequence[dict[str, Any]] | None = None) -> Org:
    """The API with the scheduling engine at its seam and a small organisation (all in Europe/Berlin).

    ana, ben and dee teach maths up to level 5 on weekdays 08:00-20:00 local, with a 10-minute buffer; cy only
    up to level 3; students s1 (level 4), s2 and s3 (level 2).
    """
    gate = SchedulingGate(store)
    recorded = Recorded()
    api = await make_api(
        hooks=ApiHooks(
            validate_and_assign=gate.validate_and_assign,
            match=gate.match,
            on_booking_changed=recorded.on_booking_changed,
            join_links_revoked=recorded.join_links_revoked,
        )
    )
    org = Org(api, recorded)
    status, body = await org.post("/subjects", {"subject_id": "math", "name": "Maths"})
    assert status == 201, body
    defaults = {
        "time_zone": "Europe/Berlin",
        "weekly_availability": WEEKDAYS,
        "buffer_minutes": 10,
        "max_sessions_per_day": 6,
        "max_sessions_per_week": 25,
    }
    people = instructors or [
        {"instructor_id": "ana", "qualifications": [{"subject_id": "math", "max_level": 5}]},
        {"instructor_id": "ben", "qualifications": [{"subject_id": "math", "max_level": 5}]},
        {"instructor_id": "cy", "qualifications": [{"subject_id": "math", "max_level": 3}]},
        {"instructor_id": "dee", "qualifications": [{"subject_id": "math", "max_level": 5}]},
    ]
    for person in people:
        body = {
            **defaults,
            "name": person["instructor_id"],
            "email": f"{person['instructor_id']}@example.org",
            **person,
        }
        status, created = await org.post("/instructors", body)
        assert status == 201, created
    for sid, level in (("s1", 4), ("s2", 2), ("s3", 2)):
        status, created = await org.post(
            "/students",
            {
                "student_id": sid,
                "name": sid,
                "time_zone": "Europe/Berlin",
                "country": "DE",
                "levels": [{"subject_id": "math", "level": level}],
            },
        )
        assert status == 201, created
    return org
