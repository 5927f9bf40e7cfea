"""A media node as a front and forwarding worker processes (``classmesh media --workers N`` on Redis).

The multi-process tests run real processes (orchestrator, signaling, media nodes) on a real redis-server, and
aiortc participants that join through signaling as browsers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from prometheus_client.parser import text_string_to_metric_families

from classmesh.client import ClassroomClient
from core.bus import RedisBus, RemoteError
from core.messages import NODE_HEARTBEATS, node_rpc
from core.service import ServiceHost
from media.config import MediaNodeConfig
from media.front import FrontConfig, MediaFront
from recorder.recorder import Recorder, RecorderConfig
from tests.classmesh.test_client import eventually
from tests.multiproc import Fleet, ServiceProcess, http_json

BAD_SIGNS = ("Task was destroyed", "Unclosed", "Traceback", "never awaited")


def test_a_front_imports_neither_aiortc_nor_the_data_plane_metrics() -> None:
    """The front re-exports its workers' classmesh_media_* families; registering them itself would make two
    families of one name on /metrics (and it would pay aiortc's import for nothing)."""
    heavy = ("aiortc", "media.metrics", "media.node")
    code = f"import sys, media.front; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture
async def front(redis_server: Any) -> Any:
    """A front in this process with two real worker processes, polling fast so that a silent worker is found
    within about a second."""
    bus = RedisBus(redis_server.url)
    node_id = f"fr-{os.getpid()}-{time.monotonic_ns() % 100000}"
    config = MediaNodeConfig(
        node_id=node_id, region="eu-central", public_url="http://127.0.0.1", ice_addresses=("127.0.0.1",)
    )
    settings = FrontConfig(
        workers=2, bus_url=redis_server.url, drain_timeout=3, poll_interval=0.2, poll_timeout=0.3, unresponsive_polls=3
    )
    host = ServiceHost(MediaFront(config, bus, settings), "127.0.0.1", 0)
    await host.start()
    try:
        yield host.service, bus, host
    finally:
        await host.close()
        await bus.close()


async def ask(bus: RedisBus, node_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    return await bus.request(node_rpc(node_id), payload, timeout=10)


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"op": "teleport"}, "bad_request"),
        ({}, "bad_request"),
        ({"op": "join", "room_id": "bad room", "participant_id": "p1"}, "bad_request"),
        (
            {"op": "join", "room_id": "r-new", "participant_id": "p1", "identity": "x", "name": "x", "role": "admin"},
            "bad_request",
        ),
        ({"op": "publish", "participant_id": "nobody", "sdp": "v=0"}, "unknown_participant"),
        ({"op": "state", "participant_id": 5}, "bad_request"),
        ({"op": "create_room", "room_id": "r-new", "max_participants": -1}, "bad_request"),
    ],
)
async def test_a_front_refuses_what_a_node_refuses_and_changes_nothing(
    front: Any, payload: dict[str, Any], code: str
) -> None:
    service, bus, _host = front
    with pytest.raises(RemoteError) as err:
        await ask(bus, service.config.node_id, payload)
    assert err.value.code == code
    assert service.room_worker("r-new") is None  # the refused join or create left no room behind
    for k in service.workers:
        stats = await bus.request(node_rpc(f"{service.config.node_id}.w{k}"), {"op": "stats"}, timeout=5)
        assert stats["rooms"] == {}


@pytest.mark.multiprocess
async def test_rooms_go_to_the_least_loaded_worker_and_closing_twice_is_harmless(front: Any) -> None:
    service, bus, _host = front
    node = service.config.node_id
    for room in ("ra", "rb", "rc"):
        assert (await ask(bus, node, {"op": "create_room", "room_id": room}))["node_id"] == node
    assert sorted(service.room_worker(r) for r in ("ra", "rb", "rc")) == [0, 0, 1]
    assert (await ask(bus, node, {"op": "create_room", "room_id": "ra"}))["node_id"] == node  # idempotent, same worker
    assert sorted(service.room_worker(r) for r in ("ra", "rb", "rc")) == [0, 0, 1]
    await ask(bus, node, {"op": "close_room", "room_id": "ra"})
    assert await ask(bus, node, {"op": "close_room", "room_id": "ra"}) == {}
    assert await ask(bus, node, {"op": "leave", "participant_id": "nobody"}) == {}
    assert service.room_worker("ra") is None
    assert (await ask(bus, node, {"op": "ping"}))["state"] == "serving"


