"""Notifications: reminders with join links, change notices, post-session messages and absence alerts.

``Notifier`` drives the notifications outbox (``orchestrator/store/notifications.py``, where the states of a
notification are drawn):

- **Planning.** ``plan(session_id)`` brings a session's notifications in line with the session as it is now:
  reminders at the configured offsets before the start (default 24 h and 15 min) for the instructor and each
  student, an absence alert per student a few minutes after the start (default 5), a post-session message for
  everyone at the end, and, when the session changed since it was last planned (moved, instructor changed,
  cancelled), a ``session_changed`` notice to everyone affected; pending notifications that no longer fit are
  cancelled. It runs from the booking hook (at once, on the replica that took the change) and in every round of
  the leader's loop for sessions never planned or changed since (so a crash between a commit and the hook loses
  nothing). The unique key and the plan row's compare-and-set make planning twice harmless.
- **Sending.** The loop runs on the leader: it claims due notifications (pending -> sending, recording its claimer
  and fencing token), renders them in the recipient's time zone with the recipient's own join link for reminders
  (minted by the orchestrator's join-link service and recorded like any other), sends them through the one
  configured ``Channel`` and marks them sent, each transition a compare-and-set on the claim. Failures are retried
  with exponential backoff up to ``max_attempts``, then ``failed`` with an operational exception.
- **Recovery.** A row found in ``sending`` whose claimer is gone (claimed before this leader's term, or longer ago
  than ``claim_timeout``) was perhaps sent and perhaps not. Through ``webhook`` it is sent again: the event id is
  the notification id, so the outbox holds it once and receivers drop duplicates by ``webhook-id``. Through
  ``smtp`` it becomes ``uncertain`` with an operational exception for a human: never sent twice.

Recipients: the instructor (their email) and each student, reached through the guardian's email when it is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formataddr, formatdate, parseaddr
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiosmtplib

from orchestrator import metrics
from orchestrator.api.hooks import BookingChange, IssuedJoinLink, MintJoinLink, issue_join_link
from orchestrator.errors import NotFoundError, OrchestratorError
from orchestrator.store import Store, codec
from orchestrator.store.models import ExceptionStatus, Session, SessionStatus
from orchestrator.store.notifications import (
    Notification,
    NotificationKind,
    NotificationStatus,
    NotificationStore,
    PlanInput,
    PlanResult,
    SessionState,
    Wanted,
)

logger = logging.getLogger(__name__)

CHANNELS: Final = ("webhook", "smtp", "log")
RESEND_SAFE: Final = {"webhook": True, "smtp": False, "log": True}
"""Whether a notification whose claimer vanished mid-send may be sent again through that channel."""

_LINK_CHANGES = frozenset({"rescheduled", "instructor_changed", "assigned", "added", "restored"})


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str = "127.0.0.1"
    port: int = 25
    sender: str = "classmesh <noreply@localhost>"
    security: str = "auto"  # auto (STARTTLS when offered) | starttls | tls | none
    username: str = ""
    password: str = field(default="", repr=False)
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class NotificationConfig:
    channel: str = "webhook"
    smtp: SmtpConfig = SmtpConfig()
    reminder_offsets: tuple[timedelta, ...] = (timedelta(hours=24), timedelta(minutes=15))
    absence_after: timedelta = timedelta(minutes=5)
    post_session_window: timedelta = timedelta(days=1)  # a post-session message is still planned this long after
    interval_s: float = 2.0
    batch_size: int = 50
    concurrency: int = 8
    max_attempts: int = 6
    backoff_base_s: float = 30.0
    backoff_max_s: float = 3600.0
    claim_timeout: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"notification channel must be one of {', '.join(CHANNELS)}, not {self.channel!r}")
        if any(o <= timedelta(0) for o in self.reminder_offsets):
            raise ValueError("reminder offsets must be positive")
        if self.absence_after < timedelta(0):
            raise ValueError("absence_after must not be negative")
        if self.smtp.security not in ("auto", "starttls", "tls", "none"):
            raise ValueError(f"smtp security must be auto, starttls, tls or none, not {self.smtp.security!r}")

    @property
    def plan_horizon(self) -> timedelta:
        """Sessions starting within this are planned by the loop if the booking hook did not plan them."""
        return max(self.reminder_offsets, default=timedelta(0)) + timedelta(hours=1)


# ---------------------------------------------------------------------------------------------- planning


def reminder_variant(offset: timedelta, start: datetime) -> str:
    return f"{int(offset.total_seconds() // 60)}m@{codec.iso(start)}"


def plan_notifications(inp: PlanInput, config: NotificationConfig) -> list[Wanted]:
    """What should exist for a session, given what exists (pure: the store applies it in one transaction).

    A reminder whose time has passed is not planned late, except that a session booked or moved so close to its
    start that every reminder time has passed still gets one (the shortest), at once.
    """
    cur, now = inp.current, inp.now
    out: list[Wanted] = []
    if inp.previous is not None and inp.previous != cur:
        out += _changes(inp.previous, cur, inp.revision, now)
    if cur.cancelled:
        return out
    live = {n.key for n in inp.existing if n.status is not NotificationStatus.CANCELLED}
    for rid, role in cur.recipients().items():
        reminders = [
            Wanted(
                rid,
                role,
                NotificationKind.REMINDER,
                reminder_variant(offset, cur.start),
                cur.start - offset,
                {"offset_minutes": int(offset.total_seconds() // 60)},
            )
            for offset in sorted(set(config.reminder_offsets), reverse=True)
        ]
        keep = [w for w in reminders if w.key in live or w.due_at > now]
        out += keep
        if reminders and not keep and cur.start > now:
            out.append(replace(reminders[-1], due_at=now))
        post = Wanted(rid, role, NotificationKind.POST_SESSION, "", cur.end)
        if post.key in live or now < cur.end + config.post_session_window:
            out.append(post)
        if role == "student":
            absence = Wanted(
                rid,
                role,
                NotificationKind.ABSENCE_ALERT,
                "",
                cur.start + config.absence_after,
                {"after_minutes": int(config.absence_after.total_seconds() // 60)},
            )
            if absence.key in live or now < cur.end:
                out.append(absence)
    return out


def _changes(prev: SessionState, cur: SessionState, revision: int, now: datetime) -> list[Wanted]:
    before, after = prev.recipients(), cur.recipients()
    common = {
        "revision": revision,
        "old": {"start": codec.iso(prev.start), "end": codec.iso(prev.end), "instructor_id": prev.instructor_id},
        "new": {"start": codec.iso(cur.start), "end": codec.iso(cur.end), "instructor_id": cur.instructor_id},
    }
    variant = f"r{revision}"
    out: list[Wanted] = []

    def tell(rid: str, role: str, changes: list[str]) -> None:
        out.append(Wanted(rid, role, NotificationKind.SESSION_CHANGED, variant, now, {**common, "changes": changes}))

    if cur.cancelled:
        if not prev.cancelled:
            for rid, role in {**before, **after}.items():
                tell(rid, role, ["cancelled"])
        return out
    moved = (prev.start, prev.end) != (cur.start, cur.end)
    for rid, role in after.items():
        changes = ["restored"] if prev.cancelled else []
        if rid not in before:
            changes.append("assigned" if role == "instructor" else "added")
        else:
            if moved:
                changes.append("rescheduled")
            if prev.instructor_id != cur.instructor_id:
                changes.append("instructor_changed")
        if changes:
            tell(rid, role, changes)
    for rid, role in before.items():
        if rid not in after:
            tell(rid, role, ["unassigned" if role == "instructor" else "removed"])
    return out


# ---------------------------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Recipient:
    participant_id: str
    role: str
    name: str  # the participant's name
    addressee: str  # who reads the message: the participant, or a student's guardian
    address: str | None
    time_zone: str
    via_guardian: bool = False


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A rendered notification, ready for a channel."""

    notification: Notification
    session: Session
    recipient: Recipient
    subject: str
    text: str
    join_link: IssuedJoinLink | None
    payload: dict[str, Any] = field(default_factory=dict)


