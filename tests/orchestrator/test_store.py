"""Store behaviour on both SQLite and PostgreSQL (the ``store`` fixture is parametrised)."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from orchestrator.errors import AlreadyExistsError, InvalidInputError, NotFoundError, SlotConflictError
from orchestrator.store import Store, emit_event
from orchestrator.store import schema as t
from orchestrator.store.migrate import current_revision, head_revision
from orchestrator.store.models import (
    AvailabilityException,
    BookingDraft,
    BookingStatus,
    DeliveryStatus,
    ExceptionStatus,
    Instructor,
    InstructorId,
    Occurrence,
    SessionStatus,
    Student,
    StudentId,
    Subject,
    SubjectId,
    WeeklyWindow,
)

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)  # a Monday
ROOT = Path(__file__).resolve().parents[2]


async def seed(store: Store, *, buffer_minutes: int = 10) -> None:
    await store.create_subject(Subject(SubjectId("math"), "Mathematics"))
    for iid in ("ins_a", "ins_b"):
        await store.create_instructor(
            Instructor(
                InstructorId(iid),
                f"Instructor {iid}",
                f"{iid}@example.org",
                "Europe/Berlin",
                qualifications={SubjectId("math"): 4},
                weekly_availability=(WeeklyWindow(0, "08:00", "18:00"), WeeklyWindow(2, "08:00", "12:30")),
                exceptions=(AvailabilityException(T0 + timedelta(days=7), T0 + timedelta(days=8), "leave"),),
                buffer_minutes=buffer_minutes,
                max_sessions_per_day=6,
                max_sessions_per_week=20,
            )
        )
    for sid in ("stu_1", "stu_2", "stu_3"):
        await store.create_student(
            Student(StudentId(sid), sid, "Asia/Kolkata", country="IN", levels={SubjectId("math"): 2})
        )


def draft(
    start: datetime = T0,
    minutes: int = 60,
    instructor: str = "ins_a",
    students: tuple[str, ...] = ("stu_1",),
) -> BookingDraft:
    return BookingDraft(
        SubjectId("math"),
        tuple(StudentId(s) for s in students),
        start,
        minutes,
        InstructorId(instructor),
    )


def occ(start: datetime = T0, minutes: int = 60, instructor: str = "ins_a", index: int = 0) -> Occurrence:
    return Occurrence(index, start, start + timedelta(minutes=minutes), InstructorId(instructor))


async def book(store: Store, start: datetime = T0, minutes: int = 60, instructor: str = "ins_a", **kw: object):  # type: ignore[no-untyped-def]
    students = kw.get("students", ("stu_1",))
    assert isinstance(students, tuple)
    return await store.create_booking(draft(start, minutes, instructor, students), [occ(start, minutes, instructor)])


async def test_migrated_schema_matches_table_definitions(store: Store) -> None:
    assert await current_revision(store.engine) == head_revision()
    async with store.engine.connect() as conn:
        diffs = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": False}), t.metadata)
        )
    assert diffs == []


async def test_reopening_a_migrated_database_keeps_data(store_url: str) -> None:
    s1 = await Store.open(store_url)
    await s1.create_subject(Subject(SubjectId("art"), "Art"))
    await s1.close()
    await s1.close()  # idempotent
    s2 = await Store.open(store_url)
    try:
        assert (await s2.get_subject("art")).name == "Art"
    finally:
        await s2.close()


async def test_two_processes_opening_together_migrate_once(store_url: str, tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from orchestrator.store import Store\n"
        "async def main():\n"
        "    s = await Store.open(sys.argv[1])\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    root = str(ROOT)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            store_url,
            cwd=root,
            env={"PYTHONPATH": root},
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    results = await asyncio.gather(*(p.communicate() for p in procs))
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
    s = await Store.open(store_url)
    try:
        assert await current_revision(s.engine) == head_revision()
    finally:
        await s.close()


async def test_instructor_round_trips_with_children(store: Store) -> None:
    await seed(store)
    got = await store.get_instructor("ins_a")
    assert got.qualifications == {"math": 4}
    assert got.weekly_availability == (WeeklyWindow(0, "08:00", "18:00"), WeeklyWindow(2, "08:00", "12:30"))
    assert got.exceptions[0].start == T0 + timedelta(days=7)
    assert got.exceptions[0].start.tzinfo is not None
    assert got.max_sessions_per_week == 20
    with pytest.raises(AlreadyExistsError):
        await store.create_instructor(got)
    from dataclasses import replace

    await store.replace_instructor(replace(got, weekly_availability=(), buffer_minutes=0))
    again = await store.get_instructor("ins_a")
    assert again.weekly_availability == () and again.buffer_minutes == 0
    assert again.qualifications == {"math": 4}


async def test_unknown_subject_in_qualifications_is_invalid_input(store: Store) -> None:
    with pytest.raises(InvalidInputError) as err:
        await store.create_instructor(
            Instructor(InstructorId("x"), "X", "x@example.org", "UTC", qualifications={SubjectId("nope"): 1})
        )
    assert err.value.errors[0].pointer == "/qualifications"


async def test_booking_creates_session_and_outbox_event(store: Store) -> None:
    await seed(store)
    sub = await store.create_subscription("http://127.0.0.1:9/hook", ["booking.created"], "whsec_AAAA")
    booking, sessions = await book(store, students=("stu_1", "stu_2"))
    assert booking.status is BookingStatus.ACTIVE
    assert [s.student_ids for s in sessions] == [("stu_1", "stu_2")]
    assert (await store.get_session(sessions[0].session_id)).end == T0 + timedelta(minutes=60)
    due = await store.claim_due_deliveries()
    assert [d.event.event_type for d in due] == ["booking.created"]
    assert due[0].subscription_id == sub.subscription_id
    assert due[0].event.payload["booking"]["booking_id"] == booking.booking_id
    assert due[0].event.ordering_key == booking.booking_id


async def test_overlapping_session_of_same_instructor_names_the_holder(store: Store) -> None:
    await seed(store)
    _, first = await book(store)
    with pytest.raises(SlotConflictError) as err:
        await book(store, T0 + timedelta(minutes=30), students=("stu_2",))
    assert err.value.conflicting_session_id == first[0].session_id
    assert err.value.code == "instructor_double_booked"


async def test_instructor_buffer_applies_after_each_session(store: Store) -> None:
    await seed(store, buffer_minutes=10)
    await book(store)  # 09:00-10:00, instructor busy until 10:10
    with pytest.raises(SlotConflictError):
        await book(store, T0 + timedelta(minutes=65), students=("stu_2",))
    await book(store, T0 + timedelta(minutes=70), students=("stu_2",))
    # the buffer is after a session only: a session may end right when the next one starts
    await book(store, T0 - timedelta(minutes=60), students=("stu_3",), minutes=50)


async def test_student_cannot_be_in_two_sessions_at_once(store: Store) -> None:
    await seed(store)
    await book(store, instructor="ins_a", students=("stu_1",))
    with pytest.raises(SlotConflictError) as err:
        await book(store, instructor="ins_b", students=("stu_2", "stu_1"))
    assert err.value.extra["person_kind"] == "student"
    # students have no buffer: back-to-back is fine
    await book(store, T0 + timedelta(minutes=60), instructor="ins_b", students=("stu_1",))


async def test_missing_references_are_reported_per_field(store: Store) -> None:
    await seed(store)
    with pytest.raises(InvalidInputError) as err:
        await store.create_booking(draft(students=("stu_1", "ghost")), [occ()])
    assert [e.pointer for e in err.value.errors] == ["/student_ids/1"]


async def test_off_grid_times_are_refused(store: Store) -> None:
    await seed(store)
    with pytest.raises(InvalidInputError):
        await store.create_booking(draft(T0 + timedelta(minutes=3)), [occ(T0 + timedelta(minutes=3))])


async def test_cancel_frees_the_slots_and_is_idempotent(store: Store) -> None:
    await seed(store)
    booking, sessions = await book(store)
    cancelled, changed = await store.cancel_booking(booking.booking_id)
    assert changed and cancelled.status is BookingStatus.CANCELLED
    assert (await store.get_session(sessions[0].session_id)).status is SessionStatus.CANCELLED
    _, changed_again = await store.cancel_booking(booking.booking_id)
    assert not changed_again
    await book(store)  # the slot is free again
    with pytest.raises(NotFoundError):
        await store.cancel_booking("bkg_missing")


async def test_reschedule_moves_mutable_sessions_and_keeps_ended_ones(store: Store) -> None:
    await seed(store)
    starts = [T0 + timedelta(days=7 * i) for i in range(3)]
    d = BookingDraft(SubjectId("math"), (StudentId("stu_1"),), T0, 60, InstructorId("ins_a"), "FREQ=WEEKLY;COUNT=3")
    booking, sessions = await store.create_booking(d, [occ(s, index=i) for i, s in enumerate(starts)])
    await store.update_session(sessions[0].session_id, status=SessionStatus.ENDED)
    shift = timedelta(hours=2)
    new_draft = BookingDraft(
        SubjectId("math"), (StudentId("stu_1"),), T0 + shift, 45, InstructorId("ins_a"), "FREQ=WEEKLY;COUNT=3"
    )
    old, new, after = await store.reschedule_booking(
        booking.booking_id, new_draft, [occ(s + shift, 45, index=i) for i, s in enumerate(starts)]
    )
    assert old.start == T0 and new.start == T0 + shift and new.duration_minutes == 45
    by_index = {s.occurrence_index: s for s in after}
    assert by_index[0].start == T0  # ended: untouched
    assert by_index[1].start == starts[1] + shift and by_index[1].session_id == sessions[1].session_id
    assert by_index[2].end == starts[2] + shift + timedelta(minutes=45)
    # the old slot of occurrence 1 is free, the new one is taken
    await book(store, starts[1], students=("stu_2",))
    with pytest.raises(SlotConflictError):
        await book(store, starts[2] + shift, students=("stu_2",))
    async with store.engine.connect() as c:
        types = (await c.execute(sa.select(t.webhook_outbox.c.event_type, t.webhook_outbox.c.payload))).all()
    resched = [p for ty, p in types if ty == "booking.rescheduled"]
    assert resched[0]["old"] == {"start": "2030-03-04T09:00:00Z", "duration_minutes": 60}
    assert resched[0]["new"] == {"start": "2030-03-04T11:00:00Z", "duration_minutes": 45}


async def test_fifty_concurrent_bookings_of_one_slot_yield_one_session(store: Store) -> None:
    await store.create_subject(Subject(SubjectId("math"), "Mathematics"))
    await store.create_instructor(Instructor(InstructorId("ins_a"), "A", "a@example.org", "UTC"))
    students = [f"stu_{i}" for i in range(50)]
    for sid in students:
        await store.create_student(Student(StudentId(sid), sid, "UTC"))

    async def attempt(sid: str) -> str:
        try:
            await book(store, students=(sid,))
        except SlotConflictError:
            return "conflict"
        return "booked"

    outcomes = await asyncio.gather(*(attempt(s) for s in students))
    assert outcomes.count("booked") == 1
    assert outcomes.count("conflict") == 49
    page = await store.list_sessions(limit=200)
    assert len(page.items) == 1
    async with store.engine.connect() as c:
        n = (await c.execute(sa.select(sa.func.count()).select_from(t.occupancy))).scalar()
    assert n == 12 + 12  # one hour of instructor slots and one hour of the winning student's


async def test_listing_pages_with_opaque_cursor(store: Store) -> None:
    await seed(store)
    for i in range(5):
        await book(store, T0 + timedelta(days=i))
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_bookings(limit=2, cursor=cursor)
        seen += [b.booking_id for b in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)) == 5
    starts = [(await store.get_booking(b)).start for b in seen]
    assert starts == sorted(starts)
    with pytest.raises(InvalidInputError):
        await store.list_bookings(cursor="not-a-cursor")


async def test_emit_event_fans_out_only_to_interested_active_subscriptions(store: Store) -> None:
    a = await store.create_subscription("http://127.0.0.1:9/a", [], "whsec_AAAA")
    b = await store.create_subscription("http://127.0.0.1:9/b", ["session.ended"], "whsec_AAAA")
    c_ = await store.create_subscription("http://127.0.0.1:9/c", [], "whsec_AAAA")
    await store.update_subscription(c_.subscription_id, active=False)
    async with store.transaction() as conn:
        event_id = await emit_event(conn, "session.started", {"x": 1}, "bkg_1")
    deliveries = await store.deliveries_of_event(event_id)
    assert [d.subscription_id for d in deliveries] == [a.subscription_id]
    assert b.subscription_id not in [d.subscription_id for d in deliveries]
    with pytest.raises(ValueError):
        async with store.transaction() as conn:
            await emit_event(conn, "nonsense", {}, None)


async def test_event_rolled_back_with_its_transaction(store: Store) -> None:
    await store.create_subscription("http://127.0.0.1:9/a", [], "whsec_AAAA")
    with pytest.raises(RuntimeError):
        async with store.transaction() as conn:
            await emit_event(conn, "session.started", {}, "bkg_1")
            raise RuntimeError("boom")
    assert await store.claim_due_deliveries() == []


async def test_delivery_chain_blocks_later_events_of_the_same_booking(store: Store) -> None:
    await store.create_subscription("http://127.0.0.1:9/a", [], "whsec_AAAA")
    async with store.transaction() as conn:
        await emit_event(conn, "session.started", {"n": 1}, "bkg_1")
        await emit_event(conn, "session.ended", {"n": 2}, "bkg_1")
        await emit_event(conn, "session.started", {"n": 3}, "bkg_2")
    first = await store.claim_due_deliveries()
    assert sorted(d.event.payload["n"] for d in first) == [1, 3]
    assert await store.claim_due_deliveries() == []  # leased, and n=2 waits for n=1
    head = next(d for d in first if d.event.payload["n"] == 1)
    await store.mark_attempt_failed(head.delivery_id, "HTTP 500", None)  # given up
    nxt = await store.claim_due_deliveries()
    assert [d.event.payload["n"] for d in nxt] == [2]
    assert (await store.deliveries_of_event(head.event.event_id))[0].status is DeliveryStatus.FAILED
    assert await store.outbox_lag_seconds() >= 0.0


async def test_operational_exceptions_dedup_and_reopen(store: Store) -> None:
    e1 = await store.raise_exception("node-down:n1", "node_down", "high", subject_refs={"node_id": "n1"})
    e2 = await store.raise_exception("node-down:n1", "node_down", "critical")
    assert e1.exception_id == e2.exception_id and e2.occurrences == 2 and e2.severity == "critical"
    acked = await store.set_exception_status(e1.exception_id, ExceptionStatus.ACKED, owner="ops@example.org")
    assert acked.owner == "ops@example.org"
    resolved = await store.set_exception_status(e1.exception_id, ExceptionStatus.RESOLVED)
    assert resolved.resolved_at is not None
    reopened = await store.raise_exception("node-down:n1", "node_down", "high")
    assert reopened.status is ExceptionStatus.OPEN and reopened.resolved_at is None
    page = await store.list_exceptions(statuses=[ExceptionStatus.OPEN])
    assert [e.dedup_key for e in page.items] == ["node-down:n1"]


async def test_recording_ready_emits_event_once(store: Store) -> None:
    await seed(store)
    await store.create_subscription("http://127.0.0.1:9/a", ["recording.ready"], "whsec_AAAA")
    _, sessions = await book(store)
    sid = sessions[0].session_id
    await store.upsert_recording(sid, status="recording")
    rec = await store.upsert_recording(sid, status="ready", coverage=0.98, gaps=[(10.0, 12.5)], files=["a.mp4"])
    await store.upsert_recording(sid, status="ready", coverage=0.98, gaps=[(10.0, 12.5)], files=["a.mp4"])
    assert rec.gaps == ((10.0, 12.5),) and (await store.recording_of(sid)) == (await store.recording_of(sid))
    due = await store.claim_due_deliveries()
    assert [d.event.event_type for d in due] == ["recording.ready"]


async def test_attendance_and_session_events(store: Store) -> None:
    await seed(store)
    _, sessions = await book(store)
    sid = sessions[0].session_id
    s = await store.update_session(
        sid,
        status=SessionStatus.PROVISIONED,
        room_id="room-1",
        region="eu",
        node_id="n1",
        event_type="session.provisioned",
    )
    assert (s.room_id, s.region, s.node_id, s.status) == ("room-1", "eu", "n1", SessionStatus.PROVISIONED)
    await store.record_join(sid, "stu_1", "student", at=T0)
    await store.record_leave(sid, "stu_1", at=T0 + timedelta(minutes=50))
    (att,) = await store.attendance_of(sid)
    assert att.left_at == T0 + timedelta(minutes=50)
    with pytest.raises(NotFoundError):
        await store.update_session("ses_missing", status=SessionStatus.LIVE)


async def test_occupancy_primary_key_refuses_duplicate_claims_in_the_database(store: Store) -> None:
    """The database, not only the pre-check in Python, refuses a second claim on a slot."""
    await seed(store)
    _, sessions = await book(store)
    from sqlalchemy.exc import IntegrityError

    from orchestrator.store.store import slot_of

    with pytest.raises(IntegrityError):
        async with store.transaction() as c:
            await c.execute(
                t.occupancy.insert().values(
                    person_kind="instructor", person_id="ins_a", slot=slot_of(T0), session_id=sessions[0].session_id
                )
            )


async def test_concurrent_creates_of_one_id_give_one_winner(store: Store) -> None:
    async def create() -> str:
        try:
            await store.create_subject(Subject(SubjectId("math"), "Mathematics"))
        except AlreadyExistsError:
            return "exists"
        return "created"

    outcomes = await asyncio.gather(*(create() for _ in range(10)))
    assert sorted(outcomes) == ["created"] + ["exists"] * 9


async def test_concurrent_idempotency_reservations_give_one_owner(store: Store) -> None:
    results = await asyncio.gather(
        *(store.idempotency_reserve("key1", "order-1", "POST /v1/bookings", "h") for _ in range(10))
    )
    assert sum(r is None for r in results) == 1
    assert all(r.response_status is None for r in results if r is not None)
    await store.idempotency_complete("key1", "order-1", 201, "{}")
    again = await store.idempotency_reserve("key1", "order-1", "POST /v1/bookings", "h")
    assert again is not None and again.response_status == 201
    assert await store.purge_idempotency_keys(timedelta(0)) == 1


async def test_in_memory_sqlite_store_works_for_quick_tools() -> None:
    s = await Store.open("sqlite+aiosqlite://")
    try:
        await seed(s)
        await book(s)
        with pytest.raises(SlotConflictError):
            await book(s, students=("stu_2",))
    finally:
        await s.close()
