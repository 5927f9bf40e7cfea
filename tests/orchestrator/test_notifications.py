"""Notifications on a real store, a real SMTP server (aiosmtpd on loopback) and a real webhook receiver.

Times are driven by passing ``now`` (sessions are in 2030), so every test is exact and fast; the last test runs the
whole orchestrator and lets its leader loop send on the wall clock.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest
import sqlalchemy as sa
import standardwebhooks
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiosmtpd.smtp import SMTP as SmtpProtocol
from aiosmtpd.smtp import Envelope
from aiosmtpd.smtp import Session as SmtpSession
from prometheus_client import REGISTRY

from core.bus import LocalBus
from core.regions import load_regions
from core.service import ServiceHost
from core.tokens import TokenIssuer, TokenVerifier, generate_private_key, private_key_pem
from orchestrator.api.hooks import BookingChange, MintJoinLink
from orchestrator.api.keys import create_api_key
from orchestrator.app import OrchestratorConfig, OrchestratorService
from orchestrator.notifications import NotificationConfig, Notifier, SmtpConfig
from orchestrator.store import Store
from orchestrator.store import schema as t
from orchestrator.store.models import (
    BookingDraft,
    ExceptionStatus,
    Instructor,
    InstructorId,
    Occurrence,
    Session,
    SessionStatus,
    Student,
    StudentId,
    Subject,
    SubjectId,
    WeeklyWindow,
)
from orchestrator.store.notifications import NotificationKind, NotificationStatus, NotificationStore
from orchestrator.webhooks import DispatcherConfig, WebhookDispatcher, new_secret

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)  # a Monday
ADA, BEA = "ada@example.org", "bea@example.org"
GINA, LEE_HOME = "gina@example.org", "home-of-lee@example.org"
LEVELS = {SubjectId("math"): 1}


# ---------------------------------------------------------------------------------------------- a real SMTP server


@dataclass
class Sink:
    """An SMTP server on loopback that keeps what it accepts. ``hold`` makes it sit on a message (mid-DATA);
    ``data_reply`` and ``refuse`` make it answer with errors."""

    port: int = 0
    messages: list[tuple[list[str], Message]] = field(default_factory=list)
    data_commands: int = 0
    data_started: asyncio.Event = field(default_factory=asyncio.Event)
    hold: asyncio.Event | None = None
    data_reply: str = "250 OK"
    refuse: set[str] = field(default_factory=set)

    async def handle_RCPT(
        self, server: SmtpProtocol, session: SmtpSession, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SmtpProtocol, session: SmtpSession, envelope: Envelope) -> str:
        self.data_commands += 1
        self.data_started.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.data_reply.startswith("250"):
            assert isinstance(envelope.content, bytes)
            self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return self.data_reply

    def to(self, address: str) -> list[Message]:
        return [m for rcpt, m in self.messages if address in rcpt]


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    s = Sink()
    server = await asyncio.get_running_loop().create_server(
        lambda: SmtpProtocol(s, hostname="sink.test"), "127.0.0.1", 0
    )
    s.port = server.sockets[0].getsockname()[1]
    try:
        yield s
    finally:
        if s.hold is not None:
            s.hold.set()
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------------------------------------- data and tools


async def seed(store: Store, *, start: datetime = T0, minutes: int = 60) -> Session:
    await store.create_subject(Subject(SubjectId("math"), "Mathematics"))
    always = tuple(WeeklyWindow(d, "00:00", "24:00") for d in range(7))
    for iid, name, email in (("ins_a", "Ada Lovelace", ADA), ("ins_b", "Bea Noether", BEA)):
        await store.create_instructor(
            Instructor(InstructorId(iid), name, email, "Europe/Berlin", {SubjectId("math"): 5}, always)
        )
    await store.create_student(
        Student(StudentId("stu_1"), "Sam", "Asia/Kolkata", guardian_name="Gina", guardian_email=GINA, levels=LEVELS)
    )
    await store.create_student(
        Student(StudentId("stu_2"), "Lee", "America/New_York", guardian_email=LEE_HOME, levels=LEVELS)
    )
    await store.create_student(
        Student(StudentId("stu_3"), "Max", "UTC", levels=LEVELS)
    )  # no guardian email: no address
    draft = BookingDraft(
        SubjectId("math"), (StudentId("stu_1"), StudentId("stu_2")), start, minutes, InstructorId("ins_a")
    )
    _, sessions = await store.create_booking(
        draft, [Occurrence(0, start, start + timedelta(minutes=minutes), InstructorId("ins_a"))]
    )
    return sessions[0]


async def move(store: Store, session: Session, start: datetime, instructor: str = "ins_a") -> BookingChange:
    booking = await store.get_booking(session.booking_id)
    minutes = booking.duration_minutes
    draft = BookingDraft(booking.subject_id, booking.student_ids, start, minutes, InstructorId(instructor))
    old, new, sessions = await store.reschedule_booking(
        session.booking_id, draft, [Occurrence(0, start, start + timedelta(minutes=minutes), InstructorId(instructor))]
    )
    return BookingChange("rescheduled", new, tuple(sessions), previous=old)


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer(private_key_pem(generate_private_key()))


@pytest.fixture
async def mint_for(issuer: TokenIssuer) -> AsyncIterator[Callable[[Store], MintJoinLink]]:
    """The orchestrator's own join-link minting (``OrchestratorService._mint_join_link``) over a given store."""
    buses: list[LocalBus] = []

    def make(store: Store) -> MintJoinLink:
        bus = LocalBus()
        buses.append(bus)
        service = OrchestratorService(
            OrchestratorConfig(
                public_url="http://127.0.0.1:8700", signaling_url="https://class.example.org", database_url=""
            ),
            bus,
            load_regions(),
            issuer,
        )
        service._store = store
        return service._mint_join_link

    yield make
    for bus in buses:
        await bus.close()


