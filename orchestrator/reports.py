"""The week at a glance: the questions an operations lead asks every week, answered from the session data.

For the sessions that ended in a window (a week by default) and took place (an instructor came; the others are
only counted): how many there were and the students' attendance rate; which had recording problems; which
instructors have completed their session documents and which have not; which students attended fewer than half
of their sessions; and each instructor's figures next to their peers', with the ones well below the median
flagged (not as surveillance: as a pointer to who may need support or different assignments).

A student "attended" a session when present for at least half of the time it ran (``ATTENDED_FROM``, the same
threshold as at-risk detection). An instructor is flagged when their students' attendance rate or participation
per student-session is under half the median of the instructors with at least ``MIN_SESSIONS`` sessions.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from orchestrator.at_risk import participation
from orchestrator.store import Store
from orchestrator.store.codec import iso
from orchestrator.store.engagement import took_place
from orchestrator.store.models import SessionStatus

ATTENDED_FROM = 0.5
MIN_SESSIONS = 2


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def week_report(store: Store, start: datetime, end: datetime, now: datetime) -> dict[str, Any]:
    ended = [
        s for s in await store.sessions_between(start, end) if s.status is SessionStatus.ENDED and start <= s.end < end
    ]
    summaries = await store.engagement_of(ended, now=now)
    # a class no instructor came to did not take place: it is nobody's absence (as in at-risk detection)
    sessions = [s for s in ended if took_place(summaries[s.session_id])]
    ids = [s.session_id for s in sessions]
    recordings = await store.recordings_of(ids)
    documents = await store.documents_of(ids)

    booked = present = 0
    per_student: dict[str, list[int]] = {}  # student -> [sessions, attended]
    per_instructor: dict[str, dict[str, float]] = {}
    for s in sessions:
        rows = {r.participant_id: r for r in summaries[s.session_id]}
        mine = per_instructor.setdefault(
            s.instructor_id,
            {"sessions": 0, "student_sessions": 0, "attended": 0, "participation": 0.0, "completed": 0, "drafts": 0},
        )
        mine["sessions"] += 1
        document = documents.get(s.session_id)
        if document is not None:
            mine["completed" if document.status == "completed" else "drafts"] += 1
        for student in s.student_ids:
            row = rows.get(student)
            came = row is not None and row.attendance_fraction >= ATTENDED_FROM
            booked += 1
            present += came
            counts = per_student.setdefault(student, [0, 0])
            counts[0] += 1
            counts[1] += came
            mine["student_sessions"] += 1
            mine["attended"] += came
            mine["participation"] += participation(row) if row is not None else 0.0

    instructors = []
    for instructor_id, m in sorted(per_instructor.items()):
        student_sessions = int(m["student_sessions"])
        instructors.append(
            {
                "instructor_id": instructor_id,
                "sessions": int(m["sessions"]),
                "attendance_rate": _rate(int(m["attended"]), student_sessions),
                "participation_per_student": round(m["participation"] / student_sessions, 2)
                if student_sessions
                else None,
                "documents_completed": int(m["completed"]),
                "documents_pending": int(m["sessions"] - m["completed"]),
                "below_peers": [],
            }
        )
    _flag_outliers(instructors)
    recording_issues = [
        {"session_id": r.session_id, "recording_id": r.recording_id, "status": r.status, "coverage": r.coverage}
        for r in recordings.values()
        if r.status == "failed"
    ]
    return {
        "start": iso(start),
        "end": iso(end),
        "sessions": len(sessions),
        "sessions_not_held": len(ended) - len(sessions),
        "attendance_rate": _rate(present, booked),
        "recording_issues": sorted(recording_issues, key=lambda r: r["session_id"]),
        "documents": {
            "completed": sum(1 for d in documents.values() if d.status == "completed"),
            "pending": len(sessions) - sum(1 for d in documents.values() if d.status == "completed"),
        },
        "students_under_half": [
            {"student_id": student, "sessions": n, "attended": came}
            for student, (n, came) in sorted(per_student.items())
            if came * 2 < n
        ],
        "instructors": instructors,
    }


def _flag_outliers(instructors: Sequence[dict[str, Any]]) -> None:
    for figure in ("attendance_rate", "participation_per_student"):
        peers = [i[figure] for i in instructors if i["sessions"] >= MIN_SESSIONS and i[figure] is not None]
        if len(peers) < 3:
            continue  # no peer group to speak of
        median = statistics.median(peers)
        for i in instructors:
            if i["sessions"] >= MIN_SESSIONS and i[figure] is not None and i[figure] < median / 2:
                i["below_peers"].append(figure)
