"""RecorderWorker: a process that takes recording jobs.

This first version registers and heartbeats so that placement and the dashboard see recorder capacity; taking
jobs (leases over the bus), joining rooms as hidden subscribers and writing segments is the recording issue's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.bus import Bus
from core.messages import NODE_HEARTBEATS, NodeHeartbeat, encode
from core.service import Service

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecorderConfig:
    worker_id: str
    storage: Path
    public_url: str
    region: str = "any"
    version: str = "dev"
    heartbeat_interval: float = 1.0


class RecorderWorker(Service):
    name = "recorder"

    def __init__(self, config: RecorderConfig, bus: Bus) -> None:
        super().__init__()
        self.config = config
        self._bus = bus
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.config.storage.mkdir(parents=True, exist_ok=True)
        self._heartbeat = asyncio.create_task(self._beat(), name=f"heartbeat:{self.config.worker_id}")

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
            with contextlib.suppress(Exception):
                await self._send()

    def health(self) -> dict[str, Any]:
        usage = shutil.disk_usage(self.config.storage) if self.config.storage.exists() else None
        return {"worker_id": self.config.worker_id, "storage_free_bytes": usage.free if usage else None}

    async def _send(self) -> None:
        beat = NodeHeartbeat(
            node_id=self.config.worker_id,
            kind="recorder",
            region=self.config.region,
            version=self.config.version,
            state=self.state.value,
            url=self.config.public_url,
            sent_at=time.time(),
        )
        await self._bus.publish(NODE_HEARTBEATS, encode(beat))

    async def _beat(self) -> None:
        while True:
            try:
                await self._send()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("recorder=%s heartbeat failed", self.config.worker_id)
            await asyncio.sleep(self.config.heartbeat_interval)
