"""SubstitutionDesk: sessions whose instructor cancels or goes on leave get ranked substitutes.

Triggers: ``instructor_cancels(session_id)`` (``POST /sessions/{id}/instructor-cancel``) and ``leave_recorded``
(an instructor PATCH that adds an exception overlapping booked sessions). For the affected sessions the engine
ranks substitutes (qualified, available with buffers and caps, and who taught these students or this curriculum
unit first) on a snapshot with the students' history, picking most-constrained sessions first so that the picks
are jointly feasible. Then, per the organisation's ``substitution_policy``:

- ``auto_assign``: the best substitute takes the session at once (the store re-claims its occupancy in the
  database, so a concurrent booking that took the slot is refused and the next candidate is tried); webhook
  ``session.instructor_changed``; the old instructor's join links to it are revoked;
- ``propose``: a ``proposed`` substitution is stored; ``confirm`` (with the chosen or the first candidate)
  re-checks every rule at that moment and commits with a compare-and-set, so of two confirms for one slot only
  one wins; ``decline`` closes it.

A session nobody can take raises an operational exception (kind ``no_substitute``, naming the session) and its
proposal lists the nearest alternatives (other times, other instructors). The session keeps its instructor in
the store until a substitute is confirmed (a session always has one).

States of a substitution: ``proposed`` -> ``confirmed`` | ``declined``; auto-assigned ones are ``assigned``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from orchestrator import metrics
from orchestrator import scheduling as eng
from orchestrator.errors import (
    FieldError,
    InvalidInputError,
    InvalidStateError,
    NotFoundError,
    OrchestratorError,
    RuleViolation,
)
from orchestrator.scheduling_gate import SchedulingGate, alternative, engine_session
from orchestrator.scheduling_support import LinksRevoked, Notify, announce, candidate_dict, rule_violation, with_history
from orchestrator.store import Store
from orchestrator.store.models import (
    MUTABLE_SESSION_STATUSES,
    Instructor,
    InstructorChange,
    InstructorId,
    Session,
    Substitution,
    SubstitutionDraft,
    SubstitutionPolicy,
    SubstitutionStatus,
)

logger = logging.getLogger(__name__)

LEAVE = "leave"
INSTRUCTOR_CANCEL = "instructor_cancel"


@dataclass(frozen=True, slots=True)
class CoverPlan:
    """The engine's answer for one affected session."""

    session: Session
    candidates: tuple[eng.RankedCandidate, ...]
    alternatives: tuple[eng.Alternative, ...]


