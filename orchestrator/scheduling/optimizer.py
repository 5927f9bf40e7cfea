"""Bulk (re-)assignment of a week of sessions with OR-Tools CP-SAT, run as a background job.

Model (one Boolean ``x[s, i]`` per session s and instructor i feasible for s on its own):

* feasibility of a pair is decided up front by the engine's rules against the *fixed* sessions
  (everything outside the optimised set, and sessions that are provisioned/live/ended);
* each session gets at most one instructor;
* per instructor, claims ``[start, end + buffer)`` that overlap form cliques in an interval graph;
  one ``AddAtMostOne`` per maximal clique forbids double booking and buffer violations;
* per instructor and local day / local ISO week: assigned + fixed <= cap.

Objective (maximised, integers): 10000 per assigned session (cover first), 1000 per session kept with
its current instructor (non-disruptive: a change is only made when it lets more sessions be covered),
up to 100 from the ranking score (continuity, preference, time-zone fit), minus 30 per session above
an even share for each instructor (balance). CP-SAT reports the best solution found within the time
limit and a proven bound; ``gap`` is their relative difference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from ortools.sat.python import cp_model

from .errors import JobCancelledError
from .model import InstructorId, Session, SessionId, SessionStatus
from .occupancy import epoch_minutes
from .ranking import factors
from .rules import instructor_violations

if TYPE_CHECKING:
    from .scheduler import Scheduler

logger = logging.getLogger(__name__)

ASSIGN_WEIGHT = 10_000
KEEP_WEIGHT = 1_000
SCORE_WEIGHT = 100
OVERLOAD_WEIGHT = 30


@dataclass(frozen=True, slots=True)
class Candidate:
    instructor_id: InstructorId
    weight: int


@dataclass(frozen=True, slots=True)
class ProblemSession:
    session_id: SessionId
    start: int
    end: int
    current: InstructorId | None
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True, slots=True)
class InstructorLimits:
    buffer: int
    day_of: dict[SessionId, int]
    week_of: dict[SessionId, int]
    day_room: dict[int, int]
    """Remaining daily capacity per local day, after fixed sessions."""
    week_room: dict[int, int]


@dataclass(frozen=True, slots=True)
class Problem:
    """A self-contained copy of what the solver needs; safe to use from another thread."""

    sessions: tuple[ProblemSession, ...]
    limits: dict[InstructorId, InstructorLimits]
    build_s: float


def build_problem(scheduler: Scheduler, window_start: int, days: int, max_candidates: int = 0) -> Problem:
    """Snapshot the sessions starting in the window and their feasible instructors.

    ``max_candidates`` > 0 keeps only that many best-scored instructors per session (plus the
    current one): the decomposition used at large scale.
    """
    began = time.perf_counter()
    index = scheduler.index
    window_end = window_start + days * 1440
    movable = [
        s
        for s in index.sessions.values()
        if s.status == SessionStatus.SCHEDULED and window_start <= epoch_minutes(s.start) < window_end
    ]
    movable.sort(key=lambda s: (s.start, s.session_id))
    # Free the movable sessions' instructors so feasibility is judged against fixed sessions only.
    for session in movable:
        if session.instructor_id is not None:
            index.add(_unassigned(session))
    try:
        out: list[ProblemSession] = []
        per_instructor: dict[InstructorId, list[ProblemSession]] = defaultdict(list)
        for session in movable:
            start, end = epoch_minutes(session.start), epoch_minutes(session.end)
            level = scheduler.required_level(session.subject_id, session.student_ids)
            feasible = [
                st
                for st in scheduler.qualified(session.subject_id, level)
                if not instructor_violations(
                    index,
                    st,
                    session.subject_id,
                    level,
                    start,
                    end,
                    session.session_id,
                    stop_at_first=True,
                    explain=False,
                )
            ]
            req = scheduler.rank_input(session.subject_id, session.student_ids, start, session.curriculum_unit)
            scored = sorted(
                ((-factors(index, st, req).score(), st.instructor_id) for st in feasible),
            )
            if max_candidates > 0 and len(scored) > max_candidates:
                scored = scored[:max_candidates] + [
                    item for item in scored[max_candidates:] if item[1] == session.instructor_id
                ]
            candidates = tuple(Candidate(iid, round(-neg * SCORE_WEIGHT)) for neg, iid in scored)
            ps = ProblemSession(session.session_id, start, end, session.instructor_id, candidates)
            out.append(ps)
            for cand in candidates:
                per_instructor[cand.instructor_id].append(ps)
        limits: dict[InstructorId, InstructorLimits] = {}
        for iid, own in per_instructor.items():
            state = index.instructors[iid]
            day_of: dict[SessionId, int] = {}
            week_of: dict[SessionId, int] = {}
            day_room: dict[int, int] = {}
            week_room: dict[int, int] = {}
            for ps in own:
                day = state.clock.local_day(ps.start)
                week = state.clock.iso_week(ps.start)
                day_of[ps.session_id] = day
                week_of[ps.session_id] = week
                day_room[day] = state.instructor.max_sessions_per_day - state.per_day[day]
                week_room[week] = state.instructor.max_sessions_per_week - state.per_week[week]
            limits[iid] = InstructorLimits(state.buffer, day_of, week_of, day_room, week_room)
    finally:
        for session in movable:
            index.add(session)
    return Problem(tuple(out), limits, time.perf_counter() - began)


def _unassigned(session: Session) -> Session:
    return dataclasses.replace(session, instructor_id=None)


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Change:
    session_id: SessionId
    previous: InstructorId | None
    assigned: InstructorId | None


@dataclass(frozen=True, slots=True)
class OptimizationResult:
    assignments: dict[SessionId, InstructorId]
    changes: tuple[Change, ...]
    unassigned: tuple[SessionId, ...]
    objective: float
    bound: float
    gap: float
    """(bound - objective) / objective over the whole objective."""
    soft_gap: float
    """The same gap over the soft part only (objective minus the cover and keep terms)."""
    solver_status: str
    wall_s: float
    build_s: float
    variables: int
    first_solution_s: float | None = None
    parts: int = 1
    """How many consecutive parts the week was solved in (1 = one global model)."""


@dataclass(slots=True)
class JobProgress:
    phase: str = "pending"
    elapsed_s: float = 0.0
    solutions: int = 0
    best_objective: float | None = None
    best_bound: float | None = None
    fraction: float = 0.0
    """Elapsed share of the time limit (1.0 when done)."""
    first_solution_s: float | None = None
    """Seconds from job start (building included) to the first feasible solution."""
    extra: dict[str, float] = field(default_factory=dict)


class _Progress(cp_model.CpSolverSolutionCallback):
    def __init__(self, job: OptimizationJob) -> None:
        super().__init__()
        self._job = job

    def on_solution_callback(self) -> None:
        self._job._on_solution(self.objective_value, self.best_objective_bound)
        if self._job._cancelled.is_set():
            self.stop_search()


class OptimizationJob:
    """A CP-SAT solve on its own thread.

    States: pending -> running -> succeeded | cancelled | failed. ``progress`` and ``status`` can be
    polled at any time; ``cancel()`` stops the search and keeps the best solution found so far;
    ``result`` is set once the job has finished (None if it failed or was cancelled before any
    solution); ``await job.wait()`` or ``job.join()`` waits for it. ``close()`` cancels and joins.
    """

    def __init__(
        self,
        problem: Problem | Callable[[], Problem],
        *,
        time_limit_s: float,
        workers: int = 0,
        part_size: int = 0,
    ) -> None:
        """``problem`` is a built Problem, or a builder run on the job's thread (counted in the limit)."""
        if isinstance(problem, Problem):
            self._problem = problem
            self._build: Callable[[], Problem] | None = None
            self._before = problem.build_s
        else:
            self._problem = Problem((), {}, 0.0)
            self._build = problem
            self._before = 0.0
        self._part_size = part_size
        self._part_label = ""
        self._time_limit = time_limit_s
        self._workers = workers
        self._status = JobStatus.PENDING
        self._progress = JobProgress()
        self._result: OptimizationResult | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._solver: cp_model.CpSolver | None = None
        self._started = 0.0
        self._thread = threading.Thread(target=self._run, name="scheduling-optimize", daemon=True)

    @property
    def status(self) -> JobStatus:
        return self._status

    @property
    def progress(self) -> JobProgress:
        with self._lock:
            if self._status == JobStatus.RUNNING:
                self._progress.elapsed_s = time.perf_counter() - self._started
                self._progress.fraction = min(1.0, self._progress.elapsed_s / max(self._time_limit, 1e-9))
            return JobProgress(**{k: getattr(self._progress, k) for k in JobProgress.__slots__})

    @property
    def result(self) -> OptimizationResult | None:
        return self._result

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def start(self) -> None:
        self._started = time.perf_counter()
        self._status = JobStatus.RUNNING
        self._thread.start()

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            solver = self._solver
        if solver is not None:
            solver.stop_search()

    def join(self, timeout: float | None = None) -> OptimizationResult | None:
        self._done.wait(timeout)
        return self._result

    async def wait(self) -> OptimizationResult:
        """Wait without blocking the loop; raises JobCancelledError/the failure if no result."""
        if not self._done.is_set():
            await asyncio.to_thread(self._done.wait)
        if self._result is None:
            if self._error is not None:
                raise self._error
            raise JobCancelledError("optimisation cancelled before a solution was found")
        return self._result

    def close(self) -> None:
        self.cancel()
        if self._thread.is_alive():
            self._thread.join()

    def _on_solution(self, objective: float, bound: float) -> None:
        with self._lock:
            if self._progress.first_solution_s is None:
                self._progress.first_solution_s = time.perf_counter() - self._started + self._before
            self._progress.solutions += 1
            self._progress.best_objective = objective
            self._progress.best_bound = bound

    def _run(self) -> None:
        try:
            self._result = self._solve()
            self._status = JobStatus.CANCELLED if self._cancelled.is_set() else JobStatus.SUCCEEDED
        except BaseException as exc:  # the owner reads it from .error
            logger.exception("optimisation failed")
            self._error = exc
            self._status = JobStatus.FAILED
        finally:
            with self._lock:
                self._progress.phase = "done"
                self._progress.fraction = 1.0
                self._progress.elapsed_s = time.perf_counter() - self._started
            self._done.set()

    def _phase(self, phase: str) -> None:
        with self._lock:
            self._progress.phase = phase

    def _solve(self) -> OptimizationResult | None:
        if self._build is not None:
            self._phase("building")
            self._problem = self._build()
            if self._cancelled.is_set():
                return None
        return self._solve_problem()

    def _solve_problem(self) -> OptimizationResult | None:
        """Solve the whole problem, or consecutive parts of it in start order when it is large.

        Parts are solved one after another; each sees the instructors' claims and cap usage of the
        parts before it, so their union obeys every rule. The reported bound is then the sum of the
        parts' bounds (a bound of the decomposed problem, not of the whole week).
        """
        problem = self._problem
        order = sorted(range(len(problem.sessions)), key=lambda k: (problem.sessions[k].start, k))
        size = self._part_size if self._part_size > 0 else max(1, len(order))
        parts = [order[i : i + size] for i in range(0, len(order), size)] or [[]]
        deadline = self._started + self._time_limit - self._before
        usage = _Usage(problem)
        objective = bound = 0.0
        statuses: list[str] = []
        for n, part in enumerate(parts):
            if self._cancelled.is_set():
                break
            self._phase(f"modelling part {n + 1}/{len(parts)}" if len(parts) > 1 else "modelling")
            self._part_label = f"{n + 1}/{len(parts)}" if len(parts) > 1 else ""
            left = sum(len(p) for p in parts[n:])
            budget = max(0.05, (deadline - time.perf_counter()) * len(part) / max(1, left))
            part_objective, part_bound, status = self._solve_part(part, usage, budget)
            objective += part_objective
            bound += part_bound
            statuses.append(status)
        if self._cancelled.is_set() and not usage.choice:
            return None
        assignments: dict[SessionId, InstructorId] = {}
        changes: list[Change] = []
        unassigned: list[SessionId] = []
        kept = 0
        for k, ps in enumerate(problem.sessions):
            chosen = usage.choice.get(k)
            if chosen is None:
                unassigned.append(ps.session_id)
            else:
                assignments[ps.session_id] = chosen
                kept += chosen == ps.current
            if chosen != ps.current:
                changes.append(Change(ps.session_id, ps.current, chosen))
        gap = (bound - objective) / max(1.0, abs(objective))
        soft = objective - ASSIGN_WEIGHT * len(assignments) - KEEP_WEIGHT * kept
        soft_gap = (bound - objective) / max(1.0, abs(soft))
        status = statuses[0] if len(set(statuses)) == 1 else "+".join(sorted(set(statuses)))
        return OptimizationResult(
            assignments=assignments,
            changes=tuple(changes),
            unassigned=tuple(unassigned),
            objective=objective,
            bound=bound,
            gap=gap,
            soft_gap=soft_gap,
            solver_status=status,
            wall_s=time.perf_counter() - self._started + self._before,
            build_s=problem.build_s,
            variables=usage.variables,
            first_solution_s=self._progress.first_solution_s,
            parts=len(parts),
        )

    def _solve_part(self, part: list[int], usage: _Usage, budget: float) -> tuple[float, float, str]:
        """Model and solve one part; falls back to the greedy hint when CP-SAT finds nothing."""
        problem = self._problem
        model = cp_model.CpModel()
        x: dict[tuple[int, InstructorId], cp_model.IntVar] = {}
        terms: list[cp_model.LinearExprT] = []
        per_instructor: dict[InstructorId, list[tuple[int, int, int]]] = defaultdict(list)
        constant = 0
        for k in part:
            ps = problem.sessions[k]
            row = []
            for cand in ps.candidates:
                if not usage.fits(k, cand.instructor_id):
                    continue
                var = model.new_bool_var(f"x_{k}_{cand.instructor_id}")
                x[(k, cand.instructor_id)] = var
                row.append(var)
                terms.append(_weight(ps, cand) * var)
                buffer = problem.limits[cand.instructor_id].buffer
                per_instructor[cand.instructor_id].append((ps.start, ps.end + buffer, k))
            if row:
                model.add_at_most_one(row)
        usage.variables += len(x)
        share = math.ceil(1.2 * len(problem.sessions) / max(1, len(problem.limits)))
        for iid, claims in per_instructor.items():
            limits = problem.limits[iid]
            # Maximal cliques of an interval graph: the intervals alive at each start point.
            claims.sort()
            for i, (start, _end, _k) in enumerate(claims):
                if i + 1 < len(claims) and claims[i + 1][0] == start:
                    continue
                group = [kk for (s, e, kk) in claims[: i + 1] if e > start and s <= start]
                if len(group) > 1:
                    model.add_at_most_one(x[(kk, iid)] for kk in group)
            by_day: dict[int, list[cp_model.IntVar]] = defaultdict(list)
            by_week: dict[int, list[cp_model.IntVar]] = defaultdict(list)
            for _s, _e, k in claims:
                sid = problem.sessions[k].session_id
                by_day[limits.day_of[sid]].append(x[(k, iid)])
                by_week[limits.week_of[sid]].append(x[(k, iid)])
            for day, vars_ in by_day.items():
                room = usage.day_room(iid, day)
                if len(vars_) > room:
                    model.add(sum(vars_) <= room)
            for week, vars_ in by_week.items():
                room = usage.week_room(iid, week)
                if len(vars_) > room:
                    model.add(sum(vars_) <= room)
            allowed = share - usage.load[iid]
            if len(claims) > allowed:
                over = model.new_int_var(0, len(claims), f"over_{iid}")
                model.add(over >= sum(x[(k, iid)] for _s, _e, k in claims) - max(0, allowed))
                terms.append(-OVERLOAD_WEIGHT * over)
        model.maximize(sum(terms))
        hint = usage.greedy(part, x)
        for (k, iid), var in x.items():
            model.add_hint(var, hint.get(k) == iid)
        if not x:
            return 0.0, 0.0, "EMPTY"
        hint_value = self._value(hint, usage, share) + constant
        if self._cancelled.is_set():
            return self._keep_greedy(part, hint, usage, hint_value)
        self._phase(f"solving part {self._part_label}" if self._part_label else "solving")
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = budget
        if self._workers:
            solver.parameters.num_search_workers = self._workers
        with self._lock:
            self._solver = solver
        if self._cancelled.is_set():
            solver.stop_search()
        status = solver.solve(model, _Progress(self))
        with self._lock:
            self._solver = None
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE) and solver.objective_value + constant >= hint_value:
            for (k, iid), var in x.items():
                if solver.boolean_value(var):
                    usage.take(k, iid)
            return solver.objective_value + constant, solver.best_objective_bound + constant, solver.status_name(status)
        if status in (cp_model.INFEASIBLE, cp_model.MODEL_INVALID):
            raise RuntimeError(f"CP-SAT returned {solver.status_name(status)}")
        # Nothing better than the greedy hint within the budget: keep the hint, which is feasible.
        value, upper, label = self._keep_greedy(part, hint, usage, hint_value)
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return value, max(value, solver.best_objective_bound + constant), label
        return value, upper, label

    def _value(self, hint: dict[int, InstructorId], usage: _Usage, share: int) -> float:
        """The objective of a choice for one part, with the same terms as the model."""
        problem = self._problem
        value = 0
        count: dict[InstructorId, int] = defaultdict(int)
        for k, iid in hint.items():
            ps = problem.sessions[k]
            value += _weight(ps, next(c for c in ps.candidates if c.instructor_id == iid))
            count[iid] += 1
        for iid, n in count.items():
            allowed = share - usage.load[iid]
            value -= OVERLOAD_WEIGHT * max(0, n - max(0, allowed))
        return float(value)

    def _keep_greedy(
        self, part: list[int], hint: dict[int, InstructorId], usage: _Usage, value: float
    ) -> tuple[float, float, str]:
        problem = self._problem
        for k, iid in hint.items():
            usage.take(k, iid)
        if self._progress.first_solution_s is None:
            self._on_solution(value, value)
        ub = sum(
            max((_weight(problem.sessions[k], c) for c in problem.sessions[k].candidates), default=0) for k in part
        )
        return value, float(max(ub, value)), "GREEDY"


