"""The store's recording section: recordings (one per recorded session) and their jobs (two copies, attempts).

A mixin of ``Store``: it only uses ``transaction()``/``read()`` and the tables. Every state change of a job is a
compare-and-set on its status, so two orchestrator replicas (or a leader that changed mid-way) never assign a job
twice or replace it twice; creating a session's jobs is idempotent through the unique (session, slot, attempt).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.errors import InvalidStateError, NotFoundError
from orchestrator.store import codec
from orchestrator.store import schema as t
from orchestrator.store.models import (
    ACTIVE_JOB_STATUSES,
    Page,
    Recording,
    RecordingId,
    RecordingJob,
    RecordingJobStatus,
    SessionId,
    new_id,
)
from orchestrator.store.outbox import emit_event

SLOTS = ("a", "b")
FINAL_STATUSES = ("ready", "failed")


def _now() -> datetime:
    return datetime.now(UTC)


class RecordingsStore:
    """Mixed into ``Store``."""

    if TYPE_CHECKING:  # provided by Store

        def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

        def read(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

    # ------------------------------------------------------------------ recordings

    async def upsert_recording(
        self,
        session_id: str,
        *,
        status: str,
        coverage: float | None = None,
        gaps: Sequence[tuple[float, float]] | None = None,
        files: Sequence[str] | None = None,
        duration: float | None = None,
        size_bytes: int | None = None,
        details: dict[str, Any] | None = None,
        if_status: str | None = None,
    ) -> Recording:
        """Create or update the recording of a session; reaching ``ready``/``failed`` emits recording.* once.

        ``if_status``: only if the recording is currently in that status (InvalidStateError otherwise)."""
        now = _now()
        async with self.transaction() as c:
            session = (await c.execute(sa.select(t.sessions).where(t.sessions.c.session_id == session_id))).first()
            if session is None:
                raise NotFoundError("session", session_id)
            r = (await c.execute(sa.select(t.recordings).where(t.recordings.c.session_id == session_id))).first()
            current = None if r is None else r.status
            if if_status is not None and current != if_status:
                raise InvalidStateError(f"recording of session {session_id} is {current}, not {if_status}")
            values: dict[str, Any] = {"status": status, "updated_at": now}
            for name, value in (
                ("coverage", coverage),
                ("gaps", None if gaps is None else [list(g) for g in gaps]),
                ("files", None if files is None else list(files)),
                ("duration", duration),
                ("size_bytes", size_bytes),
                ("details", details),
            ):
                if value is not None:
                    values[name] = value
            if r is None:
                values.setdefault("coverage", 0.0)
                values.setdefault("gaps", [])
                values.setdefault("files", [])
                await c.execute(
                    t.recordings.insert().values(
                        recording_id=new_id("rec"), session_id=session_id, created_at=now, **values
                    )
                )
            else:
                await c.execute(t.recordings.update().where(t.recordings.c.session_id == session_id).values(**values))
            recording = _recording(
                (await c.execute(sa.select(t.recordings).where(t.recordings.c.session_id == session_id))).one()
            )
            if status in FINAL_STATUSES and current != status:
                await emit_event(
                    c, f"recording.{status}", {"recording": codec.recording_to_dict(recording)}, session.booking_id
                )
        return recording

    async def recordings_of(self, session_ids: Sequence[str]) -> dict[str, Recording]:
        """The recordings of those sessions that have one."""
        if not session_ids:
            return {}
        async with self.read() as c:
            rows = await c.execute(sa.select(t.recordings).where(t.recordings.c.session_id.in_(list(session_ids))))
            return {r.session_id: _recording(r) for r in rows}

    async def recording_of(self, session_id: str) -> Recording | None:
        async with self.read() as c:
            r = (await c.execute(sa.select(t.recordings).where(t.recordings.c.session_id == session_id))).first()
        return None if r is None else _recording(r)

    async def get_recording(self, recording_id: str) -> Recording:
        async with self.read() as c:
            r = (await c.execute(sa.select(t.recordings).where(t.recordings.c.recording_id == recording_id))).first()
        if r is None:
            raise NotFoundError("recording", recording_id)
        return _recording(r)

    async def list_recordings(
        self, *, limit: int = 50, cursor: str | None = None, status: str | None = None, session_id: str | None = None
    ) -> Page[Recording]:
        from orchestrator.store.store import _page_by_time

        where: list[sa.ColumnElement[bool]] = []
        if status is not None:
            where.append(t.recordings.c.status == status)
        if session_id is not None:
            where.append(t.recordings.c.session_id == session_id)
        async with self.read() as c:
            rows, nxt = await _page_by_time(
                c, t.recordings, t.recordings.c.created_at, t.recordings.c.recording_id, where, limit, cursor
            )
        return Page(tuple(_recording(r) for r in rows), nxt)

    async def note_recording_media(self, session_id: str, at: float) -> None:
        """Widen the recording's media interval to include ``at`` (a publish/leave seen by presence).

        Media can start before the coordinator created the jobs: the recording row is then created here."""
        for _ in range(2):
            async with self.transaction() as c:
                rec = t.recordings
                r = (
                    await c.execute(
                        sa.select(rec.c.media_start, rec.c.media_end, rec.c.status).where(
                            rec.c.session_id == session_id
                        )
                    )
                ).first()
                if r is not None:
                    if r.status not in FINAL_STATUSES:
                        start = at if r.media_start is None else min(r.media_start, at)
                        end = at if r.media_end is None else max(r.media_end, at)
                        await c.execute(
                            rec.update().where(rec.c.session_id == session_id).values(media_start=start, media_end=end)
                        )
                    return
                recorded = (
                    await c.execute(sa.select(t.sessions.c.recording).where(t.sessions.c.session_id == session_id))
                ).scalar()
                if not recorded:
                    return
            now = _now()
            try:
                async with self.transaction() as c:
                    await c.execute(
                        t.recordings.insert().values(**_new_recording(session_id, now), media_start=at, media_end=at)
                    )
                return
            except IntegrityError:
                continue  # created meanwhile: widen it on the next pass

    # ------------------------------------------------------------------ jobs

    async def ensure_recording_jobs(self, session_id: str) -> list[RecordingJob]:
        """The session's recording row and its two first jobs, created once whoever asks (idempotent)."""
        now = _now()
        try:
            async with self.transaction() as c:
                jobs = t.recording_jobs
                have = (await c.execute(sa.select(jobs.c.job_id).where(jobs.c.session_id == session_id))).first()
                if have is None:
                    for slot in SLOTS:
                        await c.execute(
                            t.recording_jobs.insert().values(
                                job_id=new_id("rjob"),
                                session_id=session_id,
                                slot=slot,
                                attempt=1,
                                status=RecordingJobStatus.PENDING.value,
                                created_at=now,
                                updated_at=now,
                            )
                        )
                    rec = (
                        await c.execute(sa.select(t.recordings.c.status).where(t.recordings.c.session_id == session_id))
                    ).first()
                    if rec is None:
                        await c.execute(t.recordings.insert().values(**_new_recording(session_id, now)))
        except IntegrityError:
            pass  # another replica created them first
        return await self.recording_jobs(session_id)

    async def discard_recording(self, session_id: str) -> list[RecordingJob]:
        """A provisioned session moved back beyond the lead time: its jobs (and its recording, while nothing was
        built) go, so that provisioning it again starts afresh. Returns the jobs that were active."""
        async with self.transaction() as c:
            rows = (
                await c.execute(sa.select(t.recording_jobs).where(t.recording_jobs.c.session_id == session_id))
            ).all()
            await c.execute(t.recording_jobs.delete().where(t.recording_jobs.c.session_id == session_id))
            await c.execute(
                t.recordings.delete().where(
                    t.recordings.c.session_id == session_id, t.recordings.c.status == "recording"
                )
            )
        return [j for j in map(_job, rows) if j.status in ACTIVE_JOB_STATUSES]

    async def recording_jobs(self, session_id: str) -> list[RecordingJob]:
        async with self.read() as c:
            rows = (
                await c.execute(
                    sa.select(t.recording_jobs)
                    .where(t.recording_jobs.c.session_id == session_id)
                    .order_by(t.recording_jobs.c.slot, t.recording_jobs.c.attempt)
                )
            ).all()
        return [_job(r) for r in rows]

    async def active_recording_jobs(self) -> list[RecordingJob]:
        async with self.read() as c:
            rows = (
                await c.execute(
                    sa.select(t.recording_jobs)
                    .where(t.recording_jobs.c.status.in_([s.value for s in ACTIVE_JOB_STATUSES]))
                    .order_by(t.recording_jobs.c.created_at)
                )
            ).all()
        return [_job(r) for r in rows]

    async def recordings_in_status(
        self, status: str, limit: int = 100, *, updated_since: datetime | None = None
    ) -> list[Recording]:
        query = sa.select(t.recordings).where(t.recordings.c.status == status)
        if updated_since is not None:
            query = query.where(t.recordings.c.updated_at >= updated_since)
        async with self.read() as c:
            rows = (await c.execute(query.order_by(t.recordings.c.created_at).limit(limit))).all()
        return [_recording(r) for r in rows]

    async def update_recording_job(
        self, job_id: str, *, if_status: Sequence[RecordingJobStatus] | None = None, **values: Any
    ) -> RecordingJob:
        """Compare-and-set: InvalidStateError when the job is not in one of ``if_status``."""
        if isinstance(values.get("status"), RecordingJobStatus):
            values["status"] = values["status"].value
        async with self.transaction() as c:
            query = t.recording_jobs.update().where(t.recording_jobs.c.job_id == job_id)
            if if_status is not None:
                query = query.where(t.recording_jobs.c.status.in_([s.value for s in if_status]))
            result = await c.execute(query.values(updated_at=_now(), **values))
            row = (await c.execute(sa.select(t.recording_jobs).where(t.recording_jobs.c.job_id == job_id))).first()
            if row is None:
                raise NotFoundError("recording job", job_id)
            if result.rowcount == 0:
                raise InvalidStateError(f"recording job {job_id} is {row.status}")
        return _job(row)

    async def replace_recording_job(self, job_id: str, failure: dict[str, Any]) -> RecordingJob:
        """Mark an active job replaced and create the next attempt of its slot, in one transaction."""
        now = _now()
        async with self.transaction() as c:
            result = await c.execute(
                t.recording_jobs.update()
                .where(
                    t.recording_jobs.c.job_id == job_id,
                    t.recording_jobs.c.status.in_([s.value for s in ACTIVE_JOB_STATUSES]),
                )
                .values(status=RecordingJobStatus.REPLACED.value, failure=failure, ended_at=now, updated_at=now)
            )
            old = (await c.execute(sa.select(t.recording_jobs).where(t.recording_jobs.c.job_id == job_id))).first()
            if old is None:
                raise NotFoundError("recording job", job_id)
            if result.rowcount == 0:
                raise InvalidStateError(f"recording job {job_id} is {old.status}")
            new_job_id = new_id("rjob")
            await c.execute(
                t.recording_jobs.insert().values(
                    job_id=new_job_id,
                    session_id=old.session_id,
                    slot=old.slot,
                    attempt=old.attempt + 1,
                    status=RecordingJobStatus.PENDING.value,
                    created_at=now,
                    updated_at=now,
                )
            )
            await c.execute(
                t.recordings.update()
                .where(t.recordings.c.session_id == old.session_id)
                .values(failovers=t.recordings.c.failovers + 1, updated_at=now)
            )
            row = (await c.execute(sa.select(t.recording_jobs).where(t.recording_jobs.c.job_id == new_job_id))).one()
        return _job(row)


