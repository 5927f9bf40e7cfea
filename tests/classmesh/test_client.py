"""aiortc participants through the real stack: signaling -> orchestrator placement -> media node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from classmesh.client import ClassroomClient, SignalingError


async def eventually(predicate: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


def join(stack: Any, room: str, name: str, role: str = "student") -> ClassroomClient:
    token = stack.issuer.mint(room=room, identity=name.lower(), name=name, role=role)
    return ClassroomClient(stack.signaling_url, token, room=room)


async def test_two_aiortc_participants_exchange_audio_and_video(stack: Any) -> None:
    alice, bob = join(stack, "r1", "Alice"), join(stack, "r1", "Bob")
    try:
        await alice.connect()
        await bob.connect()
        await alice.publish([("camera", VideoStreamTrack()), ("microphone", AudioStreamTrack())])
        await bob.publish([("camera", VideoStreamTrack()), ("microphone", AudioStreamTrack())])
        assert alice.participant_id and bob.participant_id
        await eventually(
            lambda: (
                alice.received_from(bob.participant_id or "", "video") > 30
                and alice.received_from(bob.participant_id or "", "audio") > 30
                and bob.received_from(alice.participant_id or "", "video") > 30
                and bob.received_from(alice.participant_id or "", "audio") > 30
            )
        )
        assert set(alice.participants) == {bob.participant_id}
        # chat carries the sender's identity, set by the node
        await alice.chat("hello class")
        await eventually(lambda: any(m.get("type") == "data" for m in bob.messages))
        data = next(m for m in bob.messages if m.get("type") == "data")
        assert data["from"]["name"] == "Alice" and data["body"] == {"text": "hello class"}
        # leaving is seen
        await bob.leave()
        await eventually(lambda: bob.participant_id not in alice.participants, within=2)
    finally:
        await alice.close()
        await bob.close()


async def test_rooms_are_isolated(stack: Any) -> None:
    a, b = join(stack, "room-a", "A"), join(stack, "room-b", "B")
    try:
        await a.connect()
        await b.connect()
        await a.publish([("microphone", AudioStreamTrack())])
        await a.chat("secret")
        await asyncio.sleep(1.0)
        assert b.participants == {} and b.inbound == {}
        assert not any(m.get("type") == "data" for m in b.messages)
    finally:
        await a.close()
        await b.close()


async def test_observer_cannot_publish(stack: Any) -> None:
    watcher = join(stack, "r2", "Watcher", role="observer")
    try:
        await watcher.connect()
        try:
            await watcher.publish([("camera", VideoStreamTrack())])
        except SignalingError as exc:
            assert exc.code == "permission_denied"
        else:
            raise AssertionError("an observer published")
    finally:
        await watcher.close()
