"""The store's engagement section: what each participant did in each session, captured in every session.

The media nodes emit presence events on the durable stream; the orchestrator's presence consumer turns the
engagement ones into rows here: a stretch of speech (``talk``, its length in seconds), a chat message, a raised
hand, a reaction, a poll or comprehension-check answer (``value`` 1; ``details`` the poll and the choice), and
a question an instructor put to the room (``question``; ``details`` the poll, whether it is a check, and a
check's right option, so answers can be marked). Nothing is configured per session: every session that has a
room gets them. Rows are keyed by a digest of the node's event, so an event the stream
delivers twice (a consumer that died before acknowledging it) is stored once.

Chat text is not stored, only its length: engagement needs counts, and the text belongs to the room.

A mixin of ``Store``; ``summarise`` is the pure part (attendance intervals and events -> one row per person).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.store import schema as t
from orchestrator.store.models import Attendance, Session, SessionStatus

KINDS = ("talk", "chat", "hand", "reaction", "poll_answer", "check_answer", "question")


@dataclass(frozen=True, slots=True)
class EngagementEvent:
    session_id: str
    participant_id: str  # the person (student or instructor id), as in attendance
    role: str
    kind: str
    at: datetime
    value: float = 1.0
    details: dict[str, Any] | None = None

    def key(self, source: str) -> str:
        """``source`` names the node's event uniquely (room, participant, node, event, time)."""
        return hashlib.sha256(f"{self.session_id}|{self.kind}|{source}".encode()).hexdigest()[:64]


@dataclass(frozen=True, slots=True)
class ParticipantEngagement:
    participant_id: str
    role: str
    expected: bool  # booked into the session (its instructor or one of its students)
    attended_s: float  # inside the scheduled time, overlapping connections counted once
    attendance_fraction: float  # attended_s over the scheduled duration
    first_joined_at: datetime | None
    talk_s: float
    talk_share: float  # of all talk in the session
    chat_messages: int
    hands_raised: int
    reactions: int
    answers: int  # polls and comprehension checks answered (a changed answer counts once)
    checks_answered: int
    checks_correct: int  # the latest answer was the check's right option
    questions_asked: int  # polls and checks put to the room


def summarise(
    session: Session, attendance: Iterable[Attendance], events: Iterable[EngagementEvent], now: datetime
) -> list[ParticipantEngagement]:
    """One row per person: the session's instructor, then its students in booking order, then anyone else who
    joined or did something (an observer, a substitute who left again)."""
    attendance = list(attendance)
    start, end = session.start, session.end
    if session.status is SessionStatus.ENDED and attendance and all(a.left_at for a in attendance):
        # a class ended early is over when its last participant left: measure against the time it ran
        end = max(start, min(end, max(a.left_at for a in attendance if a.left_at)))
    scheduled = max(1.0, (end - start).total_seconds())
    intervals: dict[str, list[tuple[datetime, datetime]]] = {}
    roles: dict[str, str] = {session.instructor_id: "instructor", **dict.fromkeys(session.student_ids, "student")}
    first: dict[str, datetime] = {}
    for a in attendance:
        roles.setdefault(a.participant_id, a.role)
        first[a.participant_id] = min(first.get(a.participant_id, a.joined_at), a.joined_at)
        left = a.left_at or (min(now, end) if session.status is SessionStatus.LIVE else end)
        lo, hi = max(a.joined_at, start), min(left, end)
        if hi > lo:
            intervals.setdefault(a.participant_id, []).append((lo, hi))
    counts: dict[str, dict[str, float]] = {}
    asked: dict[str, int | None] = {}  # poll id -> a check's right option (None: a poll)
    latest: dict[str, dict[str, object]] = {}  # person -> poll id -> latest choice
    for e in events:
        roles.setdefault(e.participant_id, e.role)
        per = counts.setdefault(e.participant_id, {})
        per[e.kind] = per.get(e.kind, 0.0) + e.value
        details = e.details or {}
        if e.kind == "question":
            correct = details.get("correct")
            asked[str(details.get("poll_id"))] = correct if details.get("check") and isinstance(correct, int) else None
        elif e.kind in ("poll_answer", "check_answer"):
            latest.setdefault(e.participant_id, {})[str(details.get("poll_id"))] = details.get("choice")
    total_talk = sum(c.get("talk", 0.0) for c in counts.values())
    expected = {session.instructor_id, *session.student_ids}
    out = []
    for pid, role in roles.items():
        attended = _union_seconds(intervals.get(pid, []))
        c = counts.get(pid, {})
        talk = round(c.get("talk", 0.0), 3)
        # only answers to questions that were asked count; whether one was a check is the question's to say
        answered = {poll: choice for poll, choice in latest.get(pid, {}).items() if poll in asked}
        checks = [(poll, choice) for poll, choice in answered.items() if asked[poll] is not None]
        out.append(
            ParticipantEngagement(
                participant_id=pid,
                role=role,
                expected=pid in expected,
                attended_s=round(attended, 3),
                attendance_fraction=round(min(1.0, attended / scheduled), 4),
                first_joined_at=first.get(pid),
                talk_s=talk,
                talk_share=round(talk / total_talk, 4) if total_talk else 0.0,
                chat_messages=int(c.get("chat", 0)),
                hands_raised=int(c.get("hand", 0)),
                reactions=int(c.get("reaction", 0)),
                answers=len(answered),
                checks_answered=len(checks),
                checks_correct=sum(1 for poll, choice in checks if asked[poll] == choice),
                questions_asked=int(c.get("question", 0)),
            )
        )
    return out