class SubstitutionDesk:
    def __init__(self, store: Store, gate: SchedulingGate, notify: Notify, links_revoked: LinksRevoked) -> None:
        self._store = store
        self._gate = gate
        self._notify = notify
        self._links_revoked = links_revoked

    # ------------------------------------------------------------------ triggers

    async def instructor_cancels(self, session_id: str, *, reason: str = "") -> Substitution:
        """The session's instructor cannot teach it: substitutes per policy; the session's substitution."""
        session = await self._store.get_session(session_id)
        if session.status not in MUTABLE_SESSION_STATUSES:
            raise InvalidStateError(f"session {session_id!r} is {session.status}; it no longer needs an instructor")
        if session.end <= datetime.now(UTC):
            raise InvalidStateError(f"session {session_id!r} is over")
        open_ = await self._store.open_substitutions([session_id])
        if open_:
            raise InvalidStateError(
                f"session {session_id!r} already has an open substitution proposal ({open_[session.session_id]})"
            )
        done = await self.cover([session], trigger=INSTRUCTOR_CANCEL, reason=reason or "the instructor cancelled")
        if not done:
            raise InvalidStateError(f"session {session_id!r} changed while its substitutes were being found; retry")
        return done[0]

    async def leave_recorded(self, before: Instructor, after: Instructor) -> list[Substitution]:
        """An instructor's exceptions changed: cover the booked sessions that the new ones overlap."""
        added = [e for e in after.exceptions if e not in before.exceptions]
        now = datetime.now(UTC)
        affected: dict[str, Session] = {}
        for leave in added:
            if leave.end <= now:
                continue
            for s in await self._store.sessions_between(leave.start, leave.end, instructor_ids=[after.instructor_id]):
                if s.instructor_id == after.instructor_id and s.status in MUTABLE_SESSION_STATUSES and s.end > now:
                    affected[s.session_id] = s
        if not affected:
            return []
        reason = "; ".join(sorted({e.reason for e in added if e.reason})) or "leave"
        logger.info("instructor=%s leave sessions=%d", after.instructor_id, len(affected))
        return await self.cover(sorted(affected.values(), key=lambda s: s.start), trigger=LEAVE, reason=reason)

    # ------------------------------------------------------------------ covering

    async def cover(self, sessions: Sequence[Session], *, trigger: str, reason: str) -> list[Substitution]:
        """Rank substitutes for ``sessions`` (which lost their instructor) and act on the policy."""
        open_ = await self._store.open_substitutions(s.session_id for s in sessions)
        affected = [s for s in sessions if s.session_id not in open_]
        if not affected:
            return []
        settings = await self._store.get_settings()
        students = {x for s in affected for x in s.student_ids}
        start, end = min(s.start for s in affected), max(s.end for s in affected)
        org = await self._gate.snapshot(instructor_ids=None, student_ids=students, start=start, end=end)
        units = {s.curriculum_unit for s in affected if s.curriculum_unit}
        org = await with_history(self._store, org, student_ids=students, curriculum_units=units, before=start)
        blocked = {str(s.session_id): (s.start, s.end) for s in affected} if trigger == INSTRUCTOR_CANCEL else {}
        plans = await asyncio.to_thread(plan_cover, org, affected, settings.substitute_candidates, blocked)
        out: list[Substitution] = []
        changes: list[InstructorChange] = []
        for plan in plans:
            try:
                sub, change = await self._settle(plan, settings.substitution_policy, trigger, reason)
            except (InvalidStateError, NotFoundError) as exc:  # the session moved on meanwhile
                logger.warning("session=%s substitution skipped: %s", plan.session.session_id, exc)
                continue
            out.append(sub)
            if change is not None:
                changes.append(change)
        await announce(self._store, changes, self._notify, self._links_revoked)
        return out

    async def _settle(
        self, plan: CoverPlan, policy: SubstitutionPolicy, trigger: str, reason: str
    ) -> tuple[Substitution, InstructorChange | None]:
        session = plan.session
        draft = SubstitutionDraft(
            session_id=session.session_id,
            booking_id=session.booking_id,
            previous_instructor_id=session.instructor_id,
            trigger=trigger,
            reason=reason,
            policy=policy,
            candidates=tuple(candidate_dict(c) for c in plan.candidates),
            alternatives=tuple(alternative(a) for a in plan.alternatives),
        )
        refused: list[str] = []
        if policy is SubstitutionPolicy.AUTO_ASSIGN:
            for candidate in plan.candidates:
                try:
                    sub, change = await self._store.record_substitution(
                        draft, assign_to=InstructorId(candidate.instructor_id)
                    )
                except RuleViolation as exc:  # someone took the slot since the snapshot: the next one
                    refused.append(f"{candidate.instructor_id}: {exc.code}")
                    metrics.SUBSTITUTIONS.labels(policy.value, "refused").inc()
                    continue
                metrics.SUBSTITUTIONS.labels(policy.value, "assigned").inc()
                logger.info(
                    "session=%s substitute=%s instead of instructor=%s policy=auto_assign",
                    session.session_id,
                    candidate.instructor_id,
                    session.instructor_id,
                )
                return sub, change
        exception_id = None
        if not plan.candidates or refused:
            exc_record = await self._store.raise_exception(
                f"no-substitute:{session.session_id}",
                "no_substitute",
                "high",
                subject_refs={
                    "session_id": session.session_id,
                    "booking_id": session.booking_id,
                    "instructor_id": session.instructor_id,
                },
                details={
                    "start": session.start.isoformat(),
                    "trigger": trigger,
                    "reason": reason,
                    "refused": refused,
                    "alternatives": list(draft.alternatives),
                },
            )
            exception_id = exc_record.exception_id
        sub, _ = await self._store.record_substitution(draft, exception_id=exception_id)
        outcome = "proposed" if plan.candidates else "uncovered"
        metrics.SUBSTITUTIONS.labels(policy.value, outcome).inc()
        logger.info(
            "session=%s substitution=%s %s candidates=%d",
            session.session_id,
            sub.substitution_id,
            outcome,
            len(plan.candidates),
        )
        return sub, None

    # ------------------------------------------------------------------ decisions

    async def confirm(
        self, substitution_id: str, *, instructor_id: str | None = None, reason: str = ""
    ) -> Substitution:
        """Give the session to ``instructor_id`` (default: the first candidate), re-checking every rule now."""
        sub = await self._store.get_substitution(substitution_id)
        if sub.status is not SubstitutionStatus.PROPOSED:
            raise InvalidStateError(f"substitution {substitution_id!r} is {sub.status}; it cannot change")
        chosen = instructor_id or (str(sub.candidates[0]["instructor_id"]) if sub.candidates else None)
        if chosen is None:
            raise InvalidInputError(
                "nobody could take this session when it was proposed; name the substitute",
                [FieldError("/instructor_id", "required: this proposal has no candidate")],
            )
        if chosen == sub.previous_instructor_id:
            raise InvalidInputError(
                "the substitute must be another instructor",
                [FieldError("/instructor_id", f"{chosen!r} is the instructor being replaced")],
            )
        session = await self._store.get_session(sub.session_id)
        if not await self._store.get_instructors([chosen]):
            raise InvalidInputError(
                f"instructor {chosen!r} does not exist", [FieldError("/instructor_id", "no such instructor")]
            )
        violations = await self.check(session, InstructorId(chosen))
        if violations:
            metrics.SUBSTITUTIONS.labels(sub.policy.value, "refused").inc()
            raise rule_violation(violations, what=f"instructor {chosen} cannot take session {session.session_id}")
        try:
            sub, change = await self._store.confirm_substitution(substitution_id, InstructorId(chosen), reason=reason)
        except OrchestratorError:
            metrics.SUBSTITUTIONS.labels(sub.policy.value, "refused").inc()
            raise
        metrics.SUBSTITUTIONS.labels(sub.policy.value, "confirmed").inc()
        logger.info("substitution=%s session=%s confirmed substitute=%s", substitution_id, sub.session_id, chosen)
        await announce(self._store, [change], self._notify, self._links_revoked)
        return sub

    async def decline(self, substitution_id: str, *, reason: str = "") -> Substitution:
        sub = await self._store.decline_substitution(substitution_id, reason=reason)
        metrics.SUBSTITUTIONS.labels(sub.policy.value, "declined").inc()
        logger.info("substitution=%s session=%s declined", substitution_id, sub.session_id)
        return sub

    async def check(self, session: Session, instructor_id: InstructorId) -> list[eng.Violation]:
        """Every hard rule the session would break with ``instructor_id`` as its instructor, as of now."""
        org = await self._gate.snapshot(
            instructor_ids=[instructor_id], student_ids=session.student_ids, start=session.start, end=session.end
        )

        def run() -> list[eng.Violation]:
            engine = eng.Scheduler(org)
            return engine.check(replace(engine_session(session), instructor_id=eng.InstructorId(instructor_id)))

        return await asyncio.to_thread(run)


