"""Instructor no-shows: a class whose instructor has not joined ``grace`` after its start needs a person now.

The leader checks every running class (provisioned or live, between its start plus ``grace`` and its end)
every half minute. No attendance from the session's instructor raises ``instructor_no_show:<session>`` (high
severity, with how many students are waiting) for the exception queue and its webhook; the instructor joining
resolves it. A class that ends without its instructor keeps the exception open: it has to be followed up
(rescheduled, the families told).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from orchestrator.rounds import every
from orchestrator.store import Store
from orchestrator.store.codec import iso
from orchestrator.store.models import ExceptionStatus, SessionStatus

logger = logging.getLogger(__name__)

KIND = "instructor_no_show"


@dataclass(frozen=True, slots=True)
class NoShowConfig:
    grace: timedelta = timedelta(minutes=10)
    interval_s: float = 30.0


class NoShowWatch:
    def __init__(self, store: Store, config: NoShowConfig | None = None) -> None:
        self._store = store
        self.config = config or NoShowConfig()

    async def run(self) -> None:
        """The leader's loop."""
        await every(self.config.interval_s, self.run_once, "no-show")

    async def run_once(self, now: datetime | None = None) -> int:
        """Raise or resolve for every running class; returns how many classes are waiting for their instructor."""
        now = now or datetime.now(UTC)
        running = [
            s
            for status in (SessionStatus.PROVISIONED, SessionStatus.LIVE)
            for s in await self._store.sessions_in_status(status, starts_before=now - self.config.grace, limit=1000)
            if s.end > now
        ]
        attendance = await self._store.attendance_for([s.session_id for s in running])
        waiting = 0
        for s in running:
            rows = attendance[s.session_id]
            key = f"{KIND}:{s.session_id}"
            if any(a.participant_id == s.instructor_id for a in rows):
                existing = await self._store.exception_by_key(key)
                if existing is not None and existing.status is not ExceptionStatus.RESOLVED:
                    await self._store.resolve_exception_key(key)
                    logger.info("instructor arrived session=%s instructor=%s", s.session_id, s.instructor_id)
                continue
            waiting += 1
            if await self._store.exception_by_key(key) is not None:
                continue  # raised already (and maybe taken by someone): one per class
            students = sorted({a.participant_id for a in rows if a.participant_id in s.student_ids})
            await self._store.raise_exception(
                key,
                KIND,
                "high",
                subject_refs={"session_id": s.session_id, "instructor_id": s.instructor_id},
                details={"start": iso(s.start), "students_waiting": students},
            )
            logger.warning("instructor no-show session=%s instructor=%s", s.session_id, s.instructor_id)
        return waiting
