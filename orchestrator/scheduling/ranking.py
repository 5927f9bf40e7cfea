"""The ranking model for matches and substitutes.

Score = sum of weight x factor, each factor normalised to [0, 1]:

* continuity (0.40): sessions this instructor already has with these students in this subject,
  ``n / (n + 2)`` so the first shared sessions count most;
* preference (0.30): share of the students who listed the instructor as preferred, plus 0.5 when the
  instructor listed one of the students (capped at 1);
* time_zone (0.15): ``1 - |student offset - instructor offset| / 12h`` at the session's instant, averaged;
* load (0.15): ``1 - sessions this local week / weekly cap``: spreads work.

Substitutes are first grouped in tiers (0: taught one of these students in this subject, 1: taught
this curriculum unit, 2: neither), then ordered by score. Ties break on instructor id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .clock import ZoneClock
from .index import InstructorState, ScheduleIndex
from .model import InstructorId, RankedCandidate, RankFactors, Student, SubjectId


@dataclass(frozen=True, slots=True)
class RankInput:
    subject_id: SubjectId
    students: Sequence[Student]
    student_clocks: Sequence[ZoneClock]
    start: int
    curriculum_unit: str | None


def factors(index: ScheduleIndex, state: InstructorState, req: RankInput) -> RankFactors:
    iid = state.instructor_id
    taught = index.taught
    shared = sum(taught[(iid, s.student_id, req.subject_id)] for s in req.students)
    unit_count = index.taught_unit[(iid, req.curriculum_unit)] if req.curriculum_unit else 0
    preferred_by = sum(1 for s in req.students if iid in s.preferred_instructor_ids)
    liked = state.instructor.preferred_student_ids
    likes = bool(liked) and any(s.student_id in liked for s in req.students)
    own_offset = state.clock.offset(req.start)
    diffs = [abs(c.offset(req.start) - own_offset) for c in req.student_clocks]
    tz_hours = sum(diffs) / len(diffs) / 60 if diffs else 0.0
    week_load = state.per_week[state.clock.iso_week(req.start)]
    cap = max(1, state.instructor.max_sessions_per_week)
    return RankFactors(
        shared,
        unit_count,
        preferred_by,
        max(1, len(req.students)),
        likes,
        tz_hours,
        week_load,
        cap,
        req.subject_id,
        req.curriculum_unit,
    )


def rank(
    index: ScheduleIndex,
    states: Sequence[InstructorState],
    req: RankInput,
    *,
    by_tier: bool = False,
    limit: int | None = None,
) -> list[RankedCandidate]:
    """Rank feasible instructors (the first ``limit`` of them, all when None)."""
    scored: list[tuple[int, float, InstructorId, RankFactors]] = []
    for state in states:
        f = factors(index, state, req)
        scored.append((f.tier, f.score(), state.instructor_id, f))
    scored.sort(key=lambda item: (item[0] if by_tier else 0, -item[1], item[2]))
    if limit is not None:
        scored = scored[:limit]
    return [
        RankedCandidate(
            instructor_id=iid,
            rank=i + 1,
            score=score,
            factors=f,
            tier=tier,
        )
        for i, (tier, score, iid, f) in enumerate(scored)
    ]
