"""The notifications outbox in SQL: planning, claiming and the states of a notification.

States of a notification::

    pending --claim--> sending --sent--> sent
       ^  \\              |  \\--retryable failure--> pending (later) --...--> failed (after the last attempt)
       |   \\             |   \\-permanent failure--> failed
       |    \\            \\--claimer gone: webhook -> pending (re-sent; receivers dedupe on its id)
       |     \\                            smtp    -> uncertain (a human decides; never sent twice)
       |      \\--session cancelled / moved / participant removed--> cancelled --planned again--> pending
       \\--------- skipped (the student joined, a later reminder supersedes it, no address) --------

One row per (session, recipient, kind, variant) under a unique key: planning the same thing twice (two replicas,
a restart) creates nothing. ``notification_plans`` keeps, per session, the state its notifications were planned
for; ``reconcile`` compares it with the session as it is now, in one transaction that takes the plan row first
(a compare-and-set on its revision), so a change is announced once however many planners race.

A claim is a compare-and-set pending -> sending that records the claimer, the channel and the leader's fencing
token; every later transition of a claimed row is a compare-and-set on (status, claimer). A claim is refused
while a row is being sent under a newer fencing token (a deposed leader stops taking work).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NewType

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.errors import NotFoundError
from orchestrator.store import codec
from orchestrator.store import schema as t
from orchestrator.store.models import Page, Session, SessionId, SessionStatus, new_id
from orchestrator.store.outbox import emit_event
from orchestrator.store.store import Store

logger = logging.getLogger(__name__)

NotificationId = NewType("NotificationId", str)

NOTIFICATION_EVENT = "notification.due"
MISSED_AFTER = timedelta(hours=1)
"""A session still ``scheduled`` this long after its end never took place: its post-session message is dropped."""


class NotificationKind(enum.StrEnum):
    REMINDER = "reminder"
    SESSION_CHANGED = "session_changed"
    POST_SESSION = "post_session"
    ABSENCE_ALERT = "absence_alert"


class NotificationStatus(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNCERTAIN = "uncertain"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


FINAL_STATUSES = frozenset(
    {NotificationStatus.SENT, NotificationStatus.FAILED, NotificationStatus.UNCERTAIN, NotificationStatus.SKIPPED}
)


@dataclass(frozen=True, slots=True)
class Notification:
    notification_id: NotificationId
    session_id: SessionId
    recipient_id: str
    recipient_role: str
    kind: NotificationKind
    variant: str
    status: NotificationStatus
    due_at: datetime
    next_attempt_at: datetime
    session_start: datetime
    attempts: int
    channel: str | None
    claimed_by: str | None
    fencing_token: int | None
    claimed_at: datetime | None
    sent_at: datetime | None
    address: str | None
    join_link_jti: str | None
    last_error: str | None
    details: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.recipient_id, self.kind.value, self.variant)


@dataclass(frozen=True, slots=True)
class SessionState:
    """What a session's notifications depend on: when, who teaches, who attends, and whether it still happens."""

    start: datetime
    end: datetime
    instructor_id: str
    student_ids: tuple[str, ...]
    cancelled: bool

    @classmethod
    def of(cls, session: Session) -> SessionState:
        return cls(
            session.start,
            session.end,
            session.instructor_id,
            tuple(sorted(session.student_ids)),
            session.status is SessionStatus.CANCELLED,
        )

    def recipients(self) -> dict[str, str]:
        """participant id -> role, the instructor first."""
        out = {self.instructor_id: "instructor"}
        for student_id in self.student_ids:
            out.setdefault(student_id, "student")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "start": codec.iso(self.start),
            "end": codec.iso(self.end),
            "instructor_id": self.instructor_id,
            "student_ids": list(self.student_ids),
            "cancelled": self.cancelled,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SessionState:
        return cls(
            datetime.fromisoformat(raw["start"]),
            datetime.fromisoformat(raw["end"]),
            str(raw["instructor_id"]),
            tuple(sorted(str(s) for s in raw["student_ids"])),
            bool(raw["cancelled"]),
        )


