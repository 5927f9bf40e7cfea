"""RecorderWorker: a process that runs recording jobs for the orchestrator.

The orchestrator's ``RecordingCoordinator`` assigns each job (one copy of one session's recording) to a worker
with ``{"op": "start", ...}`` on ``recorder_rpc(worker_id)``. The worker:

- takes the job's **lease**: the bus key ``recording_lease_key(job_id)`` set only-if-absent with a TTL that it renews
  every second. A worker that dies stops renewing and the lease lapses; the coordinator deleting the key revokes
  the job (the worker then stops it). Two workers can never both hold one job.
- joins the room as a hidden, subscribe-only participant (``Recorder``) on the node that hosts it, and **follows the
  room when it moves** (``moved`` on the room channel, after a drain or a node failure): a new part joins the new
  node, and the old part is closed a few seconds later (make-before-break). Each part writes its own segments,
  under ``<spool>/<session>/<copy_id>/p<k>/``; the assembler treats every part as one more copy. The spool is
  the storage itself when that is a (shared) directory; with S3 a ``SegmentShipper`` uploads every finished
  segment under the same key and the job's stop waits (``upload_flush_s``) for its last segments to be stored.
- publishes the job's progress on ``RECORDING_PROGRESS`` every second (bytes, segments, gaps, tracks, the
  storage error if writing failed), which is what the coordinator's live check watches.
- on ``{"op": "stop"}`` (the class ended, or the job was replaced) closes its parts, completing the open segments,
  and answers with what was written.

While draining (SIGTERM) it refuses new jobs; the coordinator sees the draining heartbeat, starts a replacement
copy elsewhere and stops this one once the replacement writes. The drain ends when no job is left (or at the
deadline, when the remaining jobs are closed with their segments complete).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.bus import Bus, BusError, Payload, Subscription
from core.heartbeat import Heartbeat
from core.ids import is_valid_id
from core.messages import (
    RECORDING_PROGRESS,
    NodeHeartbeat,
    recorder_rpc,
    recording_lease_key,
    recording_uploaded_key,
    room_channel,
)
from core.service import Service, ServiceState
from media.forwarding import configure_ice

from . import metrics
from .recorder import Recorder
from .recorder import RecorderConfig as CopyConfig
from .shipping import SegmentShipper
from .storage import Storage
from .writer import SegmentInfo

logger = logging.getLogger(__name__)

UPLOADED_KEY_TTL_MS = 24 * 3600 * 1000  # recording_uploaded_key: far longer than the coordinator's upload_wait_s


@dataclass(frozen=True, slots=True)
class RecorderConfig:
    worker_id: str
    spool: Path  # where segments are written; the storage itself unless ``upload`` is set
    public_url: str
    upload: Storage | None = None  # a storage that is not the spool (S3): finished segments are uploaded to it
    upload_flush_s: float = 10.0  # a stopped job waits this long for its last segments' upload
    region: str = "any"
    version: str = "dev"
    heartbeat_interval: float = 1.0
    lease_ms: int = 3000
    progress_interval: float = 1.0
    handover_s: float = 2.0  # a moved room: the old part keeps recording this long after the new part joined
    follow_delay_s: float = 1.5  # a moved room: let the browsers reconnect first (the old node keeps it 4 s)
    segment_seconds: float = 10.0
    ice_addresses: tuple[str, ...] = ()  # announced in ICE (empty: aioice's interface scan, never loopback)
    transport: str = "plain"  # how media reaches the copies: plain RTP, or "webrtc" (see recorder.recorder)
    rtp_address: str = "127.0.0.1"  # where nodes send plain RTP: this host's address on their network


@dataclass
class _Job:
    job_id: str
    session_id: str
    copy_id: str
    node_id: str
    parts: list[Recorder] = field(default_factory=list)
    retired: list[Recorder] = field(default_factory=list)  # parts closed after a move (their figures still count)
    next_part: int = 0
    room_sub: Subscription | None = None
    follower: asyncio.Task[None] | None = None
    stopping: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def recorders(self) -> list[Recorder]:
        return [*self.retired, *self.parts]


class RecorderWorker(Service):
    name = "recorder"

    def __init__(self, config: RecorderConfig, bus: Bus) -> None:
        super().__init__()
        self.config = config
        self._bus = bus
        self._heartbeat = Heartbeat(bus, self._heartbeat_message, interval=config.heartbeat_interval)
        self._jobs: dict[str, _Job] = {}
        self._serving: Subscription | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()  # set whenever a job ends (the drain waits on it)
        self._shipper = SegmentShipper(config.upload, config.spool) if config.upload is not None else None
        self._announcing: dict[str, asyncio.Task[None]] = {}  # copy prefix -> waits for its last uploads

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.config.spool.mkdir(parents=True, exist_ok=True)
        if self._shipper is not None:
            self._shipper.start()
            for key in self._shipper.waiting():  # a dead predecessor's segments: their jobs have ended
                session_id, copy_id = key.split("/")[:2]
                self._announce_uploaded(f"{session_id}/{copy_id}/", None)
        if self.config.ice_addresses:
            configure_ice(list(self.config.ice_addresses))
        self._serving = await self._bus.serve(recorder_rpc(self.config.worker_id), self._handle)
        self._ticker = asyncio.create_task(self._tick_loop(), name=f"recorder-ticker:{self.config.worker_id}")
        self._heartbeat.start(self.config.worker_id)

    async def drain(self, deadline: float) -> None:
        """Wait for the coordinator to move every job elsewhere (it stops ours once the replacement writes)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(
                asyncio.get_running_loop().time() + max(0.0, deadline - time.monotonic() - 1)
            ):
                while self._jobs:
                    self._idle.clear()
                    await self._idle.wait()
        if self._jobs:
            logger.warning(
                "worker=%s drain deadline: closing %d job(s) in place", self.config.worker_id, len(self._jobs)
            )

    async def close(self) -> None:
        """Within the service's close budget (10 s): jobs left after the drain stop without waiting for their
        uploads, and what is not uploaded stays in the spool for the next start (which ships and announces it)."""
        if self._serving is not None:
            await self._serving.close()
            self._serving = None
        await asyncio.gather(*(self._stop(job_id, "worker closing", flush_s=1.0) for job_id in list(self._jobs)))
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        for task in list(self._announcing.values()):
            task.cancel()
        await asyncio.gather(*self._announcing.values(), return_exceptions=True)
        if self._shipper is not None:
            await self._shipper.close(timeout=2.0)
        await self._heartbeat.close()

    def health(self) -> dict[str, Any]:
        usage = shutil.disk_usage(self.config.spool) if self.config.spool.exists() else None
        health: dict[str, Any] = {
            "worker_id": self.config.worker_id,
            "jobs": sorted(self._jobs),
            "storage_free_bytes": usage.free if usage else None,  # of the spool (the storage, when a directory)
        }
        if self._shipper is not None:
            failing = self._shipper.error
            health["upload_backlog"] = self._shipper.backlog
            health["upload_error"] = None if failing is None else failing.describe()
        return health

    def state_changed(self, state: ServiceState) -> None:
        self._heartbeat.wake()

    def _heartbeat_message(self) -> NodeHeartbeat:
        return NodeHeartbeat(
            node_id=self.config.worker_id,
            kind="recorder",
            region=self.config.region,
            version=self.config.version,
            state=self.state.value,
            url=self.config.public_url,
            rooms=len(self._jobs),
            room_ids=sorted({job.session_id for job in self._jobs.values()}),
            sent_at=time.time(),
        )

    # ------------------------------------------------------------------------------------------ RPC
    async def _handle(self, payload: Payload) -> Payload:
        op = payload.get("op")
        if op == "start":
            return await self._start(payload)
        if op == "stop":
            job_id = _ident(payload, "job_id")
            if job_id not in self._jobs:
                return {"job_id": job_id, "running": False}
            return await self._stop(job_id, str(payload.get("reason") or "stopped by the orchestrator"))
        if op == "state":
            jobs = {job_id: self._progress(job) for job_id, job in self._jobs.items()}
            return {"worker_id": self.config.worker_id, "jobs": jobs}
        raise BusError(f"unknown op {op!r}", code="unknown_op")

    async def _start(self, payload: Payload) -> Payload:
        job_id = _ident(payload, "job_id")
        session_id = _ident(payload, "session_id")
        copy_id = _ident(payload, "copy_id")
        node_id = _ident(payload, "node_id")
        if job_id in self._jobs:
            return {"job_id": job_id, "worker_id": self.config.worker_id, "already": True}
        if self.state is not ServiceState.SERVING:
            raise BusError(f"worker {self.config.worker_id} is {self.state.value}", code="draining")
        key = recording_lease_key(job_id)
        if not await self._bus.kv_set(key, self.config.worker_id, ttl_ms=self.config.lease_ms, only_if_absent=True):
            raise BusError(f"job {job_id} is leased by {await self._bus.kv_get(key)}", code="lease_held")
        job = _Job(job_id, session_id, copy_id, node_id)
        self._jobs[job_id] = job
        try:
            await self._add_part(job, node_id)
            job.room_sub = await self._bus.subscribe(room_channel(session_id))
        except Exception:
            self._jobs.pop(job_id, None)
            await self._close_parts(job)
            await self._bus.kv_delete(key, if_value=self.config.worker_id)
            raise
        job.follower = asyncio.create_task(self._follow(job), name=f"recorder-follow:{job_id}")
        self._heartbeat.wake()
        logger.info(
            "worker=%s job=%s session=%s copy=%s node=%s started",
            *(self.config.worker_id, job_id, session_id, copy_id, node_id),
        )
        return {"job_id": job_id, "worker_id": self.config.worker_id}

    async def _add_part(self, job: _Job, node_id: str) -> Recorder:
        index = job.next_part
        job.next_part += 1
        copy = CopyConfig(
            node_id=node_id,
            room_id=job.session_id,
            participant_id=f"rec-{job.session_id}-{job.copy_id}-p{index}",
            copy_id=f"{job.copy_id}p{index}",
            directory=self.config.spool / job.session_id / job.copy_id / f"p{index}",
            segment_seconds=self.config.segment_seconds,
            transport=self.config.transport,
            plain_host=self.config.rtp_address,
        )
        recorder = Recorder(copy, self._bus, on_segment=self._ship if self._shipper is not None else None)
        await recorder.start()
        job.parts.append(recorder)
        job.node_id = node_id
        return recorder

    async def _follow(self, job: _Job) -> None:
        """Move with the room: a new part on the new node first, the old one closed after ``handover_s``."""
        assert job.room_sub is not None
        async for message in job.room_sub:
            if message.get("type") != "moved" or job.stopping:
                continue
            target = message.get("node_id")
            if not isinstance(target, str) or target == job.node_id:
                continue
            await asyncio.sleep(self.config.follow_delay_s)
            async with job.lock:
                old = list(job.parts)
                try:
                    await self._add_part(job, target)
                except Exception as exc:
                    logger.error("job=%s could not follow the room to node=%s: %s", job.job_id, target, exc)
                    continue
                logger.info("job=%s followed session=%s to node=%s", job.job_id, job.session_id, target)
            task = asyncio.create_task(self._retire_later(job, old), name=f"recorder-retire:{job.job_id}")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _retire_later(self, job: _Job, parts: list[Recorder]) -> None:
        await asyncio.sleep(self.config.handover_s)
        async with job.lock:
            for part in parts:
                if part in job.parts:
                    job.parts.remove(part)
                    job.retired.append(part)
        await asyncio.gather(*(part.close() for part in parts), return_exceptions=True)

    async def _stop(self, job_id: str, reason: str, *, flush_s: float | None = None) -> Payload:
        job = self._jobs.get(job_id)
        if job is None:
            return {"job_id": job_id, "running": False}
        job.stopping = True
        if job.follower is not None:
            job.follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.follower
        if job.room_sub is not None:
            await job.room_sub.close()
        async with job.lock:
            await self._close_parts(job)
        if self._shipper is not None:
            prefix = f"{job.session_id}/{job.copy_id}/"
            if await self._shipper.flush(prefix, self.config.upload_flush_s if flush_s is None else flush_s):
                self._announce_uploaded(prefix, job_id)  # the recording may be assembled without them: tell later
        result = self._progress(job)
        self._jobs.pop(job_id, None)
        with contextlib.suppress(BusError):
            await self._bus.kv_delete(recording_lease_key(job_id), if_value=self.config.worker_id)
        with contextlib.suppress(BusError):
            await self._bus.publish(RECORDING_PROGRESS, {**result, "final": True})
        self._heartbeat.wake()
        self._idle.set()
        logger.info(
            "worker=%s job=%s stopped (%s): %d bytes, %d segments",
            *(self.config.worker_id, job_id, reason, result["bytes"], result["segments"]),
        )
        return result

    def _announce_uploaded(self, prefix: str, job_id: str | None) -> None:
        """Once the last waiting segment under ``prefix`` (``<session>/<copy_id>/``) is stored, set
        ``recording_uploaded_key`` and publish ``uploaded`` on ``RECORDING_PROGRESS``: the coordinator holds the
        assembly until then, or builds the recording again if it was assembled without those segments. For a
        stopped job whose uploads outlasted its flush, and for what a dead predecessor left in the spool
        (``job_id`` None)."""
        if prefix in self._announcing:
            return
        task = asyncio.create_task(self._announce(prefix, job_id), name=f"recorder-uploaded:{prefix}")
        self._announcing[prefix] = task
        task.add_done_callback(lambda _: self._announcing.pop(prefix, None))

    async def _announce(self, prefix: str, job_id: str | None) -> None:
        assert self._shipper is not None
        await self._shipper.flush(prefix, None)
        session_id, copy_id = prefix.split("/")[:2]
        key = recording_uploaded_key(session_id, copy_id)
        message = {
            "type": "uploaded",
            "session_id": session_id,
            "copy_id": copy_id,
            "job_id": job_id,
            "worker_id": self.config.worker_id,
        }
        delay = 1.0
        while True:
            try:  # the key first: it outlives a message that no leader heard
                await self._bus.kv_set(key, self.config.worker_id, ttl_ms=UPLOADED_KEY_TTL_MS)
                await self._bus.publish(RECORDING_PROGRESS, message)
                break
            except BusError as exc:
                logger.warning("worker=%s announcing %s failed (retrying): %s", self.config.worker_id, prefix, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        logger.info("worker=%s %s uploaded after its job ended", self.config.worker_id, prefix)

    def _ship(self, info: SegmentInfo) -> None:
        assert self._shipper is not None and info.path
        media = Path(info.path)
        self._shipper.ship(media, media.with_name(f"seg-{info.index:06d}.json"))

    async def _close_parts(self, job: _Job) -> None:
        parts, job.parts = job.parts, []
        job.retired += parts
        await asyncio.gather(*(part.close() for part in parts), return_exceptions=True)

    # ------------------------------------------------------------------------------------------ progress, leases
    def _progress(self, job: _Job) -> dict[str, Any]:
        reports = [part.progress() for part in job.recorders()]
        error = next((r.error for r in reports if r.error is not None), None)
        tracks: dict[str, dict[str, Any]] = {}
        for r in reports:
            for tid, figures in r.tracks.items():
                tracks[f"{r.copy_id}:{tid}"] = figures
        return {
            "job_id": job.job_id,
            "session_id": job.session_id,
            "copy_id": job.copy_id,
            "worker_id": self.config.worker_id,
            "node_id": job.node_id,
            "at": time.time(),
            "bytes": sum(r.bytes for r in reports),
            "segments": sum(r.segments for r in reports),
            "gaps": sum(r.gaps for r in reports),
            "parts": len(reports),
            "tracks": tracks,
            "clock_drift_ms": {k: v for r in reports for k, v in r.clock_drift_ms.items()},
            "error": error,
            **self._upload_state(f"{job.session_id}/{job.copy_id}/"),
        }

    def _upload_state(self, prefix: str) -> dict[str, Any]:
        """Segments of the job still waiting in the spool, and why uploading fails (kept apart from ``error``:
        the copy is safe in the spool, so the coordinator raises an exception instead of replacing it)."""
        shipper = self._shipper
        if shipper is None:
            return {"uploads_pending": 0, "upload_error": None}
        failing = shipper.error
        return {
            "uploads_pending": shipper.pending(prefix),
            "upload_error": None if failing is None else {**failing.describe(), "since": shipper.failing_since},
        }

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.progress_interval)
            for job in list(self._jobs.values()):
                if job.stopping:
                    continue
                try:
                    held = await self._bus.kv_renew(
                        recording_lease_key(job.job_id), self.config.worker_id, ttl_ms=self.config.lease_ms
                    )
                    if not held:
                        logger.warning(
                            "worker=%s job=%s lease lapsed or revoked: stopping", self.config.worker_id, job.job_id
                        )
                        metrics.LEASES_LOST.inc()
                        self._background(self._stop(job.job_id, "lease lost"))
                        continue
                    await self._bus.publish(RECORDING_PROGRESS, self._progress(job))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("worker=%s job=%s progress round failed", self.config.worker_id, job.job_id)

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _ident(payload: Payload, key: str) -> str:
    value = payload.get(key)
    if not is_valid_id(value):
        raise BusError(f"{key!r} must be a valid id", code="bad_request")
    assert isinstance(value, str)
    return value
