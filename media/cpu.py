"""CpuMeter: the CPU a process used (in cores) between two samples, from ``os.times()``."""

from __future__ import annotations

import os
import time


class CpuMeter:
    """Process CPU use (cores: 1.0 = one core busy) between two calls of ``sample``."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), self._cpu())

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system

    def sample(self) -> float:
        now, cpu = time.monotonic(), self._cpu()
        last_now, last_cpu = self._last
        self._last = (now, cpu)
        elapsed = now - last_now
        return round((cpu - last_cpu) / elapsed, 3) if elapsed > 0 else 0.0