@dataclass(frozen=True, slots=True)
class Wanted:
    """A notification the plan says should exist."""

    recipient_id: str
    recipient_role: str
    kind: NotificationKind
    variant: str
    due_at: datetime
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.recipient_id, self.kind.value, self.variant)


@dataclass(frozen=True, slots=True)
class PlanInput:
    session_id: str
    current: SessionState
    previous: SessionState | None  # None: planned for the first time
    revision: int  # the revision being written (previous revision + 1 on a change)
    existing: tuple[Notification, ...]
    now: datetime


Planner = Callable[[PlanInput], list[Wanted]]


@dataclass(frozen=True, slots=True)
class PlanResult:
    session_id: str
    revision: int
    changed: bool
    planned: tuple[Wanted, ...]  # inserted or planned again
    cancelled: int


class _LostRace(Exception):
    """Another planner holds or took this session's plan row: it does this work."""


def _now() -> datetime:
    return datetime.now(UTC)


def _row(r: sa.Row[Any]) -> Notification:
    return Notification(
        notification_id=NotificationId(r.notification_id),
        session_id=SessionId(r.session_id),
        recipient_id=r.recipient_id,
        recipient_role=r.recipient_role,
        kind=NotificationKind(r.kind),
        variant=r.variant,
        status=NotificationStatus(r.status),
        due_at=r.due_at,
        next_attempt_at=r.next_attempt_at,
        session_start=r.session_start,
        attempts=r.attempts,
        channel=r.channel,
        claimed_by=r.claimed_by,
        fencing_token=r.fencing_token,
        claimed_at=r.claimed_at,
        sent_at=r.sent_at,
        address=r.address,
        join_link_jti=r.join_link_jti,
        last_error=r.last_error,
        details=dict(r.details or {}),
        created_at=r.created_at,
        updated_at=r.updated_at,
    )


def notification_to_dict(n: Notification) -> dict[str, Any]:
    """The API shape of a notification (claim internals stay inside)."""
    return {
        "notification_id": n.notification_id,
        "session_id": n.session_id,
        "recipient_id": n.recipient_id,
        "recipient_role": n.recipient_role,
        "kind": n.kind.value,
        "status": n.status.value,
        "due_at": codec.iso(n.due_at),
        "session_start": codec.iso(n.session_start),
        "attempts": n.attempts,
        "channel": n.channel,
        "address": n.address,
        "join_link_jti": n.join_link_jti,
        "sent_at": codec.iso_or_none(n.sent_at),
        "last_error": n.last_error,
        "details": n.details,
        "created_at": codec.iso(n.created_at),
        "updated_at": codec.iso(n.updated_at),
    }


_N = t.notifications


