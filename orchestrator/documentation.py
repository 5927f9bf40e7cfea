"""Session documentation: when a session ends, the system drafts its record; the instructor completes it.

The draft is built from what the session captured, with the same structure every time: attendance (present,
absent, late), each person's participation, the balance of talk between instructor and students, every poll and
comprehension check with its answers (and for a check how many were right), the curriculum unit the session was
booked for (logged as covered by the ``session.documented`` webhook), the recording's state, and a list of
follow-ups for the instructor (absences, a check most students got wrong, a student who never spoke or wrote).
The transcript-based summary is not written yet; ``transcript`` is reserved for it.

A draft that is still not completed a day after it was written raises a ``documentation_missing`` exception
(once; completing the document resolves it). The leader runs ``Documenter``; a draft is written once per
session whatever the number of replicas (the store inserts it only if absent).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.metrics import DOCUMENTS_DRAFTED
from orchestrator.rounds import every
from orchestrator.store import Store
from orchestrator.store.codec import iso
from orchestrator.store.engagement import EngagementEvent, ParticipantEngagement
from orchestrator.store.models import Recording, Session

logger = logging.getLogger(__name__)

LATE_AFTER = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class DocumentationConfig:
    interval_s: float = 30.0
    lookback: timedelta = timedelta(days=7)  # ended sessions this recent get a draft when they have none
    recording_wait: timedelta = timedelta(minutes=15)  # a recording still being built is awaited this long
    settle: timedelta = timedelta(minutes=2)  # after the scheduled end: the room's last events reach the store
    complete_within: timedelta = timedelta(hours=24)  # then documentation_missing


def draft_for(
    session: Session,
    people: Sequence[ParticipantEngagement],
    events: Sequence[EngagementEvent],
    recording: Recording | None,
) -> dict[str, Any]:
    students = [p for p in people if p.participant_id in session.student_ids]
    present = [p for p in students if p.first_joined_at is not None]
    late = [p for p in present if p.first_joined_at and p.first_joined_at > session.start + LATE_AFTER]
    total_talk = sum(p.talk_s for p in people)
    instructor_talk = sum(p.talk_s for p in people if p.participant_id == session.instructor_id)
    questions = _questions(events)
    follow_up: list[str] = []
    for p in students:
        if p.first_joined_at is None:
            follow_up.append(f"{p.participant_id} was absent")
        elif p.talk_s == 0 and p.chat_messages == 0 and p.answers == 0 and p.hands_raised == 0:
            follow_up.append(f"{p.participant_id} attended but did not speak, write or answer")
    for q in questions:
        if q["check"] and q["answers"] and q["right"] * 2 < q["answers"]:
            follow_up.append(f"only {q['right']} of {q['answers']} answered {q['question']!r} right")
    if recording is not None and recording.status == "failed":
        follow_up.append("the recording is incomplete")
    return {
        "version": 1,
        "session_id": session.session_id,
        "subject_id": session.subject_id,
        "instructor_id": session.instructor_id,
        "start": iso(session.start),
        "end": iso(session.end),
        "curriculum_unit": session.curriculum_unit,
        "attendance": {
            "students": len(students),
            "present": [p.participant_id for p in present],
            "absent": [p.participant_id for p in students if p.first_joined_at is None],
            "late": [p.participant_id for p in late],
            "rate": round(len(present) / len(students), 4) if students else None,
        },
        "talk": {
            "total_s": round(total_talk, 1),
            "instructor_share": round(instructor_talk / total_talk, 4) if total_talk else None,
        },
        "participation": [
            {
                "participant_id": p.participant_id,
                "role": p.role,
                "attended_s": p.attended_s,
                "talk_s": p.talk_s,
                "chat_messages": p.chat_messages,
                "hands_raised": p.hands_raised,
                "answers": p.answers,
                "checks_correct": p.checks_correct,
            }
            for p in people
        ],
        "questions": questions,
        "recording": None
        if recording is None
        else {"recording_id": recording.recording_id, "status": recording.status, "coverage": recording.coverage},
        "follow_up": follow_up,
        "transcript": None,
    }


def _questions(events: Sequence[EngagementEvent]) -> list[dict[str, Any]]:
    asked: dict[str, dict[str, Any]] = {}
    answers: dict[str, dict[str, int]] = {}  # poll id -> person -> latest choice
    for e in events:
        d = e.details or {}
        poll = str(d.get("poll_id"))
        if e.kind == "question":
            options = d.get("options") if isinstance(d.get("options"), list) else []
            asked[poll] = {
                "poll_id": poll,
                "question": str(d.get("question", "")),
                "options": options,
                "check": bool(d.get("check")),
                "correct": d.get("correct") if isinstance(d.get("correct"), int) else None,
                "asked_at": iso(e.at),
            }
        elif e.kind in ("poll_answer", "check_answer") and isinstance(d.get("choice"), int):
            answers.setdefault(poll, {})[e.participant_id] = d["choice"]
    out = []
    for poll, q in asked.items():
        chosen = answers.get(poll, {})
        counts = [sum(1 for c in chosen.values() if c == i) for i in range(len(q["options"]))]
        right = counts[q["correct"]] if q["correct"] is not None and 0 <= q["correct"] < len(counts) else 0
        out.append({**q, "answers": len(chosen), "choices": counts, "right": right})
    return out


class Documenter:
    def __init__(self, store: Store, config: DocumentationConfig | None = None) -> None:
        self._store = store
        self.config = config or DocumentationConfig()

    async def run(self) -> None:
        """The leader's loop."""
        await every(self.config.interval_s, self.run_once, "documentation")

    async def run_once(self, now: datetime | None = None) -> int:
        """Draft what ended, flag what stayed a draft too long; returns how many drafts were written."""
        now = now or datetime.now(UTC)
        written = 0
        for session_id in await self._store.ended_sessions_without_document(now - self.config.lookback):
            try:
                written += await self.draft(session_id, now)
            except Exception:  # one session's failure must not keep the others undocumented
                logger.exception("documentation of session=%s failed; retried next round", session_id)
        for doc in await self._store.documents_in_draft(now - self.config.complete_within, unflagged=True):
            key = f"documentation_missing:{doc.session_id}"
            if await self._store.exception_by_key(key) is None:
                await self._store.raise_exception(
                    key,
                    "documentation_missing",
                    "low",
                    subject_refs={"session_id": doc.session_id, "instructor_id": doc.draft.get("instructor_id")},
                    details={"drafted_at": iso(doc.created_at)},
                )
        return written

    async def draft(self, session_id: str, now: datetime) -> bool:
        session = await self._store.get_session(session_id)
        if now < session.end + self.config.settle:
            return False  # the room's last events (a final stretch of speech, the leaves) may still be on their way
        recording = await self._store.recording_of(session_id)
        building = recording is not None and recording.status in ("recording", "assembling")
        if building and now < session.end + self.config.recording_wait:
            return False  # the recording's outcome belongs in the record; ask again next round
        people = (await self._store.engagement_of([session], now=now))[session_id]
        events = (await self._store.engagement_events([session_id]))[session_id]
        draft = draft_for(session, people, events, recording)
        if not await self._store.add_document_draft(session_id, session.booking_id, draft):
            return False
        DOCUMENTS_DRAFTED.inc()
        logger.info("session documented session=%s follow_ups=%d", session_id, len(draft["follow_up"]))
        return True
