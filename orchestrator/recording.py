"""RecordingCoordinator: two recorder copies for every recorded session, watched live, merged after the class.

Runs on the elected leader (``run``), every ``interval_s``:

1. **Jobs.** A provisioned or live session with ``recording`` on gets its two jobs (slots a and b) and its
   recording row, created once whoever asks (``Store.ensure_recording_jobs``).
2. **Assignment.** A pending job goes to a serving recorder worker that does not hold the other slot of the same
   session (copies on different workers, different hosts in production) and has not failed this slot before:
   same region first, then the fewest jobs. The job is marked assigned (compare-and-set) before the worker is
   asked to start it, so two leaders never start one job twice; the worker's lease makes that certain.
3. **Live check.** Workers report progress every second on ``RECORDING_PROGRESS``. A job is failed over when its
   worker is gone from the registry, its lease lapsed, it reported no progress for ``stall_after`` (3 s), it has
   written nothing for ``not_writing_after`` while the other copy did, or it reports a storage error. The job is
   marked replaced, its lease revoked (the worker stops it), and a new attempt of the slot is assigned elsewhere.
   Detection takes at most ``stall_after`` + ``interval_s`` (3.5 s), within the 5 s the product promises.
   A storage error opens an operational exception naming the cause (``recorder_storage_full``); both slots
   unhealthy at once opens ``recording_gap`` with the time it started (and the end, once a copy is back).
   With S3 storage, a worker whose uploads fail for ``upload_alert_after`` opens ``recording_upload_failing``; its
   copies are not replaced (their segments wait in its spool, and a replacement would upload to the same place).
4. **Hand-over.** A job on a draining worker gets a replacement first; the old one is stopped once the
   replacement has written for ``handover_s`` (make-before-break, as rooms move).
5. **After the class.** When the session has ended (or was cancelled), its jobs are stopped, and the recording is
   assembled from every copy and verified (``recorder.finalize``, in a thread): ``ready`` when whole and playable,
   ``failed`` with the exact gaps otherwise (and a ``recording_incomplete`` exception). Either emits the
   recording.* webhook once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from core.bus import Bus, BusError, Subscription
from core.messages import RECORDING_PROGRESS, recorder_rpc, recording_lease_key, recording_uploaded_key, room_key
from orchestrator.errors import InvalidStateError, NotFoundError
from orchestrator.registry import NodeInfo, NodeRegistry
from orchestrator.store import Store
from orchestrator.store.models import ACTIVE_JOB_STATUSES, RecordingJob, RecordingJobStatus, Session, SessionStatus
from recorder.storage import LocalStorage, Storage, download

if TYPE_CHECKING:
    from recorder.finalize import FinalRecording

logger = logging.getLogger(__name__)

FAILOVERS = Counter(
    "classmesh_orchestrator_recording_failovers_total", "Recording copies replaced while the class ran", ["cause"]
)
ACTIVE_JOBS = Gauge("classmesh_orchestrator_recording_jobs_active", "Recording jobs pending, assigned or recording")
FINISHED = Counter("classmesh_orchestrator_recordings_finished_total", "Final recordings built", ["status"])
COVERAGE = Histogram(
    "classmesh_orchestrator_recording_coverage_ratio",
    "Coverage of finished recordings (recorded seconds / seconds of media sent)",
    buckets=(0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0),
)
REBUILT = Counter(
    "classmesh_orchestrator_recordings_rebuilt_total",
    "Failed recordings built again because a copy's segments were uploaded after the assembly",
)
BOTH_DOWN = Gauge("classmesh_orchestrator_recordings_without_copy", "Live recorded sessions with no healthy copy")

LIVE = (SessionStatus.PROVISIONED, SessionStatus.LIVE)
OVER = (SessionStatus.ENDED, SessionStatus.CANCELLED)
RUNNING = (RecordingJobStatus.ASSIGNED, RecordingJobStatus.RECORDING)


@dataclass(frozen=True, slots=True)
class RecordingConfig:
    storage: Storage  # where the workers' segments are (a shared directory, or S3; see docs/recording.md)
    interval_s: float = 0.5
    stall_after: float = 3.0  # no progress report for this long: the copy is stalled or its worker is gone
    start_grace: float = 10.0  # from assignment to the first progress report (join + ICE + DTLS)
    not_writing_after: float = 5.0  # bytes not growing for this long while the other copy's grow
    first_write_within: float = 15.0  # a new copy's first bytes (SR hold-back 4 s + first keyframes, in practice)
    handover_s: float = 2.0
    stop_timeout: float = 30.0  # a stop closes the segments and waits up to upload_flush_s (10 s) for uploads
    end_grace_s: float = 60.0  # after the session ended, wait at most this long for jobs to stop
    upload_alert_after: float = 10.0  # a worker's uploads (S3) failing this long opens recording_upload_failing
    upload_wait_s: float = 600.0  # a copy stopped with segments not uploaded yet holds the assembly this long
    late_window_s: float = 86400.0  # a failed recording is built again if its late segments arrive within this
    late_sweep_s: float = 10.0  # how often failed recordings are checked for late segments (lost "uploaded")


@dataclass
class _Seen:
    at: float  # monotonic time of the last progress report
    bytes: int
    grew_at: float  # monotonic time bytes last grew
    error: dict[str, Any] | None
    wall: float  # the worker's clock at that report
    session_id: str
    first: float  # monotonic time of the job's first report
    parts: int = 1
    wrote_wall: float | None = None  # the worker's clock at the last report whose bytes had grown


class RecordingCoordinator:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        registry: NodeRegistry,
        config: RecordingConfig,
        *,
        on_events: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._registry = registry
        self.config = config
        self._on_events = on_events
        self._seen: dict[str, _Seen] = {}
        self._assigned_at: dict[str, float] = {}
        self._handovers: dict[str, RecordingJob] = {}  # replacement job id -> the draining job it replaces
        self._refused: dict[tuple[str, str], float] = {}  # (job, worker) -> until (monotonic)
        self._both_down: dict[str, float] = {}  # session -> wall time since no copy is healthy
        self._sessions: dict[str, Session] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._finalizing: set[str] = set()
        self._ever_healthy: set[str] = set()  # sessions with a copy that reported progress
        self._first_seen: dict[str, float] = {}
        self._recent: dict[str, list[float]] = {}  # worker -> when jobs were just assigned to it
        self._lead_since = time.monotonic()
        self._upload_alerted: dict[str, float] = {}  # worker -> when its upload failure was last raised (monotonic)
        self._late: set[str] = set()  # sessions whose segments arrived while their recording was being assembled
        self._late_swept = 0.0  # monotonic time of the last sweep of failed recordings for late segments

    # ------------------------------------------------------------------------------------------ loop
    async def run(self, fencing_token: int) -> None:
        logger.info("recording coordinator started token=%d", fencing_token)
        self._lead_since = time.monotonic()
        sub = await self._bus.subscribe(RECORDING_PROGRESS)
        listener = asyncio.create_task(self._listen(sub), name="recording:progress")
        try:
            while True:
                try:
                    await self.tick()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("recording round failed")
                await asyncio.sleep(self.config.interval_s)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await sub.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self, sub: Subscription) -> None:
        async for message in sub:
            self.observe(message)

    def observe(self, message: dict[str, Any]) -> None:
        if message.get("type") == "uploaded":
            session_id = str(message.get("session_id"))
            self._spawn(self._late_segments(session_id), f"recording:uploaded:{session_id}")
            return
        job_id = message.get("job_id")
        if not isinstance(job_id, str):
            return
        now = time.monotonic()
        size = int(message.get("bytes") or 0)
        seen = self._seen.get(job_id)
        parts = int(message.get("parts") or 1)
        grew_at = now if seen is None or size > seen.bytes else seen.grew_at
        wall = float(message.get("at") or time.time())
        grew = size > 0 and (seen is None or size > seen.bytes)
        wrote_wall = wall if grew else (seen.wrote_wall if seen is not None else None)
        if seen is not None and parts > seen.parts:
            # the copy followed its room to another node: its new part writes nothing until its clocks have
            # sender reports and its video keyframes, as a new copy does
            grew_at = now + self.config.first_write_within - self.config.not_writing_after
        self._seen[job_id] = _Seen(
            now,
            size,
            grew_at,
            message.get("error"),
            wall,
            str(message.get("session_id")),
            now if seen is None else seen.first,
            parts,
            wrote_wall,
        )
        failing = message.get("upload_error")
        if isinstance(failing, dict):
            self._upload_failing(str(message.get("worker_id")), str(message.get("session_id")), failing, message)

    def _upload_failing(self, worker_id: str, session_id: str, error: dict[str, Any], report: dict[str, Any]) -> None:
        """A worker cannot upload its finished segments (S3 down, refused, full): the copy is safe in its spool and
        keeps recording, so nothing is replaced; an operator is told once the failure lasted ``upload_alert_after``.
        """
        since = float(error.get("since") or time.time())
        if time.time() - since < self.config.upload_alert_after:
            return
        if time.monotonic() - self._upload_alerted.get(worker_id, -1e9) < 60.0:
            return
        self._upload_alerted[worker_id] = time.monotonic()
        details = {
            "cause": error.get("cause") or error.get("code"),
            "message": error.get("message"),
            "since": since,
            "uploads_pending": report.get("uploads_pending"),
        }
        self._spawn(
            self._store.raise_exception(
                f"recording_upload_failing:{worker_id}",
                "recording_upload_failing",
                "high",
                subject_refs={"worker_id": worker_id, "session_id": session_id},
                details=details,
            ),
            f"recording:upload-alert:{worker_id}",
        )

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def tick(self) -> None:
        await self._ensure_jobs()
        jobs = await self._store.active_recording_jobs()
        ACTIVE_JOBS.set(len(jobs))
        by_session: dict[str, list[RecordingJob]] = {}
        for job in jobs:
            by_session.setdefault(job.session_id, []).append(job)
        for session_id, session_jobs in by_session.items():
            try:
                session = await self._store.get_session(session_id)
            except NotFoundError:
                continue
            self._sessions[session_id] = session
            if session.status is SessionStatus.SCHEDULED:
                # moved back beyond the lead time (its room was released): nothing of it may keep running
                for job in await self._store.discard_recording(session_id):
                    self._spawn(self._stop_worker_job(job, "session rescheduled"), f"recording:drop:{job.job_id}")
                self._sessions.pop(session_id, None)
                logger.info("session=%s rescheduled beyond the lead time: recording jobs dropped", session_id)
                continue
            if session.status in OVER:
                for job in session_jobs:
                    await self._finish_job(job, session)
                continue
            healthy = 0
            for job in sorted(session_jobs, key=lambda j: j.slot):
                if job.status is RecordingJobStatus.PENDING:
                    await self._assign(job, session)
                elif await self._check(job, session, session_jobs):
                    healthy += 1
            await self._track_both_down(session, healthy)
        BOTH_DOWN.set(len(self._both_down))
        await self._finalize_due()
        await self._sweep_late()
        self._forget(jobs)

    def _forget(self, active: list[RecordingJob]) -> None:
        ids = {j.job_id for j in active}
        for job_id in [j for j in self._seen if j not in ids]:
            self._seen.pop(job_id, None)
            self._assigned_at.pop(job_id, None)
        now = time.monotonic()
        for key in [k for k, until in self._refused.items() if until < now]:
            del self._refused[key]

    async def _ensure_jobs(self) -> None:
        for status in LIVE:
            for session in await self._store.sessions_in_status(status, limit=1000):
                if session.recording and session.node_id and session.session_id not in self._sessions:
                    if await self._store.ensure_recording_jobs(session.session_id):
                        self._sessions[session.session_id] = session

    # ------------------------------------------------------------------------------------------ assignment
    def _choose_worker(self, job: RecordingJob, session: Session, others: list[RecordingJob]) -> NodeInfo | None:
        taken = {j.worker_id for j in others if j.slot != job.slot and j.worker_id}
        failed_here = {(j.failure or {}).get("worker_id") for j in others if j.slot == job.slot}
        now = time.monotonic()
        candidates = [
            n
            for n in self._registry.nodes("recorder")
            if n.serving
            and n.node_id not in taken
            and n.node_id not in failed_here
            and self._refused.get((job.job_id, n.node_id), 0) < now
        ]
        if not candidates:
            return None
        # heartbeats lag by up to a second: count what was just assigned too
        load = {
            n.node_id: n.heartbeat.rooms + sum(1 for t in self._recent.get(n.node_id, []) if now - t < 2)
            for n in candidates
        }
        return min(candidates, key=lambda n: (n.region not in (session.region, "any"), load[n.node_id], n.node_id))

    async def _assign(self, job: RecordingJob, session: Session) -> None:
        everyone = await self._store.recording_jobs(session.session_id)
        others = [j for j in everyone if j.status in ACTIVE_JOB_STATUSES or j.slot == job.slot]
        worker = self._choose_worker(job, session, others)
        if worker is None:
            return  # no eligible worker now; the job stays pending and the both-down check reports it
        node_id = await self._bus.kv_get(room_key(session.session_id)) or session.node_id
        if node_id is None:
            return
        try:
            job = await self._store.update_recording_job(
                job.job_id,
                if_status=[RecordingJobStatus.PENDING],
                status=RecordingJobStatus.ASSIGNED,
                worker_id=worker.node_id,
                node_id=node_id,
                started_at=datetime.now(UTC),
            )
        except (InvalidStateError, NotFoundError):
            return
        self._assigned_at[job.job_id] = time.monotonic()
        self._recent.setdefault(worker.node_id, []).append(time.monotonic())
        self._recent[worker.node_id] = self._recent[worker.node_id][-20:]
        try:
            await self._bus.request(
                recorder_rpc(worker.node_id),
                {
                    "op": "start",
                    "job_id": job.job_id,
                    "session_id": session.session_id,
                    "copy_id": job.copy_id,
                    "node_id": node_id,
                },
                timeout=10.0,
            )
        except BusError as exc:
            logger.warning("job=%s worker=%s refused or failed to start: %s", job.job_id, worker.node_id, exc)
            self._refused[(job.job_id, worker.node_id)] = time.monotonic() + 30.0
            self._assigned_at.pop(job.job_id, None)
            with contextlib.suppress(InvalidStateError, NotFoundError):
                await self._store.update_recording_job(
                    job.job_id,
                    if_status=[RecordingJobStatus.ASSIGNED],
                    status=RecordingJobStatus.PENDING,
                    worker_id=None,
                    started_at=None,
                )
            return
        logger.info(
            "session=%s slot=%s job=%s copy=%s assigned worker=%s node=%s",
            *(session.session_id, job.slot, job.job_id, job.copy_id, worker.node_id, node_id),
        )

    # ------------------------------------------------------------------------------------------ live check
    async def _check(self, job: RecordingJob, session: Session, session_jobs: list[RecordingJob]) -> bool:
        """True when the job covers the class (alive and writing); a failing one is replaced (or handed over) here.

        The live ``recording_gap`` exception uses this: it opens when no copy covers the class, and closes when one
        has written again (a replacement's first bytes come after its join and the SR hold-back, so the live
        figure can be a few seconds longer than the exact gap the final recording reports)."""
        now = time.monotonic()
        seen = self._seen.get(job.job_id)
        worker = self._registry.get(job.worker_id or "")
        cause: str | None = None
        error: dict[str, Any] | None = None
        since = self._assigned_at.setdefault(job.job_id, max(now, self._lead_since))
        if worker is None:
            cause = "worker_lost"
        elif seen is not None and seen.error:
            cause, error = str(seen.error.get("code") or "storage_error"), seen.error
        elif seen is None:
            if now - max(since, self._lead_since) > self.config.start_grace:
                cause = "never_started"
        elif now - seen.at > self.config.stall_after:
            cause = "stalled"
        elif seen.bytes == 0:
            # a new copy writes nothing until its clocks have SRs and every video track sent a keyframe
            if now - seen.first > self.config.first_write_within and self._other_copy_writes(job, session_jobs, now):
                cause = "never_wrote"
        elif now - seen.grew_at > self.config.not_writing_after and self._other_copy_writes(job, session_jobs, now):
            cause = "not_writing"
        if cause is None and seen is not None and job.status is RecordingJobStatus.ASSIGNED:
            with contextlib.suppress(InvalidStateError, NotFoundError):
                await self._store.update_recording_job(
                    job.job_id, if_status=[RecordingJobStatus.ASSIGNED], status=RecordingJobStatus.RECORDING
                )
        if cause is None and seen is not None and await self._bus.kv_get(recording_lease_key(job.job_id)) is None:
            cause = "lease_lapsed"
        if cause is not None:
            await self._fail_over(job, session, cause, error)
            return False
        if worker is not None and worker.heartbeat.state == "draining" and job.job_id not in self._handovers.values():
            await self._hand_over(job)
        await self._complete_handover(job, now)
        return seen is not None and seen.bytes > 0  # covering the class only once it has written something

    @staticmethod
    def _writes(seen: _Seen | None, now: float, window: float) -> bool:
        return seen is not None and now - seen.grew_at < window

    def _other_copy_writes(self, job: RecordingJob, session_jobs: list[RecordingJob], now: float) -> bool:
        return any(
            self._writes(self._seen.get(j.job_id), now, self.config.not_writing_after)
            for j in session_jobs
            if j.job_id != job.job_id
        )

    async def _fail_over(self, job: RecordingJob, session: Session, cause: str, error: dict[str, Any] | None) -> None:
        failure = {"cause": cause, "worker_id": job.worker_id, "at": time.time(), "error": error}
        try:
            new = await self._store.replace_recording_job(job.job_id, failure)
        except (InvalidStateError, NotFoundError):
            return
        FAILOVERS.labels(cause).inc()
        logger.warning(
            "session=%s slot=%s job=%s worker=%s failed (%s): replaced by job=%s",
            *(session.session_id, job.slot, job.job_id, job.worker_id, cause, new.job_id),
        )
        self._spawn(self._stop_worker_job(job, f"replaced: {cause}"), f"recording:stop:{job.session_id}:{job.job_id}")
        if error is not None:
            kind = "recorder_storage_full" if cause == "storage_full" else "recorder_storage_error"
            with contextlib.suppress(Exception):
                await self._store.raise_exception(
                    f"{kind}:{job.worker_id}",
                    kind,
                    "high",
                    subject_refs={"worker_id": job.worker_id, "session_id": session.session_id},
                    details={
                        "cause": error.get("cause") or cause,
                        "message": error.get("message"),
                        "path": error.get("path"),
                        "job_id": job.job_id,
                        "replaced_by": new.job_id,
                    },
                )
        await self._assign(new, session)

    async def _stop_worker_job(self, job: RecordingJob, reason: str, *, revoke_first: bool = True) -> None:
        """Stop a copy on its worker and keep what the worker answered (totals, ``uploads_pending``, which holds the
        assembly). A replaced, handed-over or dropped copy's lease is revoked first, so a worker that is alive but
        stuck stops it by itself; at the end of the class the lease goes last, after the worker closed the copy."""
        if revoke_first:
            with contextlib.suppress(BusError):
                await self._bus.kv_delete(recording_lease_key(job.job_id))
        result: dict[str, Any] | None = None
        if job.worker_id and self._registry.get(job.worker_id) is not None:
            try:
                result = await self._bus.request(
                    recorder_rpc(job.worker_id),
                    {"op": "stop", "job_id": job.job_id, "reason": reason},
                    timeout=self.config.stop_timeout,
                )
            except BusError as exc:
                logger.warning("job=%s stop (%s) failed: %s", job.job_id, reason, exc)
        if result is not None:
            with contextlib.suppress(InvalidStateError, NotFoundError):
                await self._store.update_recording_job(job.job_id, progress=_summary(result))
        if not revoke_first:
            with contextlib.suppress(BusError):
                await self._bus.kv_delete(recording_lease_key(job.job_id))

    async def _hand_over(self, job: RecordingJob) -> None:
        """The job's worker drains: a replacement first; the old copy stops once the new one writes."""
        failure = {"cause": "drained", "worker_id": job.worker_id, "at": time.time(), "error": None}
        try:
            new = await self._store.replace_recording_job(job.job_id, failure)
        except (InvalidStateError, NotFoundError):
            return
        FAILOVERS.labels("drained").inc()
        self._handovers[new.job_id] = job
        logger.info("job=%s on draining worker=%s: replacement job=%s", job.job_id, job.worker_id, new.job_id)

    async def _complete_handover(self, job: RecordingJob, now: float) -> None:
        old = self._handovers.get(job.job_id)
        seen = self._seen.get(job.job_id)
        if old is None or seen is None or seen.bytes == 0:
            return
        since = self._assigned_at.get(job.job_id, now)
        if now - since < self.config.handover_s:
            return
        del self._handovers[job.job_id]
        self._spawn(self._stop_worker_job(old, "handed over"), f"recording:handover:{old.session_id}:{old.job_id}")

    async def _track_both_down(self, session: Session, healthy: int) -> None:
        sid = session.session_id
        if healthy:
            self._ever_healthy.add(sid)
        elif sid not in self._ever_healthy:
            first = self._first_seen.setdefault(sid, time.monotonic())
            if time.monotonic() - max(first, self._lead_since) > 2 * self.config.start_grace:
                with contextlib.suppress(Exception):
                    await self._store.raise_exception(
                        f"recording_not_started:{sid}",
                        "recording_not_started",
                        "high",
                        subject_refs={"session_id": sid},
                        details={"workers": [n.node_id for n in self._registry.nodes("recorder") if n.serving]},
                    )
            return
        if healthy == 0 and sid not in self._both_down:
            if time.monotonic() - self._lead_since < self.config.start_grace:
                return  # a new leader has not heard from the workers yet
            # the last moment a copy was seen writing: a replacement that has reported but not written yet (or a
            # copy that reported without growing) does not move the gap's start
            wrote = [s.wrote_wall for s in self._seen.values() if s.session_id == sid and s.wrote_wall is not None]
            started = max(wrote) if wrote else time.time()
            self._both_down[sid] = started
            logger.error("session=%s: no recording copy is healthy since %.3f", sid, started)
            await self._gap_exception(sid, started, None)
        elif healthy > 0 and sid in self._both_down:
            started = self._both_down.pop(sid)
            end = time.time()
            logger.warning("session=%s: a recording copy is back after %.1f s", sid, end - started)
            await self._gap_exception(sid, started, end)

    async def _gap_exception(self, session_id: str, start: float, end: float | None) -> None:
        """The live ``recording_gap`` exception: opened when no copy covers the class, completed when one is back."""
        with contextlib.suppress(Exception):
            await self._store.raise_exception(
                f"recording_gap:{session_id}:{int(start)}",
                "recording_gap",
                "high",
                subject_refs={"session_id": session_id},
                details={"gap_start": round(start, 3), "gap_end": None if end is None else round(end, 3)},
            )

    # ------------------------------------------------------------------------------------------ end of class
    async def _finish_job(self, job: RecordingJob, session: Session) -> None:
        """The class is over: stop the copy (after its room closed, so it records to the end)."""
        if job.status is RecordingJobStatus.PENDING:
            with contextlib.suppress(InvalidStateError, NotFoundError):
                await self._store.update_recording_job(
                    job.job_id,
                    if_status=[RecordingJobStatus.PENDING],
                    status=RecordingJobStatus.FAILED,
                    failure={"cause": "class_ended_before_start"},
                    ended_at=datetime.now(UTC),
                )
            return
        if await self._bus.kv_get(room_key(session.session_id)) is not None:
            ended = session.end + timedelta(seconds=self.config.end_grace_s)
            if session.status is SessionStatus.ENDED and datetime.now(UTC) < ended:
                return  # the room is still open (it closes right after the session ends)
        try:
            job = await self._store.update_recording_job(
                job.job_id, if_status=RUNNING, status=RecordingJobStatus.DONE, ended_at=datetime.now(UTC)
            )
        except (InvalidStateError, NotFoundError):
            return
        # named after the session: its recording is not assembled before every copy answered its stop (_tasks_for)
        stop = self._stop_worker_job(job, "class ended", revoke_first=False)
        self._spawn(stop, f"recording:end:{job.session_id}:{job.job_id}")

    async def _finalize_due(self) -> None:
        for recording in await self._store.recordings_in_status("recording"):
            if recording.session_id in self._finalizing:
                continue
            try:
                session = await self._store.get_session(recording.session_id)
            except NotFoundError:
                continue
            if session.status not in OVER:
                continue
            jobs = await self._store.recording_jobs(session.session_id)
            if any(j.status in (RecordingJobStatus.PENDING, *RUNNING) for j in jobs):
                continue
            if any([await self._uploading(j) for j in jobs]):
                continue
            if self._tasks_for(session.session_id):
                continue
            self._finalizing.add(session.session_id)
            self._spawn(self.finalize(session.session_id), f"recording:finalize:{session.session_id}")
        # a leader that died while assembling leaves "assembling": the new leader builds it again (idempotent)
        for recording in await self._store.recordings_in_status("assembling"):
            if recording.session_id not in self._finalizing and time.monotonic() - self._lead_since > 5.0:
                self._finalizing.add(recording.session_id)
                name = f"recording:finalize:{recording.session_id}"
                self._spawn(self.finalize(recording.session_id, resume=True), name)

    async def _uploading(self, job: RecordingJob) -> bool:
        """A copy stopped with segments still waiting in its worker's spool (S3 unreachable at the end of the class):
        the assembly waits until the worker says they are stored (``recording_uploaded_key``) while it lives, at
        most ``upload_wait_s`` after the job ended. A recording assembled without them is built again when they
        arrive (``_late_segments``)."""
        if not (job.progress or {}).get("uploads_pending") or job.ended_at is None or job.worker_id is None:
            return False
        if self._registry.get(job.worker_id) is None:
            return False
        if datetime.now(UTC) - job.ended_at >= timedelta(seconds=self.config.upload_wait_s):
            return False
        return await self._bus.kv_get(recording_uploaded_key(job.session_id, job.copy_id)) is None

    async def _late_segments(self, session_id: str) -> None:
        """Copies of ``session_id`` that stopped with segments in a spool and whose worker has since stored them: the
        jobs no longer hold the assembly, and a recording assembled without them is built again (now if it is
        ``failed``; after the build if it is being assembled). On ``uploaded`` and from the sweep of failed ones."""
        arrived = False
        for job in await self._store.recording_jobs(session_id):
            if not (job.progress or {}).get("uploads_pending"):
                continue
            if await self._bus.kv_get(recording_uploaded_key(session_id, job.copy_id)) is None:
                continue
            with contextlib.suppress(InvalidStateError, NotFoundError):
                await self._store.update_recording_job(
                    job.job_id, progress={**(job.progress or {}), "uploads_pending": 0}
                )
            arrived = True
        if not arrived:
            return
        if session_id in self._finalizing:  # checked and acted on without a wait in between
            self._late.add(session_id)  # the build running now may have missed them: finalize() reopens it
            return
        recording = await self._store.recording_of(session_id)
        if recording is not None and recording.status == "failed":
            await self._rebuild(session_id)

    async def _sweep_late(self) -> None:
        """An ``uploaded`` no leader heard (sent during a leader change) must not leave a recording failed: check the
        recently failed ones every ``late_sweep_s``."""
        if time.monotonic() - self._late_swept < self.config.late_sweep_s:
            return
        self._late_swept = time.monotonic()
        since = datetime.now(UTC) - timedelta(seconds=self.config.late_window_s)
        for recording in await self._store.recordings_in_status("failed", 1000, updated_since=since):
            if recording.session_id not in self._finalizing:
                await self._late_segments(recording.session_id)

    async def _rebuild(self, session_id: str) -> None:
        """Assemble a failed recording again, with the segments that arrived since (the next round picks it up)."""
        with contextlib.suppress(InvalidStateError, NotFoundError):
            await self._store.upsert_recording(session_id, status="recording", if_status="failed")
            REBUILT.inc()
            logger.info("session=%s late segments arrived: building the recording again", session_id)

    def _tasks_for(self, session_id: str) -> bool:
        return any(not t.done() and session_id in t.get_name() for t in self._tasks)

    async def finalize(self, session_id: str, *, resume: bool = False) -> None:
        try:
            try:
                recording = await self._store.upsert_recording(
                    session_id, status="assembling", if_status="assembling" if resume else "recording"
                )
            except InvalidStateError:
                return
            result = await self._build(session_id, recording.media_start, recording.media_end)
            status = "ready" if result.ok else "failed"
            details = {**result.details, "problems": list(result.problems)}
            files = [f"{session_id}/{Path(result.path).name}"] if result.path else []
            await self._store.upsert_recording(
                session_id,
                status=status,
                coverage=result.coverage,
                gaps=result.gaps,
                files=files,
                duration=result.duration,
                size_bytes=result.size_bytes,
                details=details,
            )
            FINISHED.labels(status).inc()
            COVERAGE.observe(result.coverage)
            logger.info(
                "session=%s recording %s coverage=%.4f gaps=%s duration=%s",
                *(session_id, status, result.coverage, list(result.gaps), result.duration),
            )
            if not result.ok:
                with contextlib.suppress(Exception):
                    await self._store.raise_exception(
                        f"recording_incomplete:{session_id}",
                        "recording_incomplete",
                        "high",
                        subject_refs={"session_id": session_id},
                        details={
                            "coverage": result.coverage,
                            "gaps": [list(g) for g in result.gaps],
                            "problems": list(result.problems),
                        },
                    )
            else:  # whole now: an earlier build missing late-uploaded segments is no longer an exception
                await self._store.resolve_exception_key(f"recording_incomplete:{session_id}")
            self._on_events()
            if not result.ok and session_id in self._late:
                await self._rebuild(session_id)
        except Exception:
            logger.exception("session=%s: building the recording failed", session_id)
        finally:
            self._late.discard(session_id)
            self._finalizing.discard(session_id)
            for memo in (self._sessions, self._first_seen, self._both_down):
                memo.pop(session_id, None)
            self._ever_healthy.discard(session_id)

    async def _build(self, session_id: str, presence_start: float | None, presence_end: float | None) -> FinalRecording:
        """``recorder.finalize`` on the session's segments: in place in a shared directory; from S3, fetched into a
        scratch directory first, and the final file uploaded next to them."""
        from recorder.finalize import FINAL_NAME, finalize  # PyAV is loaded when the first recording is built

        storage = self.config.storage
        build = functools.partial(finalize, presence_start=presence_start, presence_end=presence_end)
        if isinstance(storage, LocalStorage):
            return await asyncio.to_thread(build, storage.root / session_id)
        with tempfile.TemporaryDirectory(prefix="classmesh-assemble-") as scratch:  # under $TMPDIR
            local = Path(scratch) / session_id
            fetched = await download(storage, f"{session_id}/", local, skip=lambda key: key.endswith(FINAL_NAME))
            logger.info("session=%s fetched %d bytes of segments for assembly", session_id, fetched)
            result = await asyncio.to_thread(build, local)
            if result.path is not None:
                await storage.put(f"{session_id}/{FINAL_NAME}", Path(result.path))
            return result


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result.get(k) for k in ("bytes", "segments", "gaps", "parts", "error", "uploads_pending")}