def plan_cover(
    org: eng.Organisation,
    affected: Sequence[Session],
    keep: int,
    blocked: dict[str, tuple[datetime, datetime]],
) -> list[CoverPlan]:
    """Substitutes for each affected session, most constrained first, each pick applied before the next.

    ``blocked``: per session, an interval its previous instructor is unavailable in beyond their stored leave
    (they cancelled it), so the alternatives do not offer them the same time again. Pure engine work: runs on a
    worker thread.
    """
    engine = eng.Scheduler(org)
    previous = {eng.SessionId(s.session_id): eng.InstructorId(s.instructor_id) for s in affected}
    extra: dict[eng.InstructorId, list[eng.TimeOff]] = {}
    for s in affected:
        if s.session_id in blocked:
            lo, hi = blocked[s.session_id]
            off = eng.TimeOff(lo, hi, "cancelled this session")
            extra.setdefault(previous[eng.SessionId(s.session_id)], []).append(off)
    for iid, offs in extra.items():
        current = engine.instructor(iid)
        engine.update_instructor(replace(current, exceptions=(*current.exceptions, *offs)))
    ids = [eng.SessionId(s.session_id) for s in affected]
    for sid in ids:
        engine.apply(replace(engine.session(sid), instructor_id=None))
    options = {sid: len(engine.substitutes(sid, exclude_instructor=previous[sid])) for sid in ids}
    order = sorted(affected, key=lambda s: (options[eng.SessionId(s.session_id)], s.start, s.session_id))
    plans: dict[str, CoverPlan] = {}
    for s in order:
        sid = eng.SessionId(s.session_id)
        ranked = engine.substitutes(sid, exclude_instructor=previous[sid])
        alternatives: tuple[eng.Alternative, ...] = ()
        if ranked:
            engine.apply(replace(engine.session(sid), instructor_id=ranked[0].instructor_id))
        else:
            alternatives = _nearest(engine, engine.session(sid))
        plans[s.session_id] = CoverPlan(s, tuple(ranked[:keep]), alternatives)
    return [plans[s.session_id] for s in affected]


def _nearest(engine: eng.Scheduler, session: eng.Session) -> tuple[eng.Alternative, ...]:
    """Other times and instructors that could take the session (it is taken out so it does not block itself)."""
    engine.remove(session.session_id)
    try:
        result = engine.match(
            eng.MatchRequest(
                subject_id=session.subject_id,
                student_ids=session.student_ids,
                start=session.start,
                duration_minutes=int((session.end - session.start) / timedelta(minutes=1)),
                curriculum_unit=session.curriculum_unit,
            )
        )
    finally:
        engine.apply(session)
    return tuple(result.alternatives)