def _weight(ps: ProblemSession, cand: Candidate) -> int:
    return ASSIGN_WEIGHT + cand.weight + (KEEP_WEIGHT if cand.instructor_id == ps.current else 0)


class _Usage:
    """Claims and cap usage of the sessions chosen so far (across parts), and the greedy rule."""

    def __init__(self, problem: Problem) -> None:
        self._problem = problem
        self.choice: dict[int, InstructorId] = {}
        self.taken: dict[InstructorId, list[tuple[int, int]]] = defaultdict(list)
        self.day_used: dict[tuple[InstructorId, int], int] = defaultdict(int)
        self.week_used: dict[tuple[InstructorId, int], int] = defaultdict(int)
        self.load: dict[InstructorId, int] = defaultdict(int)
        self.variables = 0

    def day_room(self, iid: InstructorId, day: int) -> int:
        return max(0, self._problem.limits[iid].day_room[day] - self.day_used[(iid, day)])

    def week_room(self, iid: InstructorId, week: int) -> int:
        return max(0, self._problem.limits[iid].week_room[week] - self.week_used[(iid, week)])

    def fits(self, k: int, iid: InstructorId) -> bool:
        ps = self._problem.sessions[k]
        limits = self._problem.limits[iid]
        lo, hi = ps.start, ps.end + limits.buffer
        for s, e in self.taken[iid]:
            # Claims [s, e) of one instructor collide when they overlap.
            if s < hi and e > lo:
                return False
        sid = ps.session_id
        return self.day_room(iid, limits.day_of[sid]) > 0 and self.week_room(iid, limits.week_of[sid]) > 0

    def take(self, k: int, iid: InstructorId) -> None:
        ps = self._problem.sessions[k]
        limits = self._problem.limits[iid]
        self.taken[iid].append((ps.start, ps.end + limits.buffer))
        self.day_used[(iid, limits.day_of[ps.session_id])] += 1
        self.week_used[(iid, limits.week_of[ps.session_id])] += 1
        self.load[iid] += 1
        self.choice[k] = iid

    def undo(self, k: int) -> None:
        iid = self.choice.pop(k)
        ps = self._problem.sessions[k]
        limits = self._problem.limits[iid]
        self.taken[iid].remove((ps.start, ps.end + limits.buffer))
        self.day_used[(iid, limits.day_of[ps.session_id])] -= 1
        self.week_used[(iid, limits.week_of[ps.session_id])] -= 1
        self.load[iid] -= 1

    def greedy(self, part: list[int], x: dict[tuple[int, InstructorId], cp_model.IntVar]) -> dict[int, InstructorId]:
        """Keep current instructors where possible, then the best free candidate in start order.

        Works on this object's usage and rolls it back, returning only the choice.
        """
        problem = self._problem
        picked: list[int] = []
        for k in part:
            ps = problem.sessions[k]
            if ps.current is not None and (k, ps.current) in x and self.fits(k, ps.current):
                self.take(k, ps.current)
                picked.append(k)
        for k in part:
            if k in self.choice:
                continue
            for cand in sorted(problem.sessions[k].candidates, key=lambda c: -c.weight):
                if (k, cand.instructor_id) in x and self.fits(k, cand.instructor_id):
                    self.take(k, cand.instructor_id)
                    picked.append(k)
                    break
        hint = {k: self.choice[k] for k in picked}
        for k in picked:
            self.undo(k)
        return hint