class NotificationStore:
    """Repository of the notifications outbox, on the orchestrator's ``Store`` (same engine, same transactions)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def store(self) -> Store:
        return self._store

    # ------------------------------------------------------------------ planning

    async def reconcile(self, session_id: str, planner: Planner, *, now: datetime | None = None) -> PlanResult | None:
        """Bring the notifications of ``session_id`` in line with the session as it is now.

        Returns None when the session does not exist or another planner is doing the same work right now.
        """
        now = now or _now()
        try:
            async with self._store.transaction() as c:
                return await self._reconcile(c, session_id, planner, now)
        except NotFoundError:
            return None
        except (_LostRace, IntegrityError) as exc:
            logger.info("session=%s notifications planned by another planner (%s)", session_id, type(exc).__name__)
            return None

    async def _reconcile(self, c: AsyncConnection, session_id: str, planner: Planner, now: datetime) -> PlanResult:
        session = await self._store.get_session(session_id, conn=c)
        updated_at = (
            await c.execute(sa.select(t.sessions.c.updated_at).where(t.sessions.c.session_id == session_id))
        ).scalar_one()
        current = SessionState.of(session)
        plan = (
            await c.execute(sa.select(t.notification_plans).where(t.notification_plans.c.session_id == session_id))
        ).first()
        P = t.notification_plans
        if plan is None:
            previous, revision = None, 0
            # a concurrent first plan makes this insert fail on the primary key (after the other one commits)
            await c.execute(
                P.insert().values(
                    session_id=session_id,
                    revision=0,
                    state=current.to_json(),
                    session_updated_at=updated_at,
                    updated_at=now,
                )
            )
        else:
            previous = SessionState.from_json(plan.state)
            revision = plan.revision + (previous != current)
            # the compare-and-set that makes one planner the owner of this revision
            res = await c.execute(
                P.update()
                .where(P.c.session_id == session_id, P.c.revision == plan.revision)
                .values(revision=revision, state=current.to_json(), session_updated_at=updated_at, updated_at=now)
            )
            if res.rowcount != 1:
                raise _LostRace()
            if previous == current:
                return PlanResult(session_id, revision, False, (), 0)
        existing = tuple(
            _row(r) for r in await c.execute(sa.select(_N).where(_N.c.session_id == session_id).order_by(_N.c.due_at))
        )
        wanted = planner(PlanInput(session_id, current, previous, revision, existing, now))
        by_key = {n.key: n for n in existing}
        wanted_keys = {w.key for w in wanted}
        planned: list[Wanted] = []
        for w in wanted:
            n = by_key.get(w.key)
            if n is None:
                await c.execute(
                    _N.insert().values(
                        notification_id=new_id("ntf"),
                        session_id=session_id,
                        recipient_id=w.recipient_id,
                        recipient_role=w.recipient_role,
                        kind=w.kind.value,
                        variant=w.variant,
                        status=NotificationStatus.PENDING.value,
                        due_at=w.due_at,
                        next_attempt_at=w.due_at,
                        session_start=current.start,
                        attempts=0,
                        details=w.details,
                        created_at=now,
                        updated_at=now,
                    )
                )
                planned.append(w)
            elif n.status is NotificationStatus.CANCELLED or (
                n.status is NotificationStatus.PENDING and (n.session_start != current.start or n.due_at != w.due_at)
            ):
                await c.execute(
                    _N.update()
                    .where(_N.c.notification_id == n.notification_id, _N.c.status == n.status.value)
                    .values(
                        status=NotificationStatus.PENDING.value,
                        due_at=w.due_at,
                        next_attempt_at=w.due_at,
                        session_start=current.start,
                        attempts=0 if n.status is NotificationStatus.CANCELLED else n.attempts,
                        last_error=None,
                        details=w.details,
                        updated_at=now,
                    )
                )
                planned.append(w)
        recipients = current.recipients()
        cancelled = 0
        for n in existing:
            if (
                n.status is not NotificationStatus.PENDING
                or n.kind is NotificationKind.SESSION_CHANGED
                or n.key in wanted_keys
            ):
                continue
            if current.cancelled:
                reason = "the session was cancelled"
            elif n.recipient_id not in recipients:
                reason = "no longer a participant of the session"
            else:
                reason = "the session was moved"
            res = await c.execute(
                _N.update()
                .where(_N.c.notification_id == n.notification_id, _N.c.status == NotificationStatus.PENDING.value)
                .values(status=NotificationStatus.CANCELLED.value, last_error=reason, updated_at=now)
            )
            cancelled += res.rowcount
        return PlanResult(session_id, revision, previous is not None and previous != current, tuple(planned), cancelled)

    async def sessions_to_plan(
        self, *, now: datetime, horizon: timedelta, lookback: timedelta, limit: int = 200
    ) -> list[str]:
        """Sessions around now whose notifications were never planned or were planned before their last change."""
        S, P = t.sessions, t.notification_plans
        query = (
            sa.select(S.c.session_id)
            .select_from(S.outerjoin(P, P.c.session_id == S.c.session_id))
            .where(
                S.c.starts_at <= now + horizon,
                S.c.ends_at >= now - lookback,
                sa.or_(P.c.session_id.is_(None), S.c.updated_at > P.c.session_updated_at),
            )
            .order_by(S.c.starts_at, S.c.session_id)
            .limit(limit)
        )
        async with self._store.read() as c:
            return [str(r) for r in (await c.execute(query)).scalars()]

    # ------------------------------------------------------------------ sending

    @staticmethod
    def _ready(now: datetime) -> sa.ColumnElement[bool]:
        """Pending and due. A post-session message goes when its session ends (early or not), and is dropped when
        the session plainly never took place."""
        S = t.sessions
        post = _N.c.kind == NotificationKind.POST_SESSION.value
        on_time = _N.c.next_attempt_at <= now
        return sa.and_(
            _N.c.status == NotificationStatus.PENDING.value,
            sa.or_(
                sa.and_(~post, on_time),
                sa.and_(post, S.c.status == SessionStatus.ENDED.value, sa.or_(on_time, _N.c.attempts == 0)),
                sa.and_(
                    post,
                    on_time,
                    sa.or_(
                        S.c.status == SessionStatus.CANCELLED.value,
                        sa.and_(S.c.status == SessionStatus.SCHEDULED.value, S.c.ends_at <= now - MISSED_AFTER),
                    ),
                ),
            ),
        )

    async def due(self, *, now: datetime | None = None, limit: int = 50) -> list[NotificationId]:
        """Notifications whose time has come, oldest first."""
        now = now or _now()
        query = (
            sa.select(_N.c.notification_id)
            .select_from(_N.join(t.sessions, t.sessions.c.session_id == _N.c.session_id))
            .where(self._ready(now))
            .order_by(_N.c.next_attempt_at, _N.c.notification_id)
            .limit(limit)
        )
        async with self._store.read() as c:
            return [NotificationId(r) for r in (await c.execute(query)).scalars()]

    async def claim(
        self,
        ids: Sequence[str],
        *,
        claimer: str,
        channel: str,
        token: int | None = None,
        now: datetime | None = None,
    ) -> list[Notification]:
        """Take pending notifications for sending: pending -> sending, one compare-and-set per row.

        Nothing is claimed while a row is being sent under a newer fencing token than ``token``.
        """
        if not ids:
            return []
        now = now or _now()
        claimed: list[Notification] = []
        async with self._store.transaction() as c:
            if token is not None:
                newer = (
                    await c.execute(
                        sa.select(sa.func.count())
                        .select_from(_N)
                        .where(_N.c.status == NotificationStatus.SENDING.value, _N.c.fencing_token > token)
                    )
                ).scalar_one()
                if newer:
                    logger.warning("notifications: claimer=%s token=%d is fenced off by a newer leader", claimer, token)
                    return []
            for notification_id in ids:
                res = await c.execute(
                    _N.update()
                    .where(_N.c.notification_id == notification_id, _N.c.status == NotificationStatus.PENDING.value)
                    .values(
                        status=NotificationStatus.SENDING.value,
                        claimed_by=claimer,
                        fencing_token=token,
                        channel=channel,
                        claimed_at=now,
                        updated_at=now,
                    )
                )
                if res.rowcount == 1:
                    row = (await c.execute(sa.select(_N).where(_N.c.notification_id == notification_id))).one()
                    claimed.append(_row(row))
        return claimed

    async def mark_sent(
        self,
        notification_id: str,
        *,
        claimer: str,
        address: str | None,
        join_link_jti: str | None,
        now: datetime | None = None,
    ) -> NotificationStatus | None:
        """sending -> sent for the claimer; returns the status it left (``uncertain`` when a recovery had given up on
        the claimer while it was in fact sending), or None when the row is no longer this claimer's."""
        now = now or _now()
        async with self._store.transaction() as c:
            row = (
                await c.execute(
                    sa.select(_N.c.status).where(_N.c.notification_id == notification_id, _N.c.claimed_by == claimer)
                )
            ).first()
            if row is None or row.status not in (NotificationStatus.SENDING.value, NotificationStatus.UNCERTAIN.value):
                return None
            res = await c.execute(
                _N.update()
                .where(
                    _N.c.notification_id == notification_id,
                    _N.c.claimed_by == claimer,
                    _N.c.status == row.status,
                )
                .values(
                    status=NotificationStatus.SENT.value,
                    attempts=_N.c.attempts + 1,
                    sent_at=now,
                    address=address,
                    join_link_jti=join_link_jti,
                    last_error=None,
                    updated_at=now,
                )
            )
            return NotificationStatus(row.status) if res.rowcount == 1 else None

    async def release(
        self,
        notification_id: str,
        *,
        claimer: str,
        error: str,
        next_attempt_at: datetime,
        address: str | None = None,
        now: datetime | None = None,
    ) -> bool:
        """A failed attempt that may be retried: sending -> pending at ``next_attempt_at``."""
        now = now or _now()
        return await self._transition(
            notification_id,
            claimer,
            status=NotificationStatus.PENDING.value,
            attempts=_N.c.attempts + 1,
            next_attempt_at=next_attempt_at,
            last_error=error[:2000],
            address=address,
            updated_at=now,
        )

    async def finish(
        self,
        notification_id: str,
        status: NotificationStatus,
        *,
        claimer: str,
        error: str | None,
        address: str | None = None,
        count_attempt: bool = True,
        now: datetime | None = None,
    ) -> bool:
        """sending -> ``status`` (failed, uncertain, skipped or cancelled) for the claimer."""
        now = now or _now()
        values: dict[str, Any] = {
            "status": status.value,
            "last_error": None if error is None else error[:2000],
            "address": address,
            "updated_at": now,
        }
        if count_attempt:
            values["attempts"] = _N.c.attempts + 1
        return await self._transition(notification_id, claimer, **values)

    async def _transition(self, notification_id: str, claimer: str, **values: Any) -> bool:
        async with self._store.transaction() as c:
            res = await c.execute(
                _N.update()
                .where(
                    _N.c.notification_id == notification_id,
                    _N.c.claimed_by == claimer,
                    _N.c.status == NotificationStatus.SENDING.value,
                )
                .values(**values)
            )
            return bool(res.rowcount == 1)

    async def abandoned(
        self,
        *,
        claimer: str,
        claim_timeout: timedelta,
        term_started_at: datetime | None = None,
        now: datetime | None = None,
    ) -> list[Notification]:
        """Rows left in ``sending`` by a claimer that is gone.

        Gone means: claimed longer ago than ``claim_timeout``, or (for a leader) by another claimer before this
        leader's term began (the leader before it: its loops were cancelled when it lost the lease).
        """
        now = now or _now()
        gone = _N.c.claimed_at < now - claim_timeout
        if term_started_at is not None:
            gone = sa.or_(gone, _N.c.claimed_at < term_started_at)
        query = sa.select(_N).where(
            _N.c.status == NotificationStatus.SENDING.value,
            sa.or_(_N.c.claimed_by.is_(None), _N.c.claimed_by != claimer),
            gone,
        )
        async with self._store.read() as c:
            return [_row(r) for r in await c.execute(query)]

    async def recover(
        self, n: Notification, status: NotificationStatus, *, error: str, now: datetime | None = None
    ) -> bool:
        """An abandoned row to ``pending`` (send again) or ``uncertain``; a compare-and-set on its old claim."""
        now = now or _now()
        values: dict[str, Any] = {"status": status.value, "last_error": error[:2000], "updated_at": now}
        if status is NotificationStatus.PENDING:
            values["next_attempt_at"] = now
        async with self._store.transaction() as c:
            cond = sa.and_(
                _N.c.notification_id == n.notification_id,
                _N.c.status == NotificationStatus.SENDING.value,
                _N.c.claimed_by == n.claimed_by if n.claimed_by is not None else _N.c.claimed_by.is_(None),
            )
            res = await c.execute(_N.update().where(cond).values(**values))
            return bool(res.rowcount == 1)

    async def superseded(self, n: Notification, *, now: datetime | None = None) -> bool:
        """Whether a reminder closer to the start is also due for the same recipient and start (send only that)."""
        now = now or _now()
        offset = int(n.details.get("offset_minutes", 0))
        async with self._store.read() as c:
            rows = await c.execute(
                sa.select(_N.c.details).where(
                    _N.c.session_id == n.session_id,
                    _N.c.recipient_id == n.recipient_id,
                    _N.c.kind == NotificationKind.REMINDER.value,
                    _N.c.session_start == n.session_start,
                    _N.c.notification_id != n.notification_id,
                    _N.c.status.in_([NotificationStatus.PENDING.value, NotificationStatus.SENDING.value]),
                    _N.c.due_at <= now,
                )
            )
            return any(int((d or {}).get("offset_minutes", 0)) < offset for (d,) in rows)

    async def enqueue_webhook(self, notification_id: str, payload: dict[str, Any], ordering_key: str | None) -> bool:
        """Write the ``notification.due`` event with the notification's id as its stable id.

        Returns False when it was written before (a re-send after a crash): the outbox holds it once.
        """
        try:
            async with self._store.transaction() as c:
                exists = (
                    await c.execute(
                        sa.select(sa.func.count())
                        .select_from(t.webhook_outbox)
                        .where(t.webhook_outbox.c.event_id == notification_id)
                    )
                ).scalar_one()
                if exists:
                    return False
                await emit_event(c, NOTIFICATION_EVENT, payload, ordering_key, event_id=notification_id)
        except IntegrityError:
            return False
        return True

    async def webhook_receivers(self, event_type: str = NOTIFICATION_EVENT) -> int:
        """How many active subscriptions receive ``event_type``."""
        async with self._store.read() as c:
            rows = await c.execute(
                sa.select(t.webhook_subscriptions.c.event_types).where(t.webhook_subscriptions.c.active.is_(True))
            )
            return sum(1 for (types,) in rows if not types or event_type in types)

    # ------------------------------------------------------------------ reading

    async def get(self, notification_id: str) -> Notification:
        async with self._store.read() as c:
            row = (await c.execute(sa.select(_N).where(_N.c.notification_id == notification_id))).first()
        if row is None:
            raise NotFoundError("notification", notification_id)
        return _row(row)

    async def of_session(self, session_id: str) -> list[Notification]:
        async with self._store.read() as c:
            rows = await c.execute(
                sa.select(_N).where(_N.c.session_id == session_id).order_by(_N.c.due_at, _N.c.notification_id)
            )
            return [_row(r) for r in rows]

    async def list(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        session_id: str | None = None,
        statuses: Iterable[NotificationStatus] | None = None,
        kind: NotificationKind | None = None,
    ) -> Page[Notification]:
        """Notifications by due time (then id), keyset-paginated."""
        from orchestrator.store.store import _page_by_time

        where: list[sa.ColumnElement[bool]] = []
        if session_id is not None:
            where.append(_N.c.session_id == session_id)
        if statuses is not None:
            where.append(_N.c.status.in_([s.value for s in statuses]))
        if kind is not None:
            where.append(_N.c.kind == kind.value)
        async with self._store.read() as c:
            rows, nxt = await _page_by_time(c, _N, _N.c.due_at, _N.c.notification_id, where, limit, cursor)
        return Page(tuple(_row(r) for r in rows), nxt)

    async def oldest_pending_seconds(self, now: datetime | None = None) -> float:
        """How long the most overdue notification that is ready to send is past its due time (0 when none)."""
        now = now or _now()
        async with self._store.read() as c:
            oldest = (
                await c.execute(
                    sa.select(sa.func.min(_N.c.due_at))
                    .select_from(_N.join(t.sessions, t.sessions.c.session_id == _N.c.session_id))
                    .where(self._ready(now))
                )
            ).scalar()
        if oldest is None:
            return 0.0
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        return max(0.0, (now - oldest).total_seconds())
