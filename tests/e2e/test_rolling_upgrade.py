"""A rolling upgrade of three media nodes while two recorded classes run (Chromium pages and aiortc clients),
with the orchestrator leader killed half-way: no class drops, every participant keeps receiving everyone, the
longest freeze each page shows is measured frame by frame, and both recordings come out complete (the recorders
follow their rooms from node to node)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from classmesh.cli import default_database_url
from classmesh.client import ClassroomClient
from orchestrator.store import Store
from tests.e2e.conftest import OpenPage
from tests.e2e.test_classroom import joined, media_flowing
from tests.e2e.test_drain import freezes
from tests.e2e.test_recording import book_recorded, wait_recording
from tests.multiproc import CLASSMESH, Fleet, http_json

pytestmark = [pytest.mark.browser, pytest.mark.multiprocess]


class SmallVideoTrack(VideoStreamTrack):
    """A live-encoded camera (it answers keyframe requests, as a real one does) at 160x120, so that three of
    them leave this 2-core machine's CPU to the system under test."""

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(width=160, height=120)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts, frame.time_base = pts, time_base
        return frame


def api_key(fleet: Fleet) -> str:
    out = subprocess.run(
        [CLASSMESH, "orchestrator", "--data-dir", str(fleet.tmp / "data"), "api-key", "create", "--name", "ops"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("secret: "))


async def deployment(fleet: Fleet, nodes: list[str], version: str, stop: asyncio.Event) -> list[str]:
    """What Kubernetes would do: a media process that exited is started again, at the new version."""
    replaced = []
    while not stop.is_set():
        for node_id in nodes:
            proc = fleet.procs[node_id]
            if proc.process.poll() is not None:
                assert proc.process.returncode == 0, proc.log()[-2000:]
                fleet.start_media(node_id, version=version)
                replaced.append(node_id)
        await asyncio.sleep(0.2)
    return replaced


async def test_rolling_upgrade_keeps_every_class_running(
    tmp_path: Path, redis_server: Any, open_page: OpenPage
) -> None:
    nodes = ["eu-1", "eu-2", "eu-3"]
    fleet = Fleet(tmp_path, redis_server.url, {"eu-central": nodes})
    (tmp_path / "data").mkdir()
    key = api_key(fleet)
    clients: list[ClassroomClient] = []
    stop = asyncio.Event()
    try:
        orchestrators = [fleet.start_orchestrator("orch-a"), fleet.start_orchestrator("orch-b")]
        fleet.start_signaling()
        for node_id in nodes:
            fleet.start_media(node_id, version="1")
        for worker in ("rec-1", "rec-2", "rec-3"):
            fleet.start_recorder(worker)
        for proc in fleet.procs.values():
            proc.wait_ready()
        store = await Store.open(default_database_url(tmp_path / "data"))
        try:
            class_1, class_2 = await book_recorded(store, "one"), await book_recorded(store, "two")
        finally:
            await store.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (http_json(f"{orchestrators[0].url}/healthz")[1] or {}).get("nodes") == 3:
                break
            await asyncio.sleep(0.2)
        # class 1: three browsers; class 2: three aiortc participants
        pages = []
        for name in ("Ana", "Ben", "Cleo"):
            page, _ = await open_page(fleet.join_url(class_1, name))
            pages.append(page)
        ids = [await joined(p) for p in pages]
        for name in ("Dev", "Eva", "Fin"):
            client = ClassroomClient(fleet.signaling_url(), fleet.token(class_2, name), room=class_2)
            await client.connect()
            await client.publish([("camera", SmallVideoTrack()), ("microphone", AudioStreamTrack())])
            clients.append(client)
        for page, me in zip(pages, ids, strict=True):
            await media_flowing(page, set(ids) - {me})
        for page in pages:
            await page.evaluate("window.classmesh.resetFrameGaps()")

        replacing = asyncio.create_task(deployment(fleet, nodes, "2", stop))
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
            async with http.post(f"{orchestrators[0].url}/v1/rollouts", json={"to_version": "2"}) as resp:
                assert resp.status == 202, await resp.text()
            killed = False
            state: dict[str, Any] = {}
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                alive = [o for o in orchestrators if o.process.poll() is None]
                async with http.get(f"{alive[0].url}/v1/rollouts/current") as resp:
                    state = await resp.json()
                if not killed and len(state["done"]) >= 1:
                    leader = next(o for o in alive if (http_json(f"{o.url}/healthz")[1] or {}).get("leader"))
                    leader.kill()  # the rollout must resume under the other replica
                    killed = True
                if state["state"] != "running":
                    break
                await asyncio.sleep(0.5)
        assert killed and state["state"] == "done", state
        assert sorted(state["done"]) == nodes
        stop.set()
        replaced = await replacing
        assert sorted(replaced) == nodes

        # every class still runs, everyone receives everyone
        for page, me in zip(pages, ids, strict=True):
            await media_flowing(page, set(ids) - {me})
            assert await page.evaluate("window.classmesh.state") == "joined"
        before = {c.participant_id: {p: c.received_from(p, "video") for p in c.participants} for c in clients}
        await asyncio.sleep(2.0)
        for c in clients:
            assert set(c.participants) == {o.participant_id for o in clients} - {c.participant_id}
            for p in c.participants:
                assert c.received_from(p, "video") > before[c.participant_id][p], (c.participant_id, p)
        gaps = await freezes(pages)
        print(f"\nrolling upgrade of 3 nodes: longest freeze per browser participant (ms): {gaps}")
        assert max(gaps) < 1000

        # both recordings are complete: every second of both classes, across three node moves each
        api = f"{next(o for o in orchestrators if o.process.poll() is None).url}/v1"
        for session_id in (class_1, class_2):
            recording = await wait_recording(api, key, session_id)
            print(
                f"recording of {session_id}: {recording['status']} coverage {recording['coverage']}, "
                f"copies {recording['details']['copies']}"
            )
            assert recording["status"] == "ready" and recording["coverage"] == 1.0, recording
    finally:
        stop.set()
        for c in clients:
            await c.close()
        fleet.stop_all()
