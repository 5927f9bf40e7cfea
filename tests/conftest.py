"""Fixtures shared by every suite: real servers started on free loopback ports."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from core.bus import Bus, LocalBus, RedisBus

if TYPE_CHECKING:
    from tests.seaweed import SeaweedFS


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class RedisServer:
    """A real redis-server on a free loopback port, in a temporary directory."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; `make test` installs it (apt-get install redis-server)")
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


class BusFactory:
    """Opens buses that share one backend: the same LocalBus, or new connections to one redis-server.

    A second bus from the factory plays the part of another process."""

    def __init__(self, kind: str, redis_url: str | None) -> None:
        self.kind = kind
        self._redis_url = redis_url
        self._local = LocalBus() if kind == "local" else None
        self._opened: list[Bus] = []

    def open(self) -> Bus:
        if self._local is not None:
            return self._local
        assert self._redis_url is not None
        bus = RedisBus(self._redis_url)
        self._opened.append(bus)
        return bus

    async def close(self) -> None:
        for bus in self._opened:
            await bus.close()
        if self._local is not None:
            await self._local.close()


@pytest.fixture(params=["local", "redis"])
async def bus_factory(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    """Each contract test runs against both bus implementations."""
    redis_url = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        redis_url = server.url
        flush = RedisBus(redis_url)
        await flush._redis.flushdb()
        await flush.close()
    factory = BusFactory(request.param, redis_url)
    yield factory
    await factory.close()


@pytest.fixture
def bus(bus_factory: BusFactory) -> Bus:
    return bus_factory.open()


# --------------------------------------------------------------------------------------------- the stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Any]:
    """The whole system (orchestrator, signaling, a media node in eu-central and one in us-east, no recorders) in
    this process, on loopback."""
    from classmesh.dev import build_stack
    from core.regions import load_regions, parse_regions
    from core.service import ServiceHost

    regions = load_regions()
    raw = {
        "regions": {
            name: {
                "display_name": name,
                "lat": regions.get(name).lat,
                "lon": regions.get(name).lon,
                "nodes": [{"id": f"{name}-1", "port": free_port()}],
            }
            for name in ("eu-central", "us-east")
        }
    }
    built = build_stack(
        parse_regions(raw),
        data_dir=tmp_path / "var",
        host="127.0.0.1",
        base_port=free_port(),
        version="test",
        bus=LocalBus(),
        recorders=0,
    )
    # the signaling port is base+1: pick ports that are actually free
    for host in built.hosts:
        if host.service.name != "media":
            host.port = 0
    started: list[ServiceHost] = []
    try:
        for host in built.hosts:
            await host.start()
            started.append(host)
        signaling = next(h for h in started if h.service.name == "signaling")
        built.signaling_url = signaling.url
        orchestrator = next(h for h in started if h.service.name == "orchestrator")
        service = orchestrator.service
        service.config = dataclasses.replace(service.config, signaling_url=signaling.url)  # type: ignore[attr-defined]
        built.orchestrator_url = orchestrator.url  # type: ignore[attr-defined]
        built.orchestrator = service  # type: ignore[attr-defined]
        # placement needs the node's first heartbeat
        registry = orchestrator.service.registry  # type: ignore[attr-defined]
        assert await registry.wait_for(lambda r: sum(n.serving for n in r.nodes("media")) == 2, 5)
        yield built
    finally:
        for host in reversed(started):
            await host.close()
        await built.bus.close()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A real S3 server (SeaweedFS) for the whole run, started by the first test that needs it."""
    from tests.seaweed import SeaweedFS

    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture(autouse=True, scope="session")
def loopback_ice() -> None:
    """Every aiortc peer a test creates announces 127.0.0.1 only: tests never use the machine's LAN address
    (inside `make test`'s network namespace there is nothing else anyway)."""
    from media.forwarding import configure_ice

    configure_ice(["127.0.0.1"])


@pytest.fixture
async def bounded_task_teardown() -> AsyncIterator[None]:
    """Cancel what a test left running, but wait at most 10 s for it.

    The event loop's own shutdown waits without limit for every task it cancels. A task that swallows its
    cancellation (aiortc has had such cases while a transport closes) would then hang the suite until
    pytest-timeout kills it, after a test that passed. Here such a task is logged with its stack and let go."""
    yield
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for task in left:
        task.cancel()
    if not left:
        return
    _, stuck = await asyncio.wait(left, timeout=10.0)
    for task in stuck:
        logging.getLogger("tests").error("task %r ignored its cancellation for 10 s; abandoning it", task)
        task.print_stack()
        asyncio.tasks._all_tasks.discard(task)  # type: ignore[attr-defined]  # so the loop's shutdown skips it


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser and multi-process tests share this machine's 2 cores with Chromium and several services, and
    measure real time: they get one re-run. A failure that happens twice in a row still fails the suite.

    Every coroutine test gets ``bounded_task_teardown``."""
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            item.fixturenames.insert(0, "bounded_task_teardown")  # type: ignore[attr-defined]
        if item.get_closest_marker("browser") or item.get_closest_marker("multiprocess"):
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=1))
