"""Redundant recording of a live class, with real processes: orchestrator, signaling, a media node and three
recorder workers on one redis-server; two aiortc participants publish pre-encoded VP8 + Opus.

- one recorder SIGKILLed half-way: replaced within 5 s, the final recording covers 100 % and decodes end to end
  with audio and video in sync;
- both recorders SIGKILLed: an exception carries the exact gap and the final recording reports it;
- a recorder on a full disk: detected, replaced, and the exception names the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from aiortc.contrib.media import MediaPlayer

from classmesh.cli import default_database_url
from classmesh.client import ClassroomClient
from orchestrator.api.keys import create_api_key
from orchestrator.errors import AlreadyExistsError
from orchestrator.store import Store
from orchestrator.store.models import (
    BookingDraft,
    Instructor,
    Occurrence,
    OperationalException,
    RecordingJob,
    RecordingJobStatus,
    Student,
    Subject,
    WeeklyWindow,
)
from tests.gate import TcpGate
from tests.multiproc import Fleet, http_json
from tests.seaweed import BUCKET, SeaweedFS, s3_env

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(240)]

WORKERS = ("rec-1", "rec-2")  # a test that needs a spare worker starts "rec-3" itself
FINAL = ("ready", "failed")


async def book_recorded(store: Store, tag: str, *, start_in: timedelta = timedelta(0)) -> str:
    """A recorded session of instructor ``<tag>-ins`` and students ``<tag>-s1``, ``<tag>-s2``, starting within the
    provisioning lead time (unless ``start_in`` is larger); returns its id (the room)."""
    with contextlib.suppress(AlreadyExistsError):
        await store.create_subject(Subject("math", "Maths"))
    await store.create_instructor(
        Instructor(
            f"{tag}-ins",
            "Ada",
            "ada@example.org",
            "UTC",
            {"math": 5},  # type: ignore[dict-item]
            tuple(WeeklyWindow(d, "00:00", "24:00") for d in range(7)),
        )
    )
    students = (f"{tag}-s1", f"{tag}-s2")
    for sid in students:
        await store.create_student(Student(sid, sid, "UTC", country="DE", levels={"math": 1}))  # type: ignore[dict-item]
    now = datetime.now(UTC) + start_in
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5)
    draft = BookingDraft(
        subject_id="math",  # type: ignore[arg-type]
        student_ids=students,  # type: ignore[arg-type]
        instructor_id=f"{tag}-ins",  # type: ignore[arg-type]
        start=start,
        duration_minutes=60,
        recording=True,
    )
    occurrence = Occurrence(0, start, start + timedelta(hours=1), f"{tag}-ins")  # type: ignore[arg-type]
    _, sessions = await store.create_booking(draft, [occurrence])
    return str(sessions[0].session_id)


async def wait_recording(
    api: str, key: str, session_id: str, timeout: float = 90.0, *, end: bool = True, until: tuple[str, ...] = FINAL
) -> dict[str, Any]:
    """End the session through the API (unless ``end`` is False) and wait for its recording to reach ``until``."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        if end:
            async with http.post(f"{api}/sessions/{session_id}/end") as resp:
                assert resp.status == 200, await resp.text()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with http.get(f"{api}/recordings", params={"session_id": session_id}) as resp:
                items = (await resp.json())["items"]
            if items and items[0]["status"] in until:
                return items[0]  # type: ignore[no-any-return]
            await asyncio.sleep(0.5)
    raise AssertionError(f"the recording of {session_id} was not built within {timeout}s")


@dataclass
class RecordedClass:
    fleet: Fleet
    store: Store
    api: str
    key: str
    gate: TcpGate | None = None  # between the recorder workers and S3 ("s3-gated")

    async def book(self, *, start_in: timedelta = timedelta(0)) -> str:
        return await book_recorded(self.store, "c", start_in=start_in)

    async def jobs(self, session_id: str) -> list[RecordingJob]:
        return await self.store.recording_jobs(session_id)

    async def wait_jobs(self, session_id: str, predicate: Any, timeout: float = 30.0) -> list[RecordingJob]:
        deadline = time.monotonic() + timeout
        jobs: list[RecordingJob] = []
        while time.monotonic() < deadline:
            jobs = await self.jobs(session_id)
            if predicate(jobs):
                return jobs
            await asyncio.sleep(0.1)
        raise AssertionError(f"jobs never matched: {[(j.copy_id, j.status, j.worker_id, j.failure) for j in jobs]}")

    async def call(self, method: str, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.key}"}) as http:
            async with http.request(method, f"{self.api}{path}") as resp:
                return resp.status, await resp.json()

    async def end_and_wait(self, session_id: str) -> dict[str, Any]:
        return await wait_recording(self.api, self.key, session_id)

    async def exceptions(self, kind: str) -> list[OperationalException]:
        return [e for e in (await self.store.list_exceptions(limit=200)).items if e.kind == kind]

    def add_worker(self, worker_id: str) -> None:
        self.fleet.start_recorder(worker_id).wait_ready()


