"""At-risk detection: students whose attendance or participation is slipping, raised to the exception queue.

After each of a student's sessions ends, the leader looks at the student's latest ended sessions (``window``,
default 6) and flags the student when any rule holds:

- ``low_attendance``: attended fewer than half of them (attending = present for at least half the scheduled
  time);
- ``consecutive_absences``: missed the last ``consecutive_absences`` (default 2) entirely;
- ``declining_participation``: contributions per session (talk minutes + chat messages + raised hands +
  reactions + answers) in the newer half of the window fell below half of the older half's (read from four
  sessions on: one against one is noise);
- ``comprehension_gaps``: in each of the last ``comprehension_gaps`` (default 3) sessions where the student
  answered a comprehension check, they got fewer than half of their checks right.

A flag is one open exception per student (``student_at_risk:<student>``, kind ``student_at_risk``) whose details
carry the reasons and the sessions they were read from. It is raised again only on new evidence (a session
that ended since, ``details.as_of_session_id``), so an operator who resolved it is not overruled by the same
data; it resolves itself once the rules no longer hold. Fewer than ``min_sessions`` ended sessions: no verdict.
Sessions no instructor attended are left out (the class did not take place), and a class ended early is
measured against the time it ran (``store.engagement.summarise``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.metrics import AT_RISK_FLAGS
from orchestrator.rounds import every
from orchestrator.store import Store
from orchestrator.store.codec import iso
from orchestrator.store.engagement import ParticipantEngagement, took_place
from orchestrator.store.models import ExceptionStatus, Session, SessionStatus

logger = logging.getLogger(__name__)

KIND = "student_at_risk"


@dataclass(frozen=True, slots=True)
class AtRiskRules:
    window: int = 6
    min_sessions: int = 3
    attended_from: float = 0.5  # a session counts as attended from this attendance fraction
    low_attendance: float = 0.5  # flag below this share of attended sessions
    consecutive_absences: int = 2
    comprehension_gaps: int = 3
    decline: float = 0.5  # flag when the newer half's participation is below this share of the older half's
    interval_s: float = 300.0
    # a student is assessed in every round within this long of a session's end (about 12 times): new evidence
    # is read within five minutes, and a leader away for less than the look-back misses nothing
    lookback: timedelta = timedelta(hours=1)


def participation(e: ParticipantEngagement) -> float:
    """Contributions in one session: minutes of speech plus every message, hand, reaction and answer."""
    return e.talk_s / 60 + e.chat_messages + e.hands_raised + e.reactions + e.answers


def assess(history: Sequence[ParticipantEngagement], rules: AtRiskRules) -> list[dict[str, Any]]:
    """The rules that hold for one student's sessions (oldest first); empty when none does."""
    if len(history) < rules.min_sessions:
        return []
    reasons: list[dict[str, Any]] = []
    attended = sum(1 for e in history if e.attendance_fraction >= rules.attended_from)
    if attended < rules.low_attendance * len(history):
        reasons.append({"rule": "low_attendance", "attended": attended, "sessions": len(history)})
    recent = history[-rules.consecutive_absences :]
    if len(recent) == rules.consecutive_absences and all(e.attended_s == 0 for e in recent):
        reasons.append({"rule": "consecutive_absences", "missed": rules.consecutive_absences})
    half = len(history) // 2
    if half >= 2:
        before = sum(participation(e) for e in history[:half]) / half
        after = sum(participation(e) for e in history[-half:]) / half
        if before > 0 and after < rules.decline * before:
            reasons.append(
                {"rule": "declining_participation", "before_per_session": round(before, 2), "after": round(after, 2)}
            )
    checked = [e for e in history if e.checks_answered][-rules.comprehension_gaps :]
    if len(checked) == rules.comprehension_gaps and all(e.checks_correct * 2 < e.checks_answered for e in checked):
        right = sum(e.checks_correct for e in checked)
        reasons.append(
            {"rule": "comprehension_gaps", "checks_right": right, "checks": sum(e.checks_answered for e in checked)}
        )
    return reasons


class AtRiskWatch:
    def __init__(self, store: Store, rules: AtRiskRules | None = None) -> None:
        self._store = store
        self.rules = rules or AtRiskRules()

    async def run(self) -> None:
        """The leader's loop."""
        await every(self.rules.interval_s, self.run_once, "at-risk")

    async def run_once(self, now: datetime | None = None) -> int:
        """Assess every student with a session that ended within the look-back; returns how many are flagged."""
        now = now or datetime.now(UTC)
        flagged = 0
        for student_id in await self._store.students_of_sessions_ended(now - self.rules.lookback, now):
            flagged += await self.assess_student(student_id, now)
        return flagged

    async def assess_student(self, student_id: str, now: datetime) -> bool:
        sessions = await self._store.latest_sessions_of_student(
            student_id, status=SessionStatus.ENDED, limit=self.rules.window, ending_by=now
        )
        if not sessions:
            return False
        summaries = await self._store.engagement_of(sessions, now=now)
        # a class no instructor came to did not happen for the student either: it is not their absence
        sessions = [s for s in sessions if took_place(summaries[s.session_id])]
        if not sessions:
            return False
        history = [_row(summaries[s.session_id], student_id) for s in sessions]
        reasons = assess(history, self.rules)
        key = f"{KIND}:{student_id}"
        existing = await self._store.exception_by_key(key)
        latest = sessions[-1].session_id
        if not reasons:
            if existing is not None and existing.status is not ExceptionStatus.RESOLVED:
                await self._store.resolve_exception_key(key)
                AT_RISK_FLAGS.labels("resolved").inc()
                logger.info("student no longer at risk student=%s as_of=%s", student_id, latest)
            return False
        if existing is not None and existing.details.get("as_of_session_id") == latest:
            return True  # nothing new since the last verdict (which an operator may have resolved)
        AT_RISK_FLAGS.labels("raised").inc()
        await self._store.raise_exception(
            key,
            KIND,
            "medium",
            subject_refs={"student_id": student_id, "session_id": latest},
            details={
                "as_of_session_id": latest,
                "reasons": reasons,
                "sessions": [_brief(s, e) for s, e in zip(sessions, history, strict=True)],
            },
        )
        logger.info("student at risk student=%s rules=%s", student_id, ",".join(r["rule"] for r in reasons))
        return True


def _row(rows: list[ParticipantEngagement], student_id: str) -> ParticipantEngagement:
    return next(r for r in rows if r.participant_id == student_id)


def _brief(s: Session, e: ParticipantEngagement) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "start": iso(s.start),
        "attendance_fraction": e.attendance_fraction,
        "participation": round(participation(e), 2),
    }
