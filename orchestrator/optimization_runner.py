"""OptimizationRunner: bulk re-optimisation of a week as background jobs that every replica can answer for.

A job is a row in ``optimization_jobs`` (the store), so a poll on any replica sees it; the CP-SAT solve runs on
the replica that accepted it, on its own thread (the engine's ``OptimizationJob``), never on the event loop.

States: ``queued`` (accepted; waits for a solver slot: one solve at a time per replica) -> ``running`` ->
``succeeded`` | ``failed`` | ``cancelled``. While queued or running the owner refreshes ``heartbeat_at`` about
every second together with the progress (solutions found, best objective and bound, gap). A job whose
heartbeat is older than ``stale_after_s`` has lost its runner (the process died or was killed): the next poll,
on any replica, marks it ``failed`` with the reason. A cancel is written to the row (``cancel_requested``);
the owner sees it at its next beat and stops the search (CP-SAT ``StopSearch``), keeping the best solution so
far for inspection. Only a ``succeeded`` job can be applied, once: every change is checked again by the engine
on a fresh snapshot and then committed through the store's occupancy claims; failures are reported per session.

``reassign=False`` keeps every session whose instructor is still feasible and only assigns the others (those
whose instructor went on leave, lost a qualification, ...); ``reassign=True`` lets the solver also move
existing assignments when that covers more sessions (the engine's non-disruptive objective: changes are
minimised, continuity, preferences and balance come next).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator import metrics
from orchestrator import scheduling as eng
from orchestrator.errors import InvalidStateError, NotFoundError, OrchestratorError, RuleViolation
from orchestrator.scheduling.occupancy import epoch_minutes
from orchestrator.scheduling.optimizer import Problem, build_problem
from orchestrator.scheduling_gate import SchedulingGate
from orchestrator.scheduling_support import LinksRevoked, Notify, announce, with_history
from orchestrator.store import Store
from orchestrator.store.models import (
    MUTABLE_SESSION_STATUSES,
    UNFINISHED_OPTIMIZATION_STATUSES,
    InstructorId,
    OptimizationJobRecord,
    OptimizationStatus,
    Reassignment,
    SessionId,
)

logger = logging.getLogger(__name__)

WEEK = timedelta(days=7)
MAX_TIME_LIMIT_S = 120.0
_LARGE_WEEK = 1500  # above this many movable sessions the week is solved in consecutive parts (engine default)
_PART_SIZE = 700

_FINAL = {
    eng.JobStatus.SUCCEEDED: OptimizationStatus.SUCCEEDED,
    eng.JobStatus.CANCELLED: OptimizationStatus.CANCELLED,
    eng.JobStatus.FAILED: OptimizationStatus.FAILED,
}


class OptimizationRunner:
    def __init__(
        self,
        store: Store,
        gate: SchedulingGate,
        notify: Notify,
        links_revoked: LinksRevoked,
        *,
        owner: str | None = None,
        heartbeat_s: float = 1.0,
        stale_after_s: float = 15.0,
        concurrency: int = 1,
    ) -> None:
        self._store = store
        self._gate = gate
        self._notify = notify
        self._links_revoked = links_revoked
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._heartbeat_s = heartbeat_s
        self._stale_after = timedelta(seconds=stale_after_s)
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._jobs: dict[str, eng.OptimizationJob] = {}
        self._closed = False

    # ------------------------------------------------------------------ API

    async def submit(self, week_start: datetime, *, time_limit_s: float, reassign: bool) -> OptimizationJobRecord:
        """Accept a job (``queued``) and start working on it in the background."""
        if self._closed:
            raise InvalidStateError("this orchestrator is shutting down; submit the job to another replica")
        record = await self._store.create_optimization_job(
            week_start=week_start, time_limit_s=time_limit_s, reassign=reassign, owner=self.owner
        )
        task = asyncio.create_task(self._run(record), name=f"optimization:{record.job_id}")
        self._tasks[record.job_id] = task
        task.add_done_callback(self._forget)
        metrics.OPTIMIZATION_JOBS_RUNNING.inc()
        logger.info(
            "optimization=%s queued week_start=%s time_limit_s=%s reassign=%s",
            record.job_id,
            week_start.date(),
            time_limit_s,
            reassign,
        )
        return record

    async def get(self, job_id: str) -> OptimizationJobRecord:
        """The job as stored; an unfinished one whose runner stopped heartbeating is failed first."""
        record = await self._store.get_optimization_job(job_id)
        if record.status in UNFINISHED_OPTIMIZATION_STATUSES:
            limit = datetime.now(UTC) - self._stale_after
            if record.heartbeat_at < limit:
                record = await self._store.fail_stale_optimization_job(
                    job_id,
                    heartbeat_before=limit,
                    error=f"its runner ({record.owner}) stopped: no heartbeat since "
                    f"{record.heartbeat_at.isoformat()}; submit the job again",
                )
                if record.status is OptimizationStatus.FAILED:
                    logger.warning("optimization=%s owner=%s lost (stale heartbeat)", job_id, record.owner)
        return record

    async def cancel(self, job_id: str) -> OptimizationJobRecord:
        """Stop a queued or running job (the owner stops the solver within a heartbeat)."""
        await self.get(job_id)  # a job whose runner died is failed, not cancellable
        record = await self._store.request_optimization_cancel(job_id)
        job = self._jobs.get(job_id)
        if job is not None:
            job.cancel()
        logger.info("optimization=%s cancel requested status=%s", job_id, record.status)
        return record

    async def apply(self, job_id: str) -> OptimizationJobRecord:
        """Apply a succeeded job's changes once; each is checked again and may fail on its own."""
        await self.get(job_id)
        record = await self._store.claim_optimization_apply(job_id)
        try:
            report = await self._apply(record)
        except Exception as exc:
            logger.exception("optimization=%s apply failed", job_id)
            await self._store.finish_optimization_apply(job_id, {"state": "failed", "error": str(exc)[:500]})
            raise
        return await self._store.finish_optimization_apply(job_id, report)

    async def close(self) -> None:
        """Stop every job of this replica (their rows say failed; the solver threads are joined)."""
        if self._closed:
            return
        self._closed = True
        for job in list(self._jobs.values()):
            job.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in list(self._jobs.values()):
            await asyncio.to_thread(job.join, 10.0)

    # ------------------------------------------------------------------ running

    def _forget(self, task: asyncio.Task[None]) -> None:
        for job_id, mine in list(self._tasks.items()):
            if mine is task:
                del self._tasks[job_id]

    async def _run(self, record: OptimizationJobRecord) -> None:
        job_id = record.job_id
        began = time.monotonic()
        try:
            if not await self._wait_for_slot(job_id):
                return
            try:
                await self._solve(record)
            finally:
                self._slots.release()
        except asyncio.CancelledError:
            job = self._jobs.get(job_id)
            if job is not None:
                job.cancel()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._store.update_optimization_job(
                        job_id,
                        owner=self.owner,
                        expect=UNFINISHED_OPTIMIZATION_STATUSES,
                        status=OptimizationStatus.FAILED,
                        error="the orchestrator running it shut down; submit the job again",
                    )
            raise
        except Exception as exc:
            logger.exception("optimization=%s failed", job_id)
            metrics.OPTIMIZATION_JOBS.labels("failed").inc()
            with contextlib.suppress(Exception):
                await self._store.update_optimization_job(
                    job_id,
                    owner=self.owner,
                    expect=UNFINISHED_OPTIMIZATION_STATUSES,
                    status=OptimizationStatus.FAILED,
                    error=f"{type(exc).__name__}: {exc}",
                )
        finally:
            metrics.OPTIMIZATION_JOBS_RUNNING.dec()
            metrics.OPTIMIZATION_SECONDS.observe(time.monotonic() - began)

    async def _wait_for_slot(self, job_id: str) -> bool:
        """Queue for a solver slot, beating meanwhile; False when the job was cancelled while queued."""
        while True:
            try:
                async with asyncio.timeout(self._heartbeat_s):
                    await self._slots.acquire()
                return True
            except TimeoutError:
                beat = await self._store.update_optimization_job(
                    job_id, owner=self.owner, expect=[OptimizationStatus.QUEUED]
                )
                if beat is None:
                    logger.info("optimization=%s left the queue (cancelled)", job_id)
                    return False

    async def _solve(self, record: OptimizationJobRecord) -> None:
        job_id = record.job_id
        running = await self._store.update_optimization_job(
            job_id,
            owner=self.owner,
            expect=[OptimizationStatus.QUEUED],
            status=OptimizationStatus.RUNNING,
            progress={"phase": "snapshot"},
        )
        if running is None:
            return  # cancelled just before it started
        week_start = record.week_start
        sessions = await self._store.sessions_between(week_start, week_start + WEEK)
        students = {x for s in sessions for x in s.student_ids}
        org = await self._gate.snapshot(
            instructor_ids=None, student_ids=students, start=week_start, end=week_start + WEEK
        )
        units = {s.curriculum_unit for s in sessions if s.curriculum_unit}
        org = await with_history(self._store, org, student_ids=students, curriculum_units=units, before=week_start)
        starts = {str(s.session_id): s.start for s in org.sessions}
        job = await asyncio.to_thread(_start_job, org, week_start, record.time_limit_s, record.reassign)
        self._jobs[job_id] = job
        try:
            while True:  # beat first: a cancel that came in during the snapshot is seen at once
                beat = await self._store.update_optimization_job(
                    job_id, owner=self.owner, expect=[OptimizationStatus.RUNNING], progress=_progress(job)
                )
                if beat is None or beat.cancel_requested:
                    job.cancel()
                await asyncio.to_thread(job.join, self._heartbeat_s)
                if job.done:
                    break
            status = _FINAL[job.status]
            error = None if job.error is None else f"{type(job.error).__name__}: {job.error}"
            result = None if job.result is None else _result(job.result, starts)
            await self._store.update_optimization_job(
                job_id,
                owner=self.owner,
                expect=[OptimizationStatus.RUNNING],
                status=status,
                progress=_progress(job),
                result=result,
                error=error,
            )
        finally:
            self._jobs.pop(job_id, None)
        metrics.OPTIMIZATION_JOBS.labels(status.value).inc()
        logger.info(
            "optimization=%s %s changes=%s gap=%s",
            job_id,
            status,
            None if result is None else result["change_count"],
            None if result is None else result["gap"],
        )

    # ------------------------------------------------------------------ applying

    async def _apply(self, record: OptimizationJobRecord) -> dict[str, Any]:
        changes: list[dict[str, Any]] = list((record.result or {}).get("changes", []))
        failed: list[dict[str, Any]] = []
        wanted: dict[str, dict[str, Any]] = {}
        current = {s.session_id: s for s in await self._sessions_of([c["session_id"] for c in changes])}
        for change in changes:
            sid = change["session_id"]
            s = current.get(sid)
            if s is None or s.status not in MUTABLE_SESSION_STATUSES:
                why = "no longer exists" if s is None else f"is {s.status}"
                failed.append(_failure(change, "stale", f"session {sid} {why}"))
            elif s.instructor_id != change["old_instructor_id"]:
                failed.append(_failure(change, "stale", f"session {sid} is now taught by {s.instructor_id}"))
            else:
                wanted[sid] = change
        if wanted:
            chosen = [current[sid] for sid in wanted]
            students = {x for s in chosen for x in s.student_ids}
            org = await self._gate.snapshot(
                instructor_ids=None,
                student_ids=students,
                start=min(s.start for s in chosen),
                end=max(s.end for s in chosen),
            )
            assignments = {sid: change["new_instructor_id"] for sid, change in wanted.items()}
            refused = await asyncio.to_thread(_check_assignments, org, assignments)
            for sid, violations in refused.items():
                change = wanted.pop(sid)
                if violations:
                    first = violations[0]
                    failed.append(_failure(change, str(first.rule), first.message, first.conflicting_session_id))
                else:
                    failed.append(_failure(change, "stale", f"session {sid} changed since the job ran"))
        done, errors = await self._store.reassign_sessions(
            [
                Reassignment(SessionId(sid), InstructorId(c["old_instructor_id"]), InstructorId(c["new_instructor_id"]))
                for sid, c in wanted.items()
            ],
            reason="optimization",
            context={"optimization_id": record.job_id},
        )
        for sid, error in errors.items():
            failed.append(_error_failure(wanted[sid], error))
        await announce(self._store, done, self._notify, self._links_revoked)
        applied = [
            {
                "session_id": c.after.session_id,
                "old_instructor_id": c.before.instructor_id,
                "new_instructor_id": c.after.instructor_id,
            }
            for c in done
        ]
        metrics.OPTIMIZATION_CHANGES_APPLIED.labels("applied").inc(len(applied))
        metrics.OPTIMIZATION_CHANGES_APPLIED.labels("refused").inc(len(failed))
        logger.info("optimization=%s applied=%d failed=%d", record.job_id, len(applied), len(failed))
        return {
            "state": "done",
            "applied_count": len(applied),
            "failed_count": len(failed),
            "applied": applied,
            "failed": failed,
        }

    async def _sessions_of(self, session_ids: Sequence[str]) -> list[Any]:
        out = []
        for sid in session_ids:
            with contextlib.suppress(NotFoundError):
                out.append(await self._store.get_session(sid))
        return out