@pytest.fixture
async def recorded(request: pytest.FixtureRequest, tmp_path: Path, redis_server: Any) -> AsyncIterator[RecordedClass]:
    """The fleet; a test parametrized with ``recorded`` = "s3" records into a real S3 server (SeaweedFS), with
    "s3-gated" the recorder workers reach it through a ``TcpGate`` the test can close."""
    param = getattr(request, "param", "local")
    gate: TcpGate | None = None
    if param in ("s3", "s3-gated"):
        server: SeaweedFS = request.getfixturevalue("seaweedfs")
        prefix = f"e2e-{uuid.uuid4().hex[:8]}"
        storage = f"s3://{BUCKET}/{prefix}?endpoint={server.endpoint}"
        workers = None
        if param == "s3-gated":
            gate = await TcpGate("127.0.0.1", server.port).start()
            workers = f"s3://{BUCKET}/{prefix}?endpoint=http://127.0.0.1:{gate.port}"
        fleet = Fleet(
            tmp_path,
            redis_server.url,
            {"eu-central": ["eu-1"]},
            storage=storage,
            recorder_storage=workers,
            env=s3_env(),
        )
    else:
        fleet = Fleet(tmp_path, redis_server.url, {"eu-central": ["eu-1"]})
    store: Store | None = None
    try:
        fleet.start_all()
        for worker in WORKERS:
            fleet.start_recorder(worker)
        for worker in WORKERS:
            fleet.procs[worker].wait_ready()
        await fleet.wait_nodes(1)
        store = await Store.open(default_database_url(tmp_path / "data"))
        _, key = await create_api_key(store, "test", ["admin"])
        yield RecordedClass(fleet, store, f"{fleet.procs['orchestrator'].url}/v1", key, gate)
    finally:
        if store is not None:
            await store.close()
        codes = await asyncio.to_thread(fleet.stop_all)  # a gate relays on this loop while the workers exit
        print("\nexit codes:", codes)
        if gate is not None:
            await gate.stop()


class Participants:
    """Two aiortc participants publishing the class media; ``close()`` leaves and stops the players."""

    def __init__(self) -> None:
        self.clients: list[ClassroomClient] = []
        self.players: list[MediaPlayer] = []

    async def join(self, fleet: Fleet, session_id: str, media: Path) -> Participants:
        for name in ("Ana", "Ben"):
            client = ClassroomClient(fleet.signaling_url(), fleet.token(session_id, name), room=session_id)
            self.clients.append(client)
            await client.connect()
            player = MediaPlayer(str(media), decode=False)
            self.players.append(player)
            assert player.video is not None and player.audio is not None
            await client.publish([("camera", player.video), ("microphone", player.audio)])
        return self

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for player in self.players:
            for track in (player.video, player.audio):
                if track is not None:
                    track.stop()


async def participants(fleet: Fleet, session_id: str, media: Path) -> Participants:
    return await Participants().join(fleet, session_id, media)


def recording_two(jobs: list[RecordingJob]) -> bool:
    live = [j for j in jobs if j.status is RecordingJobStatus.RECORDING]
    return len(live) == 2 and len({j.worker_id for j in live}) == 2


def decode_all(path: Path) -> dict[str, int]:
    frames: dict[str, int] = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            with av.open(str(path)) as c:
                n = sum(1 for _ in c.decode(c.streams[stream.index]))
            frames[f"{stream.index}:{stream.type}"] = n
    return frames


