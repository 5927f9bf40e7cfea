"""The runner every classmesh service uses.

A ``Service`` is a long-running component with a lifecycle::

    STARTING -> SERVING -> DRAINING -> STOPPED

``ServiceHost`` gives one service its own HTTP site with ``/healthz`` (the process is alive: 200 until it
stops), ``/readyz`` (it takes new work: 200 only while SERVING) and ``/metrics`` (Prometheus text), plus the
service's own routes. ``run_hosts`` starts a set of hosts on one event loop (one in production, several in
``classmesh dev``) and turns SIGTERM/SIGINT into a graceful shutdown: every service drains concurrently within
the drain deadline (readiness goes false first), then they close in reverse start order. A second signal skips
what is left of the drain. ``run`` wraps it all in a uvloop event loop and returns the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from enum import StrEnum
from typing import Any

import prometheus_client
from aiohttp import web
from prometheus_client import Gauge, Info

logger = logging.getLogger(__name__)

SERVICE_STATE = Gauge(
    "classmesh_service_state",
    "Lifecycle state of each service in this process (1 for the current state)",
    ["service", "state"],
)
SERVICE_INFO = Info("classmesh_service", "Version of the classmesh services in this process")
CLOSE_TIMEOUT_S = 10.0  # after the drain: how long a service may take to release its resources


class ServiceState(StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class Service:
    """Base class of a service. Subclasses override what they need.

    ``start`` acquires resources and begins work; ``drain(deadline)`` stops taking new work and moves or
    finishes what is in flight before ``deadline`` (``time.monotonic()`` based); ``close`` releases everything
    and is idempotent. ``add_routes`` mounts the service's HTTP routes.
    """

    name: str = "service"

    def __init__(self) -> None:
        self._state = ServiceState.STARTING
        self._set_state_metric()
        self.retire_requested = asyncio.Event()

    def request_retire(self) -> None:
        """Ask the runner to drain this service and stop it (as SIGTERM does, but for this service alone:
        in ``classmesh dev`` the other services of the process keep running; alone in a process, it exits 0)."""
        self.retire_requested.set()

    @property
    def state(self) -> ServiceState:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is ServiceState.SERVING

    def set_state(self, state: ServiceState) -> None:
        if state is not self._state:
            logger.info("service=%s state=%s", self.name, state.value)
        self._state = state
        self._set_state_metric()
        self.state_changed(state)

    def state_changed(self, state: ServiceState) -> None:
        """Called after every state change (e.g. to announce it at once). Must not block."""

    def _set_state_metric(self) -> None:
        for s in ServiceState:
            SERVICE_STATE.labels(self.name, s.value).set(1 if s is self._state else 0)

    def add_routes(self, app: web.Application) -> None:
        """Mount this service's routes on ``app``."""

    def health(self) -> dict[str, Any]:
        """Extra fields for /healthz and /readyz bodies."""
        return {}

    async def start(self) -> None:
        """Acquire resources and start background work."""

    async def drain(self, deadline: float) -> None:
        """Stop taking new work; finish or move what is in flight before ``deadline``."""

    async def close(self) -> None:
        """Release everything. Idempotent."""


