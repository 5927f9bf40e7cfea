"""The coordinator's answer to a worker whose uploads to S3 fail: an operational exception once the failure has
lasted ``upload_alert_after``, raised at most once a minute per worker, and no failover (the copy is safe in the
worker's spool)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from core.bus import LocalBus
from orchestrator.recording import FAILOVERS, RecordingConfig, RecordingCoordinator
from orchestrator.registry import NodeRegistry
from orchestrator.store import Store
from orchestrator.store.models import OperationalException
from recorder.storage import LocalStorage


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