@pytest.mark.parametrize("recorded", ["local", "s3"], indirect=True)
async def test_a_recorder_killed_mid_class_loses_no_second(
    recorded: RecordedClass, class_media: Path, tmp_path: Path
) -> None:
    recorded.add_worker("rec-3")
    session_id = await recorded.book()
    clients = await participants(recorded.fleet, session_id, class_media)
    try:
        jobs = await recorded.wait_jobs(session_id, recording_two)
        await asyncio.sleep(8)
        victim = next(j for j in jobs if j.slot == "a")
        assert victim.worker_id is not None
        recorded.fleet.procs[victim.worker_id].kill()
        killed = time.monotonic()
        jobs = await recorded.wait_jobs(
            session_id,
            lambda js: any(j.job_id == victim.job_id and j.status is RecordingJobStatus.REPLACED for j in js),
        )
        detected = time.monotonic() - killed
        replacement = await recorded.wait_jobs(session_id, recording_two)
        newcomer = next(j for j in replacement if j.slot == "a" and j.attempt == 2)
        assert newcomer.worker_id not in (victim.worker_id, next(j.worker_id for j in jobs if j.slot == "b"))
        await asyncio.sleep(8)
    finally:
        await clients.close()
    recording = await recorded.end_and_wait(session_id)
    verification = recording["details"]["verification"]
    print(
        f"\nrecorder failover: detected in {detected:.2f}s, coverage {recording['coverage']}, "
        f"gaps {recording['gaps']}, duration {recording['duration']}s, "
        f"A/V offset start {verification['av_start_offset_ms']} ms "
        f"end {verification['av_end_offset_ms']} ms, copies {recording['details']['copies']}"
    )
    assert detected < 5.0
    assert recording["status"] == "ready", recording
    assert recording["coverage"] == 1.0 and recording["gaps"] == []
    assert recording["failovers"] == 1
    assert abs(verification["av_start_offset_ms"]) <= 100 and abs(verification["av_end_offset_ms"]) <= 100
    # the file itself, through the API (whole and with a range request) from wherever it is stored, decoded here
    path = tmp_path / "downloaded.mkv"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {recorded.key}"}) as http:
        url = f"{recorded.api}/recordings/{recording['recording_id']}/download"
        async with http.get(url) as resp:
            assert resp.status == 200
            path.write_bytes(await resp.read())
        assert path.stat().st_size == recording["size_bytes"]
        async with http.get(url, headers={"Range": "bytes=100-199"}) as resp:
            assert resp.status == 206 and resp.headers["Content-Range"] == f"bytes 100-199/{path.stat().st_size}"
            assert await resp.read() == path.read_bytes()[100:200]
    if recorded.fleet.storage:  # the live workers' spools were emptied into S3; nothing was written beside them
        assert not recorded.fleet.recordings.exists()
        left = [p for p in (tmp_path / "spool").rglob("*") if p.is_file() and victim.worker_id not in p.parts]
        assert not left, left
        for name, proc in recorded.fleet.procs.items():
            if name.startswith("rec-") and name != victim.worker_id:
                status, health = http_json(f"{proc.url}/healthz")
                assert status == 200 and health["upload_backlog"] == 0 and health["upload_error"] is None, health
    frames = decode_all(path)
    assert sorted(k.split(":")[1] for k in frames) == ["audio", "audio", "video", "video"]
    assert all(n > 0 for n in frames.values()), frames


@pytest.mark.parametrize("recorded", ["s3-gated"], indirect=True)
async def test_segments_uploaded_after_the_class_are_not_lost(recorded: RecordedClass, class_media: Path) -> None:
    """S3 is unreachable from the workers for the end of the class: the assembly waits for their last segments
    while the workers live; assembled without them (both workers died) the recording is failed, and built again,
    whole, once restarted workers upload what their spools kept."""
    assert recorded.gate is not None
    session_id = await recorded.book()
    clients = await participants(recorded.fleet, session_id, class_media)
    try:
        await recorded.wait_jobs(session_id, recording_two)
        await asyncio.sleep(8)
        recorded.gate.close_gate()
        await asyncio.sleep(4)
    finally:
        await clients.close()
    api = (recorded.api, recorded.key, session_id)
    status, _ = await recorded.call("POST", f"/sessions/{session_id}/end")
    assert status == 200

    def stopped_with_uploads_pending(jobs: list[RecordingJob]) -> bool:
        done = [j for j in jobs if j.status is RecordingJobStatus.DONE]
        return len(done) == 2 and all((j.progress or {}).get("uploads_pending") for j in done)

    await recorded.wait_jobs(session_id, stopped_with_uploads_pending, timeout=45)
    await asyncio.sleep(3)
    status, listing = await recorded.call("GET", f"/recordings?session_id={session_id}")
    assert listing["items"][0]["status"] == "recording", listing  # not assembled while the workers hold segments

    for worker in WORKERS:  # the segments stay in the dead workers' spools
        recorded.fleet.procs[worker].kill()
    failed = await wait_recording(*api, timeout=60, end=False)
    assert failed["status"] == "failed" and failed["gaps"], failed
    (incomplete,) = await recorded.exceptions("recording_incomplete")
    assert incomplete.status.value == "open"

    recorded.gate.open_gate()
    for worker in WORKERS:  # restarted on the same spools: they upload the leftovers and say so
        await asyncio.to_thread(recorded.add_worker, worker)  # the gate relays on this loop meanwhile
    ready = await wait_recording(*api, timeout=90, end=False, until=("ready",))
    print(f"\nlate segments: failed with gaps {failed['gaps']}, then ready with coverage {ready['coverage']}")
    assert ready["coverage"] == 1.0 and ready["gaps"] == [], ready
    (resolved,) = await recorded.exceptions("recording_incomplete")
    assert resolved.status.value == "resolved"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{recorded.fleet.procs['orchestrator'].url}/metrics") as resp:
            assert "classmesh_orchestrator_recordings_rebuilt_total 1.0" in await resp.text()


