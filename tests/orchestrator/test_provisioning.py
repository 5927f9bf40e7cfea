"""Provisioning on a running orchestrator: on demand when someone joins early, and cascades when a booking
changes (nothing is left orphaned on a node)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from classmesh.client import ClassroomClient
from core.messages import room_key
from orchestrator.api.hooks import BookingChange
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
from tests.classmesh.test_client import eventually


async def book(store: Any, start: datetime) -> str:
    await store.create_subject(Subject("math", "Maths"))
    await store.create_instructor(
        Instructor(
            "ins",
            "Ada",
            "ada@example.org",
            "UTC",
            {"math": 5},  # type: ignore[arg-type]
            tuple(WeeklyWindow(d, "00:00", "24:00") for d in range(7)),
        )
    )
    await store.create_student(Student("s1", "Sam", "UTC", country="US", levels={"math": 1}))  # type: ignore[arg-type]
    draft = BookingDraft(
        subject_id="math",
        student_ids=("s1",),
        instructor_id="ins",
        start=start,  # type: ignore[arg-type]
        duration_minutes=60,
    )
    _, sessions = await store.create_booking(draft, [Occurrence(0, start, start + timedelta(hours=1), "ins")])  # type: ignore[arg-type]
    return str(sessions[0].session_id)


async def events(store: Any, event_type: str) -> list[dict[str, Any]]:
    async with store.read() as c:
        rows = (
            (await c.execute(sa.select(t.webhook_outbox.c.payload).where(t.webhook_outbox.c.event_type == event_type)))
            .scalars()
            .all()
        )
    return list(rows)


async def test_joining_early_provisions_the_session_in_its_region(stack: Any) -> None:
    store = stack.orchestrator.store
    start = (datetime.now(UTC) + timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    session_id = await book(store, start)
    assert (await store.get_session(session_id)).status is SessionStatus.SCHEDULED
    _url, token, _ = await stack.orchestrator._mint_join_link(await store.get_session(session_id), "s1", "student")
    client = ClassroomClient(stack.signaling_url, token, room=session_id)
    try:
        await client.connect()
        session = await store.get_session(session_id)
        # a student in the US: placed in us-east although the token carries no region
        assert session.status in (SessionStatus.PROVISIONED, SessionStatus.LIVE)
        assert session.region == "us-east" and session.node_id == "us-east-1"
        assert await stack.bus.kv_get(room_key(session_id)) == "us-east-1"
        assert len(await events(store, "session.provisioned")) == 1
    finally:
        await client.close()


async def test_cancelling_a_provisioned_booking_closes_its_room(stack: Any) -> None:
    store = stack.orchestrator.store
    start = (datetime.now(UTC) + timedelta(minutes=6)).replace(second=0, microsecond=0)
    start += timedelta(minutes=(5 - start.minute % 5) % 5)
    session_id = await book(store, start)
    provisioner = stack.orchestrator.provisioner
    await provisioner.provision_due()
    session = await store.get_session(session_id)
    assert session.status is SessionStatus.PROVISIONED
    node = next(
        h.service for h in stack.hosts if h.service.name == "media" and h.service.config.node_id == session.node_id
    )
    assert session_id in node.rooms
    _, sessions = (
        (await store.cancel_booking(session.booking_id))[0],
        await store.sessions_of_booking(session.booking_id),
    )

    booking = await store.get_booking(session.booking_id)
    await stack.orchestrator._on_booking_changed(BookingChange("cancelled", booking, tuple(sessions)))
    await eventually(lambda: session_id not in node.rooms, within=5)
    assert await stack.bus.kv_get(room_key(session_id)) is None
    assert (await store.get_session(session_id)).status is SessionStatus.CANCELLED