def took_place(people: Iterable[ParticipantEngagement]) -> bool:
    """An instructor came: a class nobody taught is nobody's absence (at-risk detection, the weekly report)."""
    return any(p.role == "instructor" and p.first_joined_at is not None for p in people)


def _union_seconds(intervals: list[tuple[datetime, datetime]]) -> float:
    total, reach = 0.0, None
    for lo, hi in sorted(intervals):
        if reach is not None and lo < reach:
            lo = reach
        if hi > lo:
            total += (hi - lo).total_seconds()
        reach = hi if reach is None else max(reach, hi)
    return total


class EngagementStore:
    """Mixed into ``Store``."""

    if TYPE_CHECKING:  # provided by Store

        def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

        def read(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

    async def record_engagement(self, event: EngagementEvent, source: str) -> bool:
        """Store one event (idempotent on ``source``); returns whether it was new."""
        if event.kind not in KINDS:
            raise ValueError(f"unknown engagement kind {event.kind!r}")
        values = {
            "event_key": event.key(source),
            "session_id": event.session_id,
            "participant_id": event.participant_id,
            "role": event.role,
            "kind": event.kind,
            "at": event.at,
            "value": float(event.value),
            "details": event.details or {},
        }
        async with self.transaction() as c:
            return await t.insert_if_absent(c, t.engagement_events, values)

    async def engagement_events(self, session_ids: Sequence[str]) -> dict[str, list[EngagementEvent]]:
        out: dict[str, list[EngagementEvent]] = {sid: [] for sid in session_ids}
        if not session_ids:
            return out
        async with self.read() as c:
            rows = await c.execute(
                sa.select(t.engagement_events)
                .where(t.engagement_events.c.session_id.in_(list(session_ids)))
                .order_by(t.engagement_events.c.at)
            )
            for r in rows:
                out[r.session_id].append(
                    EngagementEvent(r.session_id, r.participant_id, r.role, r.kind, r.at, r.value, r.details)
                )
        return out

    async def attendance_for(self, session_ids: Sequence[str]) -> dict[str, list[Attendance]]:
        out: dict[str, list[Attendance]] = {sid: [] for sid in session_ids}
        if not session_ids:
            return out
        async with self.read() as c:
            rows = await c.execute(
                sa.select(t.attendance)
                .where(t.attendance.c.session_id.in_(list(session_ids)))
                .order_by(t.attendance.c.attendance_id)
            )
            for r in rows:
                out[r.session_id].append(Attendance(r.participant_id, r.role, r.joined_at, r.left_at))
        return out

    async def engagement_of(
        self, sessions: Sequence[Session], *, now: datetime | None = None
    ) -> dict[str, list[ParticipantEngagement]]:
        """Each session's per-person summary (three queries, however many sessions)."""
        ids = [s.session_id for s in sessions]
        attendance = await self.attendance_for(ids)
        events = await self.engagement_events(ids)
        moment = now or datetime.now(UTC)
        return {s.session_id: summarise(s, attendance[s.session_id], events[s.session_id], moment) for s in sessions}
