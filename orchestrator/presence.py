"""PresenceConsumer: turns the media nodes' presence events into attendance, engagement, session state and
webhooks.

Reads the durable event stream in the consumer group ``orchestrator`` (every replica is a consumer; each event
goes to one of them). An event is acknowledged only after the store has it, and events left pending by a
replica that died are claimed by another after ``claim_after_ms``: nothing is lost. Handling is idempotent
(a session already live is not started again; a redelivered join adds an attendance row for the same
interval, which attendance reports merge). An event that fails five times in a row in one consumer is logged
whole and dropped (``classmesh_orchestrator_presence_events_dropped_total``) so that it cannot hold back the
events behind it; a store that is down makes every event fail, and they are retried until it is back.

Engagement (``orchestrator/store/engagement.py``): a stretch of speech ending (``speaking_stopped`` with its
``segment_ms``), a chat message, a raised hand, a reaction, a poll or comprehension-check answer, and a question
put to the room. Lowered hands, and speech from nodes older than ``segment_ms``, are not engagement and are
skipped.

Rooms that are not sessions (ad-hoc rooms from ``classmesh join-link``) are acknowledged and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from core.bus import Bus, Delivery
from core.messages import EVENTS_STREAM, MessageError, PresenceEvent, decode
from orchestrator.errors import InvalidStateError, NotFoundError
from orchestrator.metrics import ENGAGEMENT_EVENTS, EVENTS_DROPPED
from orchestrator.store import Store
from orchestrator.store.engagement import EngagementEvent
from orchestrator.store.models import Session, SessionStatus

logger = logging.getLogger(__name__)

GROUP = "orchestrator"
MAX_ATTEMPTS = 5


class PresenceConsumer:
    def __init__(
        self,
        bus: Bus,
        store: Store,
        *,
        consumer: str | None = None,
        claim_after_ms: int = 10_000,
        claim_every: int = 10,
        retry_after_s: float = 1.0,
        on_events: Callable[[], None] = lambda: None,
    ) -> None:
        self._bus = bus
        self._store = store
        self._consumer = consumer or f"orchestrator-{uuid.uuid4().hex[:8]}"
        self._claim_after_ms = claim_after_ms
        self._claim_every = claim_every  # rounds between looks at events other consumers left pending
        self._retry_after_s = retry_after_s
        self._on_events = on_events
        self._failures: dict[str, int] = {}  # delivery id -> failed attempts in this process

    async def run(self) -> None:
        await self._bus.ensure_group(EVENTS_STREAM, GROUP)
        rounds = 0
        while True:
            try:
                batch = await self._bus.read_group(EVENTS_STREAM, GROUP, self._consumer, count=64, block_ms=1000)
                rounds += 1
                if rounds % self._claim_every == 0:
                    batch += await self._bus.claim_stale(
                        EVENTS_STREAM, GROUP, self._consumer, min_idle_ms=self._claim_after_ms
                    )
                for delivery in batch:
                    try:
                        await self._handle(delivery)
                    except Exception:
                        if not self._give_up(delivery):
                            raise  # retried: the event stays pending and is claimed again
                    else:
                        self._failures.pop(delivery.id, None)
                    await self._bus.ack(EVENTS_STREAM, GROUP, delivery.id)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("presence consumer round failed; retrying")
                await asyncio.sleep(self._retry_after_s)

    def _give_up(self, delivery: Delivery) -> bool:
        """After ``MAX_ATTEMPTS`` failures of one event here, log it whole and let it go: an event that can never
        be stored must not hold back the ones behind it. Fewer: it is retried (the store may be down)."""
        attempts = self._failures[delivery.id] = self._failures.get(delivery.id, 0) + 1
        if attempts < MAX_ATTEMPTS:
            return False
        del self._failures[delivery.id]
        EVENTS_DROPPED.inc()
        logger.error("presence: dropped event id=%s after %d failures: %.500r", delivery.id, attempts, delivery.payload)
        return True

    async def _handle(self, delivery: Delivery) -> None:
        try:
            event = decode(delivery.payload)
        except MessageError as exc:
            logger.warning("presence: dropped event id=%s: %s", delivery.id, exc)
            return
        if not isinstance(event, PresenceEvent) or event.role == "recorder":
            return
        if event.event in ("published", "left"):
            # the interval media was sent, for the recording's coverage (a no-op when the session is not recorded)
            await self._store.note_recording_media(event.room_id, event.at)
        if event.event not in ("joined", "left", "speaking_stopped", "data"):
            return
        try:
            session = await self._store.get_session(event.room_id)
        except NotFoundError:
            return
        at = datetime.fromtimestamp(event.at, UTC)
        if event.event in ("speaking_stopped", "data"):
            await self._engagement(session, event, at)
            return
        if event.event == "joined":
            await self._store.record_join(session.session_id, event.identity, event.role, at=at)
            if session.status is SessionStatus.PROVISIONED:
                try:
                    await self._store.update_session(
                        session.session_id,
                        status=SessionStatus.LIVE,
                        event_type="session.started",
                        if_status=SessionStatus.PROVISIONED,
                    )
                except InvalidStateError:
                    pass
        else:
            await self._store.record_leave(session.session_id, event.identity, at=at)
        self._on_events()

    async def _engagement(self, session: Session, event: PresenceEvent, at: datetime) -> None:
        found = engagement_row(event)
        if found is None:
            return
        kind, value, details = found
        record = EngagementEvent(session.session_id, event.identity, event.role, kind, at, value, details)
        source = f"{event.room_id}|{event.participant_id}|{event.node_id}|{event.event}|{event.at!r}"
        if await self._store.record_engagement(record, source):
            ENGAGEMENT_EVENTS.labels(kind).inc()


def engagement_row(event: PresenceEvent) -> tuple[str, float, dict[str, object]] | None:
    """(kind, value, details) of an engagement event, or None when the event is not one."""
    details = event.details
    if event.event == "speaking_stopped":
        segment = details.get("segment_ms")
        if not isinstance(segment, int | float) or segment <= 0:
            return None
        return "talk", float(segment) / 1000, {}
    kind, body = details.get("kind"), details.get("body")
    if not isinstance(body, dict):
        return None
    if kind == "chat":
        text = body.get("text")
        return "chat", 1.0, {"chars": len(text) if isinstance(text, str) else 0}
    if kind == "hand":
        return ("hand", 1.0, {}) if body.get("raised") is True else None
    if kind == "reaction":
        emoji = body.get("emoji")
        return "reaction", 1.0, {"emoji": emoji[:16]} if isinstance(emoji, str) else {}
    if kind in ("poll_answer", "check_answer"):
        return str(kind), 1.0, {"poll_id": str(body.get("poll_id"))[:128], "choice": _index(body.get("choice"))}
    if kind in ("poll", "check"):
        options = body.get("options")
        asked: dict[str, object] = {
            "poll_id": str(body.get("poll_id"))[:128],
            "check": kind == "check",
            "question": str(body.get("question", ""))[:500],
            "options": [str(o)[:200] for o in options[:8]] if isinstance(options, list) else [],
        }
        if kind == "check":
            asked["correct"] = _index(body.get("correct"))
        return "question", 1.0, asked
    return None


def _index(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