def smtp_config(sink: Sink, **kw: Any) -> NotificationConfig:
    return NotificationConfig(
        channel="smtp",
        smtp=SmtpConfig(host="127.0.0.1", port=sink.port, sender="classmesh <notify@school.test>", timeout_s=5),
        **kw,
    )


def join_token(message: Message) -> str:
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    url = re.search(r"Join here: (\S+)", body.decode())
    assert url is not None, body.decode()
    return parse_qs(urlparse(url.group(1)).query)["token"][0]


def text(message: Message) -> str:
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    return body.decode()


async def rows(store: Store, session_id: str) -> list[Any]:
    return await NotificationStore(store).of_session(session_id)


# ---------------------------------------------------------------------------------------------- planning


async def test_planning_twice_creates_each_notification_once(store: Store, mint_for: Any) -> None:
    session = await seed(store)
    notifier = Notifier(store, mint_join_link=mint_for(store))
    first = await notifier.plan(session.session_id, now=T0 - timedelta(days=3))
    assert first is not None and len(first.planned) == 11
    await notifier.plan(session.session_id, now=T0 - timedelta(days=3))
    await notifier.plan_due(now=T0 - timedelta(hours=20))
    found = await rows(store, session.session_id)
    # instructor and two students: 2 reminders each (24 h, 15 min), a post-session message each, 2 absence alerts
    kinds = sorted((n.recipient_id, n.kind.value) for n in found)
    assert len(found) == 11
    assert kinds.count(("stu_1", "reminder")) == 2 and kinds.count(("ins_a", "absence_alert")) == 0
    assert {n.status for n in found} == {NotificationStatus.PENDING}
    assert {n.due_at for n in found if n.kind is NotificationKind.REMINDER} == {
        T0 - timedelta(hours=24),
        T0 - timedelta(minutes=15),
    }
    # and the database itself refuses a second row for the same (session, recipient, kind, variant)
    n = found[0]
    with pytest.raises(sa.exc.IntegrityError):
        async with store.transaction() as c:
            await c.execute(
                t.notifications.insert().values(
                    notification_id="ntf_duplicate",
                    session_id=n.session_id,
                    recipient_id=n.recipient_id,
                    recipient_role=n.recipient_role,
                    kind=n.kind.value,
                    variant=n.variant,
                    status="pending",
                    due_at=n.due_at,
                    next_attempt_at=n.due_at,
                    session_start=n.session_start,
                    attempts=0,
                    details={},
                    created_at=T0,
                    updated_at=T0,
                )
            )


async def test_the_loop_plans_a_session_the_booking_hook_missed(sqlite_store: Store, mint_for: Any) -> None:
    session = await seed(sqlite_store)
    notifier = Notifier(sqlite_store, mint_join_link=mint_for(sqlite_store))
    # far ahead: outside the loop's horizon, so nothing yet (the hook plans those at booking time)
    assert (await notifier.run_once(T0 - timedelta(days=3))).planned == 0
    assert await rows(sqlite_store, session.session_id) == []
    assert (await notifier.run_once(T0 - timedelta(hours=24, minutes=30))).planned == 1
    assert len(await rows(sqlite_store, session.session_id)) == 11


async def test_a_session_booked_at_short_notice_gets_one_reminder_at_once(sqlite_store: Store, mint_for: Any) -> None:
    session = await seed(sqlite_store)
    notifier = Notifier(sqlite_store, mint_join_link=mint_for(sqlite_store))
    now = T0 - timedelta(minutes=10)  # both reminder times have passed
    await notifier.plan(session.session_id, now=now)
    reminders = [n for n in await rows(sqlite_store, session.session_id) if n.kind is NotificationKind.REMINDER]
    assert len(reminders) == 3
    assert {(n.details["offset_minutes"], n.due_at) for n in reminders} == {(15, now)}