# ---------------------------------------------------------------------- engine work (worker threads)


def _start_job(org: eng.Organisation, week_start: datetime, time_limit_s: float, reassign: bool) -> eng.OptimizationJob:
    engine = eng.Scheduler(org)
    window = epoch_minutes(week_start)
    end = week_start + WEEK
    movable = sum(1 for s in org.sessions if week_start <= s.start < end and s.status is eng.SessionStatus.SCHEDULED)

    def build() -> Problem:
        problem = build_problem(engine, window, 7)
        return problem if reassign else _pinned(problem)

    job = eng.OptimizationJob(build, time_limit_s=time_limit_s, part_size=_PART_SIZE if movable > _LARGE_WEEK else 0)
    job.start()
    return job


def _pinned(problem: Problem) -> Problem:
    """Sessions whose current instructor is still feasible keep them: only the others get a choice."""
    sessions = tuple(
        dataclasses.replace(ps, candidates=tuple(c for c in ps.candidates if c.instructor_id == ps.current))
        if any(c.instructor_id == ps.current for c in ps.candidates)
        else ps
        for ps in problem.sessions
    )
    return dataclasses.replace(problem, sessions=sessions)


def _check_assignments(org: eng.Organisation, assignments: dict[str, str]) -> dict[str, list[eng.Violation]]:
    """The changes the engine refuses on a fresh snapshot, each with the rules it breaks."""
    engine = eng.Scheduler(org)
    wanted = {eng.SessionId(k): eng.InstructorId(v) for k, v in assignments.items()}
    stale = engine.apply_assignments(wanted)
    out: dict[str, list[eng.Violation]] = {}
    for sid in stale:
        session = engine.sessions.get(sid)
        if session is None:
            out[sid] = []
            continue
        out[sid] = engine.check(dataclasses.replace(session, instructor_id=wanted[sid]))
    return out


