"""The store's session documents: one per ended session, drafted by the system, completed by its instructor.

The draft is written once (insert-if-absent, so two replicas or a restarted leader never write two) in the same
transaction as its ``session.documented`` webhook, which also logs the curriculum unit the session covered.
Completing it adds the instructor's notes and what they actually covered; the draft itself never changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.errors import NotFoundError
from orchestrator.store import schema as t
from orchestrator.store.models import SessionStatus
from orchestrator.store.outbox import emit_event

MAX_SESSION = timedelta(days=1)  # bookings last 12 hours at most (the API): bounds scans on the indexed start


@dataclass(frozen=True, slots=True)
class SessionDocument:
    session_id: str
    status: str  # draft | completed
    draft: dict[str, Any]
    notes: str | None
    curriculum_covered: str | None
    completed_by: str | None
    completed_at: datetime | None
    created_at: datetime
    updated_at: datetime


def _document(r: sa.Row[Any]) -> SessionDocument:
    return SessionDocument(
        r.session_id,
        r.status,
        r.draft,
        r.notes,
        r.curriculum_covered,
        r.completed_by,
        r.completed_at,
        r.created_at,
        r.updated_at,
    )


class DocumentsStore:
    """Mixed into ``Store``."""

    if TYPE_CHECKING:  # provided by Store

        def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

        def read(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

    async def add_document_draft(self, session_id: str, booking_id: str, draft: dict[str, Any]) -> bool:
        """Write a session's draft unless it has one; emits ``session.documented``. True when written now."""
        now = datetime.now(UTC)
        async with self.transaction() as c:
            values = {"session_id": session_id, "status": "draft", "draft": draft, "created_at": now, "updated_at": now}
            if not await t.insert_if_absent(c, t.session_documents, values):
                return False
            await emit_event(
                c,
                "session.documented",
                {"session_id": session_id, "booking_id": booking_id, "curriculum_unit": draft.get("curriculum_unit")},
                booking_id,
                now=now,
            )
        return True

    async def get_document(self, session_id: str) -> SessionDocument:
        async with self.read() as c:
            r = (
                await c.execute(sa.select(t.session_documents).where(t.session_documents.c.session_id == session_id))
            ).first()
        if r is None:
            raise NotFoundError("session document", session_id)
        return _document(r)

    async def documents_of(self, session_ids: Sequence[str]) -> dict[str, SessionDocument]:
        """The documents of those sessions that have one."""
        if not session_ids:
            return {}
        d = t.session_documents
        async with self.read() as c:
            rows = await c.execute(sa.select(d).where(d.c.session_id.in_(list(session_ids))))
            return {r.session_id: _document(r) for r in rows}

    async def complete_document(
        self, session_id: str, *, notes: str, curriculum_covered: str | None, completed_by: str
    ) -> SessionDocument:
        """The instructor's notes; completing again replaces them (the draft stays as written)."""
        now = datetime.now(UTC)
        d = t.session_documents
        async with self.transaction() as c:
            done = await c.execute(
                d.update()
                .where(d.c.session_id == session_id)
                .values(
                    status="completed",
                    notes=notes,
                    curriculum_covered=curriculum_covered,
                    completed_by=completed_by,
                    completed_at=now,
                    updated_at=now,
                )
            )
            if not done.rowcount:
                raise NotFoundError("session document", session_id)
            r = (await c.execute(sa.select(d).where(d.c.session_id == session_id))).one()
        return _document(r)

    async def ended_sessions_without_document(self, since: datetime, *, limit: int = 100) -> list[str]:
        """Ended sessions (ending at or after ``since``) that have no document yet, oldest first."""
        s, d = t.sessions, t.session_documents
        async with self.read() as c:
            rows = await c.execute(
                sa.select(s.c.session_id)
                .outerjoin(d, d.c.session_id == s.c.session_id)
                .where(
                    s.c.status == SessionStatus.ENDED.value,
                    s.c.starts_at >= since - MAX_SESSION,  # on the starts_at index: this runs every half minute
                    s.c.ends_at >= since,
                    d.c.session_id.is_(None),
                )
                .order_by(s.c.ends_at, s.c.session_id)
                .limit(limit)
            )
            return list(rows.scalars())

    async def documents_in_draft(
        self, created_before: datetime, *, unflagged: bool = False, limit: int = 500
    ) -> list[SessionDocument]:
        """Drafts older than ``created_before``; with ``unflagged``, only those without a ``documentation_missing``
        exception yet (open or not), so old drafts never crowd out new ones."""
        d, e = t.session_documents, t.exceptions
        cond = sa.and_(d.c.status == "draft", d.c.created_at < created_before)
        if unflagged:
            flagged = sa.select(e.c.exception_id).where(
                e.c.dedup_key == sa.literal("documentation_missing:") + d.c.session_id
            )
            cond = sa.and_(cond, ~flagged.exists())
        async with self.read() as c:
            rows = await c.execute(sa.select(d).where(cond).order_by(d.c.created_at).limit(limit))
            return [_document(r) for r in rows]
