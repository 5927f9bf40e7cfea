"""RecorderWorker: a process that takes recording jobs.

This first version registers and heartbeats so that placement and the dashboard see recorder capacity; taking
jobs (leases over the bus), joining rooms as hidden subscribers and writing segments is the recording issue's.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.bus import Bus
from core.heartbeat import Heartbeat
from core.messages import NodeHeartbeat
from core.service import Service, ServiceState

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
        self._heartbeat = Heartbeat(bus, self._heartbeat_message, interval=config.heartbeat_interval)

    async def start(self) -> None:
        self.config.storage.mkdir(parents=True, exist_ok=True)
        self._heartbeat.start(self.config.worker_id)

    async def close(self) -> None:
        await self._heartbeat.close()

    def health(self) -> dict[str, Any]:
        usage = shutil.disk_usage(self.config.storage) if self.config.storage.exists() else None
        return {"worker_id": self.config.worker_id, "storage_free_bytes": usage.free if usage else None}

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
            sent_at=time.time(),
        )