@pytest.mark.multiprocess
async def test_a_worker_that_stops_answering_is_killed_and_its_room_re_created(front: Any) -> None:
    service, bus, _host = front
    node = service.config.node_id
    await ask(bus, node, {"op": "create_room", "room_id": "stuck", "max_participants": 7})
    victim = service.room_worker("stuck")
    proc = service.workers[victim]
    os.kill(proc.pid, signal.SIGSTOP)  # alive, but silent
    try:
        await eventually(lambda: service.room_worker("stuck") not in (None, victim), within=15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
    assert proc.exited.done() and proc.exited.result() == -signal.SIGKILL
    target = service.room_worker("stuck")
    stats = await bus.request(node_rpc(f"{node}.w{target}"), {"op": "stats"}, timeout=5)
    assert "stuck" in stats["rooms"]
    await eventually(lambda: service.workers[victim].ready, within=30)  # restarted
    assert service.workers[victim].pid != proc.pid


@pytest.mark.multiprocess
async def test_only_the_front_heartbeats_and_its_drain_waits_for_its_workers(front: Any) -> None:
    service, bus, host = front
    node = service.config.node_id
    beats = await bus.subscribe(NODE_HEARTBEATS)
    try:
        for room in ("h1", "h2"):
            await ask(bus, node, {"op": "create_room", "room_id": room})
        seen: list[dict[str, Any]] = []

        async def until(predicate: Any, within: float = 10.0) -> dict[str, Any]:
            async with asyncio.timeout(within):
                while True:
                    beat = await beats.get()
                    if beat["node_id"].startswith(node):
                        seen.append(beat)
                        if predicate(beat):
                            return beat

        beat = await until(lambda b: b["rooms"] == 2)
        assert beat["room_ids"] == ["h1", "h2"] and beat["state"] == "serving" and beat["kind"] == "media"
        procs = list(service.workers.values())
        await host.drain(time.monotonic() + 5)  # the workers drain (closing their empty rooms) and exit
        assert all(p.exited.done() and p.exited.result() == 0 for p in procs)
        await until(lambda b: b["state"] == "draining")
        with contextlib.suppress(TimeoutError):
            await until(
                lambda b: False, within=2.0
            )  # and whatever else was said until a while after the workers exited
        # only the front speaks for the node: a worker's beat (its own share of capacity, its own rooms) never
        # goes out, or the registry would see the node's load and rooms flap
        assert {b["node_id"] for b in seen} == {node}
        assert {b["capacity_streams"] for b in seen} == {service.config.capacity_streams}
    finally:
        await beats.close()


def metric(url: str, family: str, **labels: str) -> dict[str, float]:
    """Samples of ``family`` on ``url``/metrics whose labels include ``labels``, by their ``worker`` label."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != family:
            continue
        for s in fam.samples:
            if s.name.endswith("_created") or not labels.items() <= s.labels.items():
                continue
            key = s.labels.get("worker", "")
            out[key] = out.get(key, 0.0) + s.value
    return out


async def join_room(fleet: Fleet, room: str, names: tuple[str, ...]) -> list[ClassroomClient]:
    clients = []
    for name in names:
        client = ClassroomClient(fleet.signaling_url(), fleet.token(room, name), room=room)
        clients.append(client)
        await client.connect()
        await client.publish([("camera", VideoStreamTrack()), ("microphone", AudioStreamTrack())])
    return clients


def everyone_sees_everyone(clients: list[ClassroomClient], packets: int = 10) -> bool:
    return all(
        a.received_from(b.participant_id or "", "video") > packets for a in clients for b in clients if a is not b
    )


def placement(node: ServiceProcess) -> tuple[dict[str, int], dict[int, dict[str, Any]]]:
    status, body = http_json(f"{node.url}/v1/node")
    assert status == 200, body
    workers = {w["index"]: w for w in body["worker_detail"]}
    return {room: k for k, w in workers.items() for room in w["rooms"]}, workers


def start(fleet: Fleet, *media: tuple[str, int]) -> None:
    fleet.start_orchestrator()
    fleet.start_signaling()
    for node_id, workers in media:
        fleet.start_media(node_id, workers=workers)
    for proc in fleet.procs.values():
        proc.wait_ready(60)


def clean_log(proc: ServiceProcess) -> None:
    log = proc.log()
    bad = [sign for sign in BAD_SIGNS if sign in log]
    assert not bad, f"{proc.name} logged {bad}:\n{log[-4000:]}"


@pytest.mark.multiprocess
async def test_rooms_spread_over_workers_and_a_killed_worker_s_room_comes_back(
    tmp_path: Path, redis_server: Any
) -> None:
    fleet = Fleet(tmp_path, redis_server.url, {"eu-central": ["eu-wk"]})
    clients: list[ClassroomClient] = []
    bus = RedisBus(redis_server.url)
    recorder: Recorder | None = None
    try:
        start(fleet, ("eu-wk", 2))
        node = fleet.procs["eu-wk"]
        await fleet.wait_nodes(1)
        room_a = await join_room(fleet, "front-a", ("Ana", "Ben"))
        room_b = await join_room(fleet, "front-b", ("Cleo", "Dev"))
        clients = room_a + room_b
        rooms, workers = placement(node)
        assert {rooms["front-a"], rooms["front-b"]} == {0, 1}, rooms  # the second room went to the idle worker
        assert [w["participants"] for w in sorted(workers.values(), key=lambda w: w["index"])] == [2, 2]
        await eventually(lambda: everyone_sees_everyone(room_a) and everyone_sees_everyone(room_b), within=30)
        # a recorder on plain RTP in the room whose worker will die
        config = RecorderConfig("eu-wk", "front-a", "rec-front-a", "a", tmp_path / "rec", segment_seconds=3.0)
        recorder = Recorder(config, bus)
        await recorder.start()
        await eventually(lambda: recorder is not None and recorder.progress().bytes > 20_000, within=15)

        # both workers forward: their data-plane metrics reach the front's /metrics with a worker label
        # (the front refreshes them at every poll of its workers, each second)
        def both_forward() -> bool:
            forwarded = metric(node.url, "classmesh_media_forwarded_packets", node="eu-wk", kind="video")
            return forwarded.get("0", 0) > 0 and forwarded.get("1", 0) > 0

        await eventually(both_forward, within=5)
        assert metric(node.url, "classmesh_media_front_worker_rooms", node="eu-wk") == {"0": 1.0, "1": 1.0}

        victim = rooms["front-a"]
        old_pid = workers[victim]["pid"]
        os.kill(old_pid, signal.SIGKILL)
        killed = time.monotonic()
        await eventually(lambda: all(c.moves == 1 for c in room_a), within=10)
        await eventually(lambda: everyone_sees_everyone(room_a), within=20)
        recovered_in = time.monotonic() - killed
        print(f"\nworker SIGKILLed: its room's participants see each other again after {recovered_in:.2f}s")
        assert recovered_in < 10
        # the recorder was re-seated with the room: the new worker's plain outputs (new SSRCs) reach it
        written = recorder.progress().bytes
        await eventually(lambda: recorder is not None and recorder.progress().bytes > written + 50_000, within=15)
        # the other room never noticed
        assert all(c.moves == 0 for c in room_b)
        pairs = [(c, o.participant_id or "") for c in room_b for o in room_b if o is not c]
        before = [c.received_from(pid, "video") for c, pid in pairs]
        await asyncio.sleep(1.0)
        assert all(c.received_from(pid, "video") > n for (c, pid), n in zip(pairs, before, strict=True))
        # the room stayed on this node (its key untouched), on a worker that answers; the dead one was restarted
        r = redis.Redis.from_url(redis_server.url, decode_responses=True)
        assert r.get("room:front-a:node") == "eu-wk"

        def restarted() -> bool:
            _rooms, now = placement(node)
            return now[victim]["restarts"] == 1 and now[victim]["state"] == "ready"

        await eventually(restarted, within=30)
        rooms, workers = placement(node)
        assert workers[victim]["pid"] != old_pid
        assert set(rooms) == {"front-a", "front-b"}
        assert metric(node.url, "classmesh_media_front_worker_failures", node="eu-wk") == {"": 1.0}
        assert metric(node.url, "classmesh_media_front_rooms_recovered", node="eu-wk") == {"": 1.0}
    finally:
        if recorder is not None:
            await recorder.close()
        await bus.close()
        for c in clients:
            await c.close()
        codes = fleet.stop_all()
    assert codes["eu-wk"] == 0, fleet.procs["eu-wk"].log()[-3000:]
    clean_log(fleet.procs["eu-wk"])


@pytest.mark.multiprocess
async def test_draining_a_front_moves_its_rooms_and_exits_0(tmp_path: Path, redis_server: Any) -> None:
    fleet = Fleet(tmp_path, redis_server.url, {"eu-central": ["eu-fr", "eu-one"]})
    clients: list[ClassroomClient] = []
    try:
        start(fleet, ("eu-fr", 2))
        await fleet.wait_nodes(1)
        clients = await join_room(fleet, "front-drain", ("Eve", "Finn"))
        await eventually(lambda: everyone_sees_everyone(clients), within=30)
        single = fleet.start_media("eu-one")  # somewhere to move to: a single-process node
        single.wait_ready(60)
        await fleet.wait_nodes(2)
        front = fleet.procs["eu-fr"]
        _rooms, workers = placement(front)
        pids = [w["pid"] for w in workers.values()]
        front.process.send_signal(signal.SIGTERM)
        began = time.monotonic()
        r = redis.Redis.from_url(redis_server.url, decode_responses=True)
        await eventually(lambda: all(c.moves == 1 for c in clients), within=20)
        assert r.get("room:front-drain:node") == "eu-one"
        code = await asyncio.to_thread(front.process.wait, 30)
        drained_in = time.monotonic() - began
        print(f"\nfront drained: exit {code} after {drained_in:.1f}s")
        assert code == 0, front.log()[-3000:]
        assert drained_in < 10  # the rooms moved: no waiting for the deadline
        for pid in pids:  # and its workers are gone with it
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        await eventually(lambda: everyone_sees_everyone(clients), within=20)
    finally:
        for c in clients:
            await c.close()
        fleet.stop_all()
    clean_log(fleet.procs["eu-fr"])
