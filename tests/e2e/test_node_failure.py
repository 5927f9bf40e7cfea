"""A media node dies (SIGKILL) during a class: the class comes back on another node without a page reload.

Separate processes (orchestrator, signaling, two media nodes of one region) share a real redis-server.
The outage each browser sees is measured from getStats (kill -> every remote video decoding again) and printed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e.conftest import OpenPage
from tests.e2e.test_classroom import joined, media_flowing, stats
from tests.multiproc import Fleet, http_json

pytestmark = [pytest.mark.browser, pytest.mark.multiprocess]


async def decoding_again(page: Any, others: set[str], since: float, timeout: float = 30.0) -> float:
    """Seconds from ``since`` until the page, on its new peer connections, decodes video from all ``others``.

    Frames still in the jitter buffer keep decoding for a moment after the node dies, so recovery is only
    counted once the page has followed the move (its stats then cover the new subscriber connection only).
    """
    deadline = time.monotonic() + timeout
    previous: dict[str, int] = {}
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if await page.evaluate("window.classmesh.moves") < 1:
            continue
        people = (await stats(page))["participants"]
        decoded = {p: people.get(p, {}).get("camera", {}).get("framesDecoded", 0) for p in others}
        if previous and all(decoded[p] > previous.get(p, 0) > 0 for p in others):
            return time.monotonic() - since
        previous = decoded
    raise AssertionError(f"video from {sorted(others)} did not come back within {timeout}s")


async def test_killing_the_node_of_a_live_class_moves_it(
    tmp_path: Path, redis_server: Any, open_page: OpenPage
) -> None:
    fleet = Fleet(tmp_path, redis_server.url, {"eu-central": ["eu-1", "eu-2"]})
    try:
        fleet.start_all()
        orchestrator = fleet.procs["orchestrator"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (http_json(f"{orchestrator.url}/healthz")[1] or {}).get("nodes") == 2:
                break
            await asyncio.sleep(0.2)
        pages = []
        for name in ("Ana", "Ben", "Cleo"):
            page, _ = await open_page(fleet.join_url("failover", name))
            pages.append(page)
        ids = [await joined(p) for p in pages]
        for page, me in zip(pages, ids, strict=True):
            await media_flowing(page, set(ids) - {me})

        r = redis.Redis.from_url(redis_server.url, decode_responses=True)
        victim = r.get("room:failover:node")
        assert victim in ("eu-1", "eu-2")
        survivor = "eu-2" if victim == "eu-1" else "eu-1"
        fleet.procs[victim].kill()
        killed_at = time.monotonic()
        outages = await asyncio.gather(
            *(decoding_again(page, set(ids) - {me}, killed_at) for page, me in zip(pages, ids, strict=True))
        )
        assert r.get("room:failover:node") == survivor
        for page in pages:
            assert await page.evaluate("window.classmesh.moves") == 1
            assert await page.evaluate("window.classmesh.state") == "joined"
        print(f"\nnode failure outage per participant (s): {[round(o, 2) for o in outages]}, max {max(outages):.2f}")
        # and an operational exception names the node
        from orchestrator.store import Store

        store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'classmesh.db'}", migrate=False)
        try:
            page_of = await store.list_exceptions()
            found = [e for e in page_of.items if e.dedup_key == f"node-dead:{victim}"]
            assert found and found[0].kind == "node_failed" and found[0].subject_refs["node_id"] == victim
        finally:
            await store.close()
        # 3 s to declare the node dead, then re-placement and renegotiation
        assert max(outages) < 10
    finally:
        codes = fleet.stop_all()
        for name, code in codes.items():
            if name in fleet.procs and fleet.procs[name].process.returncode not in (0, -9):
                raise AssertionError(f"{name} exited {code}:\n{fleet.procs[name].log()[-2000:]}")