def _local(moment: datetime, tz: str) -> str:
    try:
        zone: ZoneInfo | Any = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        zone, tz = UTC, "UTC"
    return f"{moment.astimezone(zone):%a %d %b %Y, %H:%M} ({tz})"


def render(
    n: Notification,
    session: Session,
    recipient: Recipient,
    *,
    subject_name: str,
    instructor_name: str,
    link: IssuedJoinLink | None,
) -> tuple[str, str]:
    """Subject line and plain-text body, with times in the recipient's time zone."""
    when = _local(session.start, recipient.time_zone)
    minutes = int((session.end - session.start).total_seconds() // 60)
    student = recipient.role == "student"
    who = f"{recipient.name}'s" if recipient.via_guardian else "your"
    lines = [f"Hello {recipient.addressee},", ""]
    if n.kind is NotificationKind.REMINDER:
        title = f"Reminder: {subject_name} on {when}"
        if student:
            lines.append(f"This is a reminder of {who} {subject_name} session with {instructor_name} on {when}.")
        else:
            lines.append(
                f"This is a reminder of your {subject_name} session on {when} ({len(session.student_ids)} "
                f"student{'s' if len(session.student_ids) != 1 else ''})."
            )
        lines.append(f"It lasts {minutes} minutes.")
    elif n.kind is NotificationKind.SESSION_CHANGED:
        changes = list(n.details.get("changes", []))
        old = n.details.get("old", {})
        old_when = _local(datetime.fromisoformat(old["start"]), recipient.time_zone) if old.get("start") else when
        if "cancelled" in changes:
            title = f"Cancelled: {subject_name} on {old_when}"
            lines.append(f"The {subject_name} session on {old_when} has been cancelled.")
        elif "unassigned" in changes or "removed" in changes:
            title = f"No longer on your schedule: {subject_name} on {old_when}"
            lines.append(f"The {subject_name} session on {old_when} is no longer on {who} schedule.")
        else:
            title = f"Changed: {subject_name} on {when}"
            if "rescheduled" in changes:
                lines.append(f"The {subject_name} session on {old_when} has moved to {when}.")
            if "instructor_changed" in changes and student:
                lines.append(f"It will now be taught by {instructor_name}.")
            if "assigned" in changes:
                lines.append(f"You have been assigned to teach the {subject_name} session on {when}.")
            if "added" in changes or "restored" in changes:
                lines.append(f"{who.capitalize()} {subject_name} session with {instructor_name} is on {when}.")
            lines.append(f"It lasts {minutes} minutes.")
    elif n.kind is NotificationKind.POST_SESSION:
        title = f"After {subject_name} on {when}"
        if student:
            lines.append(f"Thank you for attending {who} {subject_name} session with {instructor_name} on {when}.")
        else:
            lines.append(f"Your {subject_name} session on {when} has ended. Please complete its session notes.")
    else:
        title = f"{recipient.name} has not joined {subject_name}"
        lines.append(
            f"{recipient.name} has not joined the {subject_name} session with {instructor_name} that started at "
            f"{when}. This absence has been recorded."
        )
    if link is not None:
        lines += [
            "",
            f"Join here: {link.url}",
            f"This link is personal to {recipient.name}; it is valid until "
            f"{_local(link.expires_at, recipient.time_zone)}.",
        ]
    return title, "\n".join([*lines, "", "classmesh"]) + "\n"


# ---------------------------------------------------------------------------------------------- channels


class NotificationDeliveryError(OrchestratorError):
    """A channel could not send. ``retryable``: trying again may work. ``ambiguous``: it may have been sent."""

    def __init__(self, detail: str, *, retryable: bool, ambiguous: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable
        self.ambiguous = ambiguous


class Channel(Protocol):
    """Sends one rendered notification; raises ``NotificationDeliveryError`` when it cannot."""

    @property
    def name(self) -> str: ...

    @property
    def needs_address(self) -> bool: ...

    async def send(self, out: Outgoing) -> None: ...


class WebhookChannel:
    """A ``notification.due`` event through the webhook outbox: the booking system sends the email or SMS itself.

    The event id (``webhook-id``) is the notification id: a notification is in the outbox at most once.
    """

    name = "webhook"
    needs_address = False

    def __init__(self, notifications: NotificationStore, *, on_events: Callable[[], None] = lambda: None) -> None:
        self._notifications = notifications
        self._on_events = on_events

    async def send(self, out: Outgoing) -> None:
        if not await self._notifications.webhook_receivers():
            raise NotificationDeliveryError("no active webhook subscription receives notification.due", retryable=True)
        fresh = await self._notifications.enqueue_webhook(
            out.notification.notification_id, out.payload, out.session.booking_id
        )
        if not fresh:
            logger.info("notification=%s was already in the webhook outbox", out.notification.notification_id)
        self._on_events()


class SmtpChannel:
    """Email through an SMTP server. Only a failure while the message itself is being handed over is ambiguous."""

    name = "smtp"
    needs_address = True

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config
        self._sender = parseaddr(config.sender)[1] or config.sender
        self._domain = self._sender.rpartition("@")[2] or "classmesh"

    def message(self, out: Outgoing) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self._config.sender
        msg["To"] = formataddr((out.recipient.addressee, out.recipient.address or ""))
        msg["Subject"] = out.subject
        msg["Date"] = formatdate(usegmt=True)
        # stable across attempts: a mail system that sees it twice can tell
        msg["Message-ID"] = f"<{out.notification.notification_id}@{self._domain}>"
        msg["X-Classmesh-Notification"] = f"{out.notification.kind.value}; session={out.session.session_id}"
        msg.set_content(out.text)
        return msg

    async def send(self, out: Outgoing) -> None:
        if not out.recipient.address:
            raise NotificationDeliveryError("the recipient has no email address", retryable=False)
        cfg = self._config
        client = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            timeout=cfg.timeout_s,
            use_tls=cfg.security == "tls",
            start_tls={"auto": None, "starttls": True, "tls": False, "none": False}[cfg.security],
            username=cfg.username or None,
            password=cfg.password or None,
        )
        try:
            try:
                await client.connect()
                await client.mail(self._sender)
                await client.rcpt(out.recipient.address)
            except aiosmtplib.SMTPResponseException as exc:
                raise NotificationDeliveryError(f"SMTP {exc.code}: {exc.message}", retryable=exc.code < 500) from None
            except (aiosmtplib.SMTPException, OSError) as exc:
                raise NotificationDeliveryError(f"{type(exc).__name__}: {exc}", retryable=True) from None
            try:
                await client.data(self.message(out).as_bytes())
            except aiosmtplib.SMTPResponseException as exc:  # the server answered: it did not take the message
                raise NotificationDeliveryError(f"SMTP {exc.code}: {exc.message}", retryable=exc.code < 500) from None
            except (aiosmtplib.SMTPException, OSError) as exc:  # no answer to the message: it may have gone out
                raise NotificationDeliveryError(
                    f"{type(exc).__name__} while handing over the message: {exc}", retryable=False, ambiguous=True
                ) from None
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()
        finally:
            client.close()


class LogChannel:
    """Writes each notification to the log, join link included: for ``classmesh dev``, where nothing would
    receive a webhook. Not for production (join links are personal)."""

    name = "log"
    needs_address = False

    async def send(self, out: Outgoing) -> None:
        link = out.join_link.url if out.join_link is not None else "-"
        logger.info(
            "notification=%s kind=%s to=%s subject=%r join_link=%s",
            out.notification.notification_id,
            out.notification.kind,
            out.recipient.participant_id,
            out.subject,
            link,
        )


def build_channel(
    config: NotificationConfig, notifications: NotificationStore, on_events: Callable[[], None]
) -> Channel:
    if config.channel == "smtp":
        return SmtpChannel(config.smtp)
    if config.channel == "log":
        return LogChannel()
    return WebhookChannel(notifications, on_events=on_events)


# ---------------------------------------------------------------------------------------------- the notifier


@dataclass(frozen=True, slots=True)
class RoundResult:
    recovered: int = 0
    planned: int = 0
    claimed: int = 0


class Notifier:
    """Plans, sends and recovers notifications. States: created -> running (``run``, on the leader) -> cancelled
    with the leader's term; planning (``plan``, ``booking_changed``) works on every replica at any time."""

    def __init__(
        self,
        store: Store,
        config: NotificationConfig | None = None,
        *,
        mint_join_link: MintJoinLink,
        channel: Channel | None = None,
        instance_id: str | None = None,
        on_events: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self.config = config or NotificationConfig()
        self.notifications = NotificationStore(store)
        self._mint = mint_join_link
        self._channel = channel or build_channel(self.config, self.notifications, on_events)
        self.instance_id = instance_id or f"notifier-{uuid.uuid4().hex[:12]}"
        self._wake = asyncio.Event()

    @property
    def channel(self) -> Channel:
        return self._channel

    def claimer(self, token: int | None) -> str:
        return self.instance_id if token is None else f"{self.instance_id}:{token}"

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ planning

    async def plan(self, session_id: str, *, now: datetime | None = None) -> PlanResult | None:
        result = await self.notifications.reconcile(
            session_id, lambda inp: plan_notifications(inp, self.config), now=now
        )
        if result is not None and (result.planned or result.cancelled):
            for w in result.planned:
                metrics.NOTIFICATIONS_PLANNED.labels(w.kind.value).inc()
            logger.info(
                "session=%s notifications planned=%d cancelled=%d revision=%d changed=%s",
                session_id,
                len(result.planned),
                result.cancelled,
                result.revision,
                result.changed,
            )
        return result

    async def booking_changed(self, change: BookingChange) -> None:
        """The booking hook: plan (or re-plan, or cancel) the notifications of the booking's sessions now."""
        for session in change.sessions:
            await self.plan(session.session_id)
        self._wake.set()

    async def plan_due(self, now: datetime | None = None) -> int:
        """Plan the sessions around now that were never planned or changed since (the hook's safety net)."""
        now = now or datetime.now(UTC)
        ids = await self.notifications.sessions_to_plan(
            now=now, horizon=self.config.plan_horizon, lookback=self.config.post_session_window
        )
        done = 0
        for session_id in ids:
            if await self.plan(session_id, now=now) is not None:
                done += 1
        return done

    # ------------------------------------------------------------------ the loop

    async def run(self, fencing_token: int) -> None:
        """The leader's loop; ``fencing_token`` is this leader term's."""
        term_started = datetime.now(UTC)
        logger.info(
            "notifications loop started token=%d channel=%s claimer=%s",
            fencing_token,
            self._channel.name,
            self.claimer(fencing_token),
        )
        while True:
            self._wake.clear()
            result = RoundResult()
            try:
                result = await self.run_once(token=fencing_token, term_started_at=term_started)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("notifications round failed")
            if result.claimed >= self.config.batch_size:
                continue
            try:
                async with asyncio.timeout(self.config.interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def run_once(
        self, now: datetime | None = None, *, token: int | None = None, term_started_at: datetime | None = None
    ) -> RoundResult:
        """One round: recover abandoned claims, plan what the hook missed, send what is due."""
        now = now or datetime.now(UTC)
        recovered = await self.recover(now, token=token, term_started_at=term_started_at)
        planned = await self.plan_due(now)
        claimed = await self.send_due(now, token=token)
        metrics.NOTIFICATIONS_OLDEST_PENDING.set(await self.notifications.oldest_pending_seconds(now))
        return RoundResult(recovered, planned, claimed)

    async def recover(
        self, now: datetime | None = None, *, token: int | None = None, term_started_at: datetime | None = None
    ) -> int:
        now = now or datetime.now(UTC)
        gone = await self.notifications.abandoned(
            claimer=self.claimer(token),
            claim_timeout=self.config.claim_timeout,
            term_started_at=term_started_at,
            now=now,
        )
        done = 0
        for n in gone:
            channel = n.channel or "?"
            if RESEND_SAFE.get(channel, False):
                if await self.notifications.recover(
                    n,
                    NotificationStatus.PENDING,
                    error=f"claimer {n.claimed_by} vanished before confirming; sending again through {channel} "
                    "(receivers drop duplicates by the notification id)",
                    now=now,
                ):
                    done += 1
                    logger.warning("notification=%s claimer=%s gone: sending again", n.notification_id, n.claimed_by)
                continue
            error = (
                f"claimer {n.claimed_by} vanished while sending through {channel}: the message may or may not "
                "have gone out, so it is not sent again"
            )
            if await self.notifications.recover(n, NotificationStatus.UNCERTAIN, error=error, now=now):
                done += 1
                metrics.NOTIFICATIONS_FAILED.labels(n.kind.value, channel, "uncertain").inc()
                logger.error("notification=%s claimer=%s gone mid-send: uncertain", n.notification_id, n.claimed_by)
                await self._exception(n, "notification_uncertain", "high", error, address=n.address)
        return done

    async def send_due(self, now: datetime | None = None, *, token: int | None = None) -> int:
        now = now or datetime.now(UTC)
        claimer = self.claimer(token)
        ids = await self.notifications.due(now=now, limit=self.config.batch_size)
        claimed = await self.notifications.claim(ids, claimer=claimer, channel=self._channel.name, token=token, now=now)
        if not claimed:
            return 0
        sem = asyncio.Semaphore(self.config.concurrency)

        async def one(n: Notification) -> None:
            async with sem:
                await self._guarded(n, claimer, now)

        await asyncio.gather(*(one(n) for n in claimed))
        return len(claimed)

    # ------------------------------------------------------------------ one notification

    async def _guarded(self, n: Notification, claimer: str, now: datetime) -> None:
        handed_over = [False]
        try:
            await self._process(n, claimer, now, handed_over)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("notification=%s could not be processed", n.notification_id)
            error = NotificationDeliveryError(
                f"internal error: {type(exc).__name__}: {exc}", retryable=True, ambiguous=handed_over[0]
            )
            with contextlib.suppress(Exception):
                await self._failed(n, claimer, error, None, now)

    async def _process(self, n: Notification, claimer: str, now: datetime, handed_over: list[bool]) -> None:
        try:
            session = await self._store.get_session(n.session_id)
        except NotFoundError:
            await self._drop(n, claimer, NotificationStatus.CANCELLED, "the session no longer exists", now)
            return
        stale = _stale(n, session, now)
        if stale is not None:
            await self._drop(n, claimer, *stale, now)
            return
        if n.kind is NotificationKind.REMINDER and await self.notifications.superseded(n, now=now):
            await self._drop(n, claimer, NotificationStatus.SKIPPED, "a reminder closer to the start is due", now)
            return
        if n.kind is NotificationKind.ABSENCE_ALERT and any(
            a.participant_id == n.recipient_id and a.joined_at <= now
            for a in await self._store.attendance_of(session.session_id)
        ):
            await self._drop(n, claimer, NotificationStatus.SKIPPED, "the student joined", now)
            return
        recipient = await self._recipient(n)
        if self._channel.needs_address and not recipient.address:
            reason = "no email address (students are reached through guardian_email)"
            await self._drop(n, claimer, NotificationStatus.SKIPPED, reason, now)
            return
        link = None
        if _carries_link(n):
            link = await issue_join_link(self._store, self._mint, session, n.recipient_id, n.recipient_role)
        out = await self._outgoing(n, session, recipient, link)
        started = time.perf_counter()
        handed_over[0] = True
        try:
            await self._channel.send(out)
        except NotificationDeliveryError as exc:
            metrics.NOTIFICATION_SEND_SECONDS.labels(self._channel.name).observe(time.perf_counter() - started)
            await self._failed(n, claimer, exc, recipient.address, now)
            return
        metrics.NOTIFICATION_SEND_SECONDS.labels(self._channel.name).observe(time.perf_counter() - started)
        prior = await self.notifications.mark_sent(
            n.notification_id,
            claimer=claimer,
            address=recipient.address,
            join_link_jti=None if link is None else link.jti,
            now=now,
        )
        if prior is None:
            logger.warning(
                "notification=%s sent but the claim was lost meanwhile (its state was left as another decided)",
                n.notification_id,
            )
            return
        metrics.NOTIFICATIONS_SENT.labels(n.kind.value, self._channel.name).inc()
        metrics.NOTIFICATION_DELAY_SECONDS.labels(n.kind.value).observe(max(0.0, (now - n.due_at).total_seconds()))
        logger.info(
            "notification=%s sent kind=%s session=%s recipient=%s channel=%s attempt=%d",
            n.notification_id,
            n.kind.value,
            n.session_id,
            n.recipient_id,
            self._channel.name,
            n.attempts + 1,
        )
        if prior is NotificationStatus.UNCERTAIN:
            # a recovery gave up on this claim while it was still sending: it did go out, once
            with contextlib.suppress(Exception):
                opened = await self._exception(
                    n,
                    "notification_uncertain",
                    "low",
                    "sent once after all: the slow sender finished",
                    recipient.address,
                )
                await self._store.set_exception_status(opened.exception_id, ExceptionStatus.RESOLVED)

    async def _outgoing(
        self, n: Notification, session: Session, recipient: Recipient, link: IssuedJoinLink | None
    ) -> Outgoing:
        subject_name: str = session.subject_id
        with contextlib.suppress(NotFoundError):
            subject_name = (await self._store.get_subject(session.subject_id)).name
        instructor_name: str = session.instructor_id
        with contextlib.suppress(NotFoundError):
            instructor_name = (await self._store.get_instructor(session.instructor_id)).name
        title, text = render(
            n, session, recipient, subject_name=subject_name, instructor_name=instructor_name, link=link
        )
        payload = {
            "notification_id": n.notification_id,
            "kind": n.kind.value,
            "due_at": codec.iso(n.due_at),
            "session": codec.session_to_dict(session),
            "recipient": {
                "participant_id": recipient.participant_id,
                "role": recipient.role,
                "name": recipient.name,
                "addressee": recipient.addressee,
                "email": recipient.address,
                "via_guardian": recipient.via_guardian,
                "time_zone": recipient.time_zone,
            },
            "join_link": None if link is None else {"url": link.url, "expires_at": codec.iso(link.expires_at)},
            "message": {"subject": title, "text": text},
            "details": n.details,
        }
        return Outgoing(n, session, recipient, title, text, link, payload)

    async def _recipient(self, n: Notification) -> Recipient:
        if n.recipient_role == "instructor":
            i = await self._store.get_instructor(n.recipient_id)
            return Recipient(i.instructor_id, "instructor", i.name, i.name, i.email or None, i.time_zone)
        s = await self._store.get_student(n.recipient_id)
        if s.guardian_email:
            addressee = s.guardian_name or f"parent or guardian of {s.name}"
            return Recipient(s.student_id, "student", s.name, addressee, s.guardian_email, s.time_zone, True)
        return Recipient(s.student_id, "student", s.name, s.name, None, s.time_zone)

    async def _drop(
        self, n: Notification, claimer: str, status: NotificationStatus, reason: str, now: datetime
    ) -> None:
        if await self.notifications.finish(
            n.notification_id, status, claimer=claimer, error=reason, count_attempt=False, now=now
        ):
            metrics.NOTIFICATIONS_DROPPED.labels(n.kind.value, status.value).inc()
            logger.info("notification=%s %s: %s", n.notification_id, status.value, reason)

    async def _failed(
        self, n: Notification, claimer: str, exc: NotificationDeliveryError, address: str | None, now: datetime
    ) -> None:
        channel = self._channel.name
        attempts = n.attempts + 1
        if exc.ambiguous and not RESEND_SAFE.get(channel, False):
            if await self.notifications.finish(
                n.notification_id, NotificationStatus.UNCERTAIN, claimer=claimer, error=exc.detail, address=address
            ):
                metrics.NOTIFICATIONS_FAILED.labels(n.kind.value, channel, "uncertain").inc()
                logger.error("notification=%s uncertain: %s", n.notification_id, exc.detail)
                await self._exception(n, "notification_uncertain", "high", exc.detail, address)
            return
        if exc.retryable and attempts < self.config.max_attempts:
            delay = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempts - 1))
            delay *= 1 + random.uniform(0, 0.1)
            if await self.notifications.release(
                n.notification_id,
                claimer=claimer,
                error=exc.detail,
                next_attempt_at=now + timedelta(seconds=delay),
                address=address,
            ):
                metrics.NOTIFICATIONS_FAILED.labels(n.kind.value, channel, "retry").inc()
                logger.warning(
                    "notification=%s attempt=%d failed, retry in %.0fs: %s",
                    n.notification_id,
                    attempts,
                    delay,
                    exc.detail,
                )
            return
        if await self.notifications.finish(
            n.notification_id, NotificationStatus.FAILED, claimer=claimer, error=exc.detail, address=address
        ):
            metrics.NOTIFICATIONS_FAILED.labels(n.kind.value, channel, "failed").inc()
            logger.error("notification=%s failed after %d attempts: %s", n.notification_id, attempts, exc.detail)
            await self._exception(n, "notification_failed", "medium", exc.detail, address)

    async def _exception(self, n: Notification, kind: str, severity: str, error: str, address: str | None) -> Any:
        return await self._store.raise_exception(
            f"notification:{n.notification_id}",
            kind,
            severity,
            subject_refs={
                "session_id": n.session_id,
                "notification_id": n.notification_id,
                "recipient_id": n.recipient_id,
            },
            details={
                "notification_kind": n.kind.value,
                "channel": n.channel or self._channel.name,
                "address": address,
                "attempts": n.attempts + 1,
                "error": error,
            },
        )


def _stale(n: Notification, session: Session, now: datetime) -> tuple[NotificationStatus, str] | None:
    """Why a claimed notification no longer fits its session (the planner cancels these too; this closes the gap
    between a change and its planning)."""
    if n.kind is NotificationKind.SESSION_CHANGED:
        return None
    if session.status is SessionStatus.CANCELLED:
        return NotificationStatus.CANCELLED, "the session was cancelled"
    if n.recipient_id not in SessionState.of(session).recipients():
        return NotificationStatus.CANCELLED, "no longer a participant of the session"
    if n.session_start != session.start:
        return NotificationStatus.CANCELLED, "the session was moved"
    if n.kind is NotificationKind.REMINDER and now >= session.end:
        return NotificationStatus.SKIPPED, "the session is over"
    if n.kind is NotificationKind.POST_SESSION and session.status is SessionStatus.SCHEDULED:
        return NotificationStatus.SKIPPED, "the session did not take place"
    return None


def _carries_link(n: Notification) -> bool:
    if n.kind in (NotificationKind.REMINDER, NotificationKind.ABSENCE_ALERT):
        return True
    if n.kind is NotificationKind.SESSION_CHANGED:
        return bool(_LINK_CHANGES & set(n.details.get("changes", [])))
    return False
