"""Engagement capture: the media nodes' events on the real bus (in-process and Redis) -> the presence consumer ->
the store (SQLite and PostgreSQL) -> the API's per-session and per-student views."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from core.bus import Bus
from core.messages import EVENTS_STREAM, PresenceEvent, encode
from orchestrator.presence import PresenceConsumer
from orchestrator.store import Store
from orchestrator.store.engagement import EngagementEvent, summarise
from orchestrator.store.models import Attendance, Session, SessionStatus
from tests.orchestrator.test_provisioning import book

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)


def session(status: SessionStatus = SessionStatus.ENDED) -> Session:
    return Session(
        session_id="ses_1",  # type: ignore[arg-type]
        booking_id="bkg_1",  # type: ignore[arg-type]
        occurrence_index=0,
        start=T0,
        end=T0 + timedelta(minutes=60),
        instructor_id="ins",  # type: ignore[arg-type]
        student_ids=("s1", "s2"),  # type: ignore[arg-type]
        subject_id="math",  # type: ignore[arg-type]
        status=status,
        room_id="ses_1",
        region="eu-central",
        node_id="eu-1",
        recording=False,
        curriculum_unit=None,
    )


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_summary_counts_attendance_inside_the_scheduled_time_once() -> None:
    attendance = [
        Attendance("ins", "instructor", at(-5), at(61)),  # early and late: clipped to the hour
        Attendance("s1", "student", at(10), at(30)),
        Attendance("s1", "student", at(25), at(40)),  # a second tab, overlapping: counted once
        Attendance("s1", "student", at(50), None),  # never left (ended session): until the end
        Attendance("guest", "observer", at(20), at(21)),
    ]
    events = [
        EngagementEvent("ses_1", "ins", "instructor", "talk", at(1), 90.0),
        EngagementEvent(
            "ses_1", "ins", "instructor", "question", at(5), 1.0, {"poll_id": "q1", "check": True, "correct": 1}
        ),
        EngagementEvent("ses_1", "s1", "student", "check_answer", at(6), 1.0, {"poll_id": "q1", "choice": 0}),
        # answered again as a "poll" by a modified client: the question says it is a check
        EngagementEvent("ses_1", "s1", "student", "poll_answer", at(7), 1.0, {"poll_id": "q1", "choice": 1}),
        EngagementEvent("ses_1", "s1", "student", "poll_answer", at(8), 1.0, {"poll_id": "made-up", "choice": 0}),
        EngagementEvent("ses_1", "s1", "student", "talk", at(12), 30.0),
        EngagementEvent("ses_1", "s1", "student", "chat", at(13)),
        EngagementEvent("ses_1", "s1", "student", "chat", at(14)),
        EngagementEvent("ses_1", "s1", "student", "hand", at(15)),
        EngagementEvent("ses_1", "s1", "student", "reaction", at(16)),
        EngagementEvent("ses_1", "s1", "student", "check_answer", at(17)),
        EngagementEvent("ses_1", "s1", "student", "poll_answer", at(18)),
    ]
    rows = {r.participant_id: r for r in summarise(session(), attendance, events, now=at(120))}
    assert list(rows) == ["ins", "s1", "s2", "guest"]  # instructor, booked students in order, then others
    assert rows["ins"].attended_s == 3600 and rows["ins"].attendance_fraction == 1.0
    assert rows["ins"].talk_s == 90 and rows["ins"].talk_share == 0.75
    s1 = rows["s1"]
    assert s1.attended_s == (30 + 10) * 60 and s1.attendance_fraction == pytest.approx(40 / 60, abs=1e-4)
    assert (s1.first_joined_at, s1.talk_s, s1.talk_share) == (at(10), 30, 0.25)
    assert (s1.chat_messages, s1.hands_raised, s1.reactions) == (2, 1, 1)
    # q1 answered twice (changed to the right option); answers to questions nobody asked do not count
    assert (s1.answers, s1.checks_answered, s1.checks_correct) == (1, 1, 1)
    assert (rows["ins"].questions_asked, s1.questions_asked) == (1, 0)
    assert s1.expected and not rows["guest"].expected and rows["guest"].role == "observer"
    s2 = rows["s2"]  # booked, never came
    assert (s2.attended_s, s2.first_joined_at, s2.talk_s, s2.chat_messages) == (0, None, 0, 0)


def test_a_class_ended_early_is_measured_against_the_time_it_ran() -> None:
    attendance = [
        Attendance("ins", "instructor", at(0), at(30)),
        Attendance("s1", "student", at(0), at(30)),
        Attendance("s2", "student", at(15), at(30)),
    ]
    rows = {r.participant_id: r for r in summarise(session(), attendance, [], now=at(120))}
    assert (rows["s1"].attendance_fraction, rows["s2"].attendance_fraction) == (1.0, 0.5)


def test_a_live_sessions_open_connection_counts_until_now() -> None:
    rows = summarise(session(SessionStatus.LIVE), [Attendance("s1", "student", at(0), None)], [], now=at(15))
    assert next(r for r in rows if r.participant_id == "s1").attended_s == 15 * 60


def presence(room: str, event: str, identity: str, when: float, **details: Any) -> PresenceEvent:
    return PresenceEvent(event, room, "eu-1", f"p_{identity}", identity, "student", when, details)


def counted(kind: str) -> float:
    return REGISTRY.get_sample_value("classmesh_orchestrator_engagement_events_total", {"kind": kind}) or 0.0


async def test_the_node_events_become_engagement_once_each(store: Store, bus: Bus) -> None:
    session_id = await book(store, T0)
    now = time.time()
    events = [
        presence(session_id, "joined", "s1", now, name="Sam"),
        presence(session_id, "speaking_stopped", "s1", now + 1, talk_time_ms=1500, segment_ms=1500),
        presence(session_id, "speaking_started", "s1", now + 2, talk_time_ms=1500, segment_ms=0),
        presence(session_id, "speaking_stopped", "s1", now + 3, talk_time_ms=2250, segment_ms=750),
        presence(session_id, "data", "s1", now + 4, kind="chat", body={"text": "is it x = 2?"}),
        presence(session_id, "data", "s1", now + 5, kind="hand", body={"raised": True}),
        presence(session_id, "data", "s1", now + 6, kind="hand", body={"raised": False}),  # lowering: not engagement
        presence(session_id, "data", "s1", now + 7, kind="reaction", body={"emoji": "👍"}),
        PresenceEvent(
            "data",
            session_id,
            "eu-1",
            "p_ins",
            "ins",
            "instructor",
            now + 7.5,
            {"kind": "check", "body": {"poll_id": "c1", "question": "2+2?", "options": ["3", "4"], "correct": 1}},
        ),
        presence(session_id, "data", "s1", now + 8, kind="check_answer", body={"poll_id": "c1", "choice": 1}),
        presence(session_id, "data", "s1", now + 9, kind="mystery", body={}),  # unknown: skipped
        presence(session_id, "data", "s1", now + 10, kind="chat", body="not an object"),  # malformed: skipped
        presence(session_id, "speaking_stopped", "s1", now + 11, talk_time_ms=2250),  # an older node: no segment
        presence("adhoc-room", "data", "s1", now + 12, kind="chat", body={"text": "hi"}),  # not a session
    ]
    before = {k: counted(k) for k in ("talk", "chat", "hand", "reaction", "question", "check_answer")}
    for e in events:
        await bus.append(EVENTS_STREAM, encode(e))
    await bus.append(EVENTS_STREAM, encode(events[4]))  # a node that re-sent its chat event: stored once
    consumer = PresenceConsumer(bus, store, consumer="test")
    task = asyncio.create_task(consumer.run())
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stored = (await store.engagement_events([session_id]))[session_id]
            if len(stored) >= 7:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # anything more would show up now
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    stored = (await store.engagement_events([session_id]))[session_id]
    assert [(e.kind, e.value) for e in stored] == [
        ("talk", 1.5),
        ("talk", 0.75),
        ("chat", 1.0),
        ("hand", 1.0),
        ("reaction", 1.0),
        ("question", 1.0),
        ("check_answer", 1.0),
    ]
    assert stored[2].details == {"chars": 12}  # the text itself is not kept
    assert {e.participant_id for e in stored} == {"s1", "ins"}
    after = {k: counted(k) - v for k, v in before.items()}
    assert after == {"talk": 2, "chat": 1, "hand": 1, "reaction": 1, "question": 1, "check_answer": 1}
    assert stored[5].details == {
        "poll_id": "c1",
        "check": True,
        "question": "2+2?",
        "options": ["3", "4"],
        "correct": 1,
    }
    # the consumer acknowledged everything: nothing is pending for the group
    assert await bus.claim_stale(EVENTS_STREAM, "orchestrator", "probe", min_idle_ms=0) == []

    summary = (await store.engagement_of([await store.get_session(session_id)]))[session_id]
    s1 = next(r for r in summary if r.participant_id == "s1")
    assert (s1.talk_s, s1.chat_messages, s1.hands_raised, s1.reactions, s1.answers) == (2.25, 1, 1, 1, 1)


class RefusingStore(Store):
    """The real store, except that it cannot store anything from one participant: a poison event."""

    async def record_engagement(self, event: EngagementEvent, source: str) -> bool:
        if event.participant_id == "poison":
            raise RuntimeError("cannot store this one")
        return await super().record_engagement(event, source)


async def test_an_event_that_can_never_be_stored_is_dropped_after_five_tries_not_blocking_others(
    store_url: str, bus: Bus
) -> None:
    store = await RefusingStore.open(store_url)
    try:
        session_id = await book(store, T0)
        now = time.time()
        await bus.append(EVENTS_STREAM, encode(presence(session_id, "data", "poison", now, kind="chat", body={})))
        await bus.append(EVENTS_STREAM, encode(presence(session_id, "data", "s1", now + 1, kind="chat", body={})))
        dropped = REGISTRY.get_sample_value("classmesh_orchestrator_presence_events_dropped_total") or 0.0
        consumer = PresenceConsumer(bus, store, consumer="test", claim_after_ms=0, claim_every=1, retry_after_s=0.05)
        task = asyncio.create_task(consumer.run())
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                gone = REGISTRY.get_sample_value("classmesh_orchestrator_presence_events_dropped_total") or 0.0
                if gone > dropped and (await store.engagement_events([session_id]))[session_id]:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # both acknowledged: nothing is left pending for the group
        assert await bus.claim_stale(EVENTS_STREAM, "orchestrator", "probe", min_idle_ms=0) == []
        assert [e.participant_id for e in (await store.engagement_events([session_id]))[session_id]] == ["s1"]
        assert (REGISTRY.get_sample_value("classmesh_orchestrator_presence_events_dropped_total") or 0) == dropped + 1
    finally:
        await store.close()