async def test_both_recorders_killed_report_the_exact_gap(recorded: RecordedClass, class_media: Path) -> None:
    session_id = await recorded.book()
    clients = await participants(recorded.fleet, session_id, class_media)
    try:
        await recorded.wait_jobs(session_id, recording_two)
        await asyncio.sleep(5)
        killed_at = time.time()
        for worker in WORKERS:  # the only two workers: whatever a failover did before, no copy survives
            recorded.fleet.procs[worker].kill()
        # a new worker takes one slot over; the other needs a worker that does not hold the first
        recorded.add_worker("rec-3")
        await recorded.wait_jobs(
            session_id, lambda js: any(j.attempt == 2 and j.status is RecordingJobStatus.RECORDING for j in js)
        )
        await asyncio.sleep(6)
    finally:
        await clients.close()
    recording = await recorded.end_and_wait(session_id)
    print(f"\nboth recorders killed at {killed_at:.3f}: gaps {recording['gaps']}, coverage {recording['coverage']}")
    assert recording["status"] == "failed"
    # the kill's gap comes first; with one copy left, a loaded machine can add short holes of its own later
    start, end = recording["gaps"][0]
    assert sum(b - a for a, b in recording["gaps"][1:]) < 1.0, recording["gaps"]
    # the killed copies' unfinished segments are salvaged up to about a second before the kill
    assert killed_at - 1.5 < start < killed_at + 0.5, (start, killed_at)
    assert 1.0 < end - start < 15.0
    assert recording["coverage"] < 1.0
    live = await recorded.exceptions("recording_gap")
    assert live and live[0].details["gap_start"] <= start + 1.0
    final = await recorded.exceptions("recording_incomplete")
    assert final and final[0].details["gaps"] == recording["gaps"]  # the exact gaps, as in the recording


@pytest.fixture
def tiny_tmpfs() -> Any:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount to create a small tmpfs")
    mounted: list[Path] = []

    def mount(path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(path)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
        mounted.append(path)

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_a_recorder_on_a_full_disk_is_replaced_with_the_cause(
    recorded: RecordedClass, class_media: Path, tiny_tmpfs: Any
) -> None:
    recorded.add_worker("rec-3")
    session_id = await recorded.book(start_in=timedelta(hours=2))  # not provisioned until someone joins
    tiny_tmpfs(recorded.fleet.recordings / session_id / "a1")  # copy a, attempt 1 writes here: 128 KiB
    clients = await participants(recorded.fleet, session_id, class_media)  # the early join provisions it
    try:
        jobs = await recorded.wait_jobs(
            session_id, lambda js: any(j.copy_id == "a1" and j.status is RecordingJobStatus.REPLACED for j in js)
        )
        failed = next(j for j in jobs if j.copy_id == "a1")
        assert failed.failure is not None and failed.failure["cause"] == "storage_full", failed.failure
        await recorded.wait_jobs(
            session_id, lambda js: any(j.copy_id == "a2" and j.status is RecordingJobStatus.RECORDING for j in js)
        )
        await asyncio.sleep(4)
    finally:
        await clients.close()
    found = await recorded.exceptions("recorder_storage_full")
    assert found, "no exception for the full disk"
    assert found[0].details["cause"] == "ENOSPC" and found[0].subject_refs["worker_id"] == failed.worker_id
    recording = await recorded.end_and_wait(session_id)
    assert recording["status"] == "ready" and recording["coverage"] == 1.0, recording


async def test_a_draining_recorder_hands_its_copy_over(recorded: RecordedClass, class_media: Path) -> None:
    """SIGTERM on a recorder (a rolling upgrade of the recorders): its copy moves make-before-break and the
    worker exits 0 once its copy is handed over."""
    recorded.add_worker("rec-3")
    session_id = await recorded.book()
    clients = await participants(recorded.fleet, session_id, class_media)
    try:
        jobs = await recorded.wait_jobs(session_id, recording_two)
        await asyncio.sleep(4)
        leaving = next(j for j in jobs if j.slot == "a")
        assert leaving.worker_id is not None
        proc = recorded.fleet.procs[leaving.worker_id]
        proc.process.send_signal(signal.SIGTERM)
        await recorded.wait_jobs(
            session_id, lambda js: any(j.copy_id == "a2" and j.status is RecordingJobStatus.RECORDING for j in js)
        )
        code = await asyncio.to_thread(proc.process.wait, 15)
        assert code == 0, proc.log()[-2000:]
        await asyncio.sleep(3)
    finally:
        await clients.close()
    recording = await recorded.end_and_wait(session_id)
    jobs = await recorded.jobs(session_id)
    handed = next(j for j in jobs if j.copy_id == "a1")
    assert handed.failure is not None and handed.failure["cause"] == "drained"
    assert recording["status"] == "ready" and recording["coverage"] == 1.0, recording
