"""``ApiHooks``: the seam between the booking API and the rest of the orchestrator.

The lead wires the scheduling engine into ``validate_and_assign``, the token service into
``mint_join_link`` and provisioning into ``on_booking_changed``. The defaults are safe for a
standalone API: they accept the instructor the caller names, expand a conservative subset of RRULE
with python-dateutil, and mint join tokens signed with a per-process random key.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

import jwt
from dateutil.rrule import rrulestr

from orchestrator.errors import FieldError, InvalidInputError, RuleViolation
from orchestrator.store.models import Booking, BookingDraft, JoinLink, Occurrence, Session

if TYPE_CHECKING:
    from orchestrator.store import Store
    from recorder.storage import Storage

MAX_OCCURRENCES = 200
RRULE_HORIZON = timedelta(days=2 * 366)
JOIN_LINK_TTL = timedelta(hours=2)

_RRULE_PARTS = {"FREQ", "INTERVAL", "COUNT", "UNTIL", "BYDAY", "WKST"}
_WEEKDAYS = {"MO", "TU", "WE", "TH", "FR", "SA", "SU"}


@dataclass(frozen=True, slots=True)
class BookingChange:
    """What ``on_booking_changed`` is told after a booking change has been committed."""

    kind: Literal["created", "rescheduled", "cancelled", "updated"]
    booking: Booking
    sessions: tuple[Session, ...]
    previous: Booking | None = None


ValidateAndAssign = Callable[[BookingDraft], Awaitable[list[Occurrence]]]
MintJoinLink = Callable[[Session, str, str], Awaitable[tuple[str, str, datetime]]]
OnBookingChanged = Callable[[BookingChange], Awaitable[None]]


def check_rrule(rrule: str) -> str:
    """Validate the RRULE subset the default expander accepts; returns it without an ``RRULE:`` prefix.

    Allowed: FREQ=DAILY|WEEKLY, INTERVAL (1..52), COUNT (1..200) or UNTIL (UTC, ``...Z``), BYDAY with
    plain weekday codes, WKST. Every period then has an occurrence, so expansion is bounded.
    """
    body = rrule.strip().removeprefix("RRULE:")

    def bad(detail: str) -> InvalidInputError:
        return InvalidInputError(f"invalid rrule: {detail}", [FieldError("/rrule", detail)])

    parts: dict[str, str] = {}
    for chunk in body.split(";"):
        name, sep, value = chunk.partition("=")
        name = name.upper()
        if not sep or not value:
            raise bad(f"{chunk!r} is not NAME=VALUE")
        if name not in _RRULE_PARTS:
            raise bad(f"{name} is not supported (allowed: {', '.join(sorted(_RRULE_PARTS))})")
        if name in parts:
            raise bad(f"{name} given twice")
        parts[name] = value.upper()
    if parts.get("FREQ") not in ("DAILY", "WEEKLY"):
        raise bad("FREQ must be DAILY or WEEKLY")
    if ("COUNT" in parts) == ("UNTIL" in parts):
        raise bad("exactly one of COUNT and UNTIL is required")
    if "COUNT" in parts and not (parts["COUNT"].isdigit() and 1 <= int(parts["COUNT"]) <= MAX_OCCURRENCES):
        raise bad(f"COUNT must be between 1 and {MAX_OCCURRENCES}")
    if "INTERVAL" in parts and not (parts["INTERVAL"].isdigit() and 1 <= int(parts["INTERVAL"]) <= 52):
        raise bad("INTERVAL must be between 1 and 52")
    if "UNTIL" in parts and not re.fullmatch(r"\d{8}T\d{6}Z", parts["UNTIL"]):
        raise bad("UNTIL must be a UTC date-time such as 20300601T000000Z")
    if "BYDAY" in parts and not all(d in _WEEKDAYS for d in parts["BYDAY"].split(",")):
        raise bad("BYDAY must list weekday codes MO..SU without ordinals")
    if "WKST" in parts and parts["WKST"] not in _WEEKDAYS:
        raise bad("WKST must be a weekday code")
    return body


def expand(draft: BookingDraft) -> list[datetime]:
    """Occurrence starts of ``draft`` (its own start alone when it has no rrule), in UTC."""
    if draft.rrule is None:
        return [draft.start]
    body = check_rrule(draft.rrule)
    try:
        rule = rrulestr(body, dtstart=draft.start)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(f"invalid rrule: {exc}", [FieldError("/rrule", str(exc))]) from None
    horizon = draft.start + RRULE_HORIZON
    starts: list[datetime] = []
    for moment in rule:  # type: ignore[attr-defined]
        if moment > horizon:
            raise InvalidInputError(
                "rrule reaches too far ahead",
                [FieldError("/rrule", f"occurrences must lie within {RRULE_HORIZON.days} days of start")],
            )
        starts.append(moment.astimezone(UTC))
        if len(starts) > MAX_OCCURRENCES:
            raise InvalidInputError(
                "rrule has too many occurrences",
                [FieldError("/rrule", f"at most {MAX_OCCURRENCES} occurrences per booking")],
            )
    if not starts:
        raise InvalidInputError("rrule yields no occurrence", [FieldError("/rrule", "yields no occurrence")])
    return starts


async def default_validate_and_assign(draft: BookingDraft) -> list[Occurrence]:
    """Accept the requested instructor for every occurrence (no scheduling engine plugged in)."""
    if draft.instructor_id is None:
        raise RuleViolation(
            code="instructor_required",
            detail="no scheduling engine is configured to choose an instructor; give instructor_id",
            status=422,
        )
    length = timedelta(minutes=draft.duration_minutes)
    return [Occurrence(i, start, start + length, draft.instructor_id) for i, start in enumerate(expand(draft))]


_PROCESS_KEY = secrets.token_bytes(32)


async def default_mint_join_link(session: Session, participant_id: str, role: str) -> tuple[str, str, datetime]:
    """A join URL with an HS256 token signed by a per-process key (for running the API on its own)."""
    expires = max(session.end, datetime.now(UTC)) + JOIN_LINK_TTL
    token = jwt.encode(
        {
            "sub": participant_id,
            "sid": session.session_id,
            "role": role,
            "jti": secrets.token_hex(16),
            "exp": int(expires.timestamp()),
        },
        _PROCESS_KEY,
        algorithm="HS256",
    )
    return f"/classroom/{session.session_id}?token={token}", token, expires.replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class IssuedJoinLink:
    url: str
    token: str
    expires_at: datetime
    jti: str


async def issue_join_link(
    store: Store, mint: MintJoinLink, session: Session, participant_id: str, role: str
) -> IssuedJoinLink:
    """Mint a join link with ``mint`` (the orchestrator's token service) and record it in ``join_links``.

    The one way links are handed out: ``POST /sessions/{id}/join-links`` and the notifications that carry them.
    """
    url, token, expires_at = await mint(session, participant_id, role)
    try:
        jti = str(jwt.decode(token, options={"verify_signature": False}).get("jti") or "")
    except jwt.PyJWTError:
        jti = ""
    jti = jti or hashlib.sha256(token.encode()).hexdigest()
    await store.add_join_link(JoinLink(jti, session.session_id, participant_id, role, expires_at, datetime.now(UTC)))
    return IssuedJoinLink(url, token, expires_at, jti)


async def _ignore_change(change: BookingChange) -> None:
    return None


def _no_wake() -> None:
    return None


async def _ignore_revoked(links: Sequence[JoinLink]) -> None:
    return None


class OpsView(Protocol):
    """The orchestrator's live operational state, for the ops endpoints (nodes, forecast)."""

    def nodes(self) -> dict[str, Any]: ...

    async def forecast(self, hours: int) -> dict[str, Any]: ...

    async def start_rollout(
        self, to_version: str, regions: list[str] | None, max_unavailable: int
    ) -> dict[str, Any]: ...

    async def rollout(self) -> dict[str, Any] | None: ...

    async def cancel_rollout(self) -> dict[str, Any] | None: ...

    async def end_session(self, session_id: str) -> Session: ...


@dataclass(frozen=True, slots=True)
class ApiHooks:
    """Async callables the API calls out to; every field has a safe default."""

    validate_and_assign: ValidateAndAssign = default_validate_and_assign
    mint_join_link: MintJoinLink = default_mint_join_link
    on_booking_changed: OnBookingChanged = _ignore_change
    events_emitted: Callable[[], None] = field(default=_no_wake)
    """Called after a commit that wrote outbox events (wire it to ``WebhookDispatcher.wake``)."""
    match: Callable[[BookingDraft], Awaitable[dict[str, Any]]] | None = None
    """Rank instructors for a booking request (the scheduling engine); without it /matches is not mounted."""
    ops: OpsView | None = None
    """Live node table and load forecast; without it the ops endpoints answer 503."""
    join_links_revoked: Callable[[Sequence[JoinLink]], Awaitable[None]] = _ignore_revoked
    """Called with join links the store has just revoked (a substitute took over the session), so that the
    classroom refuses them at once; the store keeps ``join_links.revoked_at`` either way."""
    recordings: Storage | None = None
    """The recordings storage (the recorders' shared directory, or S3), where final recordings are downloaded from."""