class ServiceHost:
    """One service behind its own aiohttp site."""

    def __init__(self, service: Service, host: str, port: int) -> None:
        self.service = service
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self.service.add_routes(app)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        body = {"status": "ok", "service": self.service.name, "state": self.service.state.value}
        return web.json_response(body | self.service.health())

    async def _readyz(self, request: web.Request) -> web.Response:
        ready = self.service.ready
        body = {"ready": ready, "service": self.service.name, "state": self.service.state.value}
        return web.json_response(body | self.service.health(), status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        data = prometheus_client.generate_latest(prometheus_client.REGISTRY)
        return web.Response(body=data, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        """Start the service (it may open what its routes need), then listen."""
        await self.service.start()
        # shutdown_timeout: a connection still open when the service has closed (a client reconnecting during the
        # drain) must not hold the process for aiohttp's default minute
        # max_line_size: a long (invalid) query string reaches the service's own validation and gets its specific
        # error, instead of aiohttp's bare parser error at 8 KiB
        self._runner = web.AppRunner(
            self.build_app(), access_log=None, handle_signals=False, shutdown_timeout=3.0, max_line_size=65536
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            server = site._server  # aiohttp exposes the bound port only here
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                self.port = sockets[0].getsockname()[1]
        self.service.set_state(ServiceState.SERVING)
        logger.info("service=%s url=%s serving", self.service.name, self.url)

    async def drain(self, deadline: float) -> None:
        if self.service.state is ServiceState.SERVING:
            self.service.set_state(ServiceState.DRAINING)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self.service.drain(deadline)
        except TimeoutError:
            logger.warning("service=%s drain deadline passed; stopping with work in flight", self.service.name)
        except Exception:
            logger.exception("service=%s drain failed", self.service.name)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.service.close()
        except TimeoutError:
            # a release that hangs must not keep the process (and a rolling upgrade) waiting: say where it hangs
            logger.error(
                "service=%s close did not finish within %.0fs; stopping anyway. pending tasks:\n%s",
                self.service.name,
                CLOSE_TIMEOUT_S,
                pending_task_stacks(),
            )
        except Exception:
            logger.exception("service=%s close failed", self.service.name)
        self.service.set_state(ServiceState.STOPPED)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def pending_task_stacks(limit: int = 40) -> str:
    """Where every pending task of this loop waits (for a log line when something hangs)."""
    out = []
    for task in list(asyncio.all_tasks())[:limit]:
        if task.done():
            continue
        frames = task.get_stack(limit=8)
        where = " <- ".join(
            f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno} {f.f_code.co_name}" for f in frames
        )
        out.append(f"  {task.get_name()}: {where or task.get_coro()!r}")
    return "\n".join(out)


async def run_hosts(
    hosts: Sequence[ServiceHost],
    *,
    drain_timeout: float,
    version: str = "dev",
    on_started: Callable[[Sequence[ServiceHost]], Awaitable[None] | None] | None = None,
    stop: asyncio.Event | None = None,
    cleanup: Sequence[Callable[[], Awaitable[None]]] = (),
    freeze_heap: bool = False,
) -> int:
    """Start ``hosts`` in order, wait for a signal (or ``stop``), drain, close in reverse. Returns 0.

    ``freeze_heap``: once every host has started, :func:`freeze_startup_heap` (for a process's main
    services; not for hosts run inside a test process)."""
    SERVICE_INFO.info({"version": version})
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    hurry = asyncio.Event()

    def on_signal(signame: str) -> None:
        if stop.is_set():
            logger.warning("signal=%s again: skipping the rest of the drain", signame)
            hurry.set()
        else:
            logger.info("signal=%s: draining (deadline %.0fs)", signame, drain_timeout)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig.name)
    started: list[ServiceHost] = []
    try:
        for host in hosts:
            await host.start()
            started.append(host)
        if freeze_heap:
            freeze_startup_heap()
        if on_started is not None:
            result = on_started(started)
            if asyncio.iscoroutine(result):
                await result
        retired: set[ServiceHost] = set()

        async def retire_when_asked(host: ServiceHost) -> None:
            await host.service.retire_requested.wait()
            logger.info("service=%s retiring on request", host.service.name)
            await host.drain(time.monotonic() + drain_timeout)
            await host.close()
            retired.add(host)
            if len(retired) == len(started):
                stop.set()

        watchers = [asyncio.create_task(retire_when_asked(h), name=f"retire:{h.service.name}") for h in started]
        try:
            await stop.wait()
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        started = [h for h in started if h not in retired]
        deadline = time.monotonic() + drain_timeout
        drains: asyncio.Future[list[None]] = asyncio.gather(*(h.drain(deadline) for h in started))
        hurried: asyncio.Future[bool] = asyncio.ensure_future(hurry.wait())
        await asyncio.wait([drains, hurried], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        if not drains.done():
            drains.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drains
        hurried.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hurried
    finally:
        for host in reversed(started):
            await host.close()
        for fn in cleanup:
            try:
                await fn()
            except Exception:
                logger.exception("cleanup failed")
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return 0


def freeze_startup_heap() -> None:
    """Take what the process built while starting (modules, classes, functions, configuration: most of its
    objects) out of the garbage collector's sight for good.

    A full collection walks every tracked object; in a media process that means stopping the forwarding
    for 45-65 ms every few seconds at 64 streams, almost all of it spent on objects that live as long as
    the process. After ``gc.freeze()`` a full collection walks only what was made since. Objects made
    later are collected as usual; what was frozen and dies later is still freed by reference counting
    (only a cycle among frozen objects would stay, and startup objects do not die)."""
    gc.collect()
    gc.freeze()


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main`` on a uvloop event loop and return its exit code."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())
