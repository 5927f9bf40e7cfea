"""WorkerProcess: the front's handle on one forwarding worker process (``python -m media.worker``).

States::

    STARTING --answers ping--> READY --SIGTERM (drain) / close()--> STOPPING --> EXITED
        |                        |
        +------------------------+--dies on its own (crash, SIGKILL, hung and killed)--> EXITED (unexpected)

The launch goes to the child as one JSON line on stdin, and stdin then stays open: the child exits at once
when it reaches EOF, so a front that dies, however it dies, leaves no worker behind. The child's stdout and
stderr are the front's, so its log lines land in the node's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from enum import StrEnum

from core.bus import Bus, BusError, NoResponderError
from core.messages import node_rpc
from media.config import WorkerLaunch

logger = logging.getLogger(__name__)


class WorkerState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    EXITED = "exited"


class WorkerStartError(Exception):
    """A worker process exited, or did not answer, before it was ready."""


class WorkerProcess:
    def __init__(self, index: int, launch: WorkerLaunch, bus: Bus) -> None:
        self.index = index
        self.launch = launch
        self.rpc_id = launch.node.rpc_id
        self.channel = node_rpc(self.rpc_id)
        self._bus = bus
        self._process: asyncio.subprocess.Process | None = None
        self._state = WorkerState.STARTING
        self._stop_requested = False
        self._started_at = 0.0
        self._exited: asyncio.Future[int] | None = None
        self._waiter: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------------------ properties
    @property
    def state(self) -> WorkerState:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is WorkerState.READY

    @property
    def answering(self) -> bool:
        """Running and serving its rooms (while draining too)."""
        return self._state in (WorkerState.READY, WorkerState.STOPPING)

    @property
    def expected_exit(self) -> bool:
        """The front asked it to stop (or is closing): its exit is not a failure."""
        return self._stop_requested

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started_at if self._started_at else 0.0

    @property
    def exited(self) -> asyncio.Future[int]:
        """Resolves with the exit code (negative: killed by that signal) when the process has exited."""
        assert self._exited is not None, "spawn() first"
        return self._exited

    # ------------------------------------------------------------------------------------------ lifecycle
    async def spawn(self) -> None:
        self._started_at = time.monotonic()
        self._exited = asyncio.get_running_loop().create_future()
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "media.worker", stdin=asyncio.subprocess.PIPE
        )
        assert self._process.stdin is not None
        self._process.stdin.write(self.launch.to_json().encode() + b"\n")
        await self._process.stdin.drain()
        self._waiter = asyncio.create_task(self._wait(), name=f"worker-exit:{self.rpc_id}")
        logger.info("worker=%s pid=%s spawned", self.rpc_id, self._process.pid)

    async def _wait(self) -> None:
        assert self._process is not None and self._exited is not None
        code = await self._process.wait()
        self._state = WorkerState.EXITED
        if self._process.stdin is not None:
            self._process.stdin.close()
        if not self._exited.done():
            self._exited.set_result(code)

    async def wait_ready(self, timeout: float) -> None:
        """Until the worker answers ``ping`` on its channel; ``WorkerStartError`` if it exits or stays silent."""
        deadline = time.monotonic() + timeout
        while True:
            if self._exited is not None and self._exited.done():
                raise WorkerStartError(f"worker {self.rpc_id} exited with code {self._exited.result()} while starting")
            try:
                await self._bus.request(self.channel, {"op": "ping"}, timeout=1.0)
            except (NoResponderError, BusError):
                if time.monotonic() > deadline:
                    raise WorkerStartError(f"worker {self.rpc_id} did not answer within {timeout:.0f}s") from None
                await asyncio.sleep(0.05)
                continue
            if self._state is WorkerState.STARTING:
                self._state = WorkerState.READY
            logger.info("worker=%s pid=%s ready after %.2fs", self.rpc_id, self.pid, self.uptime)
            return

    def terminate(self) -> None:
        """SIGTERM: the worker drains (a second one skips the rest of its drain). Its exit is expected."""
        if self._state is not WorkerState.EXITED:
            self._state = WorkerState.STOPPING
            self._stop_requested = True
            self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, e.g. for a worker that stopped answering. Its exit counts as a failure unless it was stopping."""
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signum)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the process now: a second SIGTERM (skip the rest of the drain), SIGKILL after ``timeout``.

        Idempotent. A worker that was not draining yet gets two SIGTERMs apart (one would start a full drain;
        signals sent back to back merge into one)."""
        if self._process is None or self._exited is None:
            return
        if self._process.returncode is None and not self._exited.done():
            if not self.expected_exit:
                self.terminate()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.3):
                        await asyncio.shield(self._exited)
            self._signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._exited)
            except TimeoutError:
                logger.warning("worker=%s pid=%s did not stop in %.0fs: killing it", self.rpc_id, self.pid, timeout)
                self.kill()
                await asyncio.shield(self._exited)
        if self._waiter is not None:
            await self._waiter
            self._waiter = None
