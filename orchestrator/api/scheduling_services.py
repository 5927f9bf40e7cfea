"""The scheduling operations behind the API (series edits, substitutions, optimisation jobs), under one app key.

``build_api_app`` builds them from the store and the ``ApiHooks`` (the engine's gate is a fresh scoped snapshot
per request, so they need nothing else) and closes them with the API application.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from orchestrator.api.hooks import ApiHooks, BookingChange
from orchestrator.optimization_runner import OptimizationRunner
from orchestrator.scheduling_gate import SchedulingGate
from orchestrator.scheduling_support import ChangeKind
from orchestrator.series_editor import SeriesEditor
from orchestrator.store import Store
from orchestrator.store.models import Booking, Instructor, JoinLink, Session, Substitution
from orchestrator.substitution_desk import SubstitutionDesk

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SchedulingServices:
    series: SeriesEditor
    substitutions: SubstitutionDesk
    optimizations: OptimizationRunner

    @classmethod
    def build(cls, store: Store, hooks: ApiHooks) -> SchedulingServices:
        gate = SchedulingGate(store)

        async def notify(
            kind: ChangeKind, booking: Booking, sessions: Sequence[Session], previous: Booking | None = None
        ) -> None:
            change = BookingChange(kind, booking, tuple(sessions), previous)
            hooks.events_emitted()
            try:
                await hooks.on_booking_changed(change)
            except Exception:  # committed; provisioning catches up from the store
                logger.exception(
                    "booking=%s on_booking_changed hook failed kind=%s", change.booking.booking_id, change.kind
                )

        async def links_revoked(links: Sequence[JoinLink]) -> None:
            hooks.events_emitted()
            await hooks.join_links_revoked(links)

        return cls(
            SeriesEditor(store, gate, notify),
            SubstitutionDesk(store, gate, notify, links_revoked),
            OptimizationRunner(store, gate, notify, links_revoked),
        )

    async def leave_recorded(self, before: Instructor, after: Instructor) -> list[Substitution]:
        """Cover the sessions a new leave overlaps; the leave itself is already committed, so never fail it."""
        try:
            return await self.substitutions.leave_recorded(before, after)
        except Exception:
            logger.exception(
                "instructor=%s leave recorded but its sessions were not covered; use instructor-cancel per session",
                after.instructor_id,
            )
            return []

    async def on_cleanup(self, _app: web.Application) -> None:
        await self.optimizations.close()


SCHEDULING = web.AppKey("classmesh.api.scheduling", SchedulingServices)
