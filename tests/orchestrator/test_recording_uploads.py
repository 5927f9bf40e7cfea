"""The coordinator's answer to a worker whose uploads to S3 fail: an operational exception once the failure has
lasted ``upload_alert_after``, raised at most once a minute per worker, and no failover (the copy is safe in the
worker's spool); and a recording assembled without a copy's late segments is built again once the worker says
they are stored, also when no leader heard it say so. (The whole path, with real workers and S3, is
tests/e2e/test_recording.py::test_segments_uploaded_after_the_class_are_not_lost.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import REGISTRY

from core.bus import LocalBus
from core.messages import recording_uploaded_key
from orchestrator.recording import FAILOVERS, RecordingConfig, RecordingCoordinator
from orchestrator.registry import NodeRegistry
from orchestrator.store import Store
from orchestrator.store.models import OperationalException, RecordingJobStatus
from recorder.storage import LocalStorage
from tests.e2e.test_recording import book_recorded


async def eventually_async(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def report(since: float, pending: int = 3) -> dict[str, object]:
    return {
        "job_id": "job_1",
        "session_id": "ses_1",
        "copy_id": "a1",
        "worker_id": "rec-1",
        "at": time.time(),
        "bytes": 1000,
        "uploads_pending": pending,
        "upload_error": {"code": "storage_error", "cause": "ClientConnectorError", "message": "no S3", "since": since},
    }


async def test_failing_uploads_raise_one_exception_and_replace_nothing(store: Store, tmp_path: Path) -> None:
    bus = LocalBus()
    coordinator = RecordingCoordinator(
        store, bus, NodeRegistry(bus), RecordingConfig(storage=LocalStorage(tmp_path), upload_alert_after=10.0)
    )
    failovers = sum(s.value for m in FAILOVERS.collect() for s in m.samples if s.name.endswith("_total"))

    coordinator.observe(report(since=time.time() - 2, pending=1))  # failing for 2 s: not yet
    coordinator.observe({**report(since=time.time()), "upload_error": None})  # a report without a failure
    coordinator.observe(report(since=time.time() - 12))  # 12 s: raised
    coordinator.observe(report(since=time.time() - 13, pending=4))  # within the minute: not raised again

    async def raised() -> list[OperationalException]:
        return [e for e in (await store.list_exceptions(limit=10)).items if e.kind == "recording_upload_failing"]

    found: list[OperationalException] = []

    async def check() -> bool:
        found[:] = await raised()
        return bool(found)

    await eventually_async(check)
    await asyncio.sleep(0.3)  # a second raise, if any, lands meanwhile
    (exc,) = await raised()
    assert exc.occurrences == 1
    assert exc.subject_refs == {"worker_id": "rec-1", "session_id": "ses_1"}
    assert exc.details["cause"] == "ClientConnectorError" and exc.details["uploads_pending"] == 3
    assert sum(s.value for m in FAILOVERS.collect() for s in m.samples if s.name.endswith("_total")) == failovers
    await bus.close()


def rebuilds() -> float:
    return REGISTRY.get_sample_value("classmesh_orchestrator_recordings_rebuilt_total") or 0.0


async def test_late_segments_rebuild_a_failed_recording_without_the_uploaded_message(
    store: Store, tmp_path: Path
) -> None:
    bus = LocalBus()
    coordinator = RecordingCoordinator(
        store, bus, NodeRegistry(bus), RecordingConfig(storage=LocalStorage(tmp_path), late_sweep_s=0.0)
    )
    session_id = await book_recorded(store, "late")
    jobs = await store.ensure_recording_jobs(session_id)
    for job in jobs:  # both copies ended with segments still in their spools, and the recording was built without
        await store.update_recording_job(
            job.job_id,
            status=RecordingJobStatus.DONE,
            ended_at=datetime.now(UTC),
            progress={"bytes": 1000, "uploads_pending": 2},
        )
    await store.upsert_recording(session_id, status="failed", gaps=[(1.0, 2.0)])
    rebuilt = rebuilds()

    await coordinator._sweep_late()  # nothing uploaded yet: stays failed
    assert (recording := await store.recording_of(session_id)) is not None and recording.status == "failed"

    # one worker stored its copy's segments; its "uploaded" message reached no leader, only its key remains
    await bus.kv_set(recording_uploaded_key(session_id, jobs[0].copy_id), "rec-1")
    await coordinator._sweep_late()
    assert (recording := await store.recording_of(session_id)) is not None and recording.status == "recording"
    assert rebuilds() == rebuilt + 1
    pending = {j.copy_id: (j.progress or {}).get("uploads_pending") for j in await store.recording_jobs(session_id)}
    assert pending == {jobs[0].copy_id: 0, jobs[1].copy_id: 2}

    # built again and failed again: the cleared copy does not trigger another rebuild
    await store.upsert_recording(session_id, status="failed")
    await coordinator._sweep_late()
    assert (recording := await store.recording_of(session_id)) is not None and recording.status == "failed"
    assert rebuilds() == rebuilt + 1
    await bus.close()
