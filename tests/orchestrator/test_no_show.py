"""Instructor no-shows on a real store (SQLite and PostgreSQL): raised once a running class's instructor is
late past the grace period, with the students waiting; resolved when the instructor joins; nothing for a
class still in its grace period or one whose instructor came."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.no_show import KIND, NoShowWatch
from orchestrator.store import Store
from orchestrator.store.models import ExceptionStatus, SessionStatus
from tests.orchestrator.test_provisioning import book
from tests.orchestrator.test_provisioning import events as webhook_events


async def test_a_late_instructor_is_raised_once_and_resolved_on_arrival(store: Store) -> None:
    now = datetime.now(UTC)
    start = (now - timedelta(minutes=15)).replace(second=0, microsecond=0)
    start -= timedelta(minutes=start.minute % 5)
    session_id = await book(store, start)  # instructor "ins", student "s1", one hour
    await store.update_session(session_id, status=SessionStatus.LIVE)
    await store.record_join(session_id, "s1", "student", at=start)
    watch = NoShowWatch(store)
    assert await watch.run_once(start + timedelta(minutes=9)) == 0  # still within the grace period
    assert await store.exception_by_key(f"{KIND}:{session_id}") is None

    assert await watch.run_once(now) == 1
    assert await watch.run_once(now) == 1  # still waiting: the same single exception
    raised = await store.exception_by_key(f"{KIND}:{session_id}")
    assert raised is not None and raised.severity == "high" and raised.occurrences == 1
    assert raised.subject_refs == {"session_id": session_id, "instructor_id": "ins"}
    assert raised.details["students_waiting"] == ["s1"]

    await store.record_join(session_id, "ins", "instructor", at=now)
    assert await watch.run_once(now) == 0
    resolved = await store.exception_by_key(f"{KIND}:{session_id}")
    assert resolved is not None and resolved.status is ExceptionStatus.RESOLVED
    sent = [
        (e["exception"]["kind"], e["exception"]["status"]) for e in await webhook_events(store, "exception.resolved")
    ]
    assert sent == [(KIND, "resolved")]
    assert await watch.run_once(start + timedelta(hours=2)) == 0  # over: not a running class any more