# ---------------------------------------------------------------------------------------------- SMTP


async def test_each_recipient_gets_one_reminder_with_their_own_join_link(
    sqlite_store: Store, mint_for: Any, issuer: TokenIssuer, sink: Sink
) -> None:
    store = sqlite_store
    session = await seed(store)
    notifier = Notifier(store, smtp_config(sink), mint_join_link=mint_for(store))
    await notifier.plan(session.session_id, now=T0 - timedelta(days=2))
    verifier = TokenVerifier(issuer.public_key_pem)
    at = T0 - timedelta(hours=24)
    labels = {"kind": "reminder", "channel": "smtp"}
    before = REGISTRY.get_sample_value("classmesh_orchestrator_notifications_sent_total", labels) or 0.0
    await notifier.run_once(at)
    await notifier.run_once(at + timedelta(minutes=1))  # nothing twice
    assert len(sink.messages) == 3
    assert REGISTRY.get_sample_value("classmesh_orchestrator_notifications_sent_total", labels) == before + 3
    expected = {ADA: ("ins_a", "instructor"), GINA: ("stu_1", "student"), LEE_HOME: ("stu_2", "student")}
    for address, (participant, role) in expected.items():
        (message,) = sink.to(address)
        assert message["Subject"].startswith("Reminder: Mathematics on ")
        grant = verifier.verify(join_token(message), room=session.session_id)
        assert (grant.identity, grant.role.value) == (participant, role)
        assert grant.expires_at >= (T0 + timedelta(hours=1)).timestamp()  # covers the session
        assert message["Message-ID"].startswith("<ntf_")
    # in the reader's time zone: 09:00 UTC is 14:30 in Kolkata, 04:00 in New York, 10:00 in Berlin
    assert "14:30 (Asia/Kolkata)" in text(sink.to(GINA)[0]) and "Sam's Mathematics session" in text(sink.to(GINA)[0])
    assert "04:00 (America/New_York)" in text(sink.to(LEE_HOME)[0])
    assert "10:00 (Europe/Berlin)" in text(sink.to(ADA)[0])
    # each link is recorded like one minted through the API
    sent = [n for n in await rows(store, session.session_id) if n.status is NotificationStatus.SENT]
    assert len(sent) == 3 and all(n.channel == "smtp" and n.attempts == 1 for n in sent)
    for n in sent:
        assert n.join_link_jti is not None
        link = await store.get_join_link(n.join_link_jti)
        assert link is not None and (link.participant_id, link.session_id) == (n.recipient_id, session.session_id)
    # the 15-minute reminders follow, again once each
    await notifier.run_once(T0 - timedelta(minutes=15))
    await notifier.run_once(T0 - timedelta(minutes=14))
    assert len(sink.messages) == 6 and all(len(sink.to(a)) == 2 for a in expected)


async def test_a_student_without_guardian_email_is_skipped_over_smtp(
    sqlite_store: Store, mint_for: Any, sink: Sink
) -> None:
    store = sqlite_store
    await seed(store)
    draft = BookingDraft(SubjectId("math"), (StudentId("stu_3"),), T0 + timedelta(hours=3), 30, InstructorId("ins_b"))
    start = T0 + timedelta(hours=3)
    _, (session,) = await store.create_booking(
        draft, [Occurrence(0, start, start + timedelta(minutes=30), InstructorId("ins_b"))]
    )
    notifier = Notifier(store, smtp_config(sink), mint_join_link=mint_for(store))
    await notifier.plan(session.session_id, now=start - timedelta(days=2))
    await notifier.run_once(start - timedelta(hours=24))
    assert [rcpt for rcpt, _ in sink.messages] == [[BEA]]
    (skipped,) = [n for n in await rows(store, session.session_id) if n.status is NotificationStatus.SKIPPED]
    assert skipped.recipient_id == "stu_3" and "guardian_email" in (skipped.last_error or "")