def _progress(job: eng.OptimizationJob) -> dict[str, Any]:
    p = job.progress
    gap = None
    if p.best_objective is not None and p.best_bound is not None:
        gap = round((p.best_bound - p.best_objective) / max(1.0, abs(p.best_objective)), 6)
    return {
        "phase": p.phase,
        "elapsed_s": round(p.elapsed_s, 3),
        "fraction": round(p.fraction, 4),
        "solutions": p.solutions,
        "best_objective": p.best_objective,
        "best_bound": p.best_bound,
        "gap": gap,
    }


def _result(result: eng.OptimizationResult, starts: dict[str, datetime]) -> dict[str, Any]:
    changes = [
        {
            "session_id": c.session_id,
            "start": starts[c.session_id].astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "old_instructor_id": c.previous,
            "new_instructor_id": c.assigned,
        }
        for c in result.changes
        if c.assigned is not None and c.previous is not None
    ]
    return {
        "solver_status": result.solver_status,
        "objective": result.objective,
        "bound": result.bound,
        "gap": round(result.gap, 6),
        "soft_gap": round(result.soft_gap, 6),
        "wall_s": round(result.wall_s, 3),
        "sessions": len(result.assignments) + len(result.unassigned),
        "assigned": len(result.assignments),
        "unassigned": list(result.unassigned),
        "change_count": len(changes),
        "changes": changes,
    }


def _failure(change: dict[str, Any], rule: str, message: str, conflicting: str | None = None) -> dict[str, Any]:
    return {
        "session_id": change["session_id"],
        "new_instructor_id": change["new_instructor_id"],
        "rule": rule,
        "message": message,
        "conflicting_session_id": conflicting,
    }


def _error_failure(change: dict[str, Any], error: OrchestratorError) -> dict[str, Any]:
    if isinstance(error, RuleViolation):
        return {**_failure(change, error.code, error.detail, error.conflicting_session_id)}
    if isinstance(error, NotFoundError):
        return _failure(change, "not_found", str(error))
    return _failure(change, "stale", str(error))
