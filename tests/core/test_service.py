"""The service runner: health endpoints, metrics, drain on a signal, close order."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from core.service import Service, ServiceHost, ServiceState, run_hosts


class Recording(Service):
    """A service that records its lifecycle calls and holds work until released."""

    name = "probe"

    def __init__(self, log: list[str], *, drain_for: float = 0.0) -> None:
        super().__init__()
        self.log = log
        self.drain_for = drain_for

    async def start(self) -> None:
        self.log.append(f"start:{id(self)}")

    async def drain(self, deadline: float) -> None:
        self.log.append("drain")
        await asyncio.sleep(self.drain_for)

    async def close(self) -> None:
        self.log.append(f"close:{id(self)}")


async def test_health_ready_and_metrics_follow_the_lifecycle() -> None:
    log: list[str] = []
    host = ServiceHost(Recording(log), "127.0.0.1", 0)
    await host.start()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{host.url}/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["state"] == "serving"
        async with http.get(f"{host.url}/readyz") as resp:
            assert resp.status == 200
        async with http.get(f"{host.url}/metrics") as resp:
            text = await resp.text()
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert "classmesh_service_state" in families
        serving = [
            s
            for s in families["classmesh_service_state"].samples
            if s.labels == {"service": "probe", "state": "serving"}
        ]
        assert serving and serving[0].value == 1
        await host.drain(time.monotonic() + 1)
        assert host.service.state is ServiceState.DRAINING
        async with http.get(f"{host.url}/readyz") as resp:
            assert resp.status == 503 and (await resp.json())["ready"] is False
        async with http.get(f"{host.url}/healthz") as resp:
            assert resp.status == 200
    await host.close()
    assert host.service.state is ServiceState.STOPPED


async def test_sigterm_drains_then_closes_in_reverse_order() -> None:
    log: list[str] = []
    first, second = Recording(log), Recording(log, drain_for=0.2)
    hosts = [ServiceHost(first, "127.0.0.1", 0), ServiceHost(second, "127.0.0.1", 0)]

    async def started(_: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    code = await asyncio.wait_for(run_hosts(hosts, drain_timeout=5, on_started=started), 10)
    assert code == 0
    assert log == [
        f"start:{id(first)}",
        f"start:{id(second)}",
        "drain",
        "drain",
        f"close:{id(second)}",
        f"close:{id(first)}",
    ]


async def test_drain_deadline_is_enforced() -> None:
    log: list[str] = []
    slow = Recording(log, drain_for=30)
    stop = asyncio.Event()
    stop.set()
    began = time.monotonic()
    await asyncio.wait_for(run_hosts([ServiceHost(slow, "127.0.0.1", 0)], drain_timeout=0.3, stop=stop), 10)
    assert time.monotonic() - began < 3
    assert log[-1] == f"close:{id(slow)}"


async def test_a_process_s_services_freeze_the_startup_heap_once_started() -> None:
    log: list[str] = []
    stop = asyncio.Event()
    frozen: list[int] = []

    async def started(_: object) -> None:
        frozen.append(gc.get_freeze_count())
        stop.set()

    try:
        assert gc.get_freeze_count() == 0
        await asyncio.wait_for(
            run_hosts([ServiceHost(Recording(log), "127.0.0.1", 0)], drain_timeout=1, on_started=started, stop=stop),
            10,
        )
        assert frozen == [0]  # not asked for: a test process keeps its heap as it is
        await asyncio.wait_for(
            run_hosts(
                [ServiceHost(Recording(log), "127.0.0.1", 0)],
                drain_timeout=1,
                on_started=started,
                stop=stop,
                freeze_heap=True,
            ),
            10,
        )
        assert frozen[1] > 1000  # everything imported and built so far is out of the collector's walk
    finally:
        gc.unfreeze()