async def test_temporary_failures_retry_with_backoff_then_fail_with_an_exception(
    sqlite_store: Store, mint_for: Any, sink: Sink
) -> None:
    store = sqlite_store
    session = await seed(store)
    sink.data_reply = "451 4.3.0 try again later"
    sink.refuse = {GINA}
    config = smtp_config(sink, max_attempts=2, backoff_base_s=60, reminder_offsets=(timedelta(hours=1),))
    notifier = Notifier(store, config, mint_join_link=mint_for(store))
    await notifier.plan(session.session_id, now=T0 - timedelta(days=1))
    at = T0 - timedelta(hours=1)
    await notifier.run_once(at)
    by_recipient = {n.recipient_id: n for n in await rows(store, session.session_id) if n.kind.value == "reminder"}
    # a refused mailbox is permanent: failed at once; a 451 is retried later
    assert by_recipient["stu_1"].status is NotificationStatus.FAILED and "550" in (
        by_recipient["stu_1"].last_error or ""
    )
    retry = by_recipient["ins_a"]
    assert retry.status is NotificationStatus.PENDING and retry.attempts == 1
    assert retry.next_attempt_at >= at + timedelta(seconds=60) and "451" in (retry.last_error or "")
    await notifier.run_once(at + timedelta(seconds=30))  # not yet due again
    assert sink.data_commands == 2
    await notifier.run_once(at + timedelta(minutes=3))
    final = {n.recipient_id: n for n in await rows(store, session.session_id) if n.kind.value == "reminder"}
    assert final["ins_a"].status is NotificationStatus.FAILED and final["ins_a"].attempts == 2
    assert sink.data_commands == 4 and sink.messages == []
    raised = (await store.list_exceptions()).items
    failed = {e.subject_refs["recipient_id"]: e for e in raised if e.kind == "notification_failed"}
    assert set(failed) == {"ins_a", "stu_1", "stu_2"}
    assert failed["ins_a"].subject_refs["notification_id"] == final["ins_a"].notification_id


async def test_smtp_sender_killed_mid_send_leaves_it_uncertain_and_never_sends_twice(
    sqlite_store: Store, mint_for: Any, sink: Sink
) -> None:
    store = sqlite_store
    session = await seed(store)
    config = smtp_config(sink, reminder_offsets=(timedelta(hours=1),), concurrency=1)
    dead = Notifier(store, config, mint_join_link=mint_for(store), instance_id="old-leader")
    await dead.plan(session.session_id, now=T0 - timedelta(days=1))
    at = T0 - timedelta(hours=1)
    sink.hold = asyncio.Event()
    sending = asyncio.create_task(dead.send_due(at, token=1))
    await asyncio.wait_for(sink.data_started.wait(), 10)
    sending.cancel()  # the process dies while the server holds the message
    with pytest.raises(asyncio.CancelledError):
        await sending
    in_flight = [n for n in await rows(store, session.session_id) if n.status is NotificationStatus.SENDING]
    assert len(in_flight) == 3 and {n.claimed_by for n in in_flight} == {"old-leader:1"}
    sink.hold.set()
    # the next leader: what the old one was sending is uncertain, with an exception for a human
    successor = Notifier(store, config, mint_join_link=mint_for(store), instance_id="new-leader")
    assert await successor.recover(at + timedelta(seconds=5), token=2, term_started_at=at + timedelta(seconds=1)) == 3
    for later in (5, 60, 600):
        await successor.run_once(at + timedelta(seconds=later), token=2, term_started_at=at + timedelta(seconds=1))
    assert sink.data_commands == 1  # only the message the dead sender had started: nothing is sent again
    states = {n.status for n in await rows(store, session.session_id) if n.kind is NotificationKind.REMINDER}
    assert states == {NotificationStatus.UNCERTAIN}
    uncertain = [e for e in (await store.list_exceptions()).items if e.kind == "notification_uncertain"]
    assert len(uncertain) == 3 and all(e.severity == "high" for e in uncertain)


async def test_a_slow_sender_that_finishes_after_recovery_turns_uncertain_into_sent(
    sqlite_store: Store, mint_for: Any, sink: Sink
) -> None:
    store = sqlite_store
    session = await seed(store)
    config = smtp_config(sink, reminder_offsets=(timedelta(hours=1),), concurrency=1, batch_size=1)
    slow = Notifier(store, config, mint_join_link=mint_for(store), instance_id="stalled")
    await slow.plan(session.session_id, now=T0 - timedelta(days=1))
    at = T0 - timedelta(hours=1)
    sink.hold = asyncio.Event()
    sending = asyncio.create_task(slow.send_due(at, token=1))
    await asyncio.wait_for(sink.data_started.wait(), 10)
    successor = Notifier(store, config, mint_join_link=mint_for(store), instance_id="successor")
    assert await successor.recover(at, token=2, term_started_at=at + timedelta(seconds=1)) == 1
    (held,) = [n for n in await rows(store, session.session_id) if n.status is NotificationStatus.UNCERTAIN]
    sink.hold.set()
    assert await asyncio.wait_for(sending, 10) == 1
    assert (await NotificationStore(store).get(held.notification_id)).status is NotificationStatus.SENT
    assert len(sink.messages) == 1
    (record,) = [e for e in (await store.list_exceptions()).items if e.kind == "notification_uncertain"]
    assert record.status is ExceptionStatus.RESOLVED


# ---------------------------------------------------------------------------------------------- webhooks


