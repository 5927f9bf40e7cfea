"""aiortc participants follow their room when the orchestrator moves it to another node."""

from __future__ import annotations

from typing import Any

from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from classmesh.client import ClassroomClient
from core.messages import room_key
from tests.classmesh.test_client import eventually


async def test_clients_follow_a_moved_room(stack: Any) -> None:
    clients = []
    for name in ("A", "B"):
        token = stack.issuer.mint(room="mv", identity=name.lower(), name=name, role="student", region="eu-central")
        c = ClassroomClient(stack.signaling_url, token, room="mv")
        await c.connect()
        await c.publish([("camera", VideoStreamTrack()), ("microphone", AudioStreamTrack())])
        clients.append(c)
    a, b = clients
    try:
        await eventually(lambda: a.received_from(b.participant_id or "", "video") > 10)
        source = await stack.bus.kv_get(room_key("mv"))
        orchestrator = stack.orchestrator
        info = orchestrator.registry.get(source)
        # move to the other region's node (the only other node of this stack)
        target = "us-east-1" if source == "eu-central-1" else "eu-central-1"
        await orchestrator._create_on(orchestrator.registry.get(target), "mv", None)
        await stack.bus.publish("room.mv", {"type": "moved", "room_id": "mv", "node_id": target, "reason": "drain"})
        await eventually(lambda: bool(a.moves and b.moves))
        assert a.moves == 1 and b.moves == 1 and info is not None
        await eventually(
            lambda: (
                a.received_from(b.participant_id or "", "video") > 10
                and b.received_from(a.participant_id or "", "video") > 10
            )
        )
        assert a.received_from(b.participant_id or "", "video") > 10
        assert b.received_from(a.participant_id or "", "video") > 10
    finally:
        for c in clients:
            await c.close()
