"""Provisioning: every session gets its room ahead of its start, exactly once, and loses it when it changes.

States of a session as provisioning sees them::

    scheduled --(start - lead time)--> provisioned --(first participant joins)--> live --(end + grace, empty)--> ended
        \\______________________________ cancelled (booking cancelled) ___________________________________/

- ``provision_due`` (leader only) picks sessions still ``scheduled`` whose start is within the lead time (default
  10 minutes), chooses the region that minimises the worst round trip of its participants, places the room on a
  node (``room_id`` = the session id), and records ``provisioned`` with the region and node **as a compare-and-set
  on status=scheduled**, emitting ``session.provisioned`` in the same transaction. A second replica or a restart
  that races on the same session loses the compare-and-set and does nothing: the room is created at most once
  (placement is idempotent per room) and the event is written once.
- ``provision_now`` does the same on demand (an API call or a join before the lead time).
- ``close_finished`` (leader only) ends sessions past their end plus a grace period and closes their rooms.
- ``booking_changed`` cascades a booking change: a cancelled session's room is closed; a provisioned session
  moved beyond the lead time is returned to ``scheduled`` and its room closed, so nothing stays orphaned.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from core.regions import Regions
from orchestrator.api.hooks import BookingChange
from orchestrator.errors import InvalidStateError, NotFoundError
from orchestrator.geo import locate
from orchestrator.placement import Location, PlacementError, RegionSelector
from orchestrator.rounds import every
from orchestrator.store import Store
from orchestrator.store.models import Session, SessionStatus

logger = logging.getLogger(__name__)

Place = Callable[[str, str, int], Awaitable[str]]  # (room_id, region, participants) -> node_id
CloseRoom = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ProvisioningConfig:
    lead_time: timedelta = timedelta(minutes=10)
    end_grace: timedelta = timedelta(minutes=5)
    interval_s: float = 2.0


class Provisioner:
    def __init__(
        self,
        store: Store,
        regions: Regions,
        region_selector: RegionSelector,
        place: Place,
        close_room: CloseRoom,
        config: ProvisioningConfig | None = None,
        *,
        on_events: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._regions = regions
        self._selector = region_selector
        self._place = place
        self._close_room = close_room
        self.config = config or ProvisioningConfig()
        self._on_events = on_events

    async def run(self, fencing_token: int) -> None:
        """The leader's loop."""
        logger.info("provisioning loop started token=%d", fencing_token)
        await every(self.config.interval_s, self.run_once, "provisioning")

    async def run_once(self) -> None:
        await self.provision_due()
        await self.close_finished()

    async def locations(self, session: Session) -> list[Location]:
        students = await self._store.get_students(session.student_ids)
        points = [locate(latitude=s.latitude, longitude=s.longitude, country=s.country) for s in students]
        return [p for p in points if p is not None]

    async def choose_region(self, session: Session) -> str:
        return self._selector.choose(self._regions, await self.locations(session)).name

    async def provision_due(self, now: datetime | None = None) -> int:
        now = now or datetime.now(UTC)
        due = await self._store.sessions_in_status(SessionStatus.SCHEDULED, starts_before=now + self.config.lead_time)
        done = 0
        for session in due:
            if session.end <= now:
                continue  # missed entirely: nothing to provision (the dashboard shows it as missed)
            if await self.provision_now(session) is not None:
                done += 1
        return done

    async def provision_now(self, session: Session) -> Session | None:
        try:
            region = await self.choose_region(session)
            node_id = await self._place(session.session_id, region, 1 + len(session.student_ids))
        except PlacementError as exc:
            logger.error("session=%s could not be placed: %s", session.session_id, exc)
            return None
        try:
            updated = await self._store.update_session(
                session.session_id,
                status=SessionStatus.PROVISIONED,
                room_id=session.session_id,
                region=region,
                node_id=node_id,
                event_type="session.provisioned",
                if_status=SessionStatus.SCHEDULED,
            )
        except (InvalidStateError, NotFoundError):
            logger.info("session=%s already provisioned elsewhere", session.session_id)
            return None
        self._on_events()
        logger.info("session=%s provisioned region=%s node=%s", session.session_id, region, node_id)
        return updated

    async def close_finished(self, now: datetime | None = None) -> int:
        now = now or datetime.now(UTC)
        closed = 0
        for status in (SessionStatus.LIVE, SessionStatus.PROVISIONED):
            for session in await self._store.sessions_in_status(status, ends_before=now - self.config.end_grace):
                try:
                    await self._store.update_session(
                        session.session_id, status=SessionStatus.ENDED, event_type="session.ended", if_status=status
                    )
                except (InvalidStateError, NotFoundError):
                    continue
                await self._close_room(session.session_id)
                closed += 1
        if closed:
            self._on_events()
        return closed

    async def end_now(self, session_id: str) -> Session:
        """End a provisioned or live session at once (the instructor closes the class early)."""
        session = await self._store.get_session(session_id)
        if session.status not in (SessionStatus.PROVISIONED, SessionStatus.LIVE):
            raise InvalidStateError(
                f"session {session_id} is {session.status.value}; only a provisioned or live one ends"
            )
        updated = await self._store.update_session(
            session_id, status=SessionStatus.ENDED, event_type="session.ended", if_status=session.status
        )
        await self._close_room(session_id)
        self._on_events()
        logger.info("session=%s ended on request", session_id)
        return updated

    async def booking_changed(self, change: BookingChange) -> None:
        now = datetime.now(UTC)
        for session in change.sessions:
            if session.status is SessionStatus.CANCELLED or change.kind == "cancelled":
                await self._close_room(session.session_id)
            elif session.status is SessionStatus.PROVISIONED and session.start > now + self.config.lead_time:
                try:
                    await self._store.update_session(
                        session.session_id, status=SessionStatus.SCHEDULED, if_status=SessionStatus.PROVISIONED
                    )
                except (InvalidStateError, NotFoundError):
                    continue
                await self._close_room(session.session_id)
                logger.info("session=%s moved beyond the lead time: room released", session.session_id)