@dataclass
class Receiver:
    secret: str
    deliveries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (webhook-id, payload)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        payload = standardwebhooks.Webhook(self.secret).verify(body, dict(request.headers))
        self.deliveries.append((request.headers["webhook-id"], payload))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver(new_secret())
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield rec, str(server.make_url("/hook"))
    finally:
        await server.close()


async def deliver_all(store: Store) -> None:
    dispatcher = WebhookDispatcher(store, DispatcherConfig(request_timeout=5))
    dispatcher.start()
    try:
        for _ in range(100):
            await dispatcher.run_once()
            if await store.outbox_lag_seconds() == 0.0:
                return
            await asyncio.sleep(0.02)
    finally:
        await dispatcher.close()


async def test_webhook_sender_killed_after_claim_or_after_enqueue_is_sent_again_exactly_once(
    sqlite_store: Store, mint_for: Any, issuer: TokenIssuer, receiver: tuple[Receiver, str]
) -> None:
    store = sqlite_store
    rec, url = receiver
    await store.create_subscription(url, ["notification.due"], rec.secret)
    session = await seed(store)
    config = NotificationConfig(channel="webhook", reminder_offsets=(timedelta(hours=1),))
    outbox = NotificationStore(store)
    await Notifier(store, config, mint_join_link=mint_for(store)).plan(session.session_id, now=T0 - timedelta(days=1))
    at = T0 - timedelta(hours=1)
    ids = await outbox.due(now=at)
    assert len(ids) == 3
    # the old leader claims all three and dies: one before writing anything, one after writing the event
    claimed = await outbox.claim(ids, claimer="old-leader:1", channel="webhook", token=1, now=at)
    await outbox.enqueue_webhook(claimed[0].notification_id, {"partial": True}, session.booking_id)
    successor = Notifier(store, config, mint_join_link=mint_for(store), instance_id="new-leader")
    result = await successor.run_once(at + timedelta(seconds=5), token=2, term_started_at=at + timedelta(seconds=1))
    assert result.recovered == 3 and result.claimed == 3
    await successor.run_once(at + timedelta(seconds=10), token=2, term_started_at=at + timedelta(seconds=1))
    await deliver_all(store)
    # one delivery per notification, its webhook-id the notification id (receivers dedupe on it)
    assert sorted(i for i, _ in rec.deliveries) == sorted(ids)
    assert {n.status for n in await rows(store, session.session_id) if n.kind is NotificationKind.REMINDER} == {
        NotificationStatus.SENT
    }
    verifier = TokenVerifier(issuer.public_key_pem)
    for webhook_id, payload in rec.deliveries:
        assert payload["type"] == "notification.due"
        data = payload["data"]
        if webhook_id == claimed[0].notification_id:
            assert data == {"partial": True}  # written by the dead sender: kept, not written twice
            continue
        assert data["notification_id"] == webhook_id and data["kind"] == "reminder"
        grant = verifier.verify(parse_qs(urlparse(data["join_link"]["url"]).query)["token"][0])
        assert grant.identity == data["recipient"]["participant_id"] and grant.role.value == data["recipient"]["role"]
    async with store.read() as c:
        events = (
            await c.execute(
                sa.select(sa.func.count())
                .select_from(t.webhook_outbox)
                .where(t.webhook_outbox.c.event_type == "notification.due")
            )
        ).scalar_one()
    assert events == 3


async def test_webhook_channel_without_a_subscriber_retries_then_fails(sqlite_store: Store, mint_for: Any) -> None:
    store = sqlite_store
    session = await seed(store)
    config = NotificationConfig(channel="webhook", reminder_offsets=(timedelta(hours=1),), max_attempts=2)
    notifier = Notifier(store, config, mint_join_link=mint_for(store))
    await notifier.plan(session.session_id, now=T0 - timedelta(days=1))
    await notifier.run_once(T0 - timedelta(hours=1))
    await notifier.run_once(T0 - timedelta(minutes=50))
    reminders = [n for n in await rows(store, session.session_id) if n.kind is NotificationKind.REMINDER]
    assert {n.status for n in reminders} == {NotificationStatus.FAILED}
    assert all("no active webhook subscription" in (n.last_error or "") for n in reminders)


