"""The webhook outbox: events are written in the same transaction as the change they describe.

``emit_event`` inserts one ``webhook_outbox`` row and one ``webhook_deliveries`` row per active
subscription that wants the event type. The dispatcher in ``orchestrator/webhooks.py`` delivers them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.store import schema as t
from orchestrator.store.models import DeliveryStatus, EventId, new_id

EVENT_TYPES: Final = (
    "booking.created",
    "booking.rescheduled",
    "booking.cancelled",
    "session.provisioned",
    "session.started",
    "session.ended",
    "session.instructor_changed",
    "session.documented",
    "participant.joined",
    "participant.left",
    "recording.ready",
    "recording.failed",
    "notification.due",
    "exception.opened",
    "exception.resolved",
)


async def emit_event(
    conn: AsyncConnection,
    event_type: str,
    payload: dict[str, Any],
    ordering_key: str | None,
    *,
    now: datetime | None = None,
    event_id: str | None = None,
) -> EventId:
    """Record ``event_type`` with ``payload`` for delivery to every interested subscription.

    Call it inside the transaction that makes the change. Events sharing an ``ordering_key`` (a booking
    id) reach each subscriber in the order they were emitted. ``event_id`` makes the id (and so every
    delivery's ``webhook-id``) stable when the caller has one: a second emit with it fails on the primary key.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    now = now or datetime.now(UTC)
    stable_id = EventId(event_id or new_id("msg"))
    await conn.execute(
        t.webhook_outbox.insert().values(
            event_id=stable_id,
            event_type=event_type,
            payload=payload,
            ordering_key=ordering_key,
            created_at=now,
        )
    )
    subs = await conn.execute(
        sa.select(t.webhook_subscriptions.c.subscription_id, t.webhook_subscriptions.c.event_types).where(
            t.webhook_subscriptions.c.active.is_(True)
        )
    )
    rows = [
        {
            "event_id": stable_id,
            "subscription_id": sub_id,
            "ordering_key": ordering_key,
            "attempts": 0,
            "next_attempt_at": now,
            "status": DeliveryStatus.PENDING.value,
            "created_at": now,
        }
        for sub_id, types in subs.all()
        if not types or event_type in types
    ]
    if rows:
        await conn.execute(t.webhook_deliveries.insert(), rows)
    return stable_id