def _new_recording(session_id: str, now: datetime) -> dict[str, Any]:
    """A recording row as the class starts: recording, nothing covered yet."""
    return {
        "recording_id": new_id("rec"),
        "session_id": session_id,
        "status": "recording",
        "coverage": 0.0,
        "gaps": [],
        "files": [],
        "created_at": now,
        "updated_at": now,
    }


def _recording(r: sa.Row[Any]) -> Recording:
    return Recording(
        recording_id=RecordingId(r.recording_id),
        session_id=SessionId(r.session_id),
        status=r.status,
        coverage=float(r.coverage),
        gaps=tuple((float(a), float(b)) for a, b in r.gaps),
        files=tuple(r.files),
        created_at=r.created_at,
        updated_at=r.updated_at,
        media_start=r.media_start,
        media_end=r.media_end,
        duration=r.duration,
        size_bytes=r.size_bytes,
        failovers=int(r.failovers or 0),
        details=r.details,
    )


def _job(r: sa.Row[Any]) -> RecordingJob:
    return RecordingJob(
        job_id=r.job_id,
        session_id=SessionId(r.session_id),
        slot=r.slot,
        attempt=int(r.attempt),
        status=RecordingJobStatus(r.status),
        worker_id=r.worker_id,
        node_id=r.node_id,
        failure=r.failure,
        progress=r.progress,
        started_at=r.started_at,
        ended_at=r.ended_at,
        created_at=r.created_at,
        updated_at=r.updated_at,
    )