async def test_log_channel_writes_each_reminder_with_its_join_link_once(
    sqlite_store: Store, mint_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = sqlite_store
    session = await seed(store)
    config = NotificationConfig(channel="log", reminder_offsets=(timedelta(hours=1),))
    notifier = Notifier(store, config, mint_join_link=mint_for(store))
    await notifier.plan(session.session_id, now=T0 - timedelta(days=1))
    with caplog.at_level(logging.INFO, logger="orchestrator.notifications"):
        await notifier.run_once(T0 - timedelta(hours=1))
        await notifier.run_once(T0 - timedelta(minutes=50))
    reminders = [n for n in await rows(store, session.session_id) if n.kind is NotificationKind.REMINDER]
    assert reminders and {n.status for n in reminders} == {NotificationStatus.SENT}
    logged = [
        r.getMessage() for r in caplog.records if "kind=reminder" in r.getMessage() and "join_link=" in r.getMessage()
    ]
    assert len(logged) == len(reminders)  # once each
    assert all("join_link=http" in line for line in logged), logged


# ---------------------------------------------------------------------------------------------- cascades


async def test_reschedule_replans_reminders_and_tells_everyone(
    store: Store, mint_for: Any, issuer: TokenIssuer, sink: Sink
) -> None:
    session = await seed(store)
    notifier = Notifier(store, smtp_config(sink), mint_join_link=mint_for(store))
    await notifier.plan(session.session_id, now=T0 - timedelta(days=3))
    new_start = T0 + timedelta(days=1, hours=2)
    change = await move(store, session, new_start)
    now = T0 - timedelta(days=2)
    for s in change.sessions:  # what the booking hook does
        await notifier.plan(s.session_id, now=now)
    await notifier.plan(session.session_id, now=now)  # and again (another replica, the loop): nothing new
    found = await rows(store, session.session_id)
    pending = [n for n in found if n.status is NotificationStatus.PENDING]
    # nothing pending still points at the old time
    assert all(n.session_start == new_start for n in pending)
    assert {n.due_at for n in pending if n.kind is NotificationKind.REMINDER} == {
        new_start - timedelta(hours=24),
        new_start - timedelta(minutes=15),
    }
    assert {n.due_at for n in pending if n.kind is NotificationKind.ABSENCE_ALERT} == {new_start + timedelta(minutes=5)}
    old = [n for n in found if n.session_start == T0 and n.kind is NotificationKind.REMINDER]
    assert len(old) == 6 and {n.status for n in old} == {NotificationStatus.CANCELLED}
    changed = [n for n in found if n.kind is NotificationKind.SESSION_CHANGED]
    assert len(changed) == 3 and all(n.details["changes"] == ["rescheduled"] for n in changed)
    await notifier.run_once(now)
    assert len(sink.messages) == 3
    verifier = TokenVerifier(issuer.public_key_pem)
    gina = sink.to(GINA)[0]
    assert gina["Subject"].startswith("Changed: Mathematics on ") and "has moved to" in text(gina)
    assert verifier.verify(join_token(gina), room=session.session_id).identity == "stu_1"
    # moving it back plans the earlier reminders again instead of losing them
    change = await move(store, session, T0)
    await notifier.plan(session.session_id, now=now)
    again = [n for n in await rows(store, session.session_id) if n.status is NotificationStatus.PENDING]
    assert all(n.session_start == T0 for n in again)
    assert sum(n.kind is NotificationKind.REMINDER for n in again) == 6
    assert sum(n.kind is NotificationKind.SESSION_CHANGED for n in again) == 3  # revision 2: told again


async def test_instructor_change_tells_the_old_and_new_instructor_and_the_students(
    sqlite_store: Store, mint_for: Any, sink: Sink
) -> None:
    store = sqlite_store
    session = await seed(store)
    notifier = Notifier(store, smtp_config(sink), mint_join_link=mint_for(store))
    await notifier.plan(session.session_id, now=T0 - timedelta(days=3))
    await move(store, session, T0, instructor="ins_b")
    now = T0 - timedelta(days=2)
    await notifier.plan(session.session_id, now=now)
    found = await rows(store, session.session_id)
    changes = {n.recipient_id: n.details["changes"] for n in found if n.kind is NotificationKind.SESSION_CHANGED}
    assert changes == {
        "ins_a": ["unassigned"],
        "ins_b": ["assigned"],
        "stu_1": ["instructor_changed"],
        "stu_2": ["instructor_changed"],
    }
    assert not [
        n
        for n in found
        if n.recipient_id == "ins_a"
        and n.status is NotificationStatus.PENDING
        and n.kind is not NotificationKind.SESSION_CHANGED
    ]
    assert len([n for n in found if n.recipient_id == "ins_b" and n.kind is NotificationKind.REMINDER]) == 2
    await notifier.run_once(now)
    assert "no longer on your schedule" in text(sink.to(ADA)[0]) and "Join here" not in text(sink.to(ADA)[0])
    assert "assigned to teach" in text(sink.to(BEA)[0]) and "Join here" in text(sink.to(BEA)[0])
    assert "taught by Bea Noether" in text(sink.to(GINA)[0])


async def test_cancelling_cancels_pending_notifications_and_tells_everyone(
    store: Store, mint_for: Any, sink: Sink
) -> None:
    session = await seed(store)
    notifier = Notifier(store, smtp_config(sink), mint_join_link=mint_for(store))
    await notifier.plan(session.session_id, now=T0 - timedelta(days=3))
    booking, _ = await store.cancel_booking(session.booking_id, reason="teacher ill")
    now = T0 - timedelta(days=2)
    await notifier.booking_changed(
        BookingChange("cancelled", booking, tuple(await store.sessions_of_booking(booking.booking_id)))
    )
    await notifier.plan_due(now)
    found = await rows(store, session.session_id)
    pending = [n for n in found if n.status is NotificationStatus.PENDING]
    # only the notices of the cancellation itself are pending for a cancelled session
    assert {n.kind for n in pending} == {NotificationKind.SESSION_CHANGED} and len(pending) == 3
    assert {n.status for n in found if n.kind is not NotificationKind.SESSION_CHANGED} == {NotificationStatus.CANCELLED}
    await notifier.run_once(now)
    assert len(sink.messages) == 3
    assert all(
        m["Subject"].startswith("Cancelled: Mathematics") and "Join here" not in text(m) for _, m in sink.messages
    )
    assert [n for n in await rows(store, session.session_id) if n.status is NotificationStatus.PENDING] == []
    async with store.read() as c:
        orphans = (
            await c.execute(
                sa.select(sa.func.count())
                .select_from(t.notifications.join(t.sessions, t.sessions.c.session_id == t.notifications.c.session_id))
                .where(
                    t.notifications.c.status == "pending",
                    sa.or_(
                        t.sessions.c.status == "cancelled",
                        t.notifications.c.session_start != t.sessions.c.starts_at,
                    ),
                )
            )
        ).scalar_one()
    assert orphans == 0


async def test_a_session_cancelled_while_its_reminder_is_claimed_is_not_sent(
    sqlite_store: Store, mint_for: Any, sink: Sink
) -> None:
    store = sqlite_store
    session = await seed(store)
    notifier = Notifier(
        store, smtp_config(sink, reminder_offsets=(timedelta(hours=1),)), mint_join_link=mint_for(store)
    )
    await notifier.plan(session.session_id, now=T0 - timedelta(days=1))
    at = T0 - timedelta(hours=1)
    outbox = NotificationStore(store)
    claimed = await outbox.claim(await outbox.due(now=at), claimer=notifier.claimer(None), channel="smtp", now=at)
    await store.cancel_booking(session.booking_id)  # lands between the claim and the send
    await asyncio.gather(*(notifier._guarded(n, notifier.claimer(None), at) for n in claimed))
    assert sink.messages == []
    assert {n.status for n in await rows(store, session.session_id) if n.kind is NotificationKind.REMINDER} == {
        NotificationStatus.CANCELLED
    }


# ---------------------------------------------------------------------------------------------- absence, after


async def test_absence_alert_goes_to_the_guardian_of_a_student_who_did_not_join_only(
    sqlite_store: Store, mint_for: Any, sink: Sink
) -> None:
    store = sqlite_store
    session = await seed(store)
    notifier = Notifier(store, smtp_config(sink, reminder_offsets=()), mint_join_link=mint_for(store))
    await notifier.plan(session.session_id, now=T0 - timedelta(days=1))
    await store.update_session(session.session_id, status=SessionStatus.PROVISIONED)
    await store.record_join(session.session_id, "ins_a", "instructor", at=T0)
    await store.record_join(session.session_id, "stu_1", "student", at=T0 + timedelta(minutes=1))
    await notifier.run_once(T0 + timedelta(minutes=4))
    assert sink.messages == []  # not yet
    await notifier.run_once(T0 + timedelta(minutes=5))
    assert [rcpt for rcpt, _ in sink.messages] == [[LEE_HOME]]
    alert = sink.to(LEE_HOME)[0]
    assert alert["Subject"] == "Lee has not joined Mathematics" and "Join here" in text(alert)
    alerts = {
        n.recipient_id: n for n in await rows(store, session.session_id) if n.kind is NotificationKind.ABSENCE_ALERT
    }
    assert alerts["stu_2"].status is NotificationStatus.SENT and alerts["stu_2"].address == LEE_HOME
    assert alerts["stu_1"].status is NotificationStatus.SKIPPED and alerts["stu_1"].last_error == "the student joined"


async def test_post_session_messages_go_when_the_session_ends(sqlite_store: Store, mint_for: Any, sink: Sink) -> None:
    store = sqlite_store
    session = await seed(store)
    notifier = Notifier(store, smtp_config(sink, reminder_offsets=()), mint_join_link=mint_for(store))
    await notifier.plan(session.session_id, now=T0 - timedelta(days=1))
    for sid in ("stu_1", "stu_2"):
        await store.record_join(session.session_id, sid, "student", at=T0)
    await store.update_session(session.session_id, status=SessionStatus.LIVE)
    await notifier.run_once(T0 + timedelta(minutes=40))
    assert sink.messages == []  # still running
    await store.update_session(session.session_id, status=SessionStatus.ENDED)  # ended early, at 09:45
    await notifier.run_once(T0 + timedelta(minutes=45))
    assert sorted(r[0] for r, _ in sink.messages) == sorted([ADA, GINA, LEE_HOME])
    assert "Please complete its session notes" in text(sink.to(ADA)[0])
    assert "Thank you for attending Sam's Mathematics session" in text(sink.to(GINA)[0])


# ---------------------------------------------------------------------------------------------- races


@pytest.mark.postgres
async def test_two_planners_and_senders_on_one_postgresql_send_everything_once(
    pg_url: str, mint_for: Any, sink: Sink
) -> None:
    seeding = await Store.open(pg_url)
    sessions = [await seed(seeding)]
    for i in range(1, 5):
        start = T0 + timedelta(hours=2 * i)
        draft = BookingDraft(
            SubjectId("math"), (StudentId("stu_1"), StudentId("stu_2")), start, 60, InstructorId("ins_b")
        )
        _, created = await seeding.create_booking(
            draft, [Occurrence(0, start, start + timedelta(hours=1), InstructorId("ins_b"))]
        )
        sessions += created
    await seeding.close()
    stores = [await Store.open(pg_url), await Store.open(pg_url)]
    try:
        config = smtp_config(sink, reminder_offsets=(timedelta(hours=24),), batch_size=4, concurrency=4)
        a, b = (Notifier(s, config, mint_join_link=mint_for(s)) for s in stores)
        now = T0 - timedelta(days=2)
        await asyncio.gather(*(n.plan(s.session_id, now=now) for s in sessions for n in (a, b, a, b)))
        at = T0 - timedelta(hours=1)  # every 24 h reminder is due
        for _ in range(6):
            await asyncio.gather(a.run_once(at), b.run_once(at))
        outbox = NotificationStore(stores[0])
        reminders = [n for s in sessions for n in await outbox.of_session(s.session_id) if n.kind.value == "reminder"]
        assert len(reminders) == 15  # 5 sessions x 3 recipients, each planned once
        assert {n.status for n in reminders} == {NotificationStatus.SENT}
        assert {n.claimed_by for n in reminders} <= {a.instance_id, b.instance_id}
        message_ids = [m["Message-ID"] for _, m in sink.messages]
        assert len(message_ids) == 15 and len(set(message_ids)) == 15
        assert sorted(message_ids) == sorted(f"<{n.notification_id}@school.test>" for n in reminders)
    finally:
        for s in stores:
            await s.close()


# ---------------------------------------------------------------------------------------------- the whole service


async def test_the_orchestrator_books_plans_and_its_leader_sends(
    tmp_path: Path, issuer: TokenIssuer, sink: Sink
) -> None:
    config = OrchestratorConfig(
        public_url="http://127.0.0.1:0",
        signaling_url="https://class.example.org",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'classmesh.db'}",
        lead_time=timedelta(minutes=1),
        leader_ttl_ms=600,
        notifications=replace(smtp_config(sink), interval_s=0.2),
    )
    bus = LocalBus()
    service = OrchestratorService(config, bus, load_regions(), issuer)
    host = ServiceHost(service, "127.0.0.1", 0)
    await host.start()
    try:
        store = service.store
        await seed(store, start=T0)  # people; its session is far away
        _, key = await create_api_key(store, "booking system", ["bookings:write", "notifications:read"])
        now = datetime.now(UTC)
        start = now.replace(second=0, microsecond=0) + timedelta(minutes=10 - now.minute % 5)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
            body = {
                "subject_id": "math",
                "student_ids": ["stu_1"],
                "instructor_id": "ins_b",
                "start": start.isoformat().replace("+00:00", "Z"),
                "duration_minutes": 30,
            }
            async with http.post(f"{host.url}/v1/bookings", json=body) as resp:
                assert resp.status == 201, await resp.text()
                session_id = (await resp.json())["sessions"][0]["session_id"]
            await until(lambda: len(sink.messages) >= 2, 15)
            assert sorted(r[0] for r, _ in sink.messages) == [BEA, GINA]  # the 15-minute reminder, at once
            async with http.get(f"{host.url}/v1/sessions/{session_id}/notifications?kind=reminder") as resp:
                page = await resp.json()
            assert resp.status == 200
            sent = [n for n in page["items"] if n["status"] == "sent"]
            assert len(sent) == 2 and {n["recipient_id"] for n in sent} == {"ins_b", "stu_1"}
    finally:
        await host.close()
        await bus.close()


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
